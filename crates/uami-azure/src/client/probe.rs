//! The agent's access check: `GET {scope}` with the identity's own token and the api-version
//! of the scope's provider, or, for a role whose permissions are data actions, the data plane
//! the role acts on: List Blobs on a container of a storage account, Get Secrets of a vault.

use secrecy::{ExposeSecret, SecretString};
use url::Url;

use crate::{ArmError, api_versions};

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

/// The audience of tokens for Azure Storage's data planes.
pub const STORAGE_AUDIENCE: &str = "https://storage.azure.com/";

/// The audience of tokens for Key Vault's data plane.
pub const KEY_VAULT_AUDIENCE: &str = "https://vault.azure.net";

/// The Blob service version the access check sends (`x-ms-version`, which a request with a
/// bearer token must carry; List Blobs:
/// <https://learn.microsoft.com/rest/api/storageservices/list-blobs>).
pub const BLOB_SERVICE_VERSION: &str = "2021-08-06";

/// The Key Vault data-plane api-version of Get Secrets
/// (<https://learn.microsoft.com/rest/api/keyvault/secrets/get-secrets/get-secrets>).
pub const KEY_VAULT_API_VERSION: &str = "7.4";

/// Where the data planes are: a URL template per service, `{account}` standing for the storage
/// account and `{vault}` for the vault. Azure's public cloud by default; an emulator or another
/// cloud is one template away, and the requests are the same.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataPlanes {
    /// Blob Storage, with `{account}`.
    pub blob: String,
    /// Key Vault, with `{vault}`.
    pub key_vault: String,
}

/// Blob Storage's endpoint in Azure's public cloud.
pub const PUBLIC_BLOB_ENDPOINT: &str = "https://{account}.blob.core.windows.net";

/// Key Vault's endpoint in Azure's public cloud.
pub const PUBLIC_KEY_VAULT_ENDPOINT: &str = "https://{vault}.vault.azure.net";

impl Default for DataPlanes {
    fn default() -> Self {
        Self {
            blob: PUBLIC_BLOB_ENDPOINT.into(),
            key_vault: PUBLIC_KEY_VAULT_ENDPOINT.into(),
        }
    }
}

/// What a data-plane check reads, from the granted scope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataRead {
    /// List Blobs on `container` of storage account `account`.
    Blobs { account: String, container: String },
    /// Get Secrets (the list) of vault `vault`.
    Secrets { vault: String },
}

/// The segments of `scope` after its last `providers`, as `(type path, names)`: for
/// `.../providers/Microsoft.Storage/storageAccounts/a/blobServices/default/containers/c`,
/// `Microsoft.Storage/storageAccounts/blobServices/containers` and `[a, default, c]`.
fn provider_path(scope: &str) -> Option<(String, Vec<&str>)> {
    let segments: Vec<&str> = scope.split('/').filter(|s| !s.is_empty()).collect();
    let i = segments
        .iter()
        .rposition(|s| s.eq_ignore_ascii_case("providers"))?;
    let rest = &segments[i + 1..];
    if rest.len() < 3 || rest.len().is_multiple_of(2) {
        return None;
    }
    let mut types = vec![rest[0]];
    types.extend(rest[1..].iter().step_by(2));
    Some((
        types.join("/"),
        rest[2..].iter().step_by(2).copied().collect(),
    ))
}

fn unsupported(message: String) -> ArmError {
    ArmError::local("AccessProbe", "UnsupportedScope", message)
}

/// The List Blobs of a Blob Storage data role granted at `scope`: the storage account the scope
/// names, and the container it names or else `container`.
pub fn blob_read(scope: &str, container: Option<&str>) -> Result<DataRead, ArmError> {
    let eq = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
    let named = provider_path(scope).and_then(|(t, names)| {
        if eq(&t, "Microsoft.Storage/storageAccounts") {
            Some((names[0].to_string(), None))
        } else if eq(
            &t,
            "Microsoft.Storage/storageAccounts/blobServices/containers",
        ) && eq(names[1], "default")
        {
            Some((names[0].to_string(), Some(names[2].to_string())))
        } else {
            None
        }
    });
    let Some((account, in_scope)) = named else {
        return Err(unsupported(format!(
            "the role acts on Blob Storage, whose access is checked on a storage account or a container of one; {scope} is neither, so the grant was made but its access cannot be verified (grant it on the account, or set verifyAccess: false)"
        )));
    };
    let Some(container) = in_scope.or_else(|| container.map(str::to_string)) else {
        return Err(unsupported(format!(
            "the role acts on Blob Storage: name the container whose blobs the check lists in verifyAccessOptions.blobContainer, or grant it on a container (.../blobServices/default/containers/<name>); {scope} names none"
        )));
    };
    Ok(DataRead::Blobs { account, container })
}

/// The Get Secrets of a Key Vault data role granted at `scope`: the vault the scope names.
pub fn secrets_read(scope: &str) -> Result<DataRead, ArmError> {
    match provider_path(scope) {
        Some((t, names)) if t.eq_ignore_ascii_case("Microsoft.KeyVault/vaults") => {
            Ok(DataRead::Secrets {
                vault: names[0].to_string(),
            })
        }
        _ => Err(unsupported(format!(
            "the role acts on Key Vault secrets, whose access is checked on a vault; {scope} is not one, so the grant was made but its access cannot be verified (grant it on the vault, or set verifyAccess: false)"
        ))),
    }
}

/// What an access check on `plane` reads at `scope`: nothing but the scope itself through ARM
/// (`None`), else the data-plane read of [`blob_read`] (with `container` when the scope names
/// none) or [`secrets_read`].
pub fn data_read(
    plane: uami_api::binding::AccessPlane,
    scope: &str,
    container: Option<&str>,
) -> Result<Option<DataRead>, ArmError> {
    use uami_api::binding::AccessPlane;
    match plane {
        AccessPlane::Arm => Ok(None),
        AccessPlane::Blob => blob_read(scope, container).map(Some),
        AccessPlane::KeyVault => secrets_read(scope).map(Some),
    }
}

/// A name put into a host or a path: letters, digits and hyphens only, 1 to 63 of them.
fn plain_name(name: &str) -> bool {
    (1..=63).contains(&name.len()) && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// One data-plane read: where, with a token for which audience, with which headers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataRequest {
    /// The URL read.
    pub url: Url,
    /// The audience of the token it needs.
    pub audience: &'static str,
    /// The headers it needs besides the token.
    pub headers: Vec<(&'static str, &'static str)>,
}

impl DataPlanes {
    /// The request that makes `read`.
    pub fn request(&self, read: &DataRead) -> Result<DataRequest, ArmError> {
        let fill = |template: &str, key: &str, name: &str| {
            if !plain_name(name) {
                return Err(unsupported(format!("{name:?} is not a resource name")));
            }
            Url::parse(&template.replace(key, &name.to_lowercase()))
                .map_err(|e| unsupported(format!("the data-plane endpoint {template}: {e}")))
        };
        match read {
            // https://learn.microsoft.com/rest/api/storageservices/list-blobs
            DataRead::Blobs { account, container } => {
                if !plain_name(container) {
                    return Err(unsupported(format!(
                        "{container:?} is not a container name"
                    )));
                }
                let mut url = fill(&self.blob, "{account}", account)?;
                let base = url.path().trim_end_matches('/').to_string();
                url.set_path(&format!("{base}/{}", container.to_lowercase()));
                url.query_pairs_mut()
                    .append_pair("restype", "container")
                    .append_pair("comp", "list")
                    .append_pair("maxresults", "1");
                Ok(DataRequest {
                    url,
                    audience: STORAGE_AUDIENCE,
                    headers: vec![("x-ms-version", BLOB_SERVICE_VERSION)],
                })
            }
            // https://learn.microsoft.com/rest/api/keyvault/secrets/get-secrets/get-secrets
            DataRead::Secrets { vault } => {
                let mut url = fill(&self.key_vault, "{vault}", vault)?;
                let base = url.path().trim_end_matches('/').to_string();
                url.set_path(&format!("{base}/secrets"));
                url.query_pairs_mut()
                    .append_pair("maxresults", "1")
                    .append_pair("api-version", KEY_VAULT_API_VERSION);
                Ok(DataRequest {
                    url,
                    audience: KEY_VAULT_AUDIENCE,
                    headers: Vec::new(),
                })
            }
        }
    }
}

/// A data-plane access check: `GET` of `request` with `token`, returning the HTTP status
/// (200 when the identity may read, 403 before its role assignment takes effect).
pub async fn probe_data_plane(
    http: &reqwest::Client,
    request: DataRequest,
    token: &SecretString,
) -> Result<u16, ArmError> {
    const OP: &str = "DataPlaneProbe";
    let mut req = http.get(request.url).bearer_auth(token.expose_secret());
    for (k, v) in &request.headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.map_err(|e| ArmError::transport(OP, &e))?;
    Ok(resp.status().as_u16())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_plane_reads_come_from_the_scope() {
        let rg = "/subscriptions/6a2bd3a4-59c6-4d4e-9e8b-5c5a2f0a1b2c/resourceGroups/DevTest";
        let account = format!("{rg}/providers/Microsoft.Storage/storageAccounts/devtestdata");
        assert_eq!(
            blob_read(&account, Some("reports")),
            Ok(DataRead::Blobs {
                account: "devtestdata".into(),
                container: "reports".into()
            })
        );
        assert_eq!(
            blob_read(
                &format!("{account}/blobServices/default/containers/logs"),
                None
            ),
            Ok(DataRead::Blobs {
                account: "devtestdata".into(),
                container: "logs".into()
            })
        );
        assert_eq!(
            blob_read(&account, None).unwrap_err().code(),
            "UnsupportedScope"
        );
        assert_eq!(
            blob_read(rg, Some("c")).unwrap_err().code(),
            "UnsupportedScope"
        );
        let vault = format!("{rg}/providers/Microsoft.KeyVault/vaults/devtest-kv");
        assert_eq!(
            secrets_read(&vault),
            Ok(DataRead::Secrets {
                vault: "devtest-kv".into()
            })
        );
        assert_eq!(
            secrets_read(&account).unwrap_err().code(),
            "UnsupportedScope"
        );
    }

    #[test]
    fn data_plane_requests_fill_the_templates() {
        let azure = DataPlanes::default();
        let DataRequest {
            url,
            audience,
            headers,
        } = azure
            .request(&DataRead::Blobs {
                account: "DevTestData".into(),
                container: "reports".into(),
            })
            .unwrap();
        assert_eq!(
            url.as_str(),
            "https://devtestdata.blob.core.windows.net/reports?restype=container&comp=list&maxresults=1"
        );
        assert_eq!(audience, STORAGE_AUDIENCE);
        assert_eq!(headers, [("x-ms-version", BLOB_SERVICE_VERSION)]);
        let DataRequest { url, audience, .. } = azure
            .request(&DataRead::Secrets {
                vault: "devtest-kv".into(),
            })
            .unwrap();
        assert_eq!(
            url.as_str(),
            "https://devtest-kv.vault.azure.net/secrets?maxresults=1&api-version=7.4"
        );
        assert_eq!(audience, KEY_VAULT_AUDIENCE);
        let local = DataPlanes {
            blob: "https://127.0.0.1:8443/_data/blob/{account}".into(),
            key_vault: "https://127.0.0.1:8443/_data/vault/{vault}".into(),
        };
        let url = local
            .request(&DataRead::Blobs {
                account: "a1".into(),
                container: "c1".into(),
            })
            .unwrap()
            .url;
        assert_eq!(
            url.as_str(),
            "https://127.0.0.1:8443/_data/blob/a1/c1?restype=container&comp=list&maxresults=1"
        );
        // A name never reaches a host unchecked.
        assert!(
            azure
                .request(&DataRead::Secrets {
                    vault: "evil.example.com/x".into()
                })
                .is_err()
        );
    }

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
