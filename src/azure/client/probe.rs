//! The agent's access check: `GET {scope}` with the identity's own token and the api-version
//! of the scope's provider.

use secrecy::{ExposeSecret, SecretString};
use url::Url;

use crate::azure::{ArmError, api_versions};

/// The resource types whose api-version the access check knows, as `(namespace/type,
/// api-version)`. ARM refuses a GET whose api-version its provider does not serve, so every
/// provider needs its own.
pub const ACCESS_CHECK_PROVIDERS: &[(&str, &str)] = &[
    ("Microsoft.Storage/storageAccounts", api_versions::STORAGE),
    ("Microsoft.KeyVault/vaults", api_versions::KEY_VAULT),
    (
        "Microsoft.ManagedIdentity/userAssignedIdentities",
        api_versions::MANAGED_IDENTITY,
    ),
    ("Microsoft.Compute/virtualMachines", api_versions::COMPUTE),
    (
        "Microsoft.Compute/virtualMachineScaleSets",
        api_versions::COMPUTE,
    ),
];

/// The api-version to read `scope` with: subscriptions, resource groups and the resource types
/// of [`ACCESS_CHECK_PROVIDERS`]. Anything else is refused with code `UnsupportedScope` and a
/// message naming the resource type.
pub fn access_check_api_version(scope: &str) -> Result<&'static str, ArmError> {
    const OP: &str = "AccessProbe";
    let segments: Vec<&str> = scope.split('/').filter(|s| !s.is_empty()).collect();
    let eq = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
    match segments.as_slice() {
        [s, _] if eq(s, "subscriptions") => return Ok(api_versions::SUBSCRIPTIONS),
        [s, _, r, _] if eq(s, "subscriptions") && eq(r, "resourceGroups") => {
            return Ok(api_versions::RESOURCES);
        }
        _ => {}
    }
    // The resource type is the namespace after the last `providers` and the type segments
    // (every other segment after it: `type/name[/childType/childName]`).
    let resource_type = segments
        .iter()
        .rposition(|s| eq(s, "providers"))
        .filter(|i| segments.len() > i + 3)
        .map(|i| {
            let rest = &segments[i + 1..];
            let mut parts = vec![rest[0]];
            parts.extend(rest[1..].iter().step_by(2));
            parts.join("/")
        });
    if let Some(t) = &resource_type
        && let Some((_, version)) = ACCESS_CHECK_PROVIDERS.iter().find(|(k, _)| eq(k, t))
    {
        return Ok(version);
    }
    let known: Vec<&str> = ACCESS_CHECK_PROVIDERS.iter().map(|(k, _)| *k).collect();
    Err(ArmError::local(
        OP,
        "UnsupportedScope",
        format!(
            "access checks read subscriptions, resource groups and {}; {} is not one of them, so the grant was made but its access cannot be verified (set verifyAccess: false for this scope)",
            known.join(", "),
            resource_type
                .map(|t| format!("resource type {t}"))
                .unwrap_or_else(|| "this scope".into()),
        ),
    ))
}

/// The agent's access check: `GET {scope}` with `token` and the api-version of the scope's
/// provider, returning the HTTP status (200 when the identity may read the scope, 403 before
/// the grant takes effect).
pub async fn probe_access(
    http: &reqwest::Client,
    arm_endpoint: &Url,
    scope: &str,
    token: &SecretString,
) -> Result<u16, ArmError> {
    const OP: &str = "AccessProbe";
    let api_version = access_check_api_version(scope)?;
    let mut url = arm_endpoint.clone();
    let base = url.path().trim_end_matches('/').to_string();
    url.set_path(&format!("{base}/{}", scope.trim_matches('/')));
    url.query_pairs_mut()
        .append_pair("api-version", api_version);
    let resp = http
        .get(url)
        .bearer_auth(token.expose_secret())
        .send()
        .await
        .map_err(|e| ArmError::transport(OP, &e))?;
    Ok(resp.status().as_u16())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_checks_use_the_providers_api_version() {
        let sub = "/subscriptions/6a2bd3a4-59c6-4d4e-9e8b-5c5a2f0a1b2c";
        let rg = format!("{sub}/resourceGroups/DevTest");
        assert_eq!(
            access_check_api_version(sub),
            Ok(api_versions::SUBSCRIPTIONS)
        );
        assert_eq!(access_check_api_version(&rg), Ok(api_versions::RESOURCES));
        assert_eq!(
            access_check_api_version(&format!(
                "{rg}/providers/microsoft.storage/storageaccounts/devtestdata"
            )),
            Ok(api_versions::STORAGE)
        );
        assert_eq!(
            access_check_api_version(&format!("{rg}/providers/Microsoft.KeyVault/vaults/kv1")),
            Ok(api_versions::KEY_VAULT)
        );
        let e = access_check_api_version(&format!(
            "{rg}/providers/Microsoft.Network/virtualNetworks/vnet1"
        ))
        .unwrap_err();
        assert_eq!(e.code(), "UnsupportedScope");
        assert!(
            e.message.contains("Microsoft.Network/virtualNetworks"),
            "{e}"
        );
        let child = access_check_api_version(&format!(
            "{rg}/providers/Microsoft.Storage/storageAccounts/a/blobServices/default"
        ))
        .unwrap_err();
        assert!(
            child
                .message
                .contains("Microsoft.Storage/storageAccounts/blobServices"),
            "{child}"
        );
    }
}
