//! The counts against Azure's fixed quotas and what they make of a write: room, the `Budget`
//! condition and its message. Kept apart from the counting (which lists through ARM), so the
//! reconcile context can hold the counts without depending on how they are taken.

use std::collections::{BTreeSet, HashMap};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use parking_lot::Mutex;
use uami_api::conditions::{self, types};
use uami_azure::federated::IdentityCoordinates;
use uami_kube::status::{Conditioned, set};
use uami_telemetry::metrics::QuotaMetrics;

/// Azure's role assignments per subscription.
pub const ROLE_ASSIGNMENTS_PER_SUBSCRIPTION: usize = 4000;
/// Azure's federated identity credentials per user-assigned identity.
pub const FEDERATED_CREDENTIALS_PER_IDENTITY: usize = 20;
/// The share of a limit, in percent, from which writes are warned about.
pub const WARN_PERCENT: usize = 90;

/// Where a count stands against its limit once one more is added.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Room {
    /// Below the warning threshold afterwards.
    Plenty,
    /// At or above 90% afterwards (`used` now, `limit`).
    Near { used: usize, limit: usize },
    /// At the limit already: one more would be refused by Azure.
    Full { used: usize, limit: usize },
}

/// Where `used` stands against `limit` once one more is added.
pub fn room_for_one(used: usize, limit: usize) -> Room {
    if used >= limit {
        Room::Full { used, limit }
    } else if (used + 1) * 100 >= limit * WARN_PERCENT {
        Room::Near { used, limit }
    } else {
        Room::Plenty
    }
}

/// The counts the controller has seen, and their gauges.
pub struct Budgets {
    /// Role assignments allowed per subscription.
    pub role_assignment_limit: usize,
    assignments: Mutex<HashMap<String, usize>>,
    credentials: Mutex<HashMap<String, usize>>,
    /// Subscriptions whose last count failed: not counted again before the next resync.
    unreadable: Mutex<BTreeSet<String>>,
    metrics: QuotaMetrics,
}

impl Budgets {
    /// No counts yet; `role_assignment_limit` is Azure's, or lower to keep headroom.
    pub fn new(role_assignment_limit: usize, metrics: QuotaMetrics) -> Self {
        metrics.set_limits(role_assignment_limit, FEDERATED_CREDENTIALS_PER_IDENTITY);
        Self {
            role_assignment_limit,
            assignments: Mutex::new(HashMap::new()),
            credentials: Mutex::new(HashMap::new()),
            unreadable: Mutex::new(BTreeSet::new()),
            metrics,
        }
    }

    /// The role assignments counted in `subscription`, when it was counted.
    pub fn role_assignments(&self, subscription: &str) -> Option<usize> {
        self.assignments
            .lock()
            .get(&subscription.to_lowercase())
            .copied()
    }

    /// Whether the last count of `subscription` failed.
    pub fn unreadable(&self, subscription: &str) -> bool {
        self.unreadable
            .lock()
            .contains(&subscription.to_lowercase())
    }

    /// Record whether `subscription`'s role assignments could be counted.
    pub fn set_readable(&self, subscription: &str, readable: bool) {
        let mut unreadable = self.unreadable.lock();
        if readable {
            unreadable.remove(&subscription.to_lowercase());
        } else {
            unreadable.insert(subscription.to_lowercase());
        }
    }

    /// Record a count of `subscription`'s role assignments.
    pub fn set_role_assignments(&self, subscription: &str, count: usize) {
        let sub = subscription.to_lowercase();
        self.metrics.set_role_assignments(&sub, count);
        self.assignments.lock().insert(sub, count);
    }

    /// One assignment more (or less) in `subscription`, written by this controller.
    pub fn role_assignment_written(&self, subscription: &str, added: bool) {
        let sub = subscription.to_lowercase();
        let mut counts = self.assignments.lock();
        if let Some(n) = counts.get_mut(&sub) {
            *n = if added { *n + 1 } else { n.saturating_sub(1) };
            self.metrics.set_role_assignments(&sub, *n);
        }
    }

    /// Record a count of an identity's federated identity credentials.
    pub fn set_federated_credentials(&self, identity: &IdentityCoordinates, count: usize) {
        let id = identity_id(identity);
        self.metrics.set_federated_credentials(&id, count);
        self.credentials.lock().insert(id, count);
    }

    /// The `Budget` condition of a binding whose credential is on `identity`, from the last
    /// count of its credentials (which include the binding's).
    pub fn credential_condition(&self, identity: &IdentityCoordinates) -> Option<(String, String)> {
        let id = identity_id(identity);
        let n = *self.credentials.lock().get(&id)?;
        let room = match room_for_one(n.saturating_sub(1), FEDERATED_CREDENTIALS_PER_IDENTITY) {
            Room::Full { used, limit } => Room::Near { used, limit },
            room => room,
        };
        condition_for(
            room,
            &format!("identity {}", identity.name),
            crate::reasons::FEDERATED_CREDENTIALS_NEAR_LIMIT,
            crate::reasons::FEDERATED_CREDENTIAL_LIMIT,
        )
    }
}

/// An identity's ARM id, lower case: the `identity` label.
pub fn identity_id(id: &IdentityCoordinates) -> String {
    format!(
        "/subscriptions/{}/resourcegroups/{}/providers/microsoft.managedidentity/userassignedidentities/{}",
        id.subscription, id.resource_group, id.name
    )
    .to_lowercase()
}

/// The `Budget` condition for `room` (`what` names the counted thing and where), or `None`
/// when there is plenty: the condition is there only while a limit is close.
pub fn condition_for(
    room: Room,
    what: &str,
    near_reason: &str,
    full_reason: &str,
) -> Option<(String, String)> {
    match room {
        Room::Plenty => None,
        Room::Near { used, limit } => Some((
            near_reason.to_string(),
            format!(
                "{what} has {} of Azure's {limit} (at least {WARN_PERCENT}%) with this one; the next ones will be refused at {limit}",
                used + 1
            ),
        )),
        Room::Full { used, limit } => Some((
            full_reason.to_string(),
            format!("{what} has {used} of Azure's {limit}; refused before Azure refuses it"),
        )),
    }
}

/// Set (or clear, `None`) the `Budget` condition of a status.
pub fn set_budget<S: Conditioned>(status: &mut S, budget: Option<&(String, String)>) {
    match budget {
        Some((reason, message)) => set(status, types::BUDGET, false, reason, message),
        None => status.conditions_mut().retain(|c| c.type_ != types::BUDGET),
    }
}

/// Whether the `Budget` condition in `list` already carries `reason` (its Event was published).
pub fn budget_reason_is(list: &[Condition], reason: &str) -> bool {
    conditions::find(list, types::BUDGET).is_some_and(|c| c.reason == reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warns_from_ninety_percent_and_refuses_at_the_limit() {
        assert_eq!(room_for_one(7, 10), Room::Plenty);
        assert_eq!(room_for_one(8, 10), Room::Near { used: 8, limit: 10 });
        assert_eq!(room_for_one(9, 10), Room::Near { used: 9, limit: 10 });
        assert_eq!(
            room_for_one(10, 10),
            Room::Full {
                used: 10,
                limit: 10
            }
        );
        assert_eq!(room_for_one(3598, 4000), Room::Plenty);
        assert_eq!(
            room_for_one(3599, 4000),
            Room::Near {
                used: 3599,
                limit: 4000
            }
        );
        assert_eq!(
            room_for_one(17, 20),
            Room::Near {
                used: 17,
                limit: 20
            }
        );
        assert_eq!(
            room_for_one(20, 20),
            Room::Full {
                used: 20,
                limit: 20
            }
        );
    }
}
