//! The Entra ID (AAD) v2 token endpoint: client credentials with a client secret or a federated
//! assertion, answering JWTs the emulator signs (HS256 with a key made at start). Failures answer
//! the AADSTS error shapes. The discovery documents MSAL reads first are in `aad_discovery.rs`.
//!
//! A federated assertion is validated as Entra ID does: it must be a JWT signed with an asymmetric
//! algorithm; its issuer, subject and audience must match a federated identity credential of the
//! client (a world service principal's `federatedCredentials`, or a user-assigned identity's
//! FICs), else AADSTS70021; the signature is checked against the issuer's keys, fetched from the
//! issuer (`{iss}/.well-known/openid-configuration`, then its `jwks_uri`); and it must be within
//! its validity time. Unsigned, symmetric or wrongly signed assertions are refused.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::tokens;
use super::{Exchange, Inner};

/// An Entra ID error body before it is stamped (see [`stamp`]): `error`, `error_description`
/// starting with the `AADSTS` number, `error_codes` and `error_uri`, as the token endpoint and
/// the discovery endpoints write them
/// (<https://learn.microsoft.com/entra/identity-platform/v2-oauth2-client-creds-grant-flow#error-response>,
/// <https://learn.microsoft.com/entra/identity-platform/reference-error-codes>).
pub(super) fn aad_error(
    status: StatusCode,
    error: &str,
    number: u32,
    description: &str,
) -> (StatusCode, Value) {
    (
        status,
        json!({
            "error": error,
            "error_description": format!("AADSTS{number}: {description}"),
            "error_codes": [number],
            "error_uri": format!("https://login.microsoftonline.com/error?code={number}"),
        }),
    )
}

/// Add what Entra ID adds to every error answer: `timestamp`, `trace_id` and `correlation_id`
/// (the caller's `client-request-id` when it sent one, as MSAL does), each also at the end of
/// `error_description`.
pub(super) fn stamp(body: &mut Value, headers: &HeaderMap) {
    let Some(obj) = body.as_object_mut() else {
        return;
    };
    let now = jiff::Timestamp::now()
        .strftime("%Y-%m-%d %H:%M:%SZ")
        .to_string();
    let trace = uuid::Uuid::new_v4().to_string();
    let correlation = headers
        .get("client-request-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| uuid::Uuid::parse_str(v).ok())
        .unwrap_or_else(uuid::Uuid::new_v4)
        .to_string();
    if let Some(Value::String(d)) = obj.get_mut("error_description") {
        d.push_str(&format!(
            "\r\nTrace ID: {trace}\r\nCorrelation ID: {correlation}\r\nTimestamp: {now}"
        ));
    }
    obj.insert("timestamp".into(), json!(now));
    obj.insert("trace_id".into(), json!(trace));
    obj.insert("correlation_id".into(), json!(correlation));
}

/// `POST /{tenant}/oauth2/v2.0/token`.
pub async fn token(
    State(inner): State<Arc<Inner>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let form: HashMap<String, String> = serde_urlencoded::from_bytes(&body).unwrap_or_default();
    let (status, mut resp) = exchange(&inner, &tenant, &form).await;
    if status != StatusCode::OK {
        stamp(&mut resp, &headers);
    }
    let mut recorded = resp.clone();
    if recorded.get("access_token").is_some() {
        recorded["access_token"] = json!("<redacted>");
    }
    let request: serde_json::Map<String, Value> = form
        .iter()
        .filter(|(k, _)| {
            matches!(
                k.as_str(),
                "grant_type" | "client_id" | "scope" | "client_assertion_type"
            )
        })
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    inner.count(Exchange {
        operation: "Aad_Token".into(),
        method: "POST".into(),
        path: format!("/{tenant}/oauth2/v2.0/token"),
        query: String::new(),
        status: status.as_u16(),
        request: Some(Value::Object(request)),
        response: Some(recorded),
        ..Exchange::default()
    });
    (status, axum::Json(resp)).into_response()
}

/// Who may sign in: a world service principal or a user-assigned identity.
struct Client {
    principal_id: String,
    client_id: String,
    secret: Option<String>,
    trusts: Vec<Trust>,
}

/// A federated identity credential as Entra ID matches it.
struct Trust {
    issuer: String,
    subject: String,
    audiences: Vec<String>,
}

fn find_client(inner: &Inner, client_id: &str) -> Option<Client> {
    if let Some(sp) = inner
        .world
        .service_principals
        .iter()
        .find(|s| s.client_id.eq_ignore_ascii_case(client_id))
    {
        return Some(Client {
            principal_id: sp.principal_id.clone(),
            client_id: sp.client_id.clone(),
            secret: sp.client_secret.clone(),
            trusts: sp
                .federated_credentials
                .iter()
                .map(|f| Trust {
                    issuer: f.issuer.clone(),
                    subject: f.subject.clone(),
                    audiences: vec![f.audience.clone()],
                })
                .collect(),
        });
    }
    let st = inner.state.lock();
    let (key, identity) = st.identity_by_client(client_id)?;
    let trusts = super::arm::fic::of(&st, key)
        .map(|m| {
            m.values()
                .map(|f| Trust {
                    issuer: f.issuer.clone(),
                    subject: f.subject.clone(),
                    audiences: f.audiences.clone(),
                })
                .collect()
        })
        .unwrap_or_default();
    Some(Client {
        principal_id: identity.principal_id.clone(),
        client_id: identity.client_id.clone(),
        secret: None,
        trusts,
    })
}

/// Signature algorithms Entra ID accepts on a federated assertion (asymmetric only).
const ASSERTION_ALGORITHMS: &[jsonwebtoken::Algorithm] = &[
    jsonwebtoken::Algorithm::RS256,
    jsonwebtoken::Algorithm::RS384,
    jsonwebtoken::Algorithm::RS512,
    jsonwebtoken::Algorithm::PS256,
    jsonwebtoken::Algorithm::PS384,
    jsonwebtoken::Algorithm::PS512,
    jsonwebtoken::Algorithm::ES256,
    jsonwebtoken::Algorithm::ES384,
];

/// The client Entra ID fetches issuers' discovery documents and keys with: the system's
/// certificate authorities and the world's `oidcIssuerCaPems`.
pub(crate) fn issuer_client(world: &super::World) -> Result<reqwest::Client, String> {
    let mut extra = Vec::new();
    for (i, pem) in world.oidc_issuer_ca_pems.iter().enumerate() {
        let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
            .map_err(|e| format!("oidcIssuerCaPems[{i}]: {e}"))?;
        if certs.is_empty() {
            return Err(format!(
                "oidcIssuerCaPems[{i}]: no PEM certificate (-----BEGIN CERTIFICATE-----)"
            ));
        }
        extra.extend(certs);
    }
    let mut builder = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(std::time::Duration::from_secs(10));
    if !extra.is_empty() {
        builder = builder.tls_certs_merge(extra);
    }
    builder
        .build()
        .map_err(|e| format!("the OIDC issuer client: {e}"))
}

/// The signing keys of `issuer`, from its OIDC discovery document.
async fn issuer_keys(
    http: &reqwest::Client,
    issuer: &str,
) -> Result<jsonwebtoken::jwk::JwkSet, String> {
    let base = issuer.trim_end_matches('/');
    let get = |url: String| async move {
        let r = http
            .get(&url)
            .send()
            .await
            .map_err(|e| format!("GET {url}: {}", e.without_url()))?;
        if !r.status().is_success() {
            return Err(format!("GET {url}: HTTP {}", r.status().as_u16()));
        }
        r.json::<Value>()
            .await
            .map_err(|_| format!("GET {url}: not JSON"))
    };
    let config = get(format!("{base}/.well-known/openid-configuration")).await?;
    let advertised = config["issuer"].as_str().unwrap_or_default();
    if advertised.trim_end_matches('/') != base {
        return Err(format!(
            "the discovery document names issuer '{advertised}', not '{issuer}'"
        ));
    }
    let jwks_uri = config["jwks_uri"]
        .as_str()
        .ok_or("the discovery document has no jwks_uri")?;
    let jwks = get(jwks_uri.to_string()).await?;
    serde_json::from_value(jwks).map_err(|_| "the JWKS is not a key set".to_string())
}

fn bad_signature() -> (StatusCode, Value) {
    aad_error(
        StatusCode::UNAUTHORIZED,
        "invalid_client",
        700027,
        "Client assertion failed signature validation.",
    )
}

/// Validate a federated `assertion` against the client's `trusts`, as Entra ID does.
async fn verify_assertion(
    http: &reqwest::Client,
    trusts: &[Trust],
    assertion: &str,
) -> Result<(), (StatusCode, Value)> {
    #[derive(serde::Deserialize)]
    struct Assertion {
        #[serde(default)]
        iss: String,
        #[serde(default)]
        sub: String,
        #[serde(default)]
        aud: Value,
    }
    let malformed = || {
        aad_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            50027,
            "JWT token is invalid or malformed.",
        )
    };
    // An unsigned token (`alg: none`) has no algorithm jsonwebtoken knows: malformed.
    let header = jsonwebtoken::decode_header(assertion).map_err(|_| malformed())?;
    if !ASSERTION_ALGORITHMS.contains(&header.alg) {
        return Err(bad_signature());
    }
    let a: Assertion =
        jsonwebtoken::dangerous::insecure_decode_claims(assertion).map_err(|_| malformed())?;
    let auds: Vec<String> = match &a.aud {
        Value::String(s) => vec![s.clone()],
        Value::Array(v) => v
            .iter()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    };
    let Some(trust) = trusts.iter().find(|f| {
        f.issuer == a.iss && f.subject == a.sub && f.audiences.iter().any(|x| auds.contains(x))
    }) else {
        return Err(aad_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            70021,
            &format!(
                "No matching federated identity record found for presented assertion. Assertion Issuer: '{}'. Assertion Subject: '{}'. Assertion Audience: '{}'.",
                a.iss,
                a.sub,
                auds.join(",")
            ),
        ));
    };
    let keys = issuer_keys(http, &trust.issuer).await.map_err(|reason| {
        aad_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            50166,
            &format!("Request to External OIDC endpoint failed: {reason}"),
        )
    })?;
    let jwk = match header.kid.as_deref() {
        Some(kid) => keys.find(kid),
        None => keys.keys.first(),
    }
    .ok_or_else(bad_signature)?;
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).map_err(|_| bad_signature())?;
    let mut v = jsonwebtoken::Validation::new(header.alg);
    v.leeway = 0;
    v.validate_nbf = true;
    v.set_audience(&trust.audiences);
    v.set_issuer(&[trust.issuer.as_str()]);
    v.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
    match jsonwebtoken::decode::<Value>(assertion, &key, &v) {
        Ok(_) => Ok(()),
        Err(e)
            if matches!(
                e.kind(),
                jsonwebtoken::errors::ErrorKind::ExpiredSignature
                    | jsonwebtoken::errors::ErrorKind::ImmatureSignature
            ) =>
        {
            Err(aad_error(
                StatusCode::BAD_REQUEST,
                "invalid_client",
                700024,
                "Client assertion is not within its valid time range.",
            ))
        }
        Err(_) => Err(bad_signature()),
    }
}

async fn exchange(
    inner: &Inner,
    tenant: &str,
    form: &HashMap<String, String>,
) -> (StatusCode, Value) {
    let get = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
    if !tenant.eq_ignore_ascii_case(&inner.world.tenant_id) {
        return aad_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            90002,
            &format!(
                "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud. Check with your subscription administrator, this may happen if there are no active subscriptions for the tenant."
            ),
        );
    }
    if get("grant_type") != "client_credentials" {
        return aad_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            70003,
            "The app requested an unsupported grant type.",
        );
    }
    let scope = get("scope");
    let Some(resource) = scope.strip_suffix("/.default") else {
        return aad_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            1002012,
            &format!(
                "The provided value for scope {scope} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI)."
            ),
        );
    };
    let client_id = get("client_id");
    let Some(sp) = find_client(inner, client_id) else {
        return aad_error(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            700016,
            &format!(
                "Application with identifier '{client_id}' was not found in the directory '{tenant}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant."
            ),
        );
    };
    if let Some(secret) = form.get("client_secret") {
        if sp.secret.as_deref() != Some(secret.as_str()) {
            return aad_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                7000215,
                &format!(
                    "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{}'.",
                    sp.client_id
                ),
            );
        }
    } else if let Some(assertion) = form.get("client_assertion") {
        if get("client_assertion_type") != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
        {
            return aad_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                50027,
                "Invalid client_assertion_type.",
            );
        }
        if let Err(refusal) = verify_assertion(&inner.http, &sp.trusts, assertion).await {
            return refusal;
        }
    } else {
        return aad_error(
            StatusCode::BAD_REQUEST,
            "invalid_client",
            7000218,
            "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
        );
    }
    let token = tokens::issue(
        inner,
        &sp.principal_id,
        &sp.client_id,
        &format!("{resource}/"),
    );
    let lifetime = inner.world.token_lifetime_seconds;
    (
        StatusCode::OK,
        json!({"token_type": "Bearer", "expires_in": lifetime, "ext_expires_in": lifetime, "access_token": token}),
    )
}
