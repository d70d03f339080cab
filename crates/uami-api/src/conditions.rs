//! Condition types, reasons and the helper that merges a condition into a list.
//!
//! `lastTransitionTime` changes only when `status` changes, so re-applying the same result
//! produces the same status and no needless write.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::common::MAX_CONDITION_MESSAGE;

/// Condition types.
pub mod types {
    /// Summary condition of every kind.
    pub const READY: &str = "Ready";
    /// The identity is assigned to the VM or scale set in Azure (controller).
    pub const ASSIGNED: &str = "Assigned";
    /// The agent obtained a token for the identity through IMDS (agent).
    pub const TOKEN_ACQUIRED: &str = "TokenAcquired";
    /// The role assignment exists in Azure (controller).
    pub const GRANTED: &str = "Granted";
    /// The agent read the scope with the identity's token (agent).
    pub const ACCESS_VERIFIED: &str = "AccessVerified";
    /// Present (False) only while the Azure quota the object uses is at 90% or more of its limit
    /// (controller): role assignments per subscription, federated credentials per identity.
    pub const BUDGET: &str = "Budget";
}

/// Condition status values.
pub mod status {
    /// The condition holds.
    pub const TRUE: &str = "True";
    /// The condition does not hold.
    pub const FALSE: &str = "False";
    /// Not known yet.
    pub const UNKNOWN: &str = "Unknown";
}

/// Declares [`Reason`] from one list: each variant with its doc and the string users see, and
/// from the same list `Reason::ALL` and `Reason::as_str`.
macro_rules! reasons {
    ($($(#[$doc:meta])* $variant:ident => $text:literal,)*) => {
        /// Every reason the controller and the agent give, in conditions and Events: static
        /// CamelCase strings that dashboards and alerts match on (an ARM error's own code is
        /// given as it is).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Reason {
            $($(#[$doc])* $variant,)*
        }

        impl Reason {
            /// Every reason.
            pub const ALL: &[Reason] = &[$(Reason::$variant,)*];

            /// The string users see.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Reason::$variant => $text,)*
                }
            }
        }
    };
}

reasons! {
    /// The object is reconciled and, where asked, verified.
    Ready => "Ready",
    /// The identity was created by this controller.
    Created => "Created",
    /// An existing identity or role assignment was taken over.
    Adopted => "Adopted",
    /// An identity with this name exists in Azure and belongs to someone else.
    AlreadyExists => "AlreadyExists",
    /// No subscription in the spec and no default configured.
    NoSubscription => "NoSubscription",
    /// The referenced `UserAssignedIdentity` does not exist.
    IdentityNotFound => "IdentityNotFound",
    /// The referenced identity exists but is not ready yet (no principal or client id).
    WaitingForIdentity => "WaitingForIdentity",
    /// No GrantPolicy allows the request.
    DeniedByPolicy => "DeniedByPolicy",
    /// The role name or id does not resolve to a role definition.
    RoleNotFound => "RoleNotFound",
    /// Entra has not replicated the new principal yet; retried with a bound.
    PrincipalNotFound => "PrincipalNotFound",
    /// The role assignment exists.
    Granted => "Granted",
    /// The identity is assigned to the VM or scale set.
    Assigned => "Assigned",
    /// A change to the VM or scale set is being written or its operation polled.
    Assigning => "Assigning",
    /// The VM or scale set does not exist.
    TargetNotFound => "TargetNotFound",
    /// Waiting for the agent on the VM to report a token.
    AwaitingToken => "AwaitingToken",
    /// Waiting for the agent on the VM to report the access check.
    AwaitingAccessCheck => "AwaitingAccessCheck",
    /// The access check cannot read a scope of this resource type.
    UnsupportedScope => "UnsupportedScope",
    /// The agent reported a failure (its own condition carries the detail).
    AgentReportedFailure => "AgentReportedFailure",
    /// Deletion waits for bindings and grants that use this identity.
    WaitingForDependents => "WaitingForDependents",
    /// Azure throttled the request; retried after `Retry-After`.
    Throttled => "Throttled",
    /// The controller lacks an Azure permission.
    Forbidden => "Forbidden",
    /// A Kubernetes API call failed.
    KubernetesError => "KubernetesError",
    /// The location in Azure differs from the spec (location is immutable in Azure).
    LocationMismatch => "LocationMismatch",
    /// The scope is not a canonical ARM scope; nothing is sent to ARM.
    InvalidScope => "InvalidScope",
    /// The ConfigMap named in `exportTo` exists and was not created for this identity.
    ConfigMapConflict => "ConfigMapConflict",
    /// The controller runs without `--oidc-issuer`, so service account bindings cannot be made.
    NoOidcIssuer => "NoOidcIssuer",
    /// The bound service account does not exist.
    ServiceAccountNotFound => "ServiceAccountNotFound",
    /// Several bindings of one service account say `default: true`: none of them names the
    /// account's client id, which is left as it was.
    DefaultConflict => "DefaultConflict",
    /// The identity's principal changed under the same ARM id: it was deleted and created again.
    IdentityRecreated => "IdentityRecreated",
    /// The identity has Azure's maximum of federated identity credentials.
    FederatedCredentialLimit => "FederatedCredentialLimitReached",
    /// The subscription has Azure's maximum of role assignments; the grant's assignment was not
    /// asked for.
    RoleAssignmentLimit => "RoleAssignmentLimitReached",
    /// The grant's assignment took its subscription to 90% or more of Azure's role assignment limit.
    RoleAssignmentsNearLimit => "RoleAssignmentsNearLimit",
    /// The binding's credential took its identity to 90% or more of Azure's federated identity
    /// credential limit.
    FederatedCredentialsNearLimit => "FederatedCredentialsNearLimit",
    /// A token of the service account was exchanged for a token of the identity.
    TokenAcquired => "TokenAcquired",
    /// The TokenRequest for the service account failed.
    TokenRequestFailed => "TokenRequestFailed",
    /// The exchange at Entra ID failed without an AADSTS code.
    TokenExchangeFailed => "TokenExchangeFailed",
    /// The object was accepted by the API server but cannot be read by the controller (a value its
    /// schema allows and its type does not); it is left out until it is fixed.
    InvalidObject => "InvalidObject",
    /// IMDS on the VM does not know the identity (agent): it is not assigned, or not yet.
    IdentityNotAssigned => "IdentityNotAssigned",
    /// IMDS did not answer (agent); the last result stays.
    ImdsUnavailable => "ImdsUnavailable",
    /// IMDS throttled the agent; the last result stays.
    ImdsThrottled => "ImdsThrottled",
    /// An access check could not be made (agent, token check).
    CheckFailed => "CheckFailed",
    /// Every granted scope was read with the identity's token.
    AccessVerified => "AccessVerified",
    /// A granted scope refused the identity's token.
    AccessDenied => "AccessDenied",
    /// A granted scope answered with a status that is neither allowed nor denied.
    UnexpectedStatus => "UnexpectedStatus",
    /// Azure failed without an error code.
    AzureError => "AzureError",
    /// Something the controller made was changed or removed outside it; it is made again.
    DriftDetected => "DriftDetected",
    /// What a binding or grant gave was taken back.
    Revoked => "Revoked",
    /// Writing the identity to the VM or scale set failed.
    AssignFailed => "AssignFailed",
    /// The identity was deleted in Azure.
    Deleted => "Deleted",
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A condition to merge, without the time: the time is kept from the previous condition of the
/// same type when the status did not change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewCondition {
    /// Condition type.
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// CamelCase reason.
    pub reason: String,
    /// Human-readable message.
    pub message: String,
}

impl NewCondition {
    /// A condition of `type_` with status `True`/`False`.
    pub fn new(type_: &str, ok: bool, reason: &str, message: impl Into<String>) -> Self {
        Self {
            type_: type_.to_string(),
            status: if ok { status::TRUE } else { status::FALSE }.to_string(),
            reason: reason.to_string(),
            message: message.into(),
        }
    }

    /// A condition of `type_` with status `Unknown`.
    pub fn unknown(type_: &str, reason: &str, message: impl Into<String>) -> Self {
        Self {
            type_: type_.to_string(),
            status: status::UNKNOWN.to_string(),
            reason: reason.to_string(),
            message: message.into(),
        }
    }
}

/// `message` cut to the [`MAX_CONDITION_MESSAGE`] characters the CRD schemas allow.
fn bounded(message: String) -> String {
    super::text::truncate(
        message,
        super::text::Limit::Chars(MAX_CONDITION_MESSAGE),
        "",
    )
}

/// Merge `new` into `conditions` (keyed by type). `lastTransitionTime` is kept when the status
/// did not change, otherwise set to `now`. Returns whether anything changed. A message longer
/// than the schemas allow is cut.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    mut new: NewCondition,
    generation: Option<i64>,
    now: Time,
) -> bool {
    new.message = bounded(new.message);
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(existing) => {
            let transition = existing.status != new.status;
            let changed = transition
                || existing.reason != new.reason
                || existing.message != new.message
                || existing.observed_generation != generation;
            if transition {
                existing.last_transition_time = now;
            }
            existing.status = new.status;
            existing.reason = new.reason;
            existing.message = new.message;
            existing.observed_generation = generation;
            changed
        }
        None => {
            conditions.push(Condition {
                type_: new.type_,
                status: new.status,
                reason: new.reason,
                message: new.message,
                observed_generation: generation,
                last_transition_time: now,
            });
            true
        }
    }
}

/// The condition of `type_`, if present.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether the condition of `type_` is present with status `True`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == status::TRUE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(secs).unwrap())
    }

    #[test]
    fn transition_time_kept_when_status_unchanged() {
        let mut c = vec![];
        // (ready, message, generation, at): whether the list changes, and the transition time.
        let steps = [
            ((false, "a", 1, 10), true, 10),
            ((false, "b", 1, 20), true, 10),
            ((false, "b", 1, 30), false, 10),
            ((true, "ok", 2, 40), true, 40),
        ];
        for ((ready, message, generation, at), changed, transition) in steps {
            let reason = if ready { "Ready" } else { "Waiting" };
            let new = NewCondition::new(types::READY, ready, reason, message);
            assert_eq!(set_condition(&mut c, new, Some(generation), t(at)), changed);
            assert_eq!(c[0].last_transition_time, t(transition));
            assert_eq!(c[0].message, message);
            assert_eq!(c[0].observed_generation, Some(generation));
        }
        assert_eq!(c.len(), 1);
        assert!(is_true(&c, types::READY));
    }

    #[test]
    fn a_message_longer_than_the_schema_allows_is_cut() {
        let mut c = vec![];
        let long = "é".repeat(MAX_CONDITION_MESSAGE + 5);
        let new = NewCondition::new(types::READY, false, "Waiting", long);
        set_condition(&mut c, new, None, t(1));
        assert_eq!(c[0].message.chars().count(), MAX_CONDITION_MESSAGE);
    }
}

#[cfg(test)]
mod reason_tests {
    use super::Reason;

    #[test]
    fn every_reason_is_one_camel_case_word_and_unique() {
        let mut seen = std::collections::HashSet::new();
        for r in Reason::ALL {
            let s = r.as_str();
            assert!(
                s.starts_with(|c: char| c.is_ascii_uppercase())
                    && s.chars().all(|c| c.is_ascii_alphanumeric()),
                "{s}"
            );
            assert!(seen.insert(s), "{s} twice");
        }
    }
}
