//! The token check of a service account binding, done the way a pod would: a TokenRequest for the
//! service account, exchanged at Entra ID for a token of the identity, and each granted scope
//! read with it where the grant's role acts: through ARM, or on the Blob Storage or Key Vault
//! data plane with a token of that plane's audience (the service account token exchanged once
//! more). Status gets the token's metadata and the access results, never a token.

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use secrecy::SecretString;

use super::super::context::{Context, live_in};
use super::super::reasons;
use super::state::TokenCheck;
use super::{
    AzureIdentity, CHECKED_BY, EXCHANGE_AUDIENCE, GRANT_FIELD_MANAGER, TOKEN_REQUEST_SECONDS,
    WorkloadSettings,
};
use crate::planes;
use uami_api::binding::{AccessPlane, ScopeAccess, TokenStatus};
use uami_api::conditions::{self, NewCondition, types};
use uami_api::{IdentityBinding, RoleGrant};
use uami_azure::auth::exchange::{exchange_assertion, scope_for};
use uami_azure::auth::{AuthError, decode_claims};
use uami_kube::status;

fn token_failed(reason: &str, message: String) -> TokenCheck {
    TokenCheck {
        token: None,
        condition: NewCondition::new(types::TOKEN_ACQUIRED, false, reason, message),
        access: Vec::new(),
        pending: 0,
    }
}

/// What a binding reports before its first check has ended: the token and access it last had,
/// `TokenAcquired` waiting.
/// A binding that had a token (before a restart of the controller) keeps it until the check
/// says otherwise, so Ready does not flap.
pub(super) fn checking(obj: &IdentityBinding) -> TokenCheck {
    let current = obj.status.as_ref();
    let had = current.and_then(|s| {
        let c = conditions::find(&s.conditions, types::TOKEN_ACQUIRED)?;
        (c.status == conditions::status::TRUE && s.token.is_some()).then(|| {
            (
                s.token.clone(),
                NewCondition::new(types::TOKEN_ACQUIRED, true, &c.reason, c.message.clone()),
            )
        })
    });
    let (token, condition) = had.unwrap_or_else(|| {
        (
            None,
            NewCondition::new(
                types::TOKEN_ACQUIRED,
                false,
                reasons::AWAITING_TOKEN,
                "the service account's token is being exchanged at Entra ID",
            ),
        )
    });
    TokenCheck {
        token,
        condition,
        access: current.map(|s| s.access.clone()).unwrap_or_default(),
        pending: 0,
    }
}

/// Request a service account token, exchange it, and read every granted scope as the identity,
/// each on the plane its grant's role acts on.
pub(super) async fn check_token(
    ctx: &Context,
    wl: &WorkloadSettings,
    obj: &IdentityBinding,
    ns: &str,
    sa: &str,
    id: &AzureIdentity,
) -> TokenCheck {
    let sa_api: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), ns);
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![EXCHANGE_AUDIENCE.to_string()],
            expiration_seconds: Some(TOKEN_REQUEST_SECONDS),
            ..TokenRequestSpec::default()
        },
        ..TokenRequest::default()
    };
    let assertion = match sa_api
        .create_token_request(sa, &PostParams::default(), &request)
        .await
    {
        Ok(tr) => match tr.status {
            Some(s) => SecretString::from(s.token),
            None => {
                return token_failed(
                    reasons::TOKEN_REQUEST_FAILED,
                    format!("the TokenRequest for service account {sa} returned no token"),
                );
            }
        },
        Err(e) => {
            let detail = match &e {
                kube::Error::Api(s) => format!("HTTP {} {}", s.code, s.reason),
                _ => "the API server could not be reached".to_string(),
            };
            return token_failed(
                reasons::TOKEN_REQUEST_FAILED,
                format!("requesting a token for service account {sa} failed: {detail}"),
            );
        }
    };
    let resource = obj.spec.token_check.resource.clone();
    let token = match exchange_assertion(
        &wl.http,
        &wl.authority_host,
        &id.tenant_id,
        &id.client_id,
        &assertion,
        &scope_for(&resource),
    )
    .await
    {
        Ok(t) => t,
        Err(e) => {
            let reason = match &e {
                AuthError::Aad {
                    aadsts: Some(n), ..
                } => format!("AADSTS{n}"),
                _ => reasons::TOKEN_EXCHANGE_FAILED.to_string(),
            };
            let hint = if reason == "AADSTS70021" {
                " (no federated identity credential of the identity matches the service account token's issuer, subject and audience)"
            } else {
                ""
            };
            return token_failed(
                &reason,
                format!("exchanging the service account token at Entra ID failed: {e}{hint}"),
            );
        }
    };
    let claims = decode_claims(&token.token).unwrap_or_default();
    let rfc3339 = |t: Option<i64>| {
        t.and_then(|s| jiff::Timestamp::from_second(s).ok())
            .map(|t| t.to_string())
    };
    let status = TokenStatus {
        resource: Some(claims.aud.clone().unwrap_or(resource)),
        token_type: Some("Bearer".into()),
        client_id: Some(id.client_id.clone()),
        tenant_id: claims.tid.clone(),
        object_id: claims.oid.clone(),
        expires_on: rfc3339(claims.exp).or_else(|| Some(token.expires_on.to_string())),
        not_before: rfc3339(claims.nbf),
        checked_by: Some(CHECKED_BY.into()),
    };
    let grants = granted(ctx, ns, &obj.spec.identity_ref.name);
    let plane_by_grant = planes::grant_planes(ctx, &grants).await;
    // A token of each data plane's audience, exchanged once per check when a grant needs it.
    let mut data_tokens: HashMap<&'static str, Result<SecretString, String>> = HashMap::new();
    let mut access = Vec::new();
    let mut pending = 0;
    for grant in grants {
        let Some(scope) = grant.status.as_ref().and_then(|s| s.scope.clone()) else {
            continue;
        };
        let name = grant.name_any();
        // A role that cannot be resolved now keeps the plane the grant last reported.
        let plane = plane_by_grant.get(&name).copied().or_else(|| {
            grant
                .status
                .as_ref()
                .and_then(|s| s.access.as_ref())
                .map(|a| a.plane)
        });
        let read = match plane {
            Some(plane) => {
                let container = planes::blob_container(&grant, plane);
                let target = Target {
                    scope: &scope,
                    plane,
                    container: container.as_deref(),
                };
                read_scope(wl, id, &assertion, &token.token, &mut data_tokens, target).await
            }
            None => Read::NoAnswer(format!(
                "the token exchange could not resolve role {} to tell where to read {scope}",
                grant.spec.role
            )),
        };
        let code = match &read {
            Read::Answered(c) => Some(*c),
            _ => None,
        };
        // A scope the check cannot read is said so on the grant, and is no failure to retry.
        if code != Some(200) && !matches!(read, Read::Unsupported(_)) {
            pending += 1;
        }
        let result = ScopeAccess {
            role_grant: name,
            scope: scope.clone(),
            verified: code == Some(200),
            http_status: code.map(i32::from),
        };
        if let Err(e) = write_grant_access(ctx, &grant, &scope, plane, read).await {
            tracing::warn!(grant = %grant.name_any(), error = %e, "could not write the access check");
        }
        access.push(result);
    }
    TokenCheck {
        token: Some(status),
        condition: NewCondition::new(
            types::TOKEN_ACQUIRED,
            true,
            reasons::TOKEN_ACQUIRED,
            format!(
                "a token of service account {sa} was exchanged at Entra ID for a token of the identity"
            ),
        ),
        access,
        pending,
    }
}

/// What reading one granted scope came to.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Read {
    /// An answer, with its HTTP status.
    Answered(u16),
    /// A scope the check cannot read on its plane: no retry changes that.
    Unsupported(String),
    /// No answer (the read, or the exchange for the plane's audience, failed): it says nothing
    /// about access.
    NoAnswer(String),
}

/// One granted scope and where its role acts.
struct Target<'a> {
    scope: &'a str,
    plane: AccessPlane,
    /// The container a `Blob` read lists when the scope names none.
    container: Option<&'a str>,
}

/// Read `target` as the identity: through ARM with `arm_token`, or on its data plane with a
/// token of that plane's audience, exchanged for `assertion` the first time this check needs it
/// and kept in `data_tokens`.
async fn read_scope(
    wl: &WorkloadSettings,
    id: &AzureIdentity,
    assertion: &SecretString,
    arm_token: &SecretString,
    data_tokens: &mut HashMap<&'static str, Result<SecretString, String>>,
    target: Target<'_>,
) -> Read {
    let unanswered = |detail: String| {
        Read::NoAnswer(format!(
            "the token exchange could not read {} {}: {detail}",
            target.scope,
            on_plane(target.plane)
        ))
    };
    let classify = |probed: Result<u16, uami_azure::ArmError>| match probed {
        Ok(code) => Read::Answered(code),
        Err(e) if e.code() == "UnsupportedScope" => Read::Unsupported(e.message.clone()),
        Err(e) => unanswered(e.to_string()),
    };
    let read = match uami_azure::data_read(target.plane, target.scope, target.container) {
        Ok(Some(read)) => read,
        Ok(None) => {
            return classify(
                uami_azure::probe_access(&wl.http, &wl.arm_endpoint, target.scope, arm_token).await,
            );
        }
        Err(e) => return classify(Err(e)),
    };
    let request = match wl.data_planes.request(&read) {
        Ok(request) => request,
        Err(e) => return classify(Err(e)),
    };
    if !data_tokens.contains_key(request.audience) {
        let exchanged = exchange_assertion(
            &wl.http,
            &wl.authority_host,
            &id.tenant_id,
            &id.client_id,
            assertion,
            &scope_for(request.audience),
        )
        .await
        .map(|t| t.token)
        .map_err(|e| {
            format!(
                "exchanging the service account token for audience {} failed: {e}",
                request.audience
            )
        });
        data_tokens.insert(request.audience, exchanged);
    }
    match data_tokens.get(request.audience) {
        Some(Ok(token)) => classify(uami_azure::probe_data_plane(&wl.http, request, token).await),
        Some(Err(e)) => unanswered(e.clone()),
        None => unanswered("no token for the data plane".into()),
    }
}

/// How a read on `plane` is named in messages.
fn on_plane(plane: AccessPlane) -> &'static str {
    match plane {
        AccessPlane::Arm => "through ARM",
        AccessPlane::Blob => "on the Blob Storage data plane",
        AccessPlane::KeyVault => "on the Key Vault data plane",
    }
}

/// What the check covers of the grants: each granted grant of the identity that asks for an
/// access check, with its scope and the container a Blob read lists. A grant granted, changed or
/// gone changes it, and so starts a new check.
pub(super) fn grants_covered(ctx: &Context, ns: &str, identity: &str) -> String {
    granted(ctx, ns, identity)
        .iter()
        .map(|g| {
            let scope = g
                .status
                .as_ref()
                .and_then(|s| s.scope.as_deref())
                .unwrap_or_default();
            match planes::blob_container(g, AccessPlane::Blob) {
                Some(container) => format!("{}={scope}#{container}", g.name_any()),
                None => format!("{}={scope}", g.name_any()),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Granted RoleGrants of the identity `identity` in `ns` that ask for an access check.
fn granted(ctx: &Context, ns: &str, identity: &str) -> Vec<Arc<RoleGrant>> {
    let mut out = live_in(&ctx.stores.grants, ns, |g| {
        g.spec.identity_ref.name == identity
            && g.spec.verify_access
            && g.status
                .as_ref()
                .is_some_and(|s| conditions::is_true(&s.conditions, types::GRANTED))
    });
    out.sort_by_key(|g| g.name_any());
    out.truncate(100);
    out
}

/// The grant's `AccessVerified` and `access`, under this check's own field manager; written only
/// when they change. `plane` is where the scope was read (`None` when the grant's role could not
/// be resolved, so nothing was read).
async fn write_grant_access(
    ctx: &Context,
    grant: &RoleGrant,
    scope: &str,
    plane: Option<AccessPlane>,
    read: Read,
) -> kube::Result<()> {
    // A read that got no answer (a dropped connection, throttling, a server error) says nothing
    // about access: a verified grant stays verified, and the check is retried with backoff.
    let passing = match &read {
        Read::Answered(c) => *c == 408 || *c == 429 || *c >= 500,
        Read::Unsupported(_) => false,
        Read::NoAnswer(_) => true,
    };
    if passing
        && uami_api::conditions::is_true(
            status::Reported::conditions(grant),
            types::ACCESS_VERIFIED,
        )
    {
        return Ok(());
    }
    let (cond, access) = match read {
        Read::Unsupported(message) => (
            NewCondition::new(
                types::ACCESS_VERIFIED,
                false,
                reasons::UNSUPPORTED_SCOPE,
                message,
            ),
            None,
        ),
        Read::Answered(c) => {
            let (cond, access) = status::access_checked(
                "the token exchange",
                CHECKED_BY.into(),
                scope,
                plane.unwrap_or_default(),
                c,
            );
            (cond, Some(access))
        }
        Read::NoAnswer(message) => (
            NewCondition::new(
                types::ACCESS_VERIFIED,
                false,
                reasons::CHECK_FAILED,
                message,
            ),
            None,
        ),
    };
    let own = status::own_condition(
        status::Reported::conditions(grant),
        cond,
        grant.metadata.generation,
    );
    let mut report = serde_json::json!({ "conditions": own });
    if let Some(access) = access {
        report["access"] = serde_json::to_value(access).unwrap_or_default();
    }
    status::report(&ctx.client, grant, &report, &report, GRANT_FIELD_MANAGER).await
}
