//! The token check of a service account binding, done the way a pod would: a TokenRequest for the
//! service account, exchanged at Entra ID for a token of the identity, and each granted scope
//! read with it. Status gets the token's metadata and the access results, never the token.

use std::sync::Arc;

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, PostParams};
use kube::{Resource, ResourceExt};
use secrecy::SecretString;

use super::super::context::Context;
use super::super::reasons;
use super::super::status;
use super::{
    AzureIdentity, CHECKED_BY, EXCHANGE_AUDIENCE, GRANT_FIELD_MANAGER, TOKEN_REQUEST_SECONDS,
    WorkloadSettings,
};
use crate::api::binding::{ScopeAccess, TokenStatus};
use crate::api::conditions::{self, NewCondition, types};
use crate::api::{IdentityBinding, RoleGrant};
use crate::auth::exchange::{exchange_assertion, scope_for};
use crate::auth::{AuthError, decode_claims};

/// The result of the token check.
pub(super) struct TokenCheck {
    pub token: Option<TokenStatus>,
    pub condition: NewCondition,
    pub access: Vec<ScopeAccess>,
}

fn token_failed(reason: &str, message: String) -> TokenCheck {
    TokenCheck {
        token: None,
        condition: NewCondition::new(types::TOKEN_ACQUIRED, false, reason, message),
        access: Vec::new(),
    }
}

/// Request a service account token, exchange it, and read every granted scope with the result.
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
    let mut access = Vec::new();
    for grant in granted(ctx, ns, &obj.spec.identity_ref.name) {
        let Some(scope) = grant.status.as_ref().and_then(|s| s.scope.clone()) else {
            continue;
        };
        let code = crate::azure::probe_access(&wl.http, &wl.arm_endpoint, &scope, &token.token)
            .await
            .ok();
        let result = ScopeAccess {
            role_grant: grant.name_any(),
            scope: scope.clone(),
            verified: code == Some(200),
            http_status: code.map(i32::from),
        };
        if let Err(e) = write_grant_access(ctx, &grant, &scope, code).await {
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
    }
}

/// Granted RoleGrants of the identity `identity` in `ns` that ask for an access check.
fn granted(ctx: &Context, ns: &str, identity: &str) -> Vec<Arc<RoleGrant>> {
    let mut out: Vec<Arc<RoleGrant>> = ctx
        .stores
        .grants
        .state()
        .into_iter()
        .filter(|g| {
            g.namespace().as_deref() == Some(ns)
                && g.spec.identity_ref.name == identity
                && g.spec.verify_access
                && g.meta().deletion_timestamp.is_none()
                && g.status
                    .as_ref()
                    .is_some_and(|s| conditions::is_true(&s.conditions, types::GRANTED))
        })
        .collect();
    out.sort_by_key(|g| g.name_any());
    out.truncate(100);
    out
}

/// The grant's `AccessVerified` and `access`, under this check's own field manager; written only
/// when they change.
async fn write_grant_access(
    ctx: &Context,
    grant: &RoleGrant,
    scope: &str,
    code: Option<u16>,
) -> kube::Result<()> {
    let (cond, access) = match code {
        Some(c) => {
            let (cond, access) =
                status::access_checked("the token exchange", CHECKED_BY.into(), scope, c);
            (cond, Some(access))
        }
        None => (
            NewCondition::new(
                types::ACCESS_VERIFIED,
                false,
                "CheckFailed",
                format!("the token exchange could not read {scope}"),
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
