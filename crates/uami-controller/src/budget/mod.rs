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

use std::collections::BTreeSet;
use std::sync::Arc;

use kube::ResourceExt;

pub mod ledger;

pub use ledger::*;

use super::context::Context;
use uami_azure::federated::IdentityCoordinates;

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
            ctx.budgets.set_readable(subscription, true);
            Some(count)
        }
        Err(e) => {
            ctx.budgets.set_readable(subscription, false);
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
