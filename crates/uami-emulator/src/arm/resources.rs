//! Other resources of the world that callers read: storage accounts and key vaults (GET only),
//! so access checks on their scopes answer as ARM would.

use axum::http::StatusCode;
use serde_json::{Value, json};

use super::arm_err;
use super::versions::{self, ApiVersions};
use crate::Inner;

/// Resource types served here: (namespace/type, operation id, accepted api-versions).
pub(super) const TYPES: &[(&str, &str, &ApiVersions)] = &[
    (
        "Microsoft.Storage/storageAccounts",
        "StorageAccounts_GetProperties",
        &versions::STORAGE_ACCOUNTS,
    ),
    (
        "Microsoft.KeyVault/vaults",
        "Vaults_Get",
        &versions::KEY_VAULTS,
    ),
];

/// The served type `namespace/type` names, if any.
pub(super) fn served(
    namespace: &str,
    type_: &str,
) -> Option<&'static (&'static str, &'static str, &'static ApiVersions)> {
    let t = format!("{namespace}/{type_}");
    TYPES.iter().find(|(k, _, _)| k.eq_ignore_ascii_case(&t))
}

/// The entry of a served type (`namespace/type` as in [`TYPES`]).
pub(super) fn by_type(type_: &str) -> (&'static str, &'static str, &'static ApiVersions) {
    TYPES
        .iter()
        .find(|(k, _, _)| *k == type_)
        .copied()
        .unwrap_or(("", "Unknown", &versions::STORAGE_ACCOUNTS))
}

/// GET of a storage account or key vault declared in the world.
pub(super) fn get(
    inner: &Inner,
    sub: &str,
    rg: &str,
    type_: &str,
    name: &str,
) -> (StatusCode, Value) {
    let eq = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
    let found = inner
        .world
        .subscriptions
        .iter()
        .filter(|s| eq(&s.id, sub))
        .flat_map(|s| s.resource_groups.iter().map(move |r| (s, r)))
        .find(|(_, r)| eq(&r.name, rg))
        .and_then(|(s, r)| {
            let names = if eq(type_, "Microsoft.Storage/storageAccounts") {
                &r.storage_accounts
            } else {
                &r.key_vaults
            };
            names
                .iter()
                .find(|n| eq(n, name))
                .map(|n| (s.id.clone(), r.name.clone(), r.location.clone(), n.clone()))
        });
    let Some((sub, rg, location, name)) = found else {
        return arm_err(
            StatusCode::NOT_FOUND,
            "ResourceNotFound",
            &format!(
                "The Resource '{type_}/{name}' under resource group '{rg}' was not found. For more details please go to https://aka.ms/ARMResourceNotFoundFix"
            ),
        );
    };
    let id = format!("/subscriptions/{sub}/resourceGroups/{rg}/providers/{type_}/{name}");
    let body = if eq(type_, "Microsoft.Storage/storageAccounts") {
        json!({
            "id": id, "name": name, "type": "Microsoft.Storage/storageAccounts", "location": location,
            "kind": "StorageV2", "sku": {"name": "Standard_LRS", "tier": "Standard"},
            "properties": {"provisioningState": "Succeeded", "primaryEndpoints": {"blob": format!("https://{name}.blob.core.windows.net/")}},
        })
    } else {
        json!({
            "id": id, "name": name, "type": "Microsoft.KeyVault/vaults", "location": location,
            "properties": {"tenantId": inner.world.tenant_id, "sku": {"family": "A", "name": "standard"},
                "vaultUri": format!("https://{name}.vault.azure.net/"), "enableRbacAuthorization": true},
        })
    };
    (StatusCode::OK, body)
}
