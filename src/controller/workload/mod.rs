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
mod summary;
mod token_check;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};

use super::azure_identity::{self, AzureIdentity};
use super::binding::plan::identity_ready;
use super::context::{Context, object_key};
use super::error::ReconcileError;
use super::outcome::{Next, warn_once};
use super::policy::{self, Decision};
use super::reasons::{self, DRIFT_DETECTED, REVOKED};
use crate::api::{DeletionPolicy, IdentityBinding};
use crate::azure::federated::FederatedCredential;
pub use credential::IdentityLocks;
use credential::{Ensured, annotate, ensure_credential, remove_trust};
use summary::{summary, waiting, write_status, write_waiting};
pub use token_check::TokenChecks;
use token_check::check_token;

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

/// What service account bindings need to know about the cluster and Entra ID.
#[derive(Clone, Debug)]
pub struct WorkloadSettings {
    /// The cluster's OIDC issuer URL, exactly as its tokens carry it in `iss`.
    pub oidc_issuer: String,
    /// Entra ID's authority host (`https://login.microsoftonline.com/`).
    pub authority_host: url::Url,
    /// The ARM endpoint the granted scopes are read from.
    pub arm_endpoint: url::Url,
    /// The data planes grants of data roles are read on.
    pub data_planes: crate::azure::DataPlanes,
    /// HTTP client for the exchange and the reads.
    pub http: reqwest::Client,
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

/// Apply a service account binding.
pub async fn apply(
    obj: Arc<IdentityBinding>,
    shared: Arc<Context>,
) -> Result<Action, ReconcileError> {
    let ctx: &Context = &shared;
    let ns = obj.namespace().unwrap_or_default();
    let sa = sa_name(&obj);
    let resync = Action::requeue(ctx.settings.jittered_resync());
    let Some(wl) = ctx.settings.workload.clone() else {
        let message = "the controller runs without --oidc-issuer: service account bindings need the cluster's OIDC issuer URL";
        return write_waiting(
            &obj,
            ctx,
            reasons::NO_OIDC_ISSUER,
            message,
            Next::AwaitChange,
        )
        .await;
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
            return write_waiting(&obj, ctx, reason, &message, Next::After(WAIT)).await;
        }
    };
    if let Decision::Denied(message) = policy::check_service_account_binding(
        &ctx.policies(),
        &ns,
        &id.coordinates,
        &sa,
        ctx.settings.default_subscription.as_deref(),
    ) {
        warn_once(
            ctx,
            &*obj,
            reasons::DENIED_BY_POLICY,
            "CheckPolicy",
            &message,
        )
        .await;
        let mut status = waiting(&obj, reasons::DENIED_BY_POLICY, &message);
        let key = object_key(&*obj);
        let denied = format!("denied/{}", id.coordinates.key());
        if !ctx.recently_checked(&key, &denied) {
            // A policy no longer allows what this binding made: take it back, whatever its
            // status says (a status is not evidence that nothing was made).
            let removed = remove_trust(ctx, &obj, &id, &ns, &sa).await?;
            ctx.mark_checked(&key, denied);
            if removed {
                ctx.event(
                    &*obj,
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
        write_status(&obj, ctx, status).await?;
        return Ok(Action::await_change());
    }
    let choice = default_of(ctx, &ns, &sa);
    wake_on_new_choice(ctx, &ns, &sa, &choice, &obj);
    let default_binding = match &choice {
        Some(DefaultChoice::Conflict(marked)) if marked.iter().any(|b| b.0 == obj.name_any()) => {
            let message = format!(
                "IdentityBindings {} of service account {sa} all say default: true for different identities; the service account's client id annotation is left as it was until one of them says false",
                marked
                    .iter()
                    .map(|b| b.0.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            warn_once(
                ctx,
                &*obj,
                reasons::DEFAULT_CONFLICT,
                "AnnotateServiceAccount",
                &message,
            )
            .await;
            return write_waiting(&obj, ctx, reasons::DEFAULT_CONFLICT, &message, Next::Resync)
                .await;
        }
        Some(DefaultChoice::Default(name, identity)) if *identity != *identity_name => {
            Some(name.clone())
        }
        // This binding's identity is the default (or, in a conflict it is not part of, the
        // annotation is nobody's to change).
        Some(DefaultChoice::Default(..)) | None => None,
        Some(DefaultChoice::Conflict(_)) => Some(String::new()),
    };
    let sa_api: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(account) = sa_api
        .get_opt(&sa)
        .await
        .map_err(ReconcileError::kube("GetServiceAccount"))?
    else {
        let message = format!("ServiceAccount {sa} does not exist in namespace {ns}");
        let next = Next::After(WAIT_FOR_SERVICE_ACCOUNT);
        return write_waiting(
            &obj,
            ctx,
            reasons::SERVICE_ACCOUNT_NOT_FOUND,
            &message,
            next,
        )
        .await;
    };

    let key = object_key(&*obj);
    let fingerprint = format!(
        "{:?}/{}/{}/{}/{}/{:?}",
        obj.metadata.generation,
        id.id.to_lowercase(),
        id.principal_id,
        id.client_id,
        wl.oidc_issuer,
        default_binding
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
            warn_once(
                ctx,
                &*obj,
                reasons::FEDERATED_CREDENTIAL_LIMIT,
                "CreateFederatedCredential",
                &message,
            )
            .await;
            return write_waiting(
                &obj,
                ctx,
                reasons::FEDERATED_CREDENTIAL_LIMIT,
                &message,
                Next::Resync,
            )
            .await;
        }
    };
    let (credential, adopted) = ensured;
    if default_binding.is_none() {
        annotate(ctx, &obj, &sa_api, &account, &id, assigned_before).await?;
    }

    // The token check runs in a task of its own (see TokenChecks); this pass reports its last
    // result, and the check's end wakes the binding.
    let resync_period = ctx.settings.resync_period;
    let check_fingerprint = format!(
        "{:?}/{}/{}/{}/{}",
        obj.metadata.generation,
        id.client_id,
        credential.name,
        obj.spec.token_check.resource,
        token_check::grants_covered(ctx, &ns, &obj.spec.identity_ref.name)
    );
    let look = ctx
        .token_checks
        .look(&key, &check_fingerprint, resync_period);
    if look.start {
        let (task_ctx, task_obj, task_id) = (shared.clone(), obj.clone(), id.clone());
        let (task_key, task_wl, task_ns, task_sa) =
            (key.clone(), wl.clone(), ns.clone(), sa.clone());
        let fingerprint = check_fingerprint.clone();
        tokio::spawn(async move {
            let check = check_token(&task_ctx, &task_wl, &task_obj, &task_ns, &task_sa, &task_id);
            task_ctx
                .token_checks
                .run(task_key, fingerprint, resync_period, check)
                .await;
            task_ctx
                .writer
                .wake(kube::runtime::reflector::ObjectRef::from_obj(&*task_obj));
        });
    }
    let check = look
        .last
        .clone()
        .unwrap_or_else(|| token_check::checking(&obj));
    let all_verified = look.last.as_ref().is_some_and(|c| c.settled());
    let mut status = summary(
        &obj,
        &id,
        &credential,
        adopted,
        &check,
        default_binding.as_deref(),
    );
    let budget = ctx.budgets.credential_condition(&id.coordinates);
    super::budget::set_budget(&mut status, budget.as_ref());
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
        Ok(Action::requeue(look.again.min(resync_period)))
    } else {
        ctx.forget_checked(&key);
        // The next check is due then (with backoff while it does not settle); a running one
        // wakes the binding when it ends.
        Ok(Action::requeue(look.again))
    }
}

/// Which binding's identity the service account's client id annotation names.
#[derive(Clone, Debug, PartialEq, Eq)]
enum DefaultChoice {
    /// This binding (name, identity): the one marked `default: true`, else the oldest.
    Default(String, String),
    /// Bindings (name, identity) of different identities all marked `default: true`.
    Conflict(Vec<(String, String)>),
}

/// The live bindings of service account `sa` in `ns`, oldest first.
fn bindings_of(ctx: &Context, ns: &str, sa: &str) -> Vec<Arc<IdentityBinding>> {
    let mut found: Vec<Arc<IdentityBinding>> = ctx
        .stores
        .bindings
        .state()
        .into_iter()
        .filter(|b| {
            b.meta().deletion_timestamp.is_none()
                && b.namespace().as_deref() == Some(ns)
                && b.spec
                    .target
                    .service_account
                    .as_ref()
                    .is_some_and(|s| s.name == sa)
        })
        .collect();
    found.sort_by_key(|b| (b.meta().creation_timestamp.clone(), b.name_any()));
    found
}

/// The default of service account `sa` in `ns` (see [`choose_default`]); `None` without a
/// live binding.
fn default_of(ctx: &Context, ns: &str, sa: &str) -> Option<DefaultChoice> {
    let bindings: Vec<(String, String, bool)> = bindings_of(ctx, ns, sa)
        .iter()
        .map(|b| {
            let marked = b
                .spec
                .target
                .service_account
                .as_ref()
                .is_some_and(|s| s.default);
            (b.name_any(), b.spec.identity_ref.name.clone(), marked)
        })
        .collect();
    choose_default(&bindings)
}

/// Pure: from the bindings of one service account, oldest first (name, identity, marked
/// `default`), the default. The marked one wins; several marked for one identity agree; marked
/// for different identities conflict; none marked, the oldest is the default (so a second
/// binding never moves the annotation of the first).
fn choose_default(bindings: &[(String, String, bool)]) -> Option<DefaultChoice> {
    let marked: Vec<&(String, String, bool)> = bindings.iter().filter(|b| b.2).collect();
    let first = marked.first().copied().or(bindings.first())?;
    if marked.iter().any(|b| b.1 != first.1) {
        return Some(DefaultChoice::Conflict(
            marked.iter().map(|b| (b.0.clone(), b.1.clone())).collect(),
        ));
    }
    Some(DefaultChoice::Default(first.0.clone(), first.1.clone()))
}

/// When the default of a service account changes (a binding marked, unmarked, added or
/// deleted), its other bindings are reconciled: the new default annotates, a conflict is shown
/// on each binding in it. Decided once per change, so the bindings do not wake each other in turn.
fn wake_on_new_choice(
    ctx: &Context,
    ns: &str,
    sa: &str,
    choice: &Option<DefaultChoice>,
    obj: &IdentityBinding,
) {
    let key = format!("service-account-default/{ns}/{sa}");
    let now = format!("{choice:?}");
    if ctx.keep_note(&key, now.clone()).as_deref() == Some(now.as_str()) {
        return;
    }
    for b in bindings_of(ctx, ns, sa) {
        if b.uid() != obj.uid() {
            ctx.writer
                .wake(kube::runtime::reflector::ObjectRef::from_obj(&*b));
        }
    }
}

/// Clean up a service account binding: the credential goes, then the annotations, then the
/// finalizer (so the identity, which waits for its bindings, goes last).
pub async fn cleanup(obj: Arc<IdentityBinding>, ctx: &Context) -> Result<Action, ReconcileError> {
    let ns = obj.namespace().unwrap_or_default();
    let sa = sa_name(&obj);
    ctx.forget_checked(&object_key(&*obj));
    ctx.token_checks.forget(&object_key(&*obj));
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
    remove_trust(ctx, &obj, &id, &ns, &sa).await?;
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

    fn b(name: &str, identity: &str, marked: bool) -> (String, String, bool) {
        (name.into(), identity.into(), marked)
    }

    #[test]
    fn the_default_is_the_marked_binding_else_the_oldest() {
        assert_eq!(choose_default(&[]), None);
        let one = [b("a", "x", false)];
        assert_eq!(
            choose_default(&one),
            Some(DefaultChoice::Default("a".into(), "x".into()))
        );
        let two = [b("a", "x", false), b("b", "y", false)];
        assert_eq!(
            choose_default(&two),
            Some(DefaultChoice::Default("a".into(), "x".into()))
        );
        let marked = [b("a", "x", false), b("b", "y", true)];
        assert_eq!(
            choose_default(&marked),
            Some(DefaultChoice::Default("b".into(), "y".into()))
        );
        let same = [b("a", "x", true), b("b", "x", true), b("c", "y", false)];
        assert_eq!(
            choose_default(&same),
            Some(DefaultChoice::Default("a".into(), "x".into()))
        );
        let conflict = [b("a", "x", true), b("b", "y", true), b("c", "z", false)];
        assert_eq!(
            choose_default(&conflict),
            Some(DefaultChoice::Conflict(vec![
                ("a".into(), "x".into()),
                ("b".into(), "y".into())
            ]))
        );
    }

    #[test]
    fn subjects_name_the_service_account() {
        assert_eq!(subject("team-a", "app"), "system:serviceaccount:team-a:app");
    }
}
