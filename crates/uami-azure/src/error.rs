//! The ARM error: HTTP status, the envelope's `error.code` and message, and `Retry-After`.
//! Classified retryable or terminal by code, as the Azure Service Operator does: known retryable
//! codes, known fatal codes, otherwise fatal on 400 and retryable on anything else.
//!
//! Only the envelope's `code` and `message` are kept: the rest of a response body (details,
//! inner errors, HTML from a proxy) never reaches conditions, events or logs.

use std::time::Duration;

/// A failed ARM call. Never carries a token: only the status, ARM's code and message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{operation}: {}{code}: {message}", status.map(|s| format!("HTTP {s} ")).unwrap_or_default())]
pub struct ArmError {
    /// The operation, such as `UserAssignedIdentities_CreateOrUpdate`.
    pub operation: &'static str,
    /// HTTP status; `None` for transport failures.
    pub status: Option<u16>,
    /// ARM error code (`error.code`), or a short label for transport failures.
    pub code: String,
    /// ARM's message.
    pub message: String,
    /// `Retry-After`, when given.
    pub retry_after: Option<Duration>,
}

const RETRYABLE: &[&str] = &[
    "AnotherOperationInProgress",
    "AuthorizationFailed",
    "AllocationFailed",
    "Conflict",
    "FailedIdentityOperation",
    "InvalidResourceReference",
    "InvalidSubscriptionRegistrationState",
    "LinkedAuthorizationFailed",
    "MissingRegistrationForLocation",
    "MissingSubscriptionRegistration",
    "NoRegisteredProviderFound",
    "NotFound",
    "ParentResourceNotFound",
    "PrincipalNotFound",
    "ResourceGroupNotFound",
    "ResourceNotFound",
    "ResourceQuotaExceeded",
    "SubscriptionNotRegistered",
    "TooManyRequests",
    "ExpiredAuthenticationToken",
    "InternalServerError",
    "ServiceUnavailable",
    "GatewayTimeout",
];

/// The code of [`ArmError::untrusted_origin`].
pub const UNTRUSTED_ORIGIN: &str = "UntrustedOrigin";

/// Errors raised on this side that trying again cannot fix.
const LOCAL_TERMINAL: &[&str] = &["NoCredential", UNTRUSTED_ORIGIN, "UnsupportedScope"];

/// ARM's messages are short; a longer one is cut (at a character boundary).
fn bounded(message: String) -> String {
    use uami_api::text::{Limit, truncate};
    truncate(message, Limit::Bytes(1024), "...")
}

const FATAL: &[&str] = &[
    "BadRequest",
    "BadRequestFormat",
    "InvalidParameter",
    "InvalidParameterValue",
    "InvalidResourceType",
    "InvalidRequestContent",
    "MissingRequiredParameter",
    "PropertyChangeNotAllowed",
    "RequestDisallowedByPolicy",
    "ReservedResourceName",
    "SkuNotAvailable",
    "SubscriptionNotFound",
    "RoleAssignmentUpdateNotPermitted",
    "InvalidRoleAssignmentId",
    "InvalidResourceName",
    "InvalidApiVersionParameter",
    "MissingApiVersionParameter",
];

impl ArmError {
    /// An error from a response.
    pub fn from_response(
        operation: &'static str,
        status: u16,
        body: &[u8],
        retry_after: Option<Duration>,
    ) -> Self {
        #[derive(serde::Deserialize)]
        struct Envelope {
            error: Option<Body>,
        }
        #[derive(serde::Deserialize)]
        struct Body {
            #[serde(default)]
            code: String,
            #[serde(default)]
            message: String,
        }
        let (code, message) = match serde_json::from_slice::<Envelope>(body) {
            Ok(Envelope { error: Some(b) }) => (b.code, bounded(b.message)),
            _ => (
                String::new(),
                format!("HTTP {status} without an ARM error body"),
            ),
        };
        Self {
            operation,
            status: Some(status),
            code,
            message,
            retry_after,
        }
    }

    /// A URL named in an ARM response (`what`: `nextLink`, `Azure-AsyncOperation`, `Location`)
    /// that is not on the ARM endpoint's origin. It is never requested: the ARM token would go
    /// with it. Terminal.
    pub fn untrusted_origin(
        operation: &'static str,
        what: &str,
        url: &url::Url,
        endpoint: &url::Url,
    ) -> Self {
        Self::local(
            operation,
            UNTRUSTED_ORIGIN,
            format!(
                "refused to follow the {what} on {} because it is not the ARM endpoint {}; the ARM token is sent only to the ARM endpoint",
                url.origin().ascii_serialization(),
                endpoint.origin().ascii_serialization()
            ),
        )
    }

    /// A transport failure (connection refused or reset, timeout).
    pub fn transport(operation: &'static str, e: &reqwest::Error) -> Self {
        let code = if e.is_timeout() {
            "Timeout"
        } else if e.is_connect() {
            "ConnectFailed"
        } else {
            "TransportError"
        };
        // reqwest's Display names the URL; ARM URLs carry no secrets.
        Self {
            operation,
            status: None,
            code: code.into(),
            message: e.to_string(),
            retry_after: None,
        }
    }

    /// An error raised on this side (bad response, no credential).
    pub fn local(operation: &'static str, code: &str, message: impl Into<String>) -> Self {
        Self {
            operation,
            status: None,
            code: code.into(),
            message: message.into(),
            retry_after: None,
        }
    }

    /// `Retry-After` given by ARM.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// ARM's error code ("" when there was none).
    pub fn code(&self) -> &str {
        &self.code
    }

    /// The HTTP status, when there was a response.
    pub fn status(&self) -> Option<u16> {
        self.status
    }

    /// Whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        let Some(status) = self.status else {
            return !LOCAL_TERMINAL.contains(&self.code.as_str());
        };
        if status == 429 || status >= 500 || status == 412 {
            return true;
        }
        if RETRYABLE.contains(&self.code.as_str()) {
            return true;
        }
        if FATAL.contains(&self.code.as_str()) {
            return false;
        }
        status != 400
    }

    /// A bounded label for metrics and events.
    pub fn category(&self) -> &'static str {
        match self.status {
            None => "Transport",
            Some(429) => "Throttled",
            Some(401) | Some(403) => "Forbidden",
            Some(404) => "NotFound",
            Some(409) => "Conflict",
            Some(412) => "PreconditionFailed",
            Some(s) if s >= 500 => "ServerError",
            Some(_) if self.is_retryable() => "Retryable",
            Some(_) => "Terminal",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(status: u16, code: &str) -> ArmError {
        ArmError::from_response(
            "Op",
            status,
            format!(r#"{{"error":{{"code":"{code}","message":"m"}}}}"#).as_bytes(),
            None,
        )
    }

    #[test]
    fn classification_follows_codes_then_status() {
        assert!(err(400, "PrincipalNotFound").is_retryable());
        assert!(err(403, "AuthorizationFailed").is_retryable());
        assert!(err(409, "AnotherOperationInProgress").is_retryable());
        assert!(err(429, "TooManyRequests").is_retryable());
        assert!(err(500, "Whatever").is_retryable());
        assert!(!err(400, "RoleAssignmentUpdateNotPermitted").is_retryable());
        assert!(
            !err(400, "SomethingNew").is_retryable(),
            "unknown 400 is fatal"
        );
        assert!(
            err(409, "SomethingNew").is_retryable(),
            "unknown non-400 is retryable"
        );
        assert_eq!(
            err(409, "RoleAssignmentExists").code(),
            "RoleAssignmentExists"
        );
    }

    #[test]
    fn envelope_and_non_json_bodies() {
        let e = err(404, "ResourceGroupNotFound");
        assert_eq!(e.to_string(), "Op: HTTP 404 ResourceGroupNotFound: m");
        let raw = ArmError::from_response("Op", 502, b"<html>bad gateway</html>", None);
        assert_eq!(raw.code(), "");
        assert_eq!(raw.message, "HTTP 502 without an ARM error body");
        assert_eq!(raw.category(), "ServerError");
        let extra = ArmError::from_response(
            "Op",
            400,
            br#"{"error":{"code":"InvalidParameter","message":"m","target":"t","details":[{"code":"x","message":"inner-secret"}],"innererror":{"errordetail":"stack-dump"}},"debug":"raw"}"#,
            None,
        );
        let shown = extra.to_string();
        assert_eq!(shown, "Op: HTTP 400 InvalidParameter: m");
        let long = ArmError::from_response(
            "Op",
            400,
            format!(
                r#"{{"error":{{"code":"C","message":"{}"}}}}"#,
                "é".repeat(2000)
            )
            .as_bytes(),
            None,
        );
        assert!(long.message.len() <= 1030);
    }
}
