//! Token credentials for the controller, and the IMDS client the agent (and the managed-identity
//! credential) use.
//!
//! The controller signs in to ARM in one of three modes chosen by configuration: a client secret,
//! workload identity (a federated token file exchanged at Entra ID, re-read on every exchange
//! because kubelet rotates it), or the managed identity of its node through IMDS. Every endpoint is
//! configurable, so the same code talks to Azure or to the emulator. Tokens are cached per scope
//! and never appear in `Debug`, `Display`, logs or error text.
//!
//! What the `azure_identity` crate (1.0) does here, in `entra.rs`:
//! - client secret: `ClientSecretCredential`;
//! - workload identity: `ClientAssertionCredential` with an assertion that reads the token file
//!   on each call (`WorkloadIdentityCredential` reads it when built and then only every ten
//!   minutes);
//! - the token check's exchange of a service account token (`exchange.rs`): one
//!   `ClientAssertionCredential` per exchange, the service account token its assertion.
//!
//! Each is given the authority host as a custom cloud (`https` only, so the controller cannot
//! sign in to an emulator started with `--plain-http`), and the caller's HTTP client
//! (`http::http_client`, which trusts the system's roots and the certificate
//! authorities of `--azure-ca-file`) as its transport; `azure_identity` caches their tokens
//! until five minutes before expiry. Entra ID's refusals are read by a pipeline policy before
//! `azure_identity` parses them: it reads `error_description` as a borrowed string, which fails
//! on the `\r\n` every Entra ID description contains, and the status and AADSTS number would be
//! lost.
//!
//! Managed identity stays written here (`ImdsClient`, shared with the agent, cached by
//! [`CachingCredential`]): `azure_identity`'s `VirtualMachineManagedIdentityCredential` sends to
//! the constant `http://169.254.169.254/metadata/identity/oauth2/token` with no way to name
//! another endpoint (`IMDS_ENDPOINT` selects the Azure Arc flow), so neither `--imds-endpoint` nor
//! the emulator's per-VM IMDS can be used; it caches with no way to bypass the cache; it drops the
//! response's `client_id` and `resource`, which the agent reports; it requires `expires_on` as a
//! string; it has no per-VM rate or concurrency limits; and it replaces the retry options it is
//! given with its own.

mod entra;
pub mod exchange;
pub mod imds;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Mutex as AsyncMutex;
use url::Url;

pub use imds::{
    IdentitySelector, ImdsClient, ImdsError, ImdsRetryPolicy, ImdsToken, InstanceCompute,
};

/// A source of bearer tokens for a scope such as `https://management.azure.com/.default`.
#[async_trait]
pub trait TokenCredential: Send + Sync {
    /// A token valid for `scope`.
    async fn get_token(&self, scope: &str) -> Result<AccessToken, AuthError>;
}

/// A bearer token and its expiry. `Debug` and `Display` never show the token.
#[derive(Clone)]
pub struct AccessToken {
    /// The token; read it with `ExposeSecret` only to build a request header.
    pub token: SecretString,
    /// When it expires.
    pub expires_on: jiff::Timestamp,
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessToken")
            .field("token", &"<redacted>")
            .field("expires_on", &self.expires_on)
            .finish()
    }
}

impl fmt::Display for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "access token <redacted> expiring at {}", self.expires_on)
    }
}

/// Why no token could be obtained. Never carries a secret, an assertion or a token.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Entra ID refused the exchange.
    #[error("token request rejected by Entra ID: HTTP {status}, error {error}{}", aadsts.map(|n| format!(", AADSTS{n}")).unwrap_or_default())]
    Aad {
        /// HTTP status.
        status: u16,
        /// OAuth error code, such as `invalid_client`.
        error: String,
        /// The AADSTS number, when given.
        aadsts: Option<u32>,
    },
    /// Entra ID could not be reached.
    #[error("token endpoint unreachable: {0}")]
    Transport(String),
    /// The federated token file could not be read.
    #[error("cannot read the federated token file {path}: {reason}")]
    TokenFile {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The response was not a token response.
    #[error("invalid token response: {0}")]
    InvalidResponse(String),
    /// The credential's settings were refused before any request (an authority host that is
    /// not `https`, an empty client id or secret, a malformed tenant id).
    #[error("invalid credential settings: {0}")]
    Configuration(String),
    /// IMDS failed.
    #[error("managed identity: {0}")]
    Imds(#[from] ImdsError),
}

/// Which credential the controller uses, with its endpoints.
#[derive(Clone)]
pub enum CredentialConfig {
    /// An app registration's client secret.
    ClientSecret {
        /// Authority host, such as `https://login.microsoftonline.com/`.
        authority_host: Url,
        /// Tenant id.
        tenant_id: String,
        /// Application (client) id.
        client_id: String,
        /// The secret.
        client_secret: SecretString,
    },
    /// Workload identity: a federated service account token exchanged at Entra ID.
    WorkloadIdentity {
        /// Authority host (`AZURE_AUTHORITY_HOST`).
        authority_host: Url,
        /// Tenant id (`AZURE_TENANT_ID`).
        tenant_id: String,
        /// Client id (`AZURE_CLIENT_ID`).
        client_id: String,
        /// The projected token (`AZURE_FEDERATED_TOKEN_FILE`), read on every exchange.
        token_file: PathBuf,
    },
    /// The managed identity of the machine, through IMDS.
    ManagedIdentity {
        /// IMDS base URL.
        imds_endpoint: Url,
        /// Which identity; `System` for the system-assigned one.
        selector: IdentitySelector,
    },
}

impl fmt::Debug for CredentialConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CredentialConfig::ClientSecret {
                tenant_id,
                client_id,
                ..
            } => f
                .debug_struct("ClientSecret")
                .field("tenant_id", tenant_id)
                .field("client_id", client_id)
                .field("client_secret", &"<redacted>")
                .finish(),
            CredentialConfig::WorkloadIdentity {
                tenant_id,
                client_id,
                token_file,
                ..
            } => f
                .debug_struct("WorkloadIdentity")
                .field("tenant_id", tenant_id)
                .field("client_id", client_id)
                .field("token_file", token_file)
                .finish(),
            CredentialConfig::ManagedIdentity {
                imds_endpoint,
                selector,
            } => f
                .debug_struct("ManagedIdentity")
                .field("imds_endpoint", &imds_endpoint.as_str())
                .field("selector", selector)
                .finish(),
        }
    }
}

/// Build the configured credential. Entra ID's (client secret, workload identity) are
/// `azure_identity`'s, which cache each scope's token until five minutes before it expires; the
/// managed identity's is cached here until `refresh_margin` before expiry. A configuration
/// `azure_identity` refuses (an authority host that is not `https`, say) is logged and gives a
/// credential whose every request fails with that reason.
pub fn build_credential(
    config: CredentialConfig,
    http: reqwest::Client,
    refresh_margin: Duration,
) -> Arc<dyn TokenCredential> {
    let (host, tenant, client, proof) = match config {
        CredentialConfig::ClientSecret {
            authority_host: host,
            tenant_id: tenant,
            client_id: client,
            client_secret,
        } => (
            host,
            tenant,
            client,
            entra::ClientProof::Secret(client_secret),
        ),
        CredentialConfig::WorkloadIdentity {
            authority_host: host,
            tenant_id: tenant,
            client_id: client,
            token_file,
        } => (
            host,
            tenant,
            client,
            entra::ClientProof::TokenFile(token_file),
        ),
        CredentialConfig::ManagedIdentity {
            imds_endpoint,
            selector,
        } => {
            let inner = Arc::new(ManagedIdentityCredential {
                imds: ImdsClient::new(http, imds_endpoint, ImdsRetryPolicy::default()),
                selector,
            });
            return Arc::new(CachingCredential::new(inner, refresh_margin));
        }
    };
    match entra::EntraCredential::new(&host, &tenant, client, proof, Arc::new(http)) {
        Ok(credential) => Arc::new(credential),
        Err(e) => {
            tracing::error!(error = %e, "the Entra ID credential cannot be used");
            let reason = match e {
                AuthError::Configuration(reason) => reason,
                other => other.to_string(),
            };
            Arc::new(Unusable(reason))
        }
    }
}

/// A credential whose configuration was refused; every request fails with the reason.
struct Unusable(String);

#[async_trait]
impl TokenCredential for Unusable {
    async fn get_token(&self, _: &str) -> Result<AccessToken, AuthError> {
        Err(AuthError::Configuration(self.0.clone()))
    }
}

/// The managed identity of this machine, through IMDS.
pub struct ManagedIdentityCredential {
    imds: ImdsClient,
    selector: IdentitySelector,
}

#[async_trait]
impl TokenCredential for ManagedIdentityCredential {
    async fn get_token(&self, scope: &str) -> Result<AccessToken, AuthError> {
        let resource = scope_to_resource(scope);
        let t = self.imds.token(&resource, &self.selector).await?;
        Ok(AccessToken {
            token: t.access_token,
            expires_on: t.expires_on,
        })
    }
}

/// Caches tokens per scope until `margin` before expiry; concurrent callers share one refresh.
pub struct CachingCredential {
    inner: Arc<dyn TokenCredential>,
    margin: Duration,
    cache: AsyncMutex<std::collections::HashMap<String, AccessToken>>,
}

impl CachingCredential {
    /// Wrap `inner`.
    pub fn new(inner: Arc<dyn TokenCredential>, margin: Duration) -> Self {
        Self {
            inner,
            margin,
            cache: AsyncMutex::new(std::collections::HashMap::new()),
        }
    }
}

#[async_trait]
impl TokenCredential for CachingCredential {
    async fn get_token(&self, scope: &str) -> Result<AccessToken, AuthError> {
        // Holding the lock across the fetch coalesces concurrent refreshes into one exchange.
        let mut cache = self.cache.lock().await;
        let now = jiff::Timestamp::now();
        if let Some(t) = cache.get(scope) {
            let margin = jiff::SignedDuration::from_secs(self.margin.as_secs() as i64);
            if t.expires_on - margin > now {
                return Ok(t.clone());
            }
        }
        let fresh = self.inner.get_token(scope).await?;
        cache.insert(scope.to_string(), fresh.clone());
        Ok(fresh)
    }
}

/// `https://management.azure.com/.default` -> `https://management.azure.com/` (IMDS's resource).
pub fn scope_to_resource(scope: &str) -> String {
    match scope.strip_suffix("/.default") {
        Some(base) => format!("{base}/"),
        None => scope.to_string(),
    }
}

/// Claims of a JWT that status may show, decoded without verifying the signature (the token was
/// just received from IMDS or Entra ID over the channel that authenticates them).
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(default)]
pub struct JwtClaims {
    /// Tenant.
    pub tid: Option<String>,
    /// Object id of the principal.
    pub oid: Option<String>,
    /// Audience.
    pub aud: Option<String>,
    /// Application id.
    pub appid: Option<String>,
    /// Expiry (epoch seconds).
    pub exp: Option<i64>,
    /// Not before (epoch seconds).
    pub nbf: Option<i64>,
}

/// Decode the claims of `token` without verifying it; `None` if it is not a JWT.
pub fn decode_claims(token: &SecretString) -> Option<JwtClaims> {
    jsonwebtoken::dangerous::insecure_decode::<JwtClaims>(token.expose_secret())
        .ok()
        .map(|d| d.claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_and_config_never_show_secrets() {
        let t = AccessToken {
            token: SecretString::from("eyJhbGciOi.secret-part.sig"),
            expires_on: jiff::Timestamp::UNIX_EPOCH,
        };
        for s in [format!("{t:?}"), format!("{t}")] {
            assert!(!s.contains("secret-part"), "{s}");
        }
        let c = CredentialConfig::ClientSecret {
            authority_host: Url::parse("https://login.microsoftonline.com/").unwrap(),
            tenant_id: "t".into(),
            client_id: "c".into(),
            client_secret: SecretString::from("very-secret-value"),
        };
        assert!(!format!("{c:?}").contains("very-secret-value"));
    }

    #[test]
    fn scopes_map_to_resources() {
        assert_eq!(
            scope_to_resource("https://management.azure.com/.default"),
            "https://management.azure.com/"
        );
        assert_eq!(
            scope_to_resource("https://vault.azure.net"),
            "https://vault.azure.net"
        );
    }

    #[test]
    fn aad_error_names_code_and_number_only() {
        let e = AuthError::Aad {
            status: 400,
            error: "invalid_request".into(),
            aadsts: Some(70021),
        };
        assert_eq!(
            e.to_string(),
            "token request rejected by Entra ID: HTTP 400, error invalid_request, AADSTS70021"
        );
    }
}
