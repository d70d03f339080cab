//! The pure half of the `IdentityBinding` reconciler (VM and scale set targets): from what was
//! observed (the spec, the policies, the identity in the store, the target writer's outcome and
//! the target as ARM returned it) to what to do and the status to write. Nothing here reads or
//! writes anything.

use kube::Resource;
use std::time::Duration;

use kube::ResourceExt;

use super::super::azure_identity::AzureIdentity;
use super::super::error::backoff;
use super::super::memo::Fingerprint;
use super::super::outcome::{Next, Note, Report};
use super::super::policy::{self, Decision};
use super::super::reasons;
use uami_api::binding::{AccessCheck, AccessPlane};
use uami_api::conditions::{self, types};
use uami_api::{
    GrantPolicy, IdentityBinding, IdentityBindingStatus, RoleGrant, UserAssignedIdentity,
};
use uami_azure::compute::{ComputeTarget, TargetKind};
use uami_kube::status::{own_conditions, ready_reason_is, set, set_false};

/// Conditions this controller writes on a binding (the agent writes `TokenAcquired`).
const OWNED_CONDITIONS: &[&str] = &[types::ASSIGNED, types::READY];

/// The target of a binding, with the subscription resolved.
pub fn target_of(
    obj: &IdentityBinding,
    default_subscription: Option<&str>,
) -> Option<ComputeTarget> {
    let t = &obj.spec.target;
    let (kind, r) = match (&t.virtual_machine, &t.virtual_machine_scale_set) {
        (Some(r), _) => (TargetKind::VirtualMachine, r),
        (None, Some(r)) => (TargetKind::VirtualMachineScaleSet, r),
        (None, None) => return None,
    };
    Some(ComputeTarget {
        kind,
        subscription: r
            .subscription_id
            .clone()
            .or_else(|| default_subscription.map(str::to_string))?,
        resource_group: r.resource_group.clone(),
        name: r.name.clone(),
    })
}

/// What to do about a binding. Made once a pass and moved once: its size does not matter.
#[derive(Clone, Debug, PartialEq)]
#[allow(clippy::large_enum_variant)]
pub enum Plan {
    /// Nothing to do on the target: report.
    Report(Report<IdentityBindingStatus>),
    /// No policy allows the binding: take back the identity this controller recorded adding to
    /// `target`, then report ([`revoked`]).
    Revoke {
        target: ComputeTarget,
        message: String,
    },
    /// Make sure the identity is on the target.
    Ensure(Ensure),
}

/// What ensuring the assignment needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ensure {
    /// The VM or scale set.
    pub target: ComputeTarget,
    /// The identity's ARM id.
    pub identity_id: String,
    /// The identity's principal id as Azure has it: an entry on the target with another one is
    /// left from an identity deleted and created again under the same id.
    pub principal_id: String,
    /// What the check is remembered under.
    pub fingerprint: Fingerprint,
    /// Whether the binding was assigned before (a missing identity is drift).
    pub assigned_before: bool,
}

/// Where removing an identity from a target stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Removal {
    /// The identity is not on the target (any more).
    Gone,
    /// The writer is removing it.
    Pending,
}

/// What ensuring found, from the target writer and ARM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Found {
    /// The identity is on the target: `ours` when this controller recorded adding it, `added`
    /// when this controller's write just put it there.
    Assigned { ours: bool, added: bool },
    /// The VM or scale set does not exist.
    TargetNotFound,
    /// The writer is adding it.
    Pending,
    /// The writer failed to add it, for the `attempts`-th time in a row.
    Failed {
        code: String,
        message: String,
        retryable: bool,
        retry_after: Option<Duration>,
        attempts: u32,
    },
    /// It is missing: submit it to the writer (after the status is written); `drift` when it
    /// was assigned before and removed outside the controller.
    Submit { drift: bool },
    /// The target lists it with the principal of the identity it replaced (deleted and created
    /// again under the same id): submit its removal, then it is assigned again.
    Replace,
}

/// Step 1 (pure): from the spec, the policies, the identity in the store, that identity as Azure
/// has it (`azure`, `None` until it exists and carries this identity's owner tag) and whether the
/// target was checked moments ago with the same inputs, what to do. The identity assigned is
/// always `azure`'s, never what the identity's status names.
pub fn plan(
    obj: &IdentityBinding,
    default_subscription: Option<&str>,
    policies: &[GrantPolicy],
    identity: Option<&UserAssignedIdentity>,
    azure: Option<&AzureIdentity>,
    recently_checked: impl Fn(Fingerprint) -> bool,
) -> Plan {
    let ns = obj.namespace().unwrap_or_default();
    let Some(target) = target_of(obj, default_subscription) else {
        let status = not_ready(
            obj,
            types::READY,
            reasons::NO_SUBSCRIPTION,
            "the target has no subscriptionId and the controller has no default subscription",
        );
        return Plan::Report(Report::new(status, None, Next::AwaitChange));
    };
    if let Decision::Denied(message) =
        policy::check_binding(policies, &ns, &target, default_subscription)
    {
        return Plan::Revoke { target, message };
    }
    let identity_name = &obj.spec.identity_ref.name;
    // The identity's change wakes the binding; the resync covers a missed event.
    let Some(identity) = identity else {
        let message =
            format!("UserAssignedIdentity {identity_name} does not exist in namespace {ns}");
        return report(waiting(obj, &target, reasons::IDENTITY_NOT_FOUND, &message));
    };
    let Some((identity_id, principal_id)) = azure
        .map(|a| (a.id.clone(), a.principal_id.clone()))
        .filter(|_| identity_ready(identity))
    else {
        if identity.status.is_none() && obj.status.is_none() {
            // The identity is being created right now and its change wakes this binding.
            return Plan::Report(Report::quiet());
        }
        let message = format!("UserAssignedIdentity {identity_name} is not ready yet");
        return report(waiting(
            obj,
            &target,
            reasons::WAITING_FOR_IDENTITY,
            &message,
        ));
    };
    let fingerprint = Fingerprint::of(&(
        obj.metadata.generation,
        identity_id.to_lowercase(),
        principal_id.to_lowercase(),
    ));
    let assigned_before = obj.status.as_ref().and_then(|s| s.assigned) == Some(true);
    if assigned_before && recently_checked(fingerprint) {
        // A pass caused by a status write (ours, the agent's or anyone's): only the summary can
        // change. `adopted` is what the record says, never what the status claims: a status
        // edited by someone else is corrected here.
        let adopted = !recorded(obj, &identity_id);
        return report(assigned(obj, &target, adopted));
    }
    Plan::Ensure(Ensure {
        target,
        identity_id,
        principal_id,
        fingerprint,
        assigned_before,
    })
}

/// Whether the identity's reconciler reports it Ready (a wait, not evidence: what is assigned
/// comes from Azure).
pub fn identity_ready(identity: &UserAssignedIdentity) -> bool {
    identity
        .status
        .as_ref()
        .is_some_and(|s| conditions::is_true(&s.conditions, types::READY))
}

/// Step 2 (pure): the status, the Event and the next look after ensuring found `found`.
pub fn settle(obj: &IdentityBinding, e: &Ensure, found: &Found) -> Report<IdentityBindingStatus> {
    let target = &e.target;
    let identity_name = &obj.spec.identity_ref.name;
    match found {
        Found::Assigned { ours, added } => {
            let note = added.then(|| {
                Note::normal(
                    reasons::ASSIGNED,
                    "AssignIdentity",
                    format!("assigned {identity_name} to {}", target.id()),
                )
            });
            // Assigned without a record of this controller adding it: someone else put it
            // there, so it is never removed by this controller.
            Report::new(assigned(obj, target, !ours), note, Next::Resync)
        }
        Found::TargetNotFound => {
            let message = format!("{} does not exist", target.id());
            let note = (!ready_reason_is(obj, reasons::TARGET_NOT_FOUND))
                .then(|| Note::warning(reasons::TARGET_NOT_FOUND, "GetTarget", message.clone()));
            let status = waiting(obj, target, reasons::TARGET_NOT_FOUND, &message);
            Report::new(status, note, Next::Resync)
        }
        Found::Pending => first_or(obj, Report::new(assigning(obj, target), None, Next::Resync)),
        Found::Failed {
            code,
            message,
            retryable,
            retry_after,
            attempts,
        } => {
            let note = Note::warning(
                reasons::ASSIGN_FAILED,
                "AssignIdentity",
                format!("{code}: {message}"),
            );
            let mut status = not_ready(obj, types::ASSIGNED, code, message);
            set(&mut status, types::READY, false, code, message);
            status.target_resource_id = Some(target.id());
            let next = if *retryable {
                Next::After(backoff(attempts.saturating_sub(1), *retry_after))
            } else {
                Next::Resync
            };
            Report::new(status, Some(note), next)
        }
        Found::Replace => {
            let note = Note::warning(
                reasons::IDENTITY_RECREATED,
                "AssignIdentity",
                format!(
                    "{} lists {identity_name} with the principal of the identity it replaced (deleted and created again); removing it and assigning it again",
                    target.id()
                ),
            );
            Report::new(assigning(obj, target), Some(note), Next::Resync)
        }
        Found::Submit { drift } => {
            let note = drift.then(|| {
                Note::warning(
                    reasons::DRIFT_DETECTED,
                    "AssignIdentity",
                    format!(
                        "{identity_name} was removed from {} outside the controller; assigning it again",
                        target.id()
                    ),
                )
            });
            first_or(obj, Report::new(assigning(obj, target), note, Next::Resync))
        }
    }
}

/// A binding's first status is the result of its first write (the target writer may hold that
/// write for sibling bindings whose identities are being created): a binding without a status
/// writes no `Assigning` first. One that shows something else (a wait, a failure, a drift) says
/// that it is being assigned.
fn first_or(
    obj: &IdentityBinding,
    report: Report<IdentityBindingStatus>,
) -> Report<IdentityBindingStatus> {
    if obj.status.is_some() {
        return report;
    }
    Report {
        status: None,
        ..report
    }
}

/// The status, the Event and the next look of a binding no policy allows, after the identity
/// this controller added was taken back (`removal`), or when it had added none (`None`).
pub fn revoked(
    obj: &IdentityBinding,
    target: &ComputeTarget,
    message: &str,
    removal: Option<Removal>,
) -> Report<IdentityBindingStatus> {
    let mut status = not_ready(obj, types::ASSIGNED, reasons::DENIED_BY_POLICY, message);
    status.target_resource_id = Some(target.id());
    set(
        &mut status,
        types::READY,
        false,
        reasons::DENIED_BY_POLICY,
        message,
    );
    match removal {
        Some(Removal::Gone) => {
            status.assigned = Some(false);
            status.adopted = None;
            let note = Note::warning(
                reasons::DENIED_BY_POLICY,
                "RevokeAssignment",
                format!("{message}; removed the identity from {}", target.id()),
            );
            Report::new(status, Some(note), Next::AwaitChange)
        }
        Some(Removal::Pending) => Report::new(status, None, Next::After(Duration::from_secs(30))),
        None => {
            if recorded_identity(obj).is_none() {
                status.assigned = None;
                status.adopted = None;
            }
            let note = (!ready_reason_is(obj, reasons::DENIED_BY_POLICY))
                .then(|| Note::warning(reasons::DENIED_BY_POLICY, "CheckPolicy", message));
            // Policies are watched: a policy change reconciles again.
            Report::new(status, note, Next::AwaitChange)
        }
    }
}

/// The grants of the binding's identity that the agent checks: same namespace, `verifyAccess`,
/// not being deleted, `Granted` with a scope.
pub fn checked_grants(
    obj: &IdentityBinding,
    grants: &[std::sync::Arc<RoleGrant>],
) -> Vec<std::sync::Arc<RoleGrant>> {
    let ns = obj.namespace();
    grants
        .iter()
        .filter(|g| {
            g.namespace() == ns
                && g.spec.identity_ref.name == obj.spec.identity_ref.name
                && g.spec.verify_access
                && g.metadata.deletion_timestamp.is_none()
                && g.status.as_ref().is_some_and(|s| {
                    s.scope.is_some() && conditions::is_true(&s.conditions, types::GRANTED)
                })
        })
        .cloned()
        .collect()
}

/// What the agent on the target needs, from the controller: the identity's client id as Azure
/// has it, and for each of [`checked_grants`] its scope and the plane its role acts on
/// (`planes`, by grant name; a grant whose role could not be resolved this pass keeps the entry
/// it had), sorted by grant name, at most [`MAX_ACCESS_CHECKS`].
pub fn agent_inputs(
    obj: &IdentityBinding,
    azure: Option<&AzureIdentity>,
    grants: &[std::sync::Arc<RoleGrant>],
    planes: &std::collections::HashMap<String, AccessPlane>,
) -> (Option<String>, Vec<AccessCheck>) {
    let current = obj
        .status
        .as_ref()
        .map(|s| s.access_checks.as_slice())
        .unwrap_or_default();
    let mut checks: Vec<AccessCheck> = checked_grants(obj, grants)
        .iter()
        .filter_map(|g| {
            let name = g.name_any();
            let scope = g.status.as_ref()?.scope.clone()?;
            let plane = match planes.get(&name) {
                Some(p) => *p,
                None => {
                    return current
                        .iter()
                        .find(|c| c.role_grant == name && c.scope == scope)
                        .cloned();
                }
            };
            let container = super::super::planes::blob_container(g, plane);
            Some(AccessCheck {
                role_grant: name,
                scope,
                plane,
                container,
            })
        })
        .collect();
    checks.sort_by(|a, b| a.role_grant.cmp(&b.role_grant));
    checks.truncate(MAX_ACCESS_CHECKS);
    (azure.map(|a| a.client_id.clone()), checks)
}

/// Most scopes a binding lists for its agent.
pub const MAX_ACCESS_CHECKS: usize = 64;

/// `status` with the agent's inputs ([`agent_inputs`]); the client id stays when Azure's
/// identity is not at hand this pass.
pub fn with_agent_inputs(
    status: &mut IdentityBindingStatus,
    inputs: &(Option<String>, Vec<AccessCheck>),
) {
    if let Some(client_id) = &inputs.0 {
        status.client_id = Some(client_id.clone());
    }
    status.access_checks = inputs.1.clone();
}

fn report(status: IdentityBindingStatus) -> Plan {
    Plan::Report(Report::new(status, None, Next::Resync))
}

/// A status that starts from the controller's fields of the current status: `own` conditions,
/// the target, `assigned` and `adopted`.
pub fn base_with(obj: &IdentityBinding, own: &[&str]) -> IdentityBindingStatus {
    let current = obj.status.as_ref();
    IdentityBindingStatus {
        observed_generation: obj.metadata.generation,
        conditions: own_conditions(obj, own),
        target_resource_id: current.and_then(|s| s.target_resource_id.clone()),
        assigned: current.and_then(|s| s.assigned),
        adopted: current.and_then(|s| s.adopted),
        client_id: current.and_then(|s| s.client_id.clone()),
        access_checks: current.map(|s| s.access_checks.clone()).unwrap_or_default(),
        ..IdentityBindingStatus::default()
    }
}

/// The status with condition `type_` False for `reason`.
pub fn not_ready(
    obj: &IdentityBinding,
    type_: &str,
    reason: &str,
    message: &str,
) -> IdentityBindingStatus {
    let mut status = base_with(obj, OWNED_CONDITIONS);
    set(&mut status, type_, false, reason, message);
    status
}

fn waiting(
    obj: &IdentityBinding,
    target: &ComputeTarget,
    reason: &str,
    message: &str,
) -> IdentityBindingStatus {
    let mut status = base_with(obj, OWNED_CONDITIONS);
    status.target_resource_id = Some(target.id());
    set_false(
        &mut status,
        &[types::ASSIGNED, types::READY],
        reason,
        message,
    );
    status
}

fn assigning(obj: &IdentityBinding, target: &ComputeTarget) -> IdentityBindingStatus {
    let message = format!("assigning the identity to {}", target.id());
    waiting(obj, target, reasons::ASSIGNING, &message)
}

fn assigned(obj: &IdentityBinding, target: &ComputeTarget, adopted: bool) -> IdentityBindingStatus {
    let mut status = base_with(obj, OWNED_CONDITIONS);
    status.assigned = Some(true);
    status.adopted = Some(adopted);
    status.target_resource_id = Some(target.id());
    let message = if adopted {
        format!(
            "the identity was already assigned to {}; it will not be removed on deletion",
            target.id()
        )
    } else {
        format!("the identity is assigned to {}", target.id())
    };
    set(
        &mut status,
        types::ASSIGNED,
        true,
        reasons::ASSIGNED,
        &message,
    );
    // `Ready` of an assigned binding follows the agent's `TokenAcquired`.
    let token = obj
        .status
        .as_ref()
        .and_then(|s| conditions::find(&s.conditions, types::TOKEN_ACQUIRED).cloned());
    let (ok, reason, message) = match token {
        Some(c) if c.status == conditions::status::TRUE => (
            true,
            reasons::READY.to_string(),
            "the identity is assigned and the agent on the VM obtained a token with it".to_string(),
        ),
        Some(c) => (
            false,
            c.reason.clone(),
            format!("the agent could not obtain a token: {}", c.message),
        ),
        None => (
            false,
            reasons::AWAITING_TOKEN.to_string(),
            "the identity is assigned; waiting for the agent on the VM to report a token"
                .to_string(),
        ),
    };
    set(&mut status, types::READY, ok, &reason, &message);
    status
}

/// Annotation on a binding recording the identity (ARM id) that this controller added to the
/// binding's target. Only an identity recorded here is ever removed from a VM or scale set. It
/// lives in the object's metadata, which the agent cannot write (it may patch only the status
/// subresource, and writes through `/status` ignore metadata), unlike `status.adopted`.
pub const ASSIGNED_ANNOTATION: &str = "uami.dev/assigned-identity";

/// The identity this controller recorded adding to the target of `obj`, if any.
pub fn recorded_identity(obj: &IdentityBinding) -> Option<&str> {
    obj.meta()
        .annotations
        .as_ref()
        .and_then(|a| a.get(ASSIGNED_ANNOTATION))
        .map(String::as_str)
}

/// Whether the record names `identity_id`.
pub(super) fn recorded(obj: &IdentityBinding, identity_id: &str) -> bool {
    recorded_identity(obj).is_some_and(|r| r.eq_ignore_ascii_case(identity_id))
}
