//! Where a grant's access is checked: the plane its role acts on (ARM, or the Blob Storage or
//! Key Vault data plane), for the agent's checks of VM bindings and the token check of service
//! account bindings alike.

use std::collections::HashMap;
use std::sync::Arc;

use kube::ResourceExt;

use super::context::Context;
use uami_api::RoleGrant;
use uami_api::binding::AccessPlane;

/// The data action a Blob Storage check needs: List Blobs
/// (<https://learn.microsoft.com/rest/api/storageservices/list-blobs>, authorized with
/// `.../containers/blobs/read`).
const LIST_BLOBS: &str = "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/read";

/// The data action a Key Vault check needs: Get Secrets, the list
/// (<https://learn.microsoft.com/rest/api/keyvault/secrets/get-secrets/get-secrets>), which
/// `Key Vault Secrets User` allows through `.../secrets/readMetadata/action`
/// (<https://learn.microsoft.com/azure/role-based-access-control/built-in-roles/security>).
const LIST_SECRETS: &str = "Microsoft.KeyVault/vaults/secrets/readMetadata/action";

/// Where a role acts, so where its access is checked: a role with data actions that allow
/// listing blobs acts on Blob Storage, one whose data actions allow listing secrets on Key
/// Vault (data actions are authorized by those services, never by ARM:
/// <https://learn.microsoft.com/azure/role-based-access-control/role-definitions>); any other
/// role through ARM.
pub fn plane_of(role: &uami_azure::roles::RoleDefinition) -> AccessPlane {
    let allows = |action: &str| role.data_actions.iter().any(|p| wildcard(p, action));
    if allows(LIST_BLOBS) {
        AccessPlane::Blob
    } else if allows(LIST_SECRETS) {
        AccessPlane::KeyVault
    } else {
        AccessPlane::Arm
    }
}

/// Whether the action pattern `pattern` (`*` for any characters) covers `action`,
/// case-insensitively.
fn wildcard(pattern: &str, action: &str) -> bool {
    let (pattern, action) = (pattern.to_lowercase(), action.to_lowercase());
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = action.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    rest.ends_with(last)
}

/// The plane each grant's role acts on, by grant name, from its role definition (resolved by
/// the grant's reconciler already, so cached); a role that cannot be resolved now is left out.
pub async fn grant_planes(
    ctx: &Context,
    grants: &[Arc<RoleGrant>],
) -> HashMap<String, AccessPlane> {
    let mut planes = HashMap::new();
    for g in grants {
        let scope = g.status.as_ref().and_then(|s| s.scope.as_deref());
        let Some(subscription) = scope.and_then(|s| s.split('/').nth(2)) else {
            continue;
        };
        match ctx.resolve_role(subscription, &g.spec.role).await {
            Ok(Some(role)) => {
                planes.insert(g.name_any(), plane_of(&role));
            }
            Ok(None) => {}
            Err(e) => {
                tracing::debug!(grant = %g.name_any(), error = %e, "could not resolve the grant's role");
            }
        }
    }
    planes
}

/// The container a `Blob` check of `grant` lists when its scope names none: the grant's
/// `verifyAccessOptions.blobContainer`; none on the other planes.
pub fn blob_container(grant: &RoleGrant, plane: AccessPlane) -> Option<String> {
    (plane == AccessPlane::Blob)
        .then(|| {
            grant
                .spec
                .verify_access_options
                .as_ref()
                .and_then(|o| o.blob_container.clone())
        })
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::plane_of;

    #[test]
    fn a_role_is_checked_where_its_permissions_act() {
        use uami_api::binding::AccessPlane;
        use uami_azure::roles::RoleDefinition;
        let role = |data: &[&str]| RoleDefinition {
            data_actions: data.iter().map(|s| s.to_string()).collect(),
            ..RoleDefinition::default()
        };
        assert_eq!(plane_of(&role(&[])), AccessPlane::Arm);
        assert_eq!(
            plane_of(&role(&[
                "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/read"
            ])),
            AccessPlane::Blob
        );
        assert_eq!(
            plane_of(&role(&[
                "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/*"
            ])),
            AccessPlane::Blob
        );
        assert_eq!(
            plane_of(&role(&[
                "Microsoft.KeyVault/vaults/secrets/getSecret/action",
                "Microsoft.KeyVault/vaults/secrets/readMetadata/action"
            ])),
            AccessPlane::KeyVault
        );
        assert_eq!(
            plane_of(&role(&["Microsoft.KeyVault/vaults/*"])),
            AccessPlane::KeyVault
        );
        // Data actions of a plane the check does not read leave the check on ARM.
        assert_eq!(
            plane_of(&role(&[
                "Microsoft.Storage/storageAccounts/queueServices/queues/messages/read"
            ])),
            AccessPlane::Arm
        );
    }
}
