//! Entra ID's discovery endpoints, which MSAL-based credentials read before their first token
//! request:
//! - the OpenID configuration of a tenant, v2.0 (`/{tenant}/v2.0/.well-known/openid-configuration`)
//!   and v1 (`/{tenant}/.well-known/openid-configuration`), with the fields Entra ID publishes
//!   (<https://learn.microsoft.com/entra/identity-platform/v2-protocols-oidc#find-your-apps-openid-configuration-document-uri>);
//! - instance discovery (`/common/discovery/instance?api-version=1.1&authorization_endpoint=...`),
//!   which names the tenant's configuration document and the host's aliases
//!   (<https://learn.microsoft.com/entra/msal/dotnet/advanced/custom-authority-aliases>);
//! - the signing keys (`jwks_uri`). The emulator signs access tokens with a symmetric key that
//!   only it holds (clients of Azure never validate access tokens for ARM), so the key set is
//!   empty.
//!
//! URLs in the answers use the host the caller named (`Host`), so a client that called
//! `localhost` is told `localhost`. An unknown tenant answers AADSTS90002 as Entra ID does.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::aad::{aad_error, stamp};
use super::{Exchange, Inner};

/// Tenants that name no directory: their documents carry `{tenantid}` where the issuer's tenant
/// goes, as Entra ID's do.
const MULTI_TENANT: [&str; 3] = ["common", "organizations", "consumers"];

/// `https://{host}` as the caller named the emulator (or its ARM base when it sent no `Host`).
fn origin(inner: &Inner, headers: &HeaderMap) -> String {
    let scheme = if inner.world.plain_http {
        "http"
    } else {
        "https"
    };
    match headers.get("host").and_then(|h| h.to_str().ok()) {
        Some(host) => format!("{scheme}://{host}"),
        None => inner.arm_base.lock().trim_end_matches('/').to_string(),
    }
}

/// The tenant as the documents name it, or Entra ID's AADSTS90002 refusal.
fn known_tenant(inner: &Inner, tenant: &str) -> Result<String, (StatusCode, Value)> {
    if MULTI_TENANT.iter().any(|t| t.eq_ignore_ascii_case(tenant)) {
        Ok("{tenantid}".to_string())
    } else if tenant.eq_ignore_ascii_case(&inner.world.tenant_id) {
        Ok(inner.world.tenant_id.clone())
    } else {
        Err(aad_error(
            StatusCode::BAD_REQUEST,
            "invalid_tenant",
            90002,
            &format!(
                "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud. Check with your subscription administrator, this may happen if there are no active subscriptions for the tenant."
            ),
        ))
    }
}

/// The v2.0 OpenID configuration of `tenant` (named `path_tenant` in the request) at `base`.
fn v2_config(base: &str, path_tenant: &str, tid: &str) -> Value {
    let at = |path: &str| format!("{base}/{path_tenant}/{path}");
    let document = json!({
        "token_endpoint": at("oauth2/v2.0/token"),
        "jwks_uri": at("discovery/v2.0/keys"),
        "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "issuer": format!("{base}/{tid}/v2.0"),
        "request_uri_parameter_supported": false,
        "userinfo_endpoint": "https://graph.microsoft.com/oidc/userinfo",
        "authorization_endpoint": at("oauth2/v2.0/authorize"),
        "device_authorization_endpoint": at("oauth2/v2.0/devicecode"),
        "end_session_endpoint": at("oauth2/v2.0/logout"),
        "claims_supported": ["sub", "iss", "cloud_instance_name", "cloud_instance_host_name", "cloud_graph_host_name", "msgraph_host", "aud", "exp", "iat", "auth_time", "acr", "nonce", "preferred_username", "name", "tid", "ver", "at_hash", "c_hash", "email"],
    });
    with_common(document, base, path_tenant, tid)
}

/// The v1 OpenID configuration of `tenant` at `base`.
fn v1_config(base: &str, path_tenant: &str, tid: &str) -> Value {
    let at = |path: &str| format!("{base}/{path_tenant}/{path}");
    let document = json!({
        "token_endpoint": at("oauth2/token"),
        "jwks_uri": format!("{base}/common/discovery/keys"),
        "response_types_supported": ["code", "id_token", "code id_token", "token id_token", "token"],
        "scopes_supported": ["openid"],
        "issuer": format!("https://sts.windows.net/{tid}/"),
        "microsoft_multi_refresh_token": true,
        "authorization_endpoint": at("oauth2/authorize"),
        "device_authorization_endpoint": at("oauth2/devicecode"),
        "end_session_endpoint": at("oauth2/logout"),
        "claims_supported": ["sub", "iss", "cloud_instance_name", "cloud_instance_host_name", "cloud_graph_host_name", "msgraph_host", "aud", "exp", "iat", "auth_time", "acr", "amr", "nonce", "email", "given_name", "family_name", "nickname"],
        "check_session_iframe": at("oauth2/checksession"),
        "userinfo_endpoint": at("openid/userinfo"),
    });
    with_common(document, base, path_tenant, tid)
}

/// `document` with the fields both versions' configurations have.
fn with_common(mut document: Value, base: &str, path_tenant: &str, tid: &str) -> Value {
    let common = json!({
        "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
        "response_modes_supported": ["query", "fragment", "form_post"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "http_logout_supported": true,
        "frontchannel_logout_supported": true,
        "kerberos_endpoint": format!("{base}/{path_tenant}/kerberos"),
        "tenant_region_scope": tenant_region_scope(tid),
        "cloud_instance_name": "microsoftonline.com",
        "cloud_graph_host_name": "graph.windows.net",
        "msgraph_host": "graph.microsoft.com",
        "rbac_url": "https://pas.windows.net",
    });
    if let (Some(document), Value::Object(common)) = (document.as_object_mut(), common) {
        document.extend(common);
    }
    document
}

/// A tenant's region scope (`NA` for the emulated tenant); multi-tenant documents have none.
fn tenant_region_scope(tid: &str) -> Value {
    if tid == "{tenantid}" {
        Value::Null
    } else {
        json!("NA")
    }
}

/// Answer and record a discovery request.
fn answer(
    inner: &Inner,
    operation: &str,
    path: String,
    query: String,
    headers: &HeaderMap,
    (status, mut body): (StatusCode, Value),
) -> Response {
    if status != StatusCode::OK {
        stamp(&mut body, headers);
    }
    inner.count(Exchange {
        operation: operation.into(),
        method: "GET".into(),
        path,
        query,
        status: status.as_u16(),
        response: Some(body.clone()),
        client: headers
            .get("user-agent")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        ..Exchange::default()
    });
    (status, axum::Json(body)).into_response()
}

/// `GET /{tenant}/v2.0/.well-known/openid-configuration` (`V2`), or
/// `GET /{tenant}/.well-known/openid-configuration` (v1).
pub async fn openid_configuration_of<const V2: bool>(
    State(inner): State<Arc<Inner>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
) -> Response {
    let version = if V2 { "v2.0/" } else { "" };
    let document = if V2 { v2_config } else { v1_config };
    let path = format!("/{tenant}/{version}.well-known/openid-configuration");
    openid_configuration(&inner, &tenant, path, &headers, document)
}

/// The OpenID configuration `document` builds for `tenant`, on the host the caller named.
fn openid_configuration(
    inner: &Inner,
    tenant: &str,
    path: String,
    headers: &HeaderMap,
    document: fn(&str, &str, &str) -> Value,
) -> Response {
    let base = origin(inner, headers);
    let result = known_tenant(inner, tenant)
        .map(|tid| (StatusCode::OK, document(&base, tenant, &tid)))
        .unwrap_or_else(|refusal| refusal);
    answer(
        inner,
        "Aad_OpenIdConfiguration",
        path,
        String::new(),
        headers,
        result,
    )
}

/// `GET /{tenant}/discovery/v2.0/keys` and `/{tenant}/discovery/keys`: no public keys (see the
/// module's documentation).
pub async fn keys(
    State(inner): State<Arc<Inner>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
) -> Response {
    let result = known_tenant(&inner, &tenant)
        .map(|_| (StatusCode::OK, json!({"keys": []})))
        .unwrap_or_else(|refusal| refusal);
    let path = format!("/{tenant}/discovery/keys");
    answer(&inner, "Aad_Keys", path, String::new(), &headers, result)
}

/// `GET /common/discovery/instance?api-version=1.1&authorization_endpoint=...`: for an
/// authorization endpoint on this host, its tenant's configuration document (v2.0 or v1, as the
/// endpoint's path is) and this host's aliases; any other host is an unknown instance
/// (AADSTS50049).
pub async fn instance(
    State(inner): State<Arc<Inner>>,
    Path(tenant): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let base = origin(&inner, &headers);
    let result = instance_answer(&base, query.get("authorization_endpoint"));
    let recorded = serde_urlencoded::to_string(&query).unwrap_or_default();
    let path = format!("/{tenant}/discovery/instance");
    answer(
        &inner,
        "Aad_InstanceDiscovery",
        path,
        recorded,
        &headers,
        result,
    )
}

fn instance_answer(base: &str, authorization_endpoint: Option<&String>) -> (StatusCode, Value) {
    let Some(endpoint) = authorization_endpoint else {
        return aad_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            90014,
            "The required field 'authorization_endpoint' is missing from the credential. Ensure that you have all the necessary parameters for the login request.",
        );
    };
    let ours = url::Url::parse(base).ok();
    let asked = url::Url::parse(endpoint).ok();
    // MSAL Python writes the authorization endpoint with the authority's host name only (no
    // port), so a missing port stands for the emulator's.
    let same_host = |a: &url::Url, b: &url::Url| {
        a.scheme() == b.scheme()
            && (b.port().is_none() || a.port_or_known_default() == b.port_or_known_default())
            && a.host_str()
                .zip(b.host_str())
                .is_some_and(|(x, y)| x.eq_ignore_ascii_case(y))
    };
    let (Some(ours), Some(asked)) = (ours, asked) else {
        return unknown_instance();
    };
    if !same_host(&ours, &asked) {
        return unknown_instance();
    }
    let segments: Vec<&str> = asked
        .path_segments()
        .map(|s| s.collect())
        .unwrap_or_default();
    let (tenant, v2) = match segments.as_slice() {
        [tenant, "oauth2", "v2.0", "authorize"] => (*tenant, true),
        [tenant, "oauth2", "authorize"] => (*tenant, false),
        _ => return unknown_instance(),
    };
    let host = ours.host_str().unwrap_or_default();
    let host = match ours.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    };
    let document = if v2 {
        format!("{base}/{tenant}/v2.0/.well-known/openid-configuration")
    } else {
        format!("{base}/{tenant}/.well-known/openid-configuration")
    };
    (
        StatusCode::OK,
        json!({
            "tenant_discovery_endpoint": document,
            "api-version": "1.1",
            "metadata": [{
                "preferred_network": host,
                "preferred_cache": host,
                "aliases": [host],
            }],
        }),
    )
}

fn unknown_instance() -> (StatusCode, Value) {
    aad_error(
        StatusCode::BAD_REQUEST,
        "invalid_instance",
        50049,
        "Unknown or invalid instance.",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_discovery_names_the_tenant_document_of_its_own_host_only() {
        let base = "https://127.0.0.1:8443";
        let ask = |e: &str| instance_answer(base, Some(&e.to_string()));
        let (status, v2) = ask("https://127.0.0.1:8443/t1/oauth2/v2.0/authorize");
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            v2["tenant_discovery_endpoint"],
            "https://127.0.0.1:8443/t1/v2.0/.well-known/openid-configuration"
        );
        assert_eq!(v2["metadata"][0]["aliases"], json!(["127.0.0.1:8443"]));
        let (status, no_port) = ask("https://127.0.0.1/t1/oauth2/v2.0/authorize");
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            no_port["tenant_discovery_endpoint"],
            v2["tenant_discovery_endpoint"]
        );
        let (_, v1) = ask("https://127.0.0.1:8443/t1/oauth2/authorize");
        assert_eq!(
            v1["tenant_discovery_endpoint"],
            "https://127.0.0.1:8443/t1/.well-known/openid-configuration"
        );
        for other in [
            "https://login.microsoftonline.com/t1/oauth2/v2.0/authorize",
            "https://127.0.0.1:9999/t1/oauth2/v2.0/authorize",
            "http://127.0.0.1:8443/t1/oauth2/v2.0/authorize",
            "https://127.0.0.1:8443/t1/somewhere",
        ] {
            let (status, body) = ask(other);
            assert_eq!(status, StatusCode::BAD_REQUEST, "{other}");
            assert_eq!(body["error"], "invalid_instance", "{other}");
            assert_eq!(body["error_codes"], json!([50049]), "{other}");
        }
    }
}
