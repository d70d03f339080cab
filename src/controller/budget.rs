//! Azure's fixed quotas, counted before they run out: role assignments per subscription and
//! federated identity credentials per identity.
//!
//! Azure allows 4000 role assignments per subscription (those at the subscription, its resource
//! groups and its resources) and 20 federated identity credentials per user-assigned identity;
//! neither can be raised
//! (<https://learn.microsoft.com/azure/azure-resource-manager/management/azure-subscription-service-limits>,
//! <https://learn.microsoft.com/azure/role-based-access-control/troubleshoot-limits>).
//!
//! The counts come from one paged list per subscription (and per identity with service account
//! bindings) at start and at every resync, paced like every other ARM read, and are kept current
//! between lists by the controller's own writes. An object whose write would take a count to 90%
//! of its limit or beyond is written and warned about (`Budget` condition False, a Warning
//! Event); one whose write would go past the limit is refused before ARM is asked.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use kube::ResourceExt;
use parking_lot::Mutex;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

use super::context::Context;
use super::status::{Conditioned, set};
use crate::api::conditions::{self, types};
use crate::azure::federated::IdentityCoordinates;
use crate::telemetry::metrics::QuotaMetrics;

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
            super::reasons::FEDERATED_CREDENTIALS_NEAR_LIMIT,
            super::reasons::FEDERATED_CREDENTIAL_LIMIT,
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

/// Count `subscription`'s role assignments (one paged list at the subscription; only those at
/// the subscription and below count). A failure (such as no permission to read role assignments
/// there) leaves the count unknown: ARM's own refusal is then the only guard.
pub async fn count_role_assignments(ctx: &Context, subscription: &str) -> Option<usize> {
    let scope = format!("/subscriptions/{subscription}");
    match ctx.azure.roles.list_role_assignments(&scope).await {
        Ok(all) => {
            let prefix = format!("{}/", scope.to_lowercase());
            let count = all
                .iter()
                .filter(|a| {
                    let s = format!("{}/", a.scope.trim_end_matches('/').to_lowercase());
                    s.starts_with(&prefix)
                })
                .count();
            ctx.budgets.set_role_assignments(subscription, count);
            ctx.budgets
                .unreadable
                .lock()
                .remove(&subscription.to_lowercase());
            Some(count)
        }
        Err(e) => {
            ctx.budgets
                .unreadable
                .lock()
                .insert(subscription.to_lowercase());
            tracing::warn!(%subscription, error = %e, "could not count the subscription's role assignments; the controller needs Microsoft.Authorization/roleAssignments/read at the subscription to warn before Azure's limit");
            None
        }
    }
}

/// The subscriptions the controller grants roles in: every grant's, and the default one.
fn subscriptions(ctx: &Context) -> BTreeSet<String> {
    let default = ctx.settings.default_subscription.as_deref();
    let mut subs: BTreeSet<String> = default.map(str::to_lowercase).into_iter().collect();
    for g in ctx.stores.grants.state() {
        if let Ok(scope) = super::grant::scope_of(&g, default) {
            subs.insert(scope.subscription().to_lowercase());
        }
    }
    subs
}

/// Count the federated identity credentials of every identity a service account binding uses.
async fn count_credentials(ctx: &Context) {
    let mut seen = BTreeSet::new();
    for b in ctx.stores.bindings.state() {
        if b.spec.target.service_account.is_none() {
            continue;
        }
        let ns = b.namespace().unwrap_or_default();
        let Some(identity) = ctx.identity(&ns, &b.spec.identity_ref.name) else {
            continue;
        };
        let Some(id) = identity
            .status
            .as_ref()
            .and_then(|s| s.resource_id.as_deref())
            .and_then(IdentityCoordinates::from_id)
        else {
            continue;
        };
        if !seen.insert(id.key()) {
            continue;
        }
        match ctx.azure.federated.list_federated_credentials(&id).await {
            Ok(all) => ctx.budgets.set_federated_credentials(&id, all.len()),
            Err(e) => {
                tracing::warn!(identity = %identity_id(&id), error = %e, "could not count the identity's federated identity credentials")
            }
        }
    }
}

/// Count at start and at every (jittered) resync until `stop` resolves.
pub async fn count_periodically(
    ctx: Arc<Context>,
    stop: impl std::future::Future<Output = ()> + Send,
) {
    let mut stop = std::pin::pin!(stop);
    loop {
        for sub in subscriptions(&ctx) {
            count_role_assignments(&ctx, &sub).await;
        }
        count_credentials(&ctx).await;
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(ctx.settings.jittered_resync()) => {}
        }
    }
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
