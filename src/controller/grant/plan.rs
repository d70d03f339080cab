//! The pure half of the `RoleGrant` reconciler: from what was observed (the spec, the identity
//! in the store, the role definition, the policies, what ARM answered) to what to do and the
//! status to write. Nothing here reads or writes anything.

use std::time::Duration;

use kube::ResourceExt;

use super::super::azure_identity::AzureIdentity;
use super::super::budget;
use super::super::error::backoff;
use super::super::outcome::{Next, Note, Report};
use super::super::policy::{self, Decision, ResolvedRole};
use super::super::reasons;
use super::super::status::{own_conditions, ready_reason_is, set, set_false};
use crate::api::conditions::{self, types};
use crate::api::{GrantPolicy, RoleGrant, RoleGrantStatus, UserAssignedIdentity};
use crate::azure::roles::{RoleAssignment, RoleDefinition, assignment_name, role_definition_guid};
use crate::azure::scope::ArmScope;

/// Conditions this controller writes on a grant (the agent writes `AccessVerified`).
const OWNED_CONDITIONS: &[&str] = &[types::GRANTED, types::READY, types::BUDGET];

/// Consecutive `PrincipalNotFound` answers retried with backoff before the grant waits for the
/// next resync instead (Entra replication normally takes seconds, rarely minutes).
pub const PRINCIPAL_NOT_FOUND_ATTEMPTS: u32 = 12;

/// Why a grant has no usable scope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScopeProblem {
    /// No subscription in the spec and no default configured.
    NoSubscription,
    /// The scope is not a canonical ARM scope (message says why).
    Invalid(String),
}

/// The canonical ARM scope of a grant, with the subscription resolved. Every comparison, policy
/// check and ARM URL uses this value, never the spec's text.
pub fn scope_of(
    obj: &RoleGrant,
    default_subscription: Option<&str>,
) -> Result<ArmScope, ScopeProblem> {
    let s = &obj.spec.scope;
    let text = if let Some(rg) = &s.resource_group {
        let sub = rg
            .subscription_id
            .clone()
            .or_else(|| default_subscription.map(str::to_string))
            .ok_or(ScopeProblem::NoSubscription)?;
        format!("/subscriptions/{sub}/resourceGroups/{}", rg.name)
    } else if let Some(sub) = &s.subscription {
        format!("/subscriptions/{}", sub.subscription_id)
    } else if let Some(id) = &s.resource_id {
        id.clone()
    } else {
        return Err(ScopeProblem::Invalid(
            "exactly one of resourceGroup, subscription or resourceId must be set".into(),
        ));
    };
    ArmScope::parse(&text).map_err(|e| ScopeProblem::Invalid(e.to_string()))
}

/// The role assignment id of `name` at `scope`.
pub fn assignment_id(scope: &str, name: &str) -> String {
    format!("{scope}/providers/Microsoft.Authorization/roleAssignments/{name}")
}

/// The GUID of a role definition.
pub fn guid_of(role: &RoleDefinition) -> Option<String> {
    role_definition_guid(&role.id).or_else(|| role_definition_guid(&role.name))
}

/// The role assignment a grant stands for, recomputed from its spec and its identity: never
/// taken from status, which another writer could have changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expected {
    /// The canonical scope.
    pub scope: ArmScope,
    /// The identity's principal id.
    pub principal_id: String,
    /// The role definition's GUID.
    pub guid: String,
    /// The deterministic assignment name.
    pub name: String,
}

impl Expected {
    /// The assignment of `guid` to `principal_id` at `scope`.
    pub fn new(scope: ArmScope, principal_id: String, guid: String) -> Self {
        Self {
            name: assignment_name(scope.as_str(), &principal_id, &guid).to_string(),
            scope,
            principal_id,
            guid,
        }
    }

    /// What a revocation check of this assignment is remembered under.
    pub fn denied_fingerprint(&self) -> String {
        format!("denied/{}", self.name)
    }
}

/// The scope and the principal of a grant, once both are known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// The canonical scope.
    pub scope: ArmScope,
    /// The identity's principal id.
    pub principal_id: String,
}

/// What to do about a grant. Made once a pass and moved once: its size does not matter.
#[derive(Clone, Debug, PartialEq)]
#[allow(clippy::large_enum_variant)]
pub enum Plan {
    /// Nothing to do in Azure: report.
    Report(Report<RoleGrantStatus>),
    /// No policy allows the grant: revoke the assignment this grant made (unless that was
    /// checked moments ago, `recently`), then write `status`.
    Revoke {
        expected: Expected,
        message: String,
        recently: bool,
        status: RoleGrantStatus,
    },
    /// Make sure the assignment exists.
    Ensure(Ensure),
}

/// What ensuring the assignment needs.
#[derive(Clone, Debug, PartialEq)]
pub struct Ensure {
    /// The assignment.
    pub expected: Expected,
    /// The role definition.
    pub role: RoleDefinition,
    /// The role definition id to create the assignment with.
    pub definition_id: String,
    /// What the check is remembered under.
    pub fingerprint: String,
    /// Whether the grant was granted before (a missing assignment is drift).
    pub granted_before: bool,
    /// Whether the grant adopted an assignment under another name before.
    pub adopted_before: bool,
}

/// What ARM said about the assignment while ensuring it.
#[derive(Clone, Debug, PartialEq)]
pub enum Found {
    /// It exists (`adopted`: under someone else's name).
    Exists { id: String, adopted: bool },
    /// This pass created it.
    Created { id: String },
    /// Creating it answered `RoleAssignmentExists`: this one, someone else's, is adopted.
    Taken(RoleAssignment),
    /// The subscription has `used` of its `limit` role assignments: none was asked for (or ARM
    /// refused it with `RoleAssignmentLimitExceeded`).
    LimitReached { used: usize, limit: usize },
    /// Entra ID does not know the principal yet, for the `attempts`-th time in a row.
    PrincipalNotFound {
        attempts: u32,
        retry_after: Option<Duration>,
    },
}

/// Step 1 (pure): the scope and the identity's principal, or the plan when either is missing.
/// The principal is the identity's as Azure has it (`azure`, `None` until it exists and carries
/// the identity's owner tag), never what the identity's status names.
#[allow(clippy::result_large_err)]
pub fn resolve(
    obj: &RoleGrant,
    default_subscription: Option<&str>,
    identity: Option<&UserAssignedIdentity>,
    azure: Option<&AzureIdentity>,
) -> Result<Resolved, Plan> {
    // The scope is made canonical before anything compares it or sends it to ARM.
    let scope = match scope_of(obj, default_subscription) {
        Ok(scope) => scope,
        Err(ScopeProblem::NoSubscription) => {
            return Err(report_waiting(
                obj,
                reasons::NO_SUBSCRIPTION,
                "the scope has no subscriptionId and the controller has no default subscription"
                    .into(),
                None,
                Next::AwaitChange,
            ));
        }
        Err(ScopeProblem::Invalid(message)) => {
            return Err(report_waiting(
                obj,
                reasons::INVALID_SCOPE,
                message,
                Some("CheckScope"),
                Next::AwaitChange,
            ));
        }
    };
    let ns = obj.namespace().unwrap_or_default();
    let identity_name = &obj.spec.identity_ref.name;
    // The identity's change wakes the grant; the resync covers a missed event.
    let Some(identity) = identity else {
        let message =
            format!("UserAssignedIdentity {identity_name} does not exist in namespace {ns}");
        return Err(report_waiting(
            obj,
            reasons::IDENTITY_NOT_FOUND,
            message,
            None,
            Next::Resync,
        ));
    };
    let Some(principal_id) = azure
        .map(|a| a.principal_id.clone())
        .filter(|p| !p.is_empty())
    else {
        if identity.status.is_none() && obj.status.is_none() {
            // The identity is being created right now and its change wakes this grant: a status
            // saying so would be stale before anyone reads it.
            return Err(Plan::Report(Report::quiet()));
        }
        let message = format!("UserAssignedIdentity {identity_name} has no principalId yet");
        return Err(report_waiting(
            obj,
            reasons::WAITING_FOR_IDENTITY,
            message,
            None,
            Next::Resync,
        ));
    };
    Ok(Resolved {
        scope,
        principal_id,
    })
}

/// Step 2 (pure): from the role definition (`None`: no such role), the policies and whether the
/// Azure side was checked moments ago with the same inputs, what to do.
pub fn plan(
    obj: &RoleGrant,
    resolved: Resolved,
    role: Option<&RoleDefinition>,
    policies: &[GrantPolicy],
    default_subscription: Option<&str>,
    recently_checked: impl Fn(&str) -> bool,
) -> Plan {
    let Resolved {
        scope,
        principal_id,
    } = resolved;
    let subscription = scope.subscription().to_string();
    let Some(role) = role else {
        let message = format!(
            "role {} is not a role definition in subscription {subscription}",
            obj.spec.role
        );
        return report_waiting(
            obj,
            reasons::ROLE_NOT_FOUND,
            message,
            Some("ResolveRole"),
            Next::Resync,
        );
    };
    let guid = guid_of(role).unwrap_or_default();
    let resolved_role = ResolvedRole {
        guid: guid.clone(),
        name: role.role_name.clone(),
    };
    let expected = Expected::new(scope.clone(), principal_id.clone(), guid.clone());
    let ns = obj.namespace().unwrap_or_default();
    if let Decision::Denied(message) =
        policy::check_grant(policies, &ns, &resolved_role, &scope, default_subscription)
    {
        // A policy that stops allowing a grant revokes it: the assignment this controller made
        // is deleted (never an adopted one, never one another allowed grant still uses).
        let mut status = waiting(obj, reasons::DENIED_BY_POLICY, &message);
        status.scope = Some(scope.to_string());
        status.role_assignment_id = None;
        status.adopted = None;
        return Plan::Revoke {
            recently: recently_checked(&expected.denied_fingerprint()),
            expected,
            message,
            status,
        };
    }
    let fingerprint = format!(
        "{:?}/{}/{}/{}",
        obj.metadata.generation,
        principal_id,
        guid,
        scope.as_str().to_lowercase()
    );
    let current = obj.status.as_ref();
    let granted_before =
        current.is_some_and(|s| conditions::is_true(&s.conditions, types::GRANTED));
    let adopted_before = current.and_then(|s| s.adopted) == Some(true);
    if granted_before && recently_checked(&fingerprint) {
        // A pass caused by a status write (ours or the agent's): only the summary can change.
        // Our own assignment's id is recomputed, not copied from status.
        let scope = scope.to_string();
        let ours = assignment_id(&scope, &expected.name);
        let id = match current.and_then(|s| s.role_assignment_id.clone()) {
            Some(current) if adopted_before || current.eq_ignore_ascii_case(&ours) => current,
            _ => ours,
        };
        let adopted = current.and_then(|s| s.adopted).unwrap_or(false);
        let status = granted(obj, &scope, role, &principal_id, Some(id), adopted);
        return Plan::Report(Report::new(status, None, Next::Resync));
    }
    Plan::Ensure(Ensure {
        expected,
        role: role.clone(),
        definition_id: format!(
            "/subscriptions/{subscription}/providers/Microsoft.Authorization/roleDefinitions/{guid}"
        ),
        fingerprint,
        granted_before,
        adopted_before,
    })
}

/// Step 3 (pure): the status, the Event and the next look after ARM answered `found`.
pub fn settle(obj: &RoleGrant, e: &Ensure, found: Found) -> Report<RoleGrantStatus> {
    let scope = e.expected.scope.to_string();
    let principal_id = &e.expected.principal_id;
    let role = &e.role;
    let status = |id: String, adopted| granted(obj, &scope, role, principal_id, Some(id), adopted);
    match found {
        Found::Exists { id, adopted } => Report::new(status(id, adopted), None, Next::Resync),
        Found::Created { id } => {
            let id = if id.is_empty() {
                assignment_id(&scope, &e.expected.name)
            } else {
                id
            };
            let note = Note::normal(
                reasons::GRANTED,
                "CreateRoleAssignment",
                format!("granted {} at {scope}", role.role_name),
            );
            Report::new(status(id, false), Some(note), Next::Resync)
        }
        Found::Taken(found) => {
            let note = Note::normal(
                reasons::ADOPTED,
                "AdoptRoleAssignment",
                format!(
                    "an assignment of {} at {scope} already existed ({}); adopted, it will not be deleted",
                    role.role_name, found.name
                ),
            );
            Report::new(status(found.id, true), Some(note), Next::Resync)
        }
        Found::LimitReached { used, limit } => {
            let subscription = e.expected.scope.subscription();
            let message = format!(
                "subscription {subscription} has {used} role assignments, the limit is {limit} (Azure's is fixed at 4000); not asking Azure for another. Remove assignments there or grant through groups"
            );
            let mut status = waiting(obj, reasons::ROLE_ASSIGNMENT_LIMIT, &message);
            status.scope = Some(scope);
            status.principal_id = Some(principal_id.clone());
            let room = budget::Room::Full { used, limit };
            budget::set_budget(&mut status, budget_condition(subscription, room).as_ref());
            let note = (!ready_reason_is(obj, reasons::ROLE_ASSIGNMENT_LIMIT)).then(|| {
                Note::warning(
                    reasons::ROLE_ASSIGNMENT_LIMIT,
                    "CreateRoleAssignment",
                    message,
                )
            });
            Report::new(status, note, Next::Resync)
        }
        Found::PrincipalNotFound {
            attempts,
            retry_after,
        } => {
            let (message, next) = if attempts < PRINCIPAL_NOT_FOUND_ATTEMPTS {
                (
                    format!(
                        "Entra ID does not know principal {principal_id} yet (new identities take a while to replicate); attempt {attempts}, retrying"
                    ),
                    Next::After(
                        backoff(attempts.saturating_sub(1), retry_after)
                            .min(Duration::from_secs(60)),
                    ),
                )
            } else {
                (
                    format!(
                        "Entra ID still does not know principal {principal_id} after {attempts} attempts; retrying at the next resync"
                    ),
                    Next::Resync,
                )
            };
            let mut status = waiting(obj, reasons::PRINCIPAL_NOT_FOUND, &message);
            status.scope = Some(scope);
            status.principal_id = Some(principal_id.clone());
            Report::new(status, None, next)
        }
    }
}

/// The `Budget` condition of a grant whose subscription stands at `room`.
fn budget_condition(subscription: &str, room: budget::Room) -> Option<(String, String)> {
    budget::condition_for(
        room,
        &format!("subscription {subscription}"),
        reasons::ROLE_ASSIGNMENTS_NEAR_LIMIT,
        reasons::ROLE_ASSIGNMENT_LIMIT,
    )
}

/// Step 4 (pure): the `Budget` condition after ARM answered, from the subscription's count
/// (`room`: where it stands with this grant's assignment; `None`: not counted, left as it was).
/// A grant whose new assignment takes the subscription to 90% of its limit or more is warned
/// about with an Event.
pub fn budgeted(
    obj: &RoleGrant,
    e: &Ensure,
    mut report: Report<RoleGrantStatus>,
    room: Option<budget::Room>,
    created: bool,
) -> Report<RoleGrantStatus> {
    let (Some(room), Some(status)) = (room, report.status.as_mut()) else {
        return report;
    };
    let subscription = e.expected.scope.subscription();
    let condition = budget_condition(subscription, room);
    let was_warned = budget::budget_reason_is(
        obj.status
            .as_ref()
            .map(|s| s.conditions.as_slice())
            .unwrap_or_default(),
        reasons::ROLE_ASSIGNMENTS_NEAR_LIMIT,
    );
    budget::set_budget(status, condition.as_ref());
    if created
        && !was_warned
        && let Some((reason, message)) = condition
    {
        let granted = report
            .note
            .as_ref()
            .map(|n| n.message.clone())
            .unwrap_or_default();
        report.note = Some(Note::warning(
            &reason,
            "CreateRoleAssignment",
            format!("{granted}; {message}"),
        ));
    }
    report
}

/// The Event of a grant denied by policy: the revocation, or the denial when it is new.
pub fn denied_note(
    obj: &RoleGrant,
    message: &str,
    expected: &Expected,
    revoked: bool,
) -> Option<Note> {
    if revoked {
        Some(Note::warning(
            reasons::DENIED_BY_POLICY,
            "RevokeRoleAssignment",
            format!(
                "{message}; deleted role assignment {} at {}",
                expected.name, expected.scope
            ),
        ))
    } else if !ready_reason_is(obj, reasons::DENIED_BY_POLICY) {
        Some(Note::warning(
            reasons::DENIED_BY_POLICY,
            "CheckPolicy",
            message,
        ))
    } else {
        None
    }
}

/// Not granted: `Granted` and `Ready` False with `reason`; a Warning Event from `step` when the
/// reason is new.
fn report_waiting(
    obj: &RoleGrant,
    reason: &str,
    message: String,
    step: Option<&'static str>,
    next: Next,
) -> Plan {
    let note = step
        .filter(|_| !ready_reason_is(obj, reason))
        .map(|step| Note::warning(reason, step, message.clone()));
    Plan::Report(Report::new(waiting(obj, reason, &message), note, next))
}

/// A status that starts from the controller's own fields of the current status.
pub fn base(obj: &RoleGrant) -> RoleGrantStatus {
    let current = obj.status.as_ref();
    RoleGrantStatus {
        observed_generation: obj.metadata.generation,
        conditions: own_conditions(obj, OWNED_CONDITIONS),
        scope: current.and_then(|s| s.scope.clone()),
        role_assignment_id: current.and_then(|s| s.role_assignment_id.clone()),
        role_definition_id: current.and_then(|s| s.role_definition_id.clone()),
        principal_id: current.and_then(|s| s.principal_id.clone()),
        adopted: current.and_then(|s| s.adopted),
        access: None,
        last_check_error: None,
    }
}

fn waiting(obj: &RoleGrant, reason: &str, message: &str) -> RoleGrantStatus {
    let mut status = base(obj);
    set_false(
        &mut status,
        &[types::GRANTED, types::READY],
        reason,
        message,
    );
    status
}

fn granted(
    obj: &RoleGrant,
    scope: &str,
    role: &RoleDefinition,
    principal_id: &str,
    id: Option<String>,
    adopted: bool,
) -> RoleGrantStatus {
    let mut status = base(obj);
    status.scope = Some(scope.to_string());
    status.role_assignment_id = id;
    status.role_definition_id = Some(role.id.clone());
    status.principal_id = Some(principal_id.to_string());
    status.adopted = Some(adopted);
    let message = if adopted {
        format!(
            "{} at {scope} was already assigned; adopted, never deleted by this controller",
            role.role_name
        )
    } else {
        format!("{} is assigned at {scope}", role.role_name)
    };
    set(
        &mut status,
        types::GRANTED,
        true,
        reasons::GRANTED,
        &message,
    );
    let (ok, reason, message) = if !obj.spec.verify_access {
        (true, reasons::READY.to_string(), message)
    } else {
        match obj.status.as_ref().and_then(|s| conditions::find(&s.conditions, types::ACCESS_VERIFIED)) {
            Some(c) if c.status == conditions::status::TRUE => (true, reasons::READY.to_string(), format!("{message}; the agent verified access with the identity's token")),
            Some(c) => (false, c.reason.clone(), format!("granted, but the agent's access check did not pass yet: {}", c.message)),
            None => (false, reasons::AWAITING_ACCESS_CHECK.to_string(), "granted; waiting for an agent on a VM bound to this identity to verify access (or set verifyAccess: false)".to_string()),
        }
    };
    set(&mut status, types::READY, ok, &reason, &message);
    status
}
