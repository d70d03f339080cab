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
fn bounded(mut message: String) -> String {
    if let Some((end, _)) = message.char_indices().nth(MAX_CONDITION_MESSAGE) {
        message.truncate(end);
    }
    message
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
