//! Fault knobs: Azure's real failure modes, set in the world file and changed at run time through
//! `PUT /_emulator/faults`. Every knob has a "next N requests" form, so tests are exact, and a
//! rate form driven by a seeded random generator.

use serde::{Deserialize, Serialize};

/// The fault settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Faults {
    /// ARM's token buckets per (subscription, principal, reads|writes|deletes): reads 250 burst
    /// and 25/s, writes and deletes 200 and 10/s, all multiplied by `scale`. Off when absent.
    pub throttling: Option<Throttling>,
    /// Latency added to every ARM answer, in milliseconds.
    pub latency_ms: u64,
    /// The next N ARM requests answer 500 `InternalServerError`.
    pub server_error_next: u32,
    /// Fraction of ARM requests answering 500.
    pub server_error_rate: f64,
    /// The next N ARM requests lose their connection before a body arrives.
    pub drop_connection_next: u32,
    /// Fraction of ARM requests that lose their connection.
    pub drop_connection_rate: f64,
    /// Role assignments for an identity created less than this many seconds ago answer 400
    /// `PrincipalNotFound` (Entra replication lag).
    pub principal_not_found_seconds: f64,
    /// A VM or scale set PATCH while another is in progress answers 409
    /// `AnotherOperationInProgress`.
    pub another_operation_in_progress: bool,
    /// The next N long-running operations end `Failed` without a change.
    pub lro_fail_next: u32,
    /// The next N ARM writes (PUT, PATCH, DELETE) are applied, then their connection drops
    /// before an answer arrives: the client cannot tell whether the write happened.
    pub applied_then_drop_next: u32,
    /// Fraction of ARM writes applied and then answered with a dropped connection.
    pub applied_then_drop_rate: f64,
    /// The next N ARM writes are applied, then answered 500 `InternalServerError`.
    pub applied_then_error_next: u32,
    /// Fraction of ARM writes applied and then answered 500.
    pub applied_then_error_rate: f64,
    /// The next N ARM writes are applied, then answered only after `slowAnswerMs` (longer than
    /// the client's timeout, so the client gives up on a write that happened).
    pub applied_then_slow_next: u32,
    /// Fraction of ARM writes applied and answered late.
    pub applied_then_slow_rate: f64,
    /// How late a late answer comes, in milliseconds (65 000, beyond a 60 s client timeout,
    /// when 0).
    pub slow_answer_ms: u64,
    /// The next N long-running operations answer their status polls with 500 while they run,
    /// so the client stops polling, and then succeed on their own.
    pub lro_late_next: u32,
    /// Fraction of long-running operations that succeed after the client stopped polling.
    pub lro_late_rate: f64,
    /// The next N IMDS token requests answer 429.
    pub imds_throttle_next: u32,
    /// The next N IMDS token requests answer 410 (IMDS updating).
    pub imds_gone_next: u32,
    /// The next N IMDS token requests answer 500.
    pub imds_server_error_next: u32,
    /// Each federated identity credential write takes this many milliseconds; another write on
    /// the same identity meanwhile answers 409
    /// `ConcurrentFederatedIdentityCredentialsWritesForSingleManagedIdentity`.
    pub fic_write_ms: u64,
    /// Seed of the random generator behind the rates.
    pub seed: u64,
}

/// The names under which injected faults are counted (`Emulator::injected`).
pub mod kind {
    /// 429 from ARM's token buckets.
    pub const THROTTLED: &str = "throttled";
    /// 500 before the request is applied.
    pub const SERVER_ERROR: &str = "serverError";
    /// Connection dropped before the request is applied.
    pub const DROP_CONNECTION: &str = "dropConnection";
    /// Applied, then the connection dropped.
    pub const APPLIED_THEN_DROP: &str = "appliedThenDrop";
    /// Applied, then 500.
    pub const APPLIED_THEN_ERROR: &str = "appliedThenError";
    /// Applied, then answered after the client's timeout.
    pub const APPLIED_THEN_SLOW: &str = "appliedThenSlow";
    /// A long-running operation that failed.
    pub const LRO_FAIL: &str = "lroFail";
    /// A long-running operation that succeeded after its polls failed.
    pub const LRO_LATE: &str = "lroLate";
    /// `PrincipalNotFound` during the replication window.
    pub const PRINCIPAL_NOT_FOUND: &str = "principalNotFound";
    /// `AnotherOperationInProgress`.
    pub const ANOTHER_OPERATION: &str = "anotherOperationInProgress";
}

impl Faults {
    /// How late a late answer comes.
    pub fn slow_answer(&self) -> std::time::Duration {
        std::time::Duration::from_millis(if self.slow_answer_ms == 0 {
            65_000
        } else {
            self.slow_answer_ms
        })
    }
}

/// Take one from a "next N" counter.
pub fn take_next(n: &mut u32) -> bool {
    if *n > 0 {
        *n -= 1;
        true
    } else {
        false
    }
}

/// ARM throttling.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Throttling {
    /// Multiplies ARM's bucket sizes and refill rates (1.0 = ARM's limits).
    #[serde(default = "one")]
    pub scale: f64,
}

fn one() -> f64 {
    1.0
}

/// Bucket size and refill per second of an operation type at scale 1.
pub fn arm_limits(kind: &str) -> (f64, f64) {
    match kind {
        "reads" => (250.0, 25.0),
        _ => (200.0, 10.0),
    }
}
