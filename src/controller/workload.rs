//! `IdentityBinding` to a service account (workload identity): resolve (identity, policy,
//! service account) -> the federated identity credential that trusts the cluster's OIDC issuer
//! for `system:serviceaccount:<ns>:<name>` (written only when it differs, one writer per
//! identity at a time, never a 21st) -> the service account's `azure.workload.identity/*`
//! annotations -> the token check -> status.
//!
//! The token check proves the binding the way a pod would: a TokenRequest for the service
//! account (audience `api://AzureADTokenExchange`, the shortest lifetime Kubernetes allows),
//! exchanged at Entra ID with the identity's client id, and each scope granted to the identity
//! (RoleGrants with `verifyAccess`) read with the resulting token. Status gets the token's
//! metadata and the access results, never the token or the assertion.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use secrecy::SecretString;

use super::context::{Context, object_key};
use super::error::ReconcileError;
use super::policy::{self, Decision, ResolvedIdentity};
use super::reasons;
use super::status::{self, now, own_conditions};
use crate::api::binding::{ScopeAccess, TokenStatus};
use crate::api::conditions::{self, NewCondition, set_condition, types};
use crate::api::grant::AccessStatus;
use crate::api::{
    DeletionPolicy, IdentityBinding, IdentityBindingStatus, RoleGrant, UserAssignedIdentity,
};
use crate::auth::exchange::{exchange_assertion, scope_for};
use crate::auth::{AuthError, decode_claims};
use crate::azure::federated::{FederatedCredential, IdentityCoordinates};

/// The audience Entra ID expects on a federated service account token.
pub const EXCHANGE_AUDIENCE: &str = "api://AzureADTokenExchange";
/// The annotation the workload identity webhook reads the client id from.
pub const CLIENT_ID_ANNOTATION: &str = "azure.workload.identity/client-id";
/// The annotation the workload identity webhook reads the tenant id from.
pub const TENANT_ID_ANNOTATION: &str = "azure.workload.identity/tenant-id";
/// At most this many federated identity credentials per identity (an Azure limit).
pub const MAX_CREDENTIALS_PER_IDENTITY: usize = 20;
/// The shortest token lifetime a TokenRequest may ask for (Kubernetes refuses less).
pub const TOKEN_REQUEST_SECONDS: i64 = 600;
/// `checkedBy` of a token the controller obtained by the exchange.
pub const CHECKED_BY: &str = "token-exchange";
/// The field manager of the access results the token check writes on RoleGrants.
pub const GRANT_FIELD_MANAGER: &str = "uami-token-exchange";

/// Event reason of a repair (the VM path uses the same).
const DRIFT_DETECTED: &str = "DriftDetected";
/// Event reason when a policy stops allowing a binding and its trust is removed.
const REVOKED: &str = "Revoked";
/// How soon a binding whose token check did not fully pass looks again (a new role assignment
/// takes a while to take effect).
const RECHECK: Duration = Duration::from_secs(5);
/// How soon a binding whose token exchange was refused tries again.
const RETRY_EXCHANGE: Duration = Duration::from_secs(30);
/// How soon a binding waiting for its identity looks again.
const WAIT: Duration = Duration::from_secs(2);
/// How soon a binding waiting for its service account looks again (service accounts are not
/// watched).
const WAIT_FOR_SERVICE_ACCOUNT: Duration = Duration::from_secs(5);

/// Conditions this controller writes on a service account binding.
const OWN: &[&str] = &[types::ASSIGNED, types::TOKEN_ACQUIRED, types::READY];

/// What service account bindings need to know about the cluster and Entra ID.
#[derive(Clone, Debug)]
pub struct WorkloadSettings {
    /// The cluster's OIDC issuer URL, exactly as its tokens carry it in `iss`.
    pub oidc_issuer: String,
    /// Entra ID's authority host (`https://login.microsoftonline.com/`).
    pub authority_host: url::Url,
    /// The ARM endpoint the granted scopes are read from.
    pub arm_endpoint: url::Url,
    /// HTTP client for the exchange and the reads.
    pub http: reqwest::Client,
}

/// One writer at a time per identity: Azure refuses concurrent federated identity credential
/// writes on one identity (`ConcurrentFederatedIdentityCredentialsWritesForSingleManagedIdentity`).
/// It also remembers which credentials this process wrote, so that one it created in a pass
/// that failed later is never mistaken for someone else's.
#[derive(Default)]
pub struct IdentityLocks {
    locks: parking_lot::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    written: parking_lot::Mutex<std::collections::HashSet<String>>,
}

impl IdentityLocks {
    /// The lock of the identity with key `key`.
    pub fn of(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .entry(key.to_string())
            .or_default()
            .clone()
    }

    fn remember(&self, identity: &str, credential: &str) {
        self.written
            .lock()
            .insert(format!("{identity}/{}", credential.to_lowercase()));
    }

    fn wrote(&self, identity: &str, credential: &str) -> bool {
        self.written
            .lock()
            .contains(&format!("{identity}/{}", credential.to_lowercase()))
    }
}

/// Whether the binding targets a service account.
pub fn is_service_account(obj: &IdentityBinding) -> bool {
    obj.spec.target.service_account.is_some()
}

/// `system:serviceaccount:<namespace>:<name>`.
pub fn subject(namespace: &str, service_account: &str) -> String {
    format!("system:serviceaccount:{namespace}:{service_account}")
}

const NAME_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x2b7e_61c4_0d9a_4f3e_8c51_a6d2_19f0_7e44);

/// The federated identity credential's name: readable, deterministic over (issuer, namespace,
/// service account), and valid under `^[a-zA-Z0-9]{1}[a-zA-Z0-9-_]{2,119}$`.
pub fn credential_name(issuer: &str, namespace: &str, service_account: &str) -> String {
    let hash = uuid::Uuid::new_v5(
        &NAME_NAMESPACE,
        format!("{issuer}|{namespace}|{service_account}").as_bytes(),
    )
    .simple()
    .to_string();
    let readable: String = format!("{namespace}-{service_account}")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(120 - "k8s-".len() - 1 - 8)
        .collect();
    format!("k8s-{readable}-{}", &hash[..8])
}

fn sa_name(obj: &IdentityBinding) -> String {
    obj.spec
        .target
        .service_account
        .as_ref()
        .map(|s| s.name.clone())
        .unwrap_or_default()
}

/// The identity's Azure side, from its status.
struct ReadyIdentity {
    id: String,
    coordinates: IdentityCoordinates,
    client_id: String,
    tenant_id: String,
}

fn ready_identity(identity: &UserAssignedIdentity) -> Option<ReadyIdentity> {
    let s = identity.status.as_ref()?;
    if !conditions::is_true(&s.conditions, types::READY) {
        return None;
    }
    known_identity(identity)
}

/// The identity's Azure side as its status last recorded it, ready or not (an identity being
/// deleted is not Ready, but its credentials must still go first).
fn known_identity(identity: &UserAssignedIdentity) -> Option<ReadyIdentity> {
    let s = identity.status.as_ref()?;
    let id = s.resource_id.clone()?;
    Some(ReadyIdentity {
        coordinates: IdentityCoordinates::from_id(&id)?,
        id,
        client_id: s.client_id.clone()?,
        tenant_id: s.tenant_id.clone()?,
    })
}

/// Apply a service account binding.
pub async fn apply(obj: Arc<IdentityBinding>, ctx: &Context) -> Result<Action, ReconcileError> {
    let ns = obj.namespace().unwrap_or_default();
    let sa = sa_name(&obj);
    let resync = Action::requeue(ctx.settings.jittered_resync());
    let Some(wl) = ctx.settings.workload.clone() else {
        let message = "the controller runs without --oidc-issuer: service account bindings need the cluster's OIDC issuer URL";
        write_status(&obj, ctx, waiting(&obj, reasons::NO_OIDC_ISSUER, message)).await?;
        return Ok(Action::await_change());
    };
    let identity_name = &obj.spec.identity_ref.name;
    let Some(identity) = ctx.identity(&ns, identity_name) else {
        let message =
            format!("UserAssignedIdentity {identity_name} does not exist in namespace {ns}");
        write_status(
            &obj,
            ctx,
            waiting(&obj, reasons::IDENTITY_NOT_FOUND, &message),
        )
        .await?;
        return Ok(Action::requeue(WAIT));
    };
    let Some(id) = ready_identity(&identity) else {
        let message = format!("UserAssignedIdentity {identity_name} is not ready yet");
        write_status(
            &obj,
            ctx,
            waiting(&obj, reasons::WAITING_FOR_IDENTITY, &message),
        )
        .await?;
        return Ok(Action::requeue(WAIT));
    };
    let resolved = ResolvedIdentity {
        subscription_id: id.coordinates.subscription.clone(),
        resource_group: id.coordinates.resource_group.clone(),
        name: id.coordinates.name.clone(),
    };
    if let Decision::Denied(message) = policy::check_service_account_binding(
        &ctx.policies(),
        &ns,
        &resolved,
        &sa,
        ctx.settings.default_subscription.as_deref(),
    ) {
        if !reason_is(&obj, reasons::DENIED_BY_POLICY) {
            ctx.event(
                &*obj,
                true,
                reasons::DENIED_BY_POLICY,
                "CheckPolicy",
                message.clone(),
            )
            .await;
        }
        let mut status = waiting(&obj, reasons::DENIED_BY_POLICY, &message);
        if obj.status.as_ref().and_then(|s| s.assigned) == Some(true) {
            // A policy no longer allows what this binding made: take it back.
            remove_trust(ctx, &obj, &id, &ns, &sa).await?;
            ctx.forget_checked(&object_key(&*obj));
            ctx.event(
                &*obj,
                true,
                REVOKED,
                "DeleteFederatedCredential",
                format!("no GrantPolicy allows this binding any more; removed the trust of service account {sa}"),
            )
            .await;
            status.assigned = Some(false);
            status.token = None;
            status.access = Vec::new();
        }
        write_status(&obj, ctx, status).await?;
        return Ok(Action::await_change());
    }
    if let Some(other) = earlier_binding_of_service_account(ctx, &obj, &ns, &sa) {
        let message = format!(
            "service account {sa} is already bound to identity {} by IdentityBinding {other}; a service account carries one client id",
            other_identity(ctx, &ns, &other).unwrap_or_default()
        );
        write_status(
            &obj,
            ctx,
            waiting(&obj, reasons::SERVICE_ACCOUNT_IN_USE, &message),
        )
        .await?;
        return Ok(resync);
    }
    let sa_api: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(account) = sa_api
        .get_opt(&sa)
        .await
        .map_err(ReconcileError::kube("GetServiceAccount"))?
    else {
        let message = format!("ServiceAccount {sa} does not exist in namespace {ns}");
        write_status(
            &obj,
            ctx,
            waiting(&obj, reasons::SERVICE_ACCOUNT_NOT_FOUND, &message),
        )
        .await?;
        return Ok(Action::requeue(WAIT_FOR_SERVICE_ACCOUNT));
    };

    let key = object_key(&*obj);
    let fingerprint = format!(
        "{:?}/{}/{}",
        obj.metadata.generation,
        id.id.to_lowercase(),
        wl.oidc_issuer
    );
    let assigned_before = obj.status.as_ref().and_then(|s| s.assigned) == Some(true);
    if assigned_before && ctx.recently_checked(&key, &fingerprint) {
        // A pass caused by a status write: nothing in Azure or on the service account to read.
        return Ok(resync);
    }

    let desired = FederatedCredential {
        name: credential_name(&wl.oidc_issuer, &ns, &sa),
        id: String::new(),
        issuer: wl.oidc_issuer.clone(),
        subject: subject(&ns, &sa),
        audiences: vec![EXCHANGE_AUDIENCE.to_string()],
    };
    let ensured = match ensure_credential(ctx, &obj, &id, desired, assigned_before).await? {
        Ensured::Present {
            credential,
            adopted,
        } => (credential, adopted),
        Ensured::LimitReached(count) => {
            ctx.forget_checked(&key);
            let message = format!(
                "identity {} already has {count} federated identity credentials, Azure's limit is {MAX_CREDENTIALS_PER_IDENTITY}; bind another identity or remove a binding of this one",
                id.coordinates.name
            );
            if !reason_is(&obj, reasons::FEDERATED_CREDENTIAL_LIMIT) {
                ctx.event(
                    &*obj,
                    true,
                    reasons::FEDERATED_CREDENTIAL_LIMIT,
                    "CreateFederatedCredential",
                    message.clone(),
                )
                .await;
            }
            write_status(
                &obj,
                ctx,
                waiting(&obj, reasons::FEDERATED_CREDENTIAL_LIMIT, &message),
            )
            .await?;
            return Ok(resync);
        }
    };
    let (credential, adopted) = ensured;
    annotate(ctx, &obj, &sa_api, &account, &id, assigned_before).await?;

    let check = check_token(ctx, &wl, &obj, &ns, &sa, &id).await;
    let exchanged = check.token.is_some();
    let all_verified = exchanged && check.access.iter().all(|a| a.verified);
    let status = summary(&obj, &id, &credential, adopted, &check);
    if !assigned_before {
        ctx.event(
            &*obj,
            false,
            reasons::ASSIGNED,
            "CreateFederatedCredential",
            format!(
                "identity {identity_name} trusts service account {sa} through federated identity credential {}",
                credential.name
            ),
        )
        .await;
    }
    write_status(&obj, ctx, status).await?;
    if all_verified {
        ctx.mark_checked(&key, fingerprint);
        Ok(resync)
    } else {
        ctx.forget_checked(&key);
        // A refused exchange needs a change somewhere; access only needs time to propagate.
        Ok(Action::requeue(if exchanged {
            RECHECK
        } else {
            RETRY_EXCHANGE
        }))
    }
}

enum Ensured {
    Present {
        credential: FederatedCredential,
        adopted: bool,
    },
    LimitReached(usize),
}

/// Make the credential exist as desired, writing only when it differs, under the identity's lock.
async fn ensure_credential(
    ctx: &Context,
    obj: &IdentityBinding,
    id: &ReadyIdentity,
    desired: FederatedCredential,
    assigned_before: bool,
) -> Result<Ensured, ReconcileError> {
    let api = &ctx.azure.federated;
    let lock = ctx.fic_locks.of(&id.coordinates.key());
    let _writer = lock.lock().await;
    let recorded = obj
        .status
        .as_ref()
        .and_then(|s| s.federated_credential_name.clone());
    let name = recorded.clone().unwrap_or_else(|| desired.name.clone());
    let current = api
        .get_federated_credential(&id.coordinates, &name)
        .await
        .map_err(ReconcileError::arm("GetFederatedCredential"))?;
    let previously_adopted = obj.status.as_ref().and_then(|s| s.adopted);
    if let Some(c) = current.as_ref().filter(|c| c.same_trust(&desired)) {
        // First sight of a credential this binding never wrote: someone else's, never deleted.
        let ours = ctx.fic_locks.wrote(&id.coordinates.key(), &c.name);
        let adopted = previously_adopted.unwrap_or(!assigned_before && !ours);
        return Ok(Ensured::Present {
            credential: c.clone(),
            adopted,
        });
    }
    let mut to_write = FederatedCredential { name, ..desired };
    if current.is_none() {
        let all = api
            .list_federated_credentials(&id.coordinates)
            .await
            .map_err(ReconcileError::arm("ListFederatedCredentials"))?;
        if let Some(existing) = all.iter().find(|c| c.same_trust(&to_write)) {
            // The same trust under another name: use it, and never delete it.
            return Ok(Ensured::Present {
                credential: existing.clone(),
                adopted: true,
            });
        }
        if all.len() >= MAX_CREDENTIALS_PER_IDENTITY {
            return Ok(Ensured::LimitReached(all.len()));
        }
    }
    if assigned_before {
        tracing::info!(binding = %object_key(obj), credential = %to_write.name, "federated identity credential missing or changed; repairing drift");
        ctx.event(
            obj,
            true,
            DRIFT_DETECTED,
            "CreateFederatedCredential",
            format!(
                "federated identity credential {} was {} outside the controller; writing it again",
                to_write.name,
                if current.is_some() {
                    "changed"
                } else {
                    "deleted"
                }
            ),
        )
        .await;
    }
    to_write = api
        .put_federated_credential(&id.coordinates, &to_write)
        .await
        .map_err(ReconcileError::arm("CreateFederatedCredential"))?;
    ctx.fic_locks
        .remember(&id.coordinates.key(), &to_write.name);
    Ok(Ensured::Present {
        credential: to_write,
        adopted: previously_adopted.unwrap_or(false),
    })
}

/// Put the client id and tenant id on the service account, as the workload identity webhook
/// expects them; a merge patch only when they differ.
async fn annotate(
    ctx: &Context,
    obj: &IdentityBinding,
    sa_api: &Api<ServiceAccount>,
    account: &ServiceAccount,
    id: &ReadyIdentity,
    assigned_before: bool,
) -> Result<(), ReconcileError> {
    let current = account.annotations();
    let want = [
        (CLIENT_ID_ANNOTATION, id.client_id.as_str()),
        (TENANT_ID_ANNOTATION, id.tenant_id.as_str()),
    ];
    if want
        .iter()
        .all(|(k, v)| current.get(*k).map(String::as_str) == Some(*v))
    {
        return Ok(());
    }
    if assigned_before {
        ctx.event(
            obj,
            true,
            DRIFT_DETECTED,
            "AnnotateServiceAccount",
            format!(
                "the workload identity annotations of service account {} were changed outside the controller; restoring them",
                account.name_any()
            ),
        )
        .await;
    }
    let annotations: BTreeMap<&str, &str> = want.into_iter().collect();
    sa_api
        .patch(
            &account.name_any(),
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"metadata": {"annotations": annotations}})),
        )
        .await
        .map_err(ReconcileError::kube("AnnotateServiceAccount"))?;
    Ok(())
}

/// The result of the token check.
struct TokenCheck {
    token: Option<TokenStatus>,
    condition: NewCondition,
    access: Vec<ScopeAccess>,
}

fn token_failed(reason: &str, message: String) -> TokenCheck {
    TokenCheck {
        token: None,
        condition: NewCondition::new(types::TOKEN_ACQUIRED, false, reason, message),
        access: Vec::new(),
    }
}

/// Request a service account token, exchange it, and read every granted scope with the result.
async fn check_token(
    ctx: &Context,
    wl: &WorkloadSettings,
    obj: &IdentityBinding,
    ns: &str,
    sa: &str,
    id: &ReadyIdentity,
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
    let current = grant.status.clone().unwrap_or_default();
    let mut own: Vec<_> = current
        .conditions
        .iter()
        .filter(|c| c.type_ == types::ACCESS_VERIFIED)
        .cloned()
        .collect();
    let cond = match code {
        Some(200) => NewCondition::new(
            types::ACCESS_VERIFIED,
            true,
            "AccessVerified",
            format!("the token exchange read {scope} with the identity's token (HTTP 200)"),
        ),
        Some(c @ (401 | 403)) => NewCondition::new(
            types::ACCESS_VERIFIED,
            false,
            "AccessDenied",
            format!(
                "the token exchange got HTTP {c} reading {scope}; a new role assignment can take minutes to take effect"
            ),
        ),
        Some(c) => NewCondition::new(
            types::ACCESS_VERIFIED,
            false,
            "UnexpectedStatus",
            format!("the token exchange got HTTP {c} reading {scope}"),
        ),
        None => NewCondition::new(
            types::ACCESS_VERIFIED,
            false,
            "CheckFailed",
            format!("the token exchange could not read {scope}"),
        ),
    };
    set_condition(&mut own, cond, grant.metadata.generation, now());
    let mut status = serde_json::json!({ "conditions": own });
    if let Some(c) = code {
        status["access"] = serde_json::to_value(AccessStatus {
            verified: c == 200,
            http_status: Some(c.into()),
            checked_by: Some(CHECKED_BY.into()),
        })
        .unwrap_or_default();
    }
    let current_json = serde_json::to_value(&current).unwrap_or_default();
    if super::status::contained_in(&status, &current_json) {
        return Ok(());
    }
    let api: Api<RoleGrant> =
        Api::namespaced(ctx.client.clone(), &grant.namespace().unwrap_or_default());
    super::status::apply_status_as(&api, grant, &status, GRANT_FIELD_MANAGER).await
}

/// The oldest other live binding of a different identity to the same service account.
fn earlier_binding_of_service_account(
    ctx: &Context,
    obj: &IdentityBinding,
    ns: &str,
    sa: &str,
) -> Option<String> {
    let mine = (obj.meta().creation_timestamp.clone(), obj.name_any());
    ctx.stores
        .bindings
        .state()
        .iter()
        .filter(|b| {
            b.uid() != obj.uid()
                && b.meta().deletion_timestamp.is_none()
                && b.namespace().as_deref() == Some(ns)
                && b.spec.identity_ref.name != obj.spec.identity_ref.name
                && b.spec
                    .target
                    .service_account
                    .as_ref()
                    .map(|s| s.name.as_str())
                    == Some(sa)
                && (b.meta().creation_timestamp.clone(), b.name_any()) < mine
        })
        .map(|b| b.name_any())
        .min()
}

fn other_identity(ctx: &Context, ns: &str, binding: &str) -> Option<String> {
    ctx.stores
        .bindings
        .state()
        .iter()
        .find(|b| b.namespace().as_deref() == Some(ns) && b.name_any() == binding)
        .map(|b| b.spec.identity_ref.name.clone())
}

/// Clean up a service account binding: the credential goes, then the annotations, then the
/// finalizer (so the identity, which waits for its bindings, goes last).
pub async fn cleanup(obj: Arc<IdentityBinding>, ctx: &Context) -> Result<Action, ReconcileError> {
    let ns = obj.namespace().unwrap_or_default();
    let sa = sa_name(&obj);
    ctx.forget_checked(&object_key(&*obj));
    if obj.spec.deletion_policy == DeletionPolicy::Orphan {
        return Ok(Action::await_change());
    }
    // Another live binding of the same identity to the same service account keeps both.
    let shared = ctx.stores.bindings.state().iter().any(|b| {
        b.meta().deletion_timestamp.is_none()
            && b.uid() != obj.uid()
            && b.namespace().as_deref() == Some(ns.as_str())
            && b.spec.identity_ref.name == obj.spec.identity_ref.name
            && b.spec
                .target
                .service_account
                .as_ref()
                .map(|s| s.name.as_str())
                == Some(sa.as_str())
    });
    if shared {
        return Ok(Action::await_change());
    }
    let Some(id) = ctx
        .identity(&ns, &obj.spec.identity_ref.name)
        .and_then(|i| known_identity(&i))
    else {
        return Ok(Action::await_change());
    };
    remove_trust(ctx, &obj, &id, &ns, &sa).await?;
    Ok(Action::await_change())
}

/// Delete the credential this binding made (never an adopted one), then the service account's
/// annotations when they still name this identity.
async fn remove_trust(
    ctx: &Context,
    obj: &IdentityBinding,
    id: &ReadyIdentity,
    ns: &str,
    sa: &str,
) -> Result<(), ReconcileError> {
    let adopted = obj.status.as_ref().and_then(|s| s.adopted) == Some(true);
    let name = obj
        .status
        .as_ref()
        .and_then(|s| s.federated_credential_name.clone());
    if let (false, Some(name)) = (adopted, name) {
        let lock = ctx.fic_locks.of(&id.coordinates.key());
        let _writer = lock.lock().await;
        ctx.azure
            .federated
            .delete_federated_credential(&id.coordinates, &name)
            .await
            .map_err(ReconcileError::arm("DeleteFederatedCredential"))?;
    }
    let sa_api: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), ns);
    if let Some(account) = sa_api
        .get_opt(sa)
        .await
        .map_err(ReconcileError::kube("GetServiceAccount"))?
        && account.annotations().get(CLIENT_ID_ANNOTATION) == Some(&id.client_id)
    {
        sa_api
            .patch(
                sa,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"metadata": {"annotations": {
                    CLIENT_ID_ANNOTATION: null,
                    TENANT_ID_ANNOTATION: null,
                }}})),
            )
            .await
            .map_err(ReconcileError::kube("AnnotateServiceAccount"))?;
    }
    Ok(())
}

fn reason_is(obj: &IdentityBinding, reason: &str) -> bool {
    obj.status
        .as_ref()
        .and_then(|s| conditions::find(&s.conditions, types::READY))
        .is_some_and(|c| c.reason == reason)
}

fn base(obj: &IdentityBinding) -> IdentityBindingStatus {
    let current = obj.status.as_ref();
    IdentityBindingStatus {
        observed_generation: obj.metadata.generation,
        conditions: own_conditions(obj, OWN),
        target_resource_id: current.and_then(|s| s.target_resource_id.clone()),
        assigned: current.and_then(|s| s.assigned),
        adopted: current.and_then(|s| s.adopted),
        federated_credential_name: current.and_then(|s| s.federated_credential_name.clone()),
        token: current.and_then(|s| s.token.clone()),
        access: current.map(|s| s.access.clone()).unwrap_or_default(),
        ..IdentityBindingStatus::default()
    }
}

fn set(obj: &IdentityBinding, status: &mut IdentityBindingStatus, c: NewCondition) {
    set_condition(&mut status.conditions, c, obj.metadata.generation, now());
}

/// Not assigned (yet): `Assigned` and `Ready` False with `reason`.
fn waiting(obj: &IdentityBinding, reason: &str, message: &str) -> IdentityBindingStatus {
    let mut status = base(obj);
    set(
        obj,
        &mut status,
        NewCondition::new(types::ASSIGNED, false, reason, message),
    );
    set(
        obj,
        &mut status,
        NewCondition::new(types::READY, false, reason, message),
    );
    status
}

fn summary(
    obj: &IdentityBinding,
    id: &ReadyIdentity,
    credential: &FederatedCredential,
    adopted: bool,
    check: &TokenCheck,
) -> IdentityBindingStatus {
    let mut status = base(obj);
    status.assigned = Some(true);
    status.adopted = Some(adopted);
    status.federated_credential_name = Some(credential.name.clone());
    status.target_resource_id = Some(if credential.id.is_empty() {
        format!("{}/federatedIdentityCredentials/{}", id.id, credential.name)
    } else {
        credential.id.clone()
    });
    status.token = check.token.clone();
    status.access = check.access.clone();
    let sa = sa_name(obj);
    let message = if adopted {
        format!(
            "federated identity credential {} already trusted service account {sa}; it will not be deleted with this binding",
            credential.name
        )
    } else {
        format!(
            "federated identity credential {} trusts service account {sa}; the service account carries the identity's client id",
            credential.name
        )
    };
    set(
        obj,
        &mut status,
        NewCondition::new(types::ASSIGNED, true, reasons::ASSIGNED, message),
    );
    set(obj, &mut status, check.condition.clone());
    let ready = if check.token.is_some() {
        NewCondition::new(
            types::READY,
            true,
            reasons::READY,
            "the identity trusts the service account and its token was exchanged for the identity's token",
        )
    } else {
        NewCondition::new(
            types::READY,
            false,
            &check.condition.reason,
            format!("the token exchange failed: {}", check.condition.message),
        )
    };
    set(obj, &mut status, ready);
    status
}

/// The status fields the controller owns on a service account binding.
const OWNED: &[&str] = &[
    "targetResourceId",
    "assigned",
    "adopted",
    "observedGeneration",
    "federatedCredentialName",
    "token",
    "access",
];

async fn write_status(
    obj: &IdentityBinding,
    ctx: &Context,
    status: IdentityBindingStatus,
) -> Result<(), ReconcileError> {
    status::write(&ctx.client, obj, &status, OWNED).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid(name: &str) -> bool {
        let mut chars = name.chars();
        chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
            && (3..=120).contains(&name.len())
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    }

    #[test]
    fn credential_names_are_deterministic_distinct_and_valid() {
        let a = credential_name("https://oidc.example/x/", "team-a", "app");
        assert_eq!(
            a,
            credential_name("https://oidc.example/x/", "team-a", "app")
        );
        assert!(a.starts_with("k8s-team-a-app-"), "{a}");
        assert!(valid(&a), "{a}");
        assert_ne!(
            a,
            credential_name("https://oidc.example/x/", "team-a", "app2")
        );
        assert_ne!(
            a,
            credential_name("https://oidc.example/y/", "team-a", "app")
        );
        // `team-a`/`b-c` and `team-a-b`/`c` read alike but differ.
        assert_ne!(
            credential_name("i", "team-a", "b-c"),
            credential_name("i", "team-a-b", "c")
        );
        let long = credential_name("i", &"n".repeat(63), &format!("{}.x", "s".repeat(250)));
        assert!(valid(&long), "{long} ({} chars)", long.len());
    }

    #[test]
    fn subjects_name_the_service_account() {
        assert_eq!(subject("team-a", "app"), "system:serviceaccount:team-a:app");
    }
}
