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

mod credential;
mod defaults;
pub mod state;
mod summary;
mod token_check;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use tracing::Instrument;

use super::azure_identity::{self, AzureIdentity};
use super::binding::plan::identity_ready;
use super::context::Context;
use super::error::ReconcileError;
use super::memo::{Fingerprint, ObjectKey};
use super::outcome::{Next, warn_once};
use super::policy::{self, Decision};
use super::reasons::{self, DRIFT_DETECTED, REVOKED};
use credential::{Ensured, annotate, ensure_credential, remove_trust};
use defaults::{default_of, wake_on_new_choice};
pub use state::{Defaults, IdentityLocks, TokenChecks, WorkloadSettings};
use summary::{summary, waiting, write_status, write_waiting};
use token_check::check_token;
use uami_api::{DeletionPolicy, IdentityBinding};
use uami_azure::federated::FederatedCredential;

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

/// How soon a binding waiting for its identity looks again.
const WAIT: Duration = Duration::from_secs(2);
/// How soon a binding waiting for its service account looks again (service accounts are not
/// watched).
const WAIT_FOR_SERVICE_ACCOUNT: Duration = Duration::from_secs(5);

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

/// What a service account binding acts on, once resolved.
struct Resolved {
    wl: WorkloadSettings,
    id: AzureIdentity,
    ns: String,
    sa: String,
    /// The binding whose identity the service account's client id annotation names, when it
    /// is another's (`None`: this binding annotates).
    default_binding: Option<String>,
    sa_api: Api<ServiceAccount>,
    account: ServiceAccount,
}

/// Apply a service account binding: resolve -> ensure the credential and the annotations ->
/// settle (the token check's last result, the status).
pub async fn apply(
    obj: Arc<IdentityBinding>,
    shared: Arc<Context>,
) -> Result<Action, ReconcileError> {
    let ctx: &Context = &shared;
    let r = match resolve(&obj, ctx).await? {
        Ok(resolved) => resolved,
        Err(action) => return Ok(action),
    };
    let key = ObjectKey::of(&*obj);
    let fingerprint = Fingerprint::of(&(
        obj.metadata.generation,
        r.id.id.to_lowercase(),
        &r.id.principal_id,
        &r.id.client_id,
        &r.wl.oidc_issuer,
        &r.default_binding,
    ));
    let assigned_before = obj.status.as_ref().and_then(|s| s.assigned) == Some(true);
    if assigned_before && ctx.recently_checked(&key, fingerprint) {
        // A pass caused by a status write: nothing in Azure or on the service account to read.
        return Ok(Action::requeue(ctx.settings.jittered_resync()));
    }
    let (credential, adopted) = match ensure(&obj, ctx, &r, assigned_before).await? {
        Ok(made) => made,
        Err(action) => {
            ctx.memo.forget_checked(&key);
            return Ok(action);
        }
    };
    let settled = settle(&obj, &shared, &r, &credential, adopted).await;
    if !assigned_before {
        ctx.event(
            &*obj,
            false,
            reasons::ASSIGNED,
            "CreateFederatedCredential",
            format!(
                "identity {} trusts service account {} through federated identity credential {}",
                obj.spec.identity_ref.name, r.sa, credential.name
            ),
        )
        .await;
    }
    write_status(&obj, ctx, settled.status).await?;
    if settled.verified {
        ctx.memo.mark_checked(&key, fingerprint);
        Ok(Action::requeue(
            settled.again.min(ctx.settings.resync_period),
        ))
    } else {
        ctx.memo.forget_checked(&key);
        // The next check is due then (with backoff while it does not settle); a running one
        // wakes the binding when it ends.
        Ok(Action::requeue(settled.again))
    }
}

/// Resolve what the binding acts on: the settings, the identity as Azure has it, the policy,
/// the service account's default and the service account. `Err` carries the end of a pass that
/// cannot go on (its status written).
async fn resolve(
    obj: &Arc<IdentityBinding>,
    ctx: &Context,
) -> Result<Result<Resolved, Action>, ReconcileError> {
    let ns = obj.namespace().unwrap_or_default();
    let sa = sa_name(obj);
    let Some(wl) = ctx.settings.workload.clone() else {
        let message = "the controller runs without --oidc-issuer: service account bindings need the cluster's OIDC issuer URL";
        let next = Next::AwaitChange;
        return Ok(Err(write_waiting(
            obj,
            ctx,
            reasons::NO_OIDC_ISSUER,
            message,
            next,
        )
        .await?));
    };
    let identity_name = &obj.spec.identity_ref.name;
    // The credential is written on the identity as Azure has it (its spec's coordinates, its
    // owner tag), never on what its status names.
    let id = match ctx.identity(&ns, identity_name) {
        None => Err((
            reasons::IDENTITY_NOT_FOUND,
            format!("UserAssignedIdentity {identity_name} does not exist in namespace {ns}"),
        )),
        Some(identity) => {
            let azure = if identity_ready(&identity) {
                azure_identity::resolve(ctx, &identity).await?
            } else {
                None
            };
            azure.ok_or_else(|| {
                (
                    reasons::WAITING_FOR_IDENTITY,
                    format!("UserAssignedIdentity {identity_name} is not ready yet"),
                )
            })
        }
    };
    let id = match id {
        Ok(id) => id,
        Err((reason, message)) => {
            return Ok(Err(write_waiting(
                obj,
                ctx,
                reason,
                &message,
                Next::After(WAIT),
            )
            .await?));
        }
    };
    if let Decision::Denied(message) = policy::check_service_account_binding(
        &ctx.policies(),
        &ns,
        &id.coordinates,
        &sa,
        ctx.settings.default_subscription.as_deref(),
    ) {
        return Ok(Err(revoke_denied(obj, ctx, &id, &ns, &sa, &message).await?));
    }
    let default_binding = match defaults::default_binding(ctx, obj, &ns, &sa) {
        Ok(default_binding) => default_binding,
        Err(message) => {
            warn_once(
                ctx,
                &**obj,
                reasons::DEFAULT_CONFLICT,
                "AnnotateServiceAccount",
                &message,
            )
            .await;
            let next = Next::Resync;
            return Ok(Err(write_waiting(
                obj,
                ctx,
                reasons::DEFAULT_CONFLICT,
                &message,
                next,
            )
            .await?));
        }
    };
    let sa_api: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(account) = sa_api
        .get_opt(&sa)
        .await
        .map_err(ReconcileError::kube("GetServiceAccount"))?
    else {
        let message = format!("ServiceAccount {sa} does not exist in namespace {ns}");
        let next = Next::After(WAIT_FOR_SERVICE_ACCOUNT);
        let reason = reasons::SERVICE_ACCOUNT_NOT_FOUND;
        return Ok(Err(write_waiting(obj, ctx, reason, &message, next).await?));
    };
    Ok(Ok(Resolved {
        wl,
        id,
        ns,
        sa,
        default_binding,
        sa_api,
        account,
    }))
}

/// A GrantPolicy does not allow the binding: take back what it made (once per check window),
/// and report the denial.
async fn revoke_denied(
    obj: &IdentityBinding,
    ctx: &Context,
    id: &AzureIdentity,
    ns: &str,
    sa: &str,
    message: &str,
) -> Result<Action, ReconcileError> {
    warn_once(ctx, obj, reasons::DENIED_BY_POLICY, "CheckPolicy", message).await;
    let mut status = waiting(obj, reasons::DENIED_BY_POLICY, message);
    let key = ObjectKey::of(obj);
    let denied = Fingerprint::of(&("denied", id.coordinates.key()));
    if !ctx.recently_checked(&key, denied) {
        // A policy no longer allows what this binding made: take it back, whatever its
        // status says (a status is not evidence that nothing was made).
        let removed = remove_trust(ctx, id, ns, sa).await?;
        ctx.memo.mark_checked(&key, denied);
        if removed {
            ctx.event(
                obj,
                true,
                REVOKED,
                "DeleteFederatedCredential",
                format!("no GrantPolicy allows this binding any more; removed the trust of service account {sa}"),
            )
            .await;
        }
    }
    if obj.status.as_ref().and_then(|s| s.assigned) == Some(true) {
        status.assigned = Some(false);
        status.token = None;
        status.access = Vec::new();
    }
    write_status(obj, ctx, status).await?;
    Ok(Action::await_change())
}

/// Make the credential exist and, when this binding is the service account's default, the
/// annotations name its identity: the credential and whether someone else made it, or (`Err`)
/// the end of a pass refused at Azure's limit of credentials.
async fn ensure(
    obj: &IdentityBinding,
    ctx: &Context,
    r: &Resolved,
    assigned_before: bool,
) -> Result<Result<(FederatedCredential, bool), Action>, ReconcileError> {
    let desired = FederatedCredential {
        name: credential_name(&r.wl.oidc_issuer, &r.ns, &r.sa),
        id: String::new(),
        issuer: r.wl.oidc_issuer.clone(),
        subject: subject(&r.ns, &r.sa),
        audiences: vec![EXCHANGE_AUDIENCE.to_string()],
    };
    let made = match ensure_credential(ctx, obj, &r.id, desired, assigned_before).await? {
        Ensured::Ours(credential) => (credential, false),
        Ensured::Adopted(credential) => (credential, true),
        Ensured::LimitReached(count) => {
            let message = format!(
                "identity {} already has {count} federated identity credentials, Azure's limit is {MAX_CREDENTIALS_PER_IDENTITY}; bind another identity or remove a binding of this one",
                r.id.coordinates.name
            );
            let reason = reasons::FEDERATED_CREDENTIAL_LIMIT;
            warn_once(ctx, obj, reason, "CreateFederatedCredential", &message).await;
            return Ok(Err(
                write_waiting(obj, ctx, reason, &message, Next::Resync).await?
            ));
        }
    };
    if r.default_binding.is_none() {
        annotate(ctx, obj, &r.sa_api, &r.account, &r.id, assigned_before).await?;
    }
    Ok(Ok(made))
}

/// The end of a pass that made the credential.
struct Settled {
    status: uami_api::IdentityBindingStatus,
    /// The last token check settled (every scope verified or refused).
    verified: bool,
    /// When the next check is due.
    again: Duration,
}

/// Report the token check's last result (starting the next one when due, in a task of its own
/// that wakes the binding when it ends) and the budget of credentials.
async fn settle(
    obj: &Arc<IdentityBinding>,
    shared: &Arc<Context>,
    r: &Resolved,
    credential: &FederatedCredential,
    adopted: bool,
) -> Settled {
    let ctx: &Context = shared;
    let key = ObjectKey::of(&**obj);
    let resync_period = ctx.settings.resync_period;
    let check_fingerprint = Fingerprint::of(&(
        obj.metadata.generation,
        &r.id.client_id,
        &credential.name,
        &obj.spec.token_check.resource,
        token_check::grants_covered(ctx, &r.ns, &obj.spec.identity_ref.name),
    ));
    let look = ctx
        .token_checks
        .look(&key, check_fingerprint, resync_period);
    if look.start {
        let (task_ctx, task_obj, task_id) = (shared.clone(), obj.clone(), r.id.clone());
        let (task_wl, task_ns, task_sa) = (r.wl.clone(), r.ns.clone(), r.sa.clone());
        let span = tracing::Span::current();
        tokio::spawn(
            async move {
                let check =
                    check_token(&task_ctx, &task_wl, &task_obj, &task_ns, &task_sa, &task_id);
                task_ctx
                    .token_checks
                    .run(key, check_fingerprint, resync_period, check)
                    .await;
                task_ctx
                    .writer
                    .wake(kube::runtime::reflector::ObjectRef::from_obj(&*task_obj));
            }
            .instrument(span),
        );
    }
    let check = look
        .last
        .clone()
        .unwrap_or_else(|| token_check::checking(obj));
    let mut status = summary(
        obj,
        &r.id,
        credential,
        adopted,
        &check,
        r.default_binding.as_deref(),
    );
    let budget = ctx.budgets.credential_condition(&r.id.coordinates);
    super::budget::set_budget(&mut status, budget.as_ref());
    Settled {
        status,
        verified: look.last.as_ref().is_some_and(|c| c.settled()),
        again: look.again,
    }
}

/// Clean up a service account binding: the credential goes, then the annotations, then the
/// finalizer (so the identity, which waits for its bindings, goes last).
pub async fn cleanup(obj: Arc<IdentityBinding>, ctx: &Context) -> Result<Action, ReconcileError> {
    let ns = obj.namespace().unwrap_or_default();
    let sa = sa_name(&obj);
    let key = ObjectKey::of(&*obj);
    ctx.memo.forget_checked(&key);
    ctx.token_checks.forget(&key);
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
    // The default moves to the next binding of the service account (the one marked, else the
    // oldest), which annotates when it is woken.
    wake_on_new_choice(ctx, &ns, &sa, &default_of(ctx, &ns, &sa), &obj);
    if shared {
        return Ok(Action::await_change());
    }
    // The identity as Azure has it, ready or not (an identity being deleted is not Ready, but
    // its credentials must still go first).
    let Some(identity) = ctx.identity(&ns, &obj.spec.identity_ref.name) else {
        return Ok(Action::await_change());
    };
    let Some(id) = azure_identity::resolve(ctx, &identity).await? else {
        return Ok(Action::await_change());
    };
    remove_trust(ctx, &id, &ns, &sa).await?;
    Ok(Action::await_change())
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
