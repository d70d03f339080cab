//! The identity of a `UserAssignedIdentity` as Azure has it: the one answer bindings, grants and
//! service account bindings act on.
//!
//! The ARM id comes from the spec (subscription or the controller's default, resource group,
//! Azure name); the client id, principal id and tenant id come from ARM, and only an identity
//! whose owner tag names this cluster, namespace and object is answered (an adopted one carries
//! that tag too). The status is never read here: anyone with status rights can write it, and a
//! status naming another identity must not steer an assignment, a grant or a credential.
//!
//! The identity reconciler hands over what it read or created ([`remember`]); a miss reads ARM.

pub mod record;

pub use record::AzureIdentity;

use super::context::Context;
use super::error::ReconcileError;
use super::identity::plan::{owned, owner_value};
use super::memo::ObjectKey;
use kube::ResourceExt;
use uami_api::UserAssignedIdentity;
use uami_azure::federated::IdentityCoordinates;
use uami_azure::identity::Identity;

/// Where the identity of `obj` lives in Azure, from its spec (the subscription defaults to the
/// controller's); `None` without a subscription.
pub fn coordinates(obj: &UserAssignedIdentity, ctx: &Context) -> Option<IdentityCoordinates> {
    let subscription = obj
        .spec
        .subscription_id
        .clone()
        .or_else(|| ctx.settings.default_subscription.clone())?;
    Some(IdentityCoordinates {
        subscription,
        resource_group: obj.spec.resource_group.clone(),
        name: obj.azure_name(),
    })
}

/// What the cache holds for `obj` when it was recorded for the coordinates `at`: a changed spec
/// never reuses the answer for the old coordinates.
fn recorded(
    ctx: &Context,
    obj: &UserAssignedIdentity,
    at: &IdentityCoordinates,
) -> Option<AzureIdentity> {
    ctx.azure_identity(&ObjectKey::of(obj))
        .filter(|known| known.coordinates.key() == at.key())
}

/// Whether `identity` carries the owner tags of `obj` in this cluster (its name and uid).
pub fn owned_by(ctx: &Context, obj: &UserAssignedIdentity, identity: &Identity) -> bool {
    let owner = owner_value(
        &ctx.settings.cluster_name,
        &obj.namespace().unwrap_or_default(),
        &obj.name_any(),
    );
    owned(&identity.tags, &owner, &obj.uid().unwrap_or_default())
}

/// Record what the identity reconciler read or created for `obj` (`None`: it is not, or no
/// longer, this object's).
pub fn remember(ctx: &Context, obj: &UserAssignedIdentity, identity: Option<&Identity>) {
    let Some(at) = coordinates(obj, ctx) else {
        return;
    };
    let key = ObjectKey::of(obj);
    match identity.filter(|i| owned_by(ctx, obj, i)) {
        Some(i) => {
            let before = recorded(ctx, obj, &at);
            let mut now = AzureIdentity::of(at, i);
            now.replaced_principal_id = before.and_then(|before| replaced(&before, &now));
            ctx.remember_azure_identity(key, now)
        }
        None => ctx.forget_azure_identity(&key),
    }
}

/// The principal `now` replaced: `before`'s when the principal changed under the same ARM id,
/// else what `before` had replaced.
fn replaced(before: &AzureIdentity, now: &AzureIdentity) -> Option<String> {
    if !before.id.eq_ignore_ascii_case(&now.id) {
        return None;
    }
    if !before.principal_id.is_empty()
        && !now.principal_id.is_empty()
        && !before.principal_id.eq_ignore_ascii_case(&now.principal_id)
    {
        return Some(before.principal_id.clone());
    }
    before.replaced_principal_id.clone()
}

/// What the identity reconciler last recorded for `obj`, without asking ARM.
pub fn last_known(ctx: &Context, obj: &UserAssignedIdentity) -> Option<AzureIdentity> {
    let at = coordinates(obj, ctx)?;
    recorded(ctx, obj, &at)
}

/// `obj`'s identity as Azure has it: from the cache, else read from ARM. `None` when the spec
/// names no subscription and there is no default, when the identity does not exist, or when it
/// is not tagged for this object.
pub async fn resolve(
    ctx: &Context,
    obj: &UserAssignedIdentity,
) -> Result<Option<AzureIdentity>, ReconcileError> {
    let Some(at) = coordinates(obj, ctx) else {
        return Ok(None);
    };
    if let Some(known) = recorded(ctx, obj, &at) {
        return Ok(Some(known));
    }
    let current = get(ctx, &at).await?;
    let Some(current) = current.filter(|i| owned_by(ctx, obj, i)) else {
        return Ok(None);
    };
    let resolved = AzureIdentity::of(at, &current);
    ctx.remember_azure_identity(ObjectKey::of(obj), resolved.clone());
    Ok(Some(resolved))
}

/// The identity at `at` as ARM has it now (`None`: there is none).
pub async fn get(
    ctx: &Context,
    at: &IdentityCoordinates,
) -> Result<Option<Identity>, ReconcileError> {
    ctx.azure
        .identities
        .get_identity(at)
        .await
        .map_err(ReconcileError::arm("GetIdentity"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(id: &str, principal: &str, replaced: Option<&str>) -> AzureIdentity {
        AzureIdentity {
            coordinates: IdentityCoordinates::new("s", "DevTest", "app"),
            id: id.into(),
            client_id: "c".into(),
            principal_id: principal.into(),
            tenant_id: "t".into(),
            replaced_principal_id: replaced.map(str::to_string),
        }
    }

    #[test]
    fn a_new_principal_under_the_same_id_replaces_the_one_read_before() {
        let id = "/subscriptions/s/resourceGroups/DevTest/providers/Microsoft.ManagedIdentity/userAssignedIdentities/app";
        assert_eq!(
            replaced(&seen(id, "p1", None), &seen(id, "p2", None)).as_deref(),
            Some("p1")
        );
        // Read again unchanged: what it replaced is kept.
        assert_eq!(
            replaced(&seen(id, "p2", Some("p1")), &seen(id, "P2", None)).as_deref(),
            Some("p1")
        );
        assert_eq!(replaced(&seen(id, "p1", None), &seen(id, "p1", None)), None);
        // Another id (the spec changed) replaces nothing; neither does a principal not known yet.
        assert_eq!(
            replaced(&seen(id, "p1", None), &seen("/other", "p2", None)),
            None
        );
        assert_eq!(replaced(&seen(id, "", None), &seen(id, "p2", None)), None);
    }
}
