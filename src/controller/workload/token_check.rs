//! The token check of a service account binding, done the way a pod would: a TokenRequest for the
//! service account, exchanged at Entra ID for a token of the identity, and each granted scope
//! read with it. Status gets the token's metadata and the access results, never the token.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::Semaphore;

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
use crate::api::binding::{AccessPlane, ScopeAccess, TokenStatus};
use crate::api::conditions::{self, NewCondition, types};
use crate::api::{IdentityBinding, RoleGrant};
use crate::auth::exchange::{exchange_assertion, scope_for};
use crate::auth::{AuthError, decode_claims};

/// The result of the token check.
#[derive(Clone, Debug)]
pub(super) struct TokenCheck {
    pub token: Option<TokenStatus>,
    pub condition: NewCondition,
    pub access: Vec<ScopeAccess>,
    /// Access checks that did not pass and may pass later (not those of scopes the check cannot
    /// read, which no retry changes).
    pub pending: usize,
}

impl TokenCheck {
    /// Whether the exchange worked and every access that can be checked was verified.
    pub fn settled(&self) -> bool {
        self.token.is_some() && self.pending == 0
    }
}

fn token_failed(reason: &str, message: String) -> TokenCheck {
    TokenCheck {
        token: None,
        condition: NewCondition::new(types::TOKEN_ACQUIRED, false, reason, message),
        access: Vec::new(),
        pending: 0,
    }
}

/// How many token checks run at once: each requests a token, exchanges it and reads up to 100
/// scopes, off the reconcile, so neither reconcile workers nor ARM's budget wait on them.
const CONCURRENT_CHECKS: usize = 2;
/// The first look again after a check that did not settle; it doubles up to the resync.
const FIRST_RECHECK: Duration = Duration::from_secs(5);

/// The token checks of service account bindings: run in tasks of their own, at most
/// [`CONCURRENT_CHECKS`] at once, each binding's result kept until its next check, which comes
/// with backoff while it has not settled and at the resync once it has.
pub struct TokenChecks {
    limit: Arc<Semaphore>,
    state: Mutex<HashMap<String, CheckState>>,
}

impl Default for TokenChecks {
    fn default() -> Self {
        Self {
            limit: Arc::new(Semaphore::new(CONCURRENT_CHECKS)),
            state: Mutex::new(HashMap::new()),
        }
    }
}

struct CheckState {
    /// What the check was for (identity, credential, resource, generation).
    fingerprint: String,
    running: bool,
    last: Option<TokenCheck>,
    due: Instant,
    unsettled: u32,
}

/// What the reconcile of a binding learns from [`TokenChecks::look`].
pub(super) struct Look {
    /// The last finished check for the binding's current fingerprint.
    pub last: Option<TokenCheck>,
    /// Start a check now (the caller spawns it with [`TokenChecks::run`]).
    pub start: bool,
    /// When to look again: the next check is due then (a running one wakes the binding itself).
    pub again: Duration,
}

impl TokenChecks {
    /// The state of `key`'s check at `fingerprint`: its last result, and whether one is due.
    pub(super) fn look(&self, key: &str, fingerprint: &str, resync: Duration) -> Look {
        let mut state = self.state.lock();
        let now = Instant::now();
        let entry = state.entry(key.to_string()).or_insert_with(|| CheckState {
            fingerprint: fingerprint.to_string(),
            running: false,
            last: None,
            due: now,
            unsettled: 0,
        });
        if entry.fingerprint != fingerprint && !entry.running {
            *entry = CheckState {
                fingerprint: fingerprint.to_string(),
                running: false,
                last: None,
                due: now,
                unsettled: 0,
            };
        }
        let start = !entry.running && entry.due <= now;
        if start {
            entry.running = true;
        }
        Look {
            last: entry
                .last
                .clone()
                .filter(|_| entry.fingerprint == fingerprint),
            start,
            again: if entry.running {
                resync
            } else {
                entry
                    .due
                    .saturating_duration_since(now)
                    .max(Duration::from_secs(1))
            },
        }
    }

    /// Run `check` for `key` when a place is free, keep its result, and wake the binding.
    pub(super) async fn run<F>(&self, key: String, fingerprint: String, resync: Duration, check: F)
    where
        F: std::future::Future<Output = TokenCheck>,
    {
        let permit = self.limit.clone().acquire_owned().await;
        let result = check.await;
        drop(permit);
        let mut state = self.state.lock();
        let Some(entry) = state.get_mut(&key) else {
            return;
        };
        entry.running = false;
        if entry.fingerprint != fingerprint {
            // The binding changed meanwhile: its next look checks again at once.
            entry.due = Instant::now();
            return;
        }
        entry.unsettled = if result.settled() {
            0
        } else {
            entry.unsettled.saturating_add(1)
        };
        let backoff = FIRST_RECHECK
            .saturating_mul(1u32 << entry.unsettled.saturating_sub(1).min(16))
            .min(resync);
        entry.due = Instant::now()
            + if entry.unsettled == 0 {
                resync
            } else {
                backoff
            };
        entry.last = Some(result);
    }

    /// Forget `key` (its binding is gone).
    pub(super) fn forget(&self, key: &str) {
        self.state.lock().remove(key);
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
    let mut pending = 0;
    for grant in granted(ctx, ns, &obj.spec.identity_ref.name) {
        let Some(scope) = grant.status.as_ref().and_then(|s| s.scope.clone()) else {
            continue;
        };
        let probed =
            crate::azure::probe_access(&wl.http, &wl.arm_endpoint, &scope, &token.token).await;
        // A scope the check cannot read is said so on the grant, and is no failure to retry.
        let unsupported = match &probed {
            Err(e) if e.code() == "UnsupportedScope" => Some(e.message.clone()),
            _ => None,
        };
        let code = probed.ok();
        if code != Some(200) && unsupported.is_none() {
            pending += 1;
        }
        let result = ScopeAccess {
            role_grant: grant.name_any(),
            scope: scope.clone(),
            verified: code == Some(200),
            http_status: code.map(i32::from),
        };
        if let Err(e) = write_grant_access(ctx, &grant, &scope, code, unsupported).await {
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

/// What the check covers of the grants: each granted grant of the identity that asks for an
/// access check, with its scope. A grant granted, changed or gone changes it, and so starts a new
/// check.
pub(super) fn grants_covered(ctx: &Context, ns: &str, identity: &str) -> String {
    granted(ctx, ns, identity)
        .iter()
        .map(|g| {
            let scope = g
                .status
                .as_ref()
                .and_then(|s| s.scope.as_deref())
                .unwrap_or_default();
            format!("{}={scope}", g.name_any())
        })
        .collect::<Vec<_>>()
        .join(",")
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
    unsupported: Option<String>,
) -> kube::Result<()> {
    // A read that got no answer (a dropped connection, throttling, a server error) says nothing
    // about access: a verified grant stays verified, and the check is retried with backoff.
    let passing = unsupported.is_none() && code.is_none_or(|c| c == 408 || c == 429 || c >= 500);
    if passing
        && crate::api::conditions::is_true(
            status::Reported::conditions(grant),
            types::ACCESS_VERIFIED,
        )
    {
        return Ok(());
    }
    let (cond, access) = match (code, unsupported) {
        (_, Some(message)) => (
            NewCondition::new(
                types::ACCESS_VERIFIED,
                false,
                reasons::UNSUPPORTED_SCOPE,
                message,
            ),
            None,
        ),
        (Some(c), None) => {
            let (cond, access) = status::access_checked(
                "the token exchange",
                CHECKED_BY.into(),
                scope,
                AccessPlane::Arm,
                c,
            );
            (cond, Some(access))
        }
        (None, None) => (
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
