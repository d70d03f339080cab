//! The data planes of the world's storage accounts and key vaults, as far as access checks read
//! them: List Blobs on a container (`GET /_data/blob/{account}/{container}?restype=container&comp=list`,
//! standing for `https://{account}.blob.core.windows.net/{container}`) and Get Secrets
//! (`GET /_data/vault/{vault}/secrets?api-version=7.4`, standing for
//! `https://{vault}.vault.azure.net/secrets`). Each checks the token's audience and authorizes
//! the caller with the data actions of its role assignments at the resource or above, once they
//! have propagated, and answers in the service's own format.
//!
//! Every container exists and holds no blob; every vault holds no secret.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::tokens::Claims;
use super::{Exchange, Inner, rbac};

/// The data action List Blobs needs
/// (<https://learn.microsoft.com/rest/api/storageservices/list-blobs>).
const LIST_BLOBS: &str = "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/read";

/// The data action Get Secrets needs: listing secrets' properties
/// (<https://learn.microsoft.com/rest/api/keyvault/secrets/get-secrets/get-secrets>).
const LIST_SECRETS: &str = "Microsoft.KeyVault/vaults/secrets/readMetadata/action";

/// The audience of Azure Storage's tokens.
const STORAGE_AUDIENCE: &str = "https://storage.azure.com/";

/// The audience of Key Vault's tokens.
const KEY_VAULT_AUDIENCE: &str = "https://vault.azure.net";

/// The ARM id of the world's storage account or key vault `name`, if it declares one.
fn resource_id(inner: &Inner, type_: &str, name: &str) -> Option<String> {
    let storage = type_ == "Microsoft.Storage/storageAccounts";
    inner.world.subscriptions.iter().find_map(|s| {
        s.resource_groups.iter().find_map(|r| {
            let names = if storage {
                &r.storage_accounts
            } else {
                &r.key_vaults
            };
            names
                .iter()
                .find(|n| n.eq_ignore_ascii_case(name))
                .map(|n| {
                    format!(
                        "/subscriptions/{}/resourceGroups/{}/providers/{type_}/{n}",
                        s.id, r.name
                    )
                })
        })
    })
}

/// Whether `principal` may perform the data action `action` at `scope`, from the role
/// assignments that have taken effect.
fn permitted(inner: &Inner, principal: &str, action: &str, scope: &str) -> bool {
    let now = Instant::now();
    inner.state.lock().assignments.values().any(|a| {
        a.principal_id.eq_ignore_ascii_case(principal)
            && now >= a.effective_at
            && rbac::within(scope, &a.scope)
            && rbac::find(&a.role_guid).is_some_and(|r| rbac::allows_data(r, action))
    })
}

/// The bearer token's claims, or why there are none.
fn bearer(inner: &Inner, headers: &HeaderMap) -> Result<Claims, String> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| "no bearer token".to_string())?;
    crate::tokens::verify(inner, token).map_err(|(_, message)| message)
}

fn same_audience(aud: &str, expected: &str) -> bool {
    aud.trim_end_matches('/')
        .eq_ignore_ascii_case(expected.trim_end_matches('/'))
}

fn record(inner: &Inner, op: &str, path: String, query: &str, status: StatusCode, at_ms: u64) {
    inner.count(Exchange {
        operation: op.into(),
        method: Method::GET.to_string(),
        path,
        query: query.to_string(),
        status: status.as_u16(),
        request: None,
        response: None,
        fault: None,
        client: None,
        at_ms,
    });
}

/// Blob Storage's error body.
fn blob_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = format!(
        "\u{feff}<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>{code}</Code><Message>{message}\nRequestId:00000000-0000-0000-0000-000000000000\nTime:{}</Message></Error>",
        jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S.0000000Z")
    );
    (
        status,
        [
            (header::CONTENT_TYPE, "application/xml"),
            (header::HeaderName::from_static("x-ms-error-code"), code),
        ],
        body,
    )
        .into_response()
}

/// `GET /_data/blob/{account}/{container}`: List Blobs.
pub(super) async fn list_blobs(
    State(inner): State<Arc<Inner>>,
    Path((account, container)): Path<(String, String)>,
    Query(query): Query<std::collections::HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let at_ms = inner.elapsed_ms();
    let query_string = serde_urlencoded::to_string(&query).unwrap_or_default();
    let (status, response) = blob_answer(&inner, &account, &container, &query, &headers);
    record(
        &inner,
        "Blob_ListBlobs",
        format!("/{account}/{container}"),
        &query_string,
        status,
        at_ms,
    );
    response
}

fn blob_answer(
    inner: &Inner,
    account: &str,
    container: &str,
    query: &std::collections::HashMap<String, String>,
    headers: &HeaderMap,
) -> (StatusCode, Response) {
    let fail =
        |status: StatusCode, code: &str, message: &str| (status, blob_error(status, code, message));
    let Some(id) = resource_id(inner, "Microsoft.Storage/storageAccounts", account) else {
        return fail(
            StatusCode::NOT_FOUND,
            "ResourceNotFound",
            "The specified resource does not exist.",
        );
    };
    if query.get("restype").map(String::as_str) != Some("container")
        || query.get("comp").map(String::as_str) != Some("list")
    {
        return fail(
            StatusCode::BAD_REQUEST,
            "InvalidQueryParameterValue",
            "Value for one of the query parameters specified in the request URI is invalid.",
        );
    }
    let Ok(claims) = bearer(inner, headers) else {
        return fail(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthenticationInfo",
            "Authentication information is not given in the correct format. Check the value of Authorization header.",
        );
    };
    if headers.get("x-ms-version").is_none() {
        return fail(
            StatusCode::BAD_REQUEST,
            "MissingRequiredHeader",
            "An HTTP header that's mandatory for this request is not specified.",
        );
    }
    if !same_audience(&claims.aud, STORAGE_AUDIENCE) {
        return fail(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthenticationInfo",
            "Server failed to authenticate the request. Please refer to the information in the www-authenticate header.",
        );
    }
    let scope = format!("{id}/blobServices/default/containers/{container}");
    if !permitted(inner, &claims.oid, LIST_BLOBS, &scope) {
        return fail(
            StatusCode::FORBIDDEN,
            "AuthorizationPermissionMismatch",
            "This request is not authorized to perform this operation using this permission.",
        );
    }
    let body = format!(
        "\u{feff}<?xml version=\"1.0\" encoding=\"utf-8\"?><EnumerationResults ServiceEndpoint=\"https://{account}.blob.core.windows.net/\" ContainerName=\"{container}\"><MaxResults>{}</MaxResults><Blobs /><NextMarker /></EnumerationResults>",
        query
            .get("maxresults")
            .and_then(|m| m.parse::<u32>().ok())
            .unwrap_or(5000)
    );
    let version = headers
        .get("x-ms-version")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let response = (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/xml".to_string()),
            (header::HeaderName::from_static("x-ms-version"), version),
        ],
        body,
    )
        .into_response();
    (StatusCode::OK, response)
}

/// Key Vault's error body, with an inner error when given.
fn vault_error(status: StatusCode, code: &str, message: &str, inner: Option<&str>) -> Response {
    let mut error = json!({"code": code, "message": message});
    if let Some(i) = inner {
        error["innererror"] = json!({"code": i});
    }
    let mut response = (status, axum::Json(json!({ "error": error }))).into_response();
    if status == StatusCode::UNAUTHORIZED
        && let Ok(v) = header::HeaderValue::from_str(
            "Bearer authorization=\"https://login.microsoftonline.com/common\", resource=\"https://vault.azure.net\"",
        )
    {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    response
}

/// `GET /_data/vault/{vault}/secrets`: Get Secrets.
pub(super) async fn get_secrets(
    State(inner): State<Arc<Inner>>,
    Path(vault): Path<String>,
    Query(query): Query<std::collections::HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let at_ms = inner.elapsed_ms();
    let query_string = serde_urlencoded::to_string(&query).unwrap_or_default();
    let (status, response) = vault_answer(&inner, &vault, &query, &headers);
    record(
        &inner,
        "Secrets_GetSecrets",
        format!("/{vault}/secrets"),
        &query_string,
        status,
        at_ms,
    );
    response
}

fn vault_answer(
    inner: &Inner,
    vault: &str,
    query: &std::collections::HashMap<String, String>,
    headers: &HeaderMap,
) -> (StatusCode, Response) {
    let fail = |status: StatusCode, code: &str, message: &str, inner_code: Option<&str>| {
        (status, vault_error(status, code, message, inner_code))
    };
    let Some(id) = resource_id(inner, "Microsoft.KeyVault/vaults", vault) else {
        return fail(
            StatusCode::NOT_FOUND,
            "NotFound",
            "The vault does not exist.",
            None,
        );
    };
    if query.get("api-version").is_none_or(String::is_empty) {
        return fail(
            StatusCode::BAD_REQUEST,
            "BadParameter",
            "The request URI contains an invalid or missing api-version.",
            None,
        );
    }
    let Ok(claims) = bearer(inner, headers) else {
        return fail(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "Request is missing a Bearer or PoP token.",
            None,
        );
    };
    if !same_audience(&claims.aud, KEY_VAULT_AUDIENCE) {
        return fail(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            &format!(
                "Invalid audience. Expected https://vault.azure.net, found: {}.",
                claims.aud
            ),
            None,
        );
    }
    if !permitted(inner, &claims.oid, LIST_SECRETS, &id) {
        let message = format!(
            "Caller is not authorized to perform action on resource.\r\nIf role assignments, deny assignments or role definitions were changed recently, please observe propagation time.\r\nCaller: appid={};oid={}\r\nAction: '{LIST_SECRETS}'\r\nResource: '{}'\r\nAssignment: (not found)\r\nVault: {vault};location=\r\n",
            claims.appid,
            claims.oid,
            id.to_lowercase()
        );
        return fail(
            StatusCode::FORBIDDEN,
            "Forbidden",
            &message,
            Some("ForbiddenByRbac"),
        );
    }
    let response = (
        StatusCode::OK,
        axum::Json(json!({"value": [], "nextLink": null})),
    )
        .into_response();
    (StatusCode::OK, response)
}
