//! How a pass's failure shows in status: ARM's passing failures stay out of the status of a
//! Ready object, and an ARM error becomes a condition reason.

use uami_api::conditions::{self, types};
use uami_kube::status::Reported;

/// Whether a failed pass over `obj` should leave its status as it is: the failure is ARM's and
/// passing (a server error, throttling, a dropped connection: [`ArmError::is_retryable`]), and
/// `obj` is Ready at its current generation or the failure has not repeated
/// [`PASSING_FAILURES_SHOWN`] times in a row. Such a pass is retried with backoff; `Ready` turns
/// False only on a definitive answer, so it does not flap with Azure's transient faults.
///
/// [`ArmError::is_retryable`]: uami_azure::ArmError::is_retryable
pub fn keep_on_passing_failure<K: Reported>(
    ctx: &crate::context::Context,
    key: &crate::memo::ObjectKey,
    obj: &K,
    e: &uami_azure::ArmError,
) -> bool {
    if !e.is_retryable() {
        return false;
    }
    // The copy a pass starts from can be older than this controller's own last write (the
    // watch has not delivered it yet), so a Ready just written may not show: a passing failure
    // is also kept out of status until it repeats.
    let in_a_row = ctx.memo.failed(key, crate::memo::Run::Passing);
    in_a_row < PASSING_FAILURES_SHOWN
        || obj.conditions().iter().any(|c| {
            c.type_ == types::READY
                && c.status == conditions::status::TRUE
                && c.observed_generation == obj.meta().generation
        })
}

/// The passing failures in a row after which one is shown in the status of an object that is
/// not Ready.
pub const PASSING_FAILURES_SHOWN: u32 = 3;

/// A condition reason for an ARM error: `Throttled` for 429, `Forbidden` for 401/403, else the
/// ARM error code (CamelCase already), else `AzureError`.
pub fn arm_reason(e: &uami_azure::ArmError) -> String {
    match e.status() {
        Some(429) => return crate::reasons::THROTTLED.to_string(),
        Some(401) | Some(403) => return crate::reasons::FORBIDDEN.to_string(),
        _ => {}
    }
    let code: String = e
        .code()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    if code.is_empty() || !code.starts_with(|c: char| c.is_ascii_alphabetic()) {
        crate::reasons::AZURE_ERROR.to_string()
    } else {
        code
    }
}
