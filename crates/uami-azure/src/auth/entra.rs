//! Entra ID's client-credentials flows through the `azure_identity` crate: a client secret, and a
//! client assertion (a federated service account token). Each credential sends over the caller's
//! HTTP client, so the certificate authorities of `--azure-ca-file` apply, to the configured
//! authority host's v2 token endpoint. What comes back is turned into this module's
//! [`AccessToken`] and [`AuthError`]: Entra ID's error code and AADSTS number are kept, its
//! description (which may quote the request) is not.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use azure_core::cloud::{CloudConfiguration, CustomConfiguration};
use azure_core::credentials::{Secret, TokenCredential as AzureTokenCredential};
use azure_core::error::ErrorKind;
use azure_core::http::policies::{Policy, PolicyResult};
use azure_core::http::{
    ClientMethodOptions, ClientOptions, Context, HttpClient, Request, RetryOptions, Transport,
};
use azure_identity::{
    ClientAssertion, ClientAssertionCredential, ClientAssertionCredentialOptions,
    ClientSecretCredential, ClientSecretCredentialOptions,
};
use secrecy::{ExposeSecret, SecretString};
use url::Url;

use super::{AccessToken, AuthError, TokenCredential};

/// Options shared by every Entra ID credential: `authority_host` as a custom cloud, `http` as
/// the transport, refusals read by [`ReadRefusals`], and no retries of its own (a failed
/// exchange is retried by the reconcile or check that needed the token, with that caller's
/// backoff).
fn client_options(authority_host: &Url, http: Arc<dyn HttpClient>) -> ClientOptions {
    let mut cloud = CustomConfiguration::default();
    cloud.authority_host = authority_host.as_str().trim_end_matches('/').to_string();
    ClientOptions {
        cloud: Some(Arc::new(CloudConfiguration::Custom(cloud))),
        transport: Some(Transport::new(http)),
        retry: RetryOptions::none(),
        per_call_policies: vec![Arc::new(ReadRefusals)],
        ..ClientOptions::default()
    }
}

/// An `azure_identity` credential behind this module's [`TokenCredential`]. `azure_identity`
/// caches each scope's token until five minutes before it expires, and concurrent callers
/// share one refresh.
pub(crate) struct EntraCredential {
    inner: Arc<dyn AzureTokenCredential>,
}

impl fmt::Debug for EntraCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `azure_identity`'s own `Debug` names the client id and token endpoint, never the
        // secret or the assertion.
        f.debug_tuple("EntraCredential").field(&self.inner).finish()
    }
}

/// What an app registration signs in to Entra ID with.
pub(crate) enum ClientProof {
    /// Its client secret.
    Secret(SecretString),
    /// Workload identity: the federated token in this file is the client assertion.
    TokenFile(PathBuf),
    /// A service account token, exchanged once (a token check).
    Assertion(SecretString),
}

impl EntraCredential {
    /// App registration `client_id` of `tenant_id`, signing in with `proof`.
    pub(crate) fn new(
        authority_host: &Url,
        tenant_id: &str,
        client_id: String,
        proof: ClientProof,
        http: Arc<dyn HttpClient>,
    ) -> Result<Self, AuthError> {
        let client_options = client_options(authority_host, http);
        let inner: Arc<dyn AzureTokenCredential> = match proof {
            ClientProof::Secret(secret) => ClientSecretCredential::new(
                tenant_id,
                client_id,
                Secret::new(secret.expose_secret().to_string()),
                Some(ClientSecretCredentialOptions { client_options }),
            )
            .map_err(configuration_error)?,
            ClientProof::TokenFile(path) => {
                assertion_credential(tenant_id, client_id, TokenFile(path), client_options)?
            }
            ClientProof::Assertion(assertion) => assertion_credential(
                tenant_id,
                client_id,
                FixedAssertion(assertion),
                client_options,
            )?,
        };
        Ok(Self { inner })
    }
}

fn assertion_credential<C: ClientAssertion + 'static>(
    tenant_id: &str,
    client_id: String,
    assertion: C,
    client_options: ClientOptions,
) -> Result<Arc<dyn AzureTokenCredential>, AuthError> {
    let options = ClientAssertionCredentialOptions { client_options };
    let credential =
        ClientAssertionCredential::new(tenant_id.to_string(), client_id, assertion, Some(options))
            .map_err(configuration_error)?;
    Ok(credential)
}

#[async_trait]
impl TokenCredential for EntraCredential {
    async fn get_token(&self, scope: &str) -> Result<AccessToken, AuthError> {
        let token = self
            .inner
            .get_token(&[scope], None)
            .await
            .map_err(|e| token_error(&e))?;
        if token.token.secret().is_empty() {
            return Err(AuthError::InvalidResponse(
                "the token response has no access_token".into(),
            ));
        }
        let expires_on = jiff::Timestamp::from_second(token.expires_on.unix_timestamp())
            .map_err(|_| AuthError::InvalidResponse("the token's expiry is out of range".into()))?;
        Ok(AccessToken {
            token: SecretString::from(token.token.secret().to_string()),
            expires_on,
        })
    }
}

/// The projected service account token of workload identity, read again on every exchange.
///
/// `azure_identity`'s `WorkloadIdentityCredential` would read the file when built and then only
/// every ten minutes; kubelet rotates the projected token, and an exchange with a token read
/// before the rotation can be refused. Reading it on every call (each cache miss: a token is
/// asked for only when the cached one is near its expiry) always sends the current one.
struct TokenFile(PathBuf);

impl fmt::Debug for TokenFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TokenFile").field(&self.0).finish()
    }
}

#[async_trait]
impl ClientAssertion for TokenFile {
    async fn secret(&self, _: Option<ClientMethodOptions<'_>>) -> azure_core::Result<String> {
        match tokio::fs::read_to_string(&self.0).await {
            Ok(token) => Ok(token.trim().to_string()),
            Err(e) => Err(azure_core::Error::new(
                ErrorKind::Io,
                TokenFileError {
                    path: self.0.clone(),
                    reason: e.kind().to_string(),
                },
            )),
        }
    }
}

/// Why the federated token file could not be read; carried through `azure_identity`'s error to
/// become [`AuthError::TokenFile`].
#[derive(Debug, thiserror::Error)]
#[error("cannot read the federated token file {}: {reason}", path.display())]
struct TokenFileError {
    path: PathBuf,
    reason: String,
}

/// An assertion given once, such as a service account token of a TokenRequest.
struct FixedAssertion(SecretString);

impl fmt::Debug for FixedAssertion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FixedAssertion(<redacted>)")
    }
}

#[async_trait]
impl ClientAssertion for FixedAssertion {
    async fn secret(&self, _: Option<ClientMethodOptions<'_>>) -> azure_core::Result<String> {
        Ok(self.0.expose_secret().to_string())
    }
}

/// A credential `azure_identity` would not build: an authority host that is not `https`, a
/// tenant id with characters a tenant cannot have, an empty client id or secret. Its messages
/// name the setting, never the secret.
fn configuration_error(e: azure_core::Error) -> AuthError {
    AuthError::Configuration(e.to_string())
}

/// What went wrong in a token request, from `azure_identity`'s error: Entra ID's refusal (HTTP
/// status, OAuth error, AADSTS number), the token file, the connection, or a success answer that
/// is not a token. Never Entra ID's description, the request, or the response's body.
fn token_error(e: &azure_core::Error) -> AuthError {
    let mut transport = None;
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cause {
        if let Some(f) = err.downcast_ref::<TokenFileError>() {
            return AuthError::TokenFile {
                path: f.path.clone(),
                reason: f.reason.clone(),
            };
        }
        if let Some(r) = err.downcast_ref::<Refusal>() {
            return AuthError::Aad {
                status: r.status,
                error: r.error.clone(),
                aadsts: r.aadsts,
            };
        }
        if let Some(r) = err.downcast_ref::<reqwest::Error>() {
            return AuthError::Transport(describe_transport(r));
        }
        if let Some(a) = err.downcast_ref::<azure_core::Error>() {
            match a.kind() {
                ErrorKind::Connection | ErrorKind::Io => transport = Some("no connection"),
                ErrorKind::DataConversion => {
                    return AuthError::InvalidResponse("not a token response".into());
                }
                _ => {}
            }
        }
        cause = err.source();
    }
    AuthError::Transport(transport.unwrap_or("the token request failed").to_string())
}

/// Entra ID's refusal of a token request, read from its answer by [`ReadRefusals`]: the HTTP
/// status, the OAuth `error` and the first AADSTS number.
#[derive(Debug, thiserror::Error)]
#[error("Entra ID refused the token request (HTTP {status})")]
struct Refusal {
    status: u16,
    error: String,
    aadsts: Option<u32>,
}

impl Refusal {
    /// The refusal in `body`: `error`, and the AADSTS number of `error_codes` or, failing that,
    /// of the `AADSTSnnn:` that starts Entra ID's description.
    fn read(status: u16, body: &[u8]) -> Self {
        #[derive(serde::Deserialize, Default)]
        struct Body {
            #[serde(default)]
            error: String,
            #[serde(default)]
            error_codes: Vec<u32>,
            #[serde(default)]
            error_description: String,
        }
        let b: Body = serde_json::from_slice(body).unwrap_or_default();
        let aadsts = b.error_codes.first().copied().or_else(|| {
            let d = &b.error_description;
            let i = d.find("AADSTS")? + 6;
            d[i..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
                .parse()
                .ok()
        });
        Self {
            status,
            error: b.error,
            aadsts,
        }
    }
}

/// Turns every answer of the token endpoint that is not a success into a [`Refusal`] before
/// `azure_identity` reads it. `azure_identity` 1.0 reads `error_description` as a borrowed
/// string, which fails on every description Entra ID writes (they contain `\r\n`), so the
/// status and AADSTS number would be lost behind a JSON error; read here, they are kept, and
/// the description goes no further.
#[derive(Debug)]
struct ReadRefusals;

#[async_trait]
impl Policy for ReadRefusals {
    async fn send(
        &self,
        ctx: &Context,
        request: &mut Request,
        next: &[Arc<dyn Policy>],
    ) -> PolicyResult {
        let Some((first, rest)) = next.split_first() else {
            return Err(azure_core::Error::with_message(
                ErrorKind::Other,
                "no transport after the refusal reader",
            ));
        };
        let response = first.send(ctx, request, rest).await?;
        if response.status().is_success() {
            return Ok(response);
        }
        let (status, _, body) = response.deconstruct();
        let body = body.collect().await?;
        Err(azure_core::Error::new(
            ErrorKind::Other,
            Refusal::read(u16::from(status), &body),
        ))
    }
}

/// A failed send, named by its cause (a refused connection, an untrusted certificate, a timeout)
/// without the URL.
fn describe_transport(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "timed out".into();
    }
    let mut root: &(dyn std::error::Error + 'static) = e;
    while let Some(next) = root.source() {
        root = next;
    }
    let what = if e.is_connect() {
        "cannot connect"
    } else {
        "error sending request"
    };
    if std::ptr::addr_eq(root, e) {
        what.to_string()
    } else {
        format!("{what}: {root}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use azure_core::Bytes;
    use azure_core::http::headers::Headers;
    use azure_core::http::{AsyncRawResponse, StatusCode};
    use parking_lot::Mutex;

    const SECRET: &str = "s3cr3t-Value~that-must-not-leak";
    const ASSERTION: &str = "eyJhbGciOiJSUzI1NiJ9.assertion-body-not-to-leak.sig";
    const TOKEN: &str = "eyJ0eXAiOiJKV1QifQ.access-token-not-to-leak.sig";

    /// Entra ID as a transport: answers every request with `status` and `body`, and keeps the
    /// request bodies.
    #[derive(Debug)]
    struct Entra {
        status: u16,
        body: String,
        seen: Mutex<Vec<(String, String)>>,
    }

    impl Entra {
        fn new(status: u16, body: serde_json::Value) -> Arc<Self> {
            Arc::new(Self {
                status,
                body: body.to_string(),
                seen: Mutex::new(Vec::new()),
            })
        }
    }

    #[async_trait]
    impl HttpClient for Entra {
        async fn execute_request(&self, request: &Request) -> azure_core::Result<AsyncRawResponse> {
            let body = match request.body() {
                azure_core::http::Body::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
                _ => String::new(),
            };
            self.seen.lock().push((request.url().to_string(), body));
            Ok(AsyncRawResponse::from_bytes(
                StatusCode::from(self.status),
                Headers::default(),
                Bytes::from(self.body.clone()),
            ))
        }
    }

    /// Client `c` of tenant `t` signing in with `proof` at [`host`] through `http`.
    fn credential(proof: ClientProof, http: Arc<dyn HttpClient>) -> EntraCredential {
        EntraCredential::new(&host(), "t", "c".into(), proof, http).unwrap()
    }

    /// Client `c` of tenant `t` signing in with [`SECRET`] at `authority`, over reqwest.
    fn secret_credential_at(authority: &str) -> Result<EntraCredential, AuthError> {
        let http: Arc<dyn HttpClient> = Arc::new(reqwest::Client::new());
        let proof = ClientProof::Secret(SecretString::from(SECRET));
        EntraCredential::new(
            &Url::parse(authority).unwrap(),
            "t",
            "c".into(),
            proof,
            http,
        )
    }

    fn host() -> Url {
        Url::parse("https://login.example.test/").unwrap()
    }

    fn form(body: &str) -> std::collections::HashMap<String, String> {
        url::form_urlencoded::parse(body.as_bytes())
            .into_owned()
            .collect()
    }

    /// A refusal whose description quotes the request, as an echoing endpoint might.
    fn echoing_refusal() -> serde_json::Value {
        serde_json::json!({
            "error": "invalid_client",
            "error_description": format!("AADSTS7000215: Invalid client secret provided: {SECRET} {ASSERTION}\r\nTrace ID: 0f8fad5b-d9cb-469f-a165-70867728950e"),
            "error_codes": [7000215],
        })
    }

    #[tokio::test]
    async fn client_secret_posts_to_the_authority_and_returns_the_token() {
        let entra = Entra::new(
            200,
            serde_json::json!({"token_type": "Bearer", "expires_in": 3600, "access_token": TOKEN}),
        );
        let cred = EntraCredential::new(
            &host(),
            "tenant-1",
            "client-1".into(),
            ClientProof::Secret(SecretString::from(SECRET)),
            entra.clone(),
        )
        .unwrap();
        let t = cred
            .get_token("https://management.azure.com/.default")
            .await
            .unwrap();
        assert_eq!(t.token.expose_secret(), TOKEN);
        assert!(t.expires_on > jiff::Timestamp::now() + jiff::SignedDuration::from_secs(3500));
        // Cached: a second call does not ask again.
        cred.get_token("https://management.azure.com/.default")
            .await
            .unwrap();
        let seen = entra.seen.lock().clone();
        assert_eq!(seen.len(), 1);
        assert_eq!(
            seen[0].0,
            "https://login.example.test/tenant-1/oauth2/v2.0/token"
        );
        let f = form(&seen[0].1);
        assert_eq!(f["client_secret"], SECRET);
        assert_eq!(f["client_id"], "client-1");
        assert_eq!(f["grant_type"], "client_credentials");
        assert_eq!(f["scope"], "https://management.azure.com/.default");
    }

    #[tokio::test]
    async fn the_token_file_is_read_on_every_exchange() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "first\n").unwrap();
        // Tokens that live under the five-minute refresh margin are asked for on every call.
        let entra = Entra::new(
            200,
            serde_json::json!({"token_type": "Bearer", "expires_in": 60, "access_token": TOKEN}),
        );
        let cred = credential(ClientProof::TokenFile(file.clone()), entra.clone());
        cred.get_token("api://x/.default").await.unwrap();
        std::fs::write(&file, "second").unwrap();
        cred.get_token("api://x/.default").await.unwrap();
        let seen = entra.seen.lock().clone();
        let assertions: Vec<String> = seen
            .iter()
            .map(|(_, b)| form(b)["client_assertion"].clone())
            .collect();
        assert_eq!(assertions, ["first", "second"]);
        assert_eq!(
            form(&seen[0].1)["client_assertion_type"],
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
        );
        std::fs::remove_file(&file).unwrap();
        let e = cred.get_token("api://x/.default").await.unwrap_err();
        assert!(matches!(e, AuthError::TokenFile { .. }), "{e:?}");
        assert!(e.to_string().contains("not found"), "{e}");
    }

    #[tokio::test]
    async fn credentials_and_their_errors_never_show_secrets() {
        let entra = Entra::new(401, echoing_refusal());
        let secret = credential(
            ClientProof::Secret(SecretString::from(SECRET)),
            entra.clone(),
        );
        let assertion = credential(
            ClientProof::Assertion(SecretString::from(ASSERTION)),
            entra.clone(),
        );
        for cred in [secret, assertion] {
            let e = cred.get_token("api://x/.default").await.unwrap_err();
            assert_eq!(
                e.to_string(),
                "token request rejected by Entra ID: HTTP 401, error invalid_client, AADSTS7000215"
            );
            for s in [format!("{cred:?}"), format!("{e}"), format!("{e:?}")] {
                assert!(!s.contains("s3cr3t"), "{s}");
                assert!(!s.contains("assertion-body"), "{s}");
            }
        }
        // The refusal did reach the transport with the secret: it is the formatting that hides it.
        assert!(entra.seen.lock()[0].1.contains("s3cr3t"));
    }

    #[tokio::test]
    async fn refusals_without_codes_and_odd_answers() {
        let entra = Entra::new(400, serde_json::json!({"error": "invalid_request"}));
        let cred = credential(ClientProof::Assertion(SecretString::from("a")), entra);
        let e = cred.get_token("api://x/.default").await.unwrap_err();
        assert!(
            matches!(&e, AuthError::Aad { status: 400, error, aadsts: None } if error == "invalid_request"),
            "{e:?}"
        );
        let entra = Entra::new(200, serde_json::json!({"token_type": "Bearer"}));
        let cred = credential(ClientProof::Assertion(SecretString::from("a")), entra);
        let e = cred.get_token("api://x/.default").await.unwrap_err();
        assert!(matches!(e, AuthError::InvalidResponse(_)), "{e:?}");
    }

    #[tokio::test]
    async fn an_unreachable_endpoint_is_a_transport_error_without_secrets() {
        let cred = secret_credential_at("https://127.0.0.1:1/").unwrap();
        let e = cred.get_token("api://x/.default").await.unwrap_err();
        assert!(matches!(e, AuthError::Transport(_)), "{e:?}");
        assert!(
            e.to_string()
                .starts_with("token endpoint unreachable: cannot connect"),
            "{e}"
        );
        assert!(!format!("{e:?}{cred:?}").contains("s3cr3t"));
    }

    #[test]
    fn plain_http_authorities_are_refused_at_construction() {
        let e = secret_credential_at("http://127.0.0.1:8080/").unwrap_err();
        assert!(matches!(e, AuthError::Configuration(_)), "{e:?}");
        assert!(e.to_string().contains("HTTPS"), "{e}");
        assert!(!e.to_string().contains("s3cr3t"));
    }
}
