//! The status of a service account binding: what it waits for, or what was made and what the
//! token check found.

use crate::outcome::write_owned;
use kube::runtime::controller::Action;

use super::super::binding::plan::base_with;
use super::super::context::Context;
use super::super::error::ReconcileError;
use super::super::outcome::Next;
use super::super::reasons;
use super::state::TokenCheck;
use super::{AzureIdentity, sa_name};
use uami_api::conditions::{NewCondition, types};
use uami_api::{IdentityBinding, IdentityBindingStatus};
use uami_azure::federated::FederatedCredential;
use uami_kube::status;

/// Conditions this controller writes on a service account binding.
const OWNED_CONDITIONS: &[&str] = &[types::ASSIGNED, types::TOKEN_ACQUIRED, types::READY];

pub(super) fn base(obj: &IdentityBinding) -> IdentityBindingStatus {
    let current = obj.status.as_ref();
    IdentityBindingStatus {
        federated_credential_name: current.and_then(|s| s.federated_credential_name.clone()),
        token: current.and_then(|s| s.token.clone()),
        access: current.map(|s| s.access.clone()).unwrap_or_default(),
        ..base_with(obj, OWNED_CONDITIONS)
    }
}

fn set(obj: &IdentityBinding, status: &mut IdentityBindingStatus, c: NewCondition) {
    status::set_in(&mut status.conditions, obj.metadata.generation, c);
}

/// Not assigned (yet): `Assigned` and `Ready` False with `reason`.
pub(super) fn waiting(obj: &IdentityBinding, reason: &str, message: &str) -> IdentityBindingStatus {
    let mut status = base(obj);
    status::set_false(
        &mut status,
        &[types::ASSIGNED, types::READY],
        reason,
        message,
    );
    status
}

pub(super) fn summary(
    obj: &IdentityBinding,
    id: &AzureIdentity,
    credential: &FederatedCredential,
    adopted: bool,
    check: &TokenCheck,
    default_binding: Option<&str>,
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
    let annotated = match default_binding {
        None => "the service account carries the identity's client id".to_string(),
        Some("") => "the service account's client id annotation is left as it was while several of its bindings say default: true".to_string(),
        Some(other) => format!(
            "the service account's client id is the default identity's, of IdentityBinding {other} (pods choose this one by its client id)"
        ),
    };
    let message = if adopted {
        format!(
            "federated identity credential {} already trusted service account {sa}; it will not be deleted with this binding; {annotated}",
            credential.name
        )
    } else {
        format!(
            "federated identity credential {} trusts service account {sa}; {annotated}",
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
    } else if check.condition.reason == reasons::AWAITING_TOKEN {
        NewCondition::new(
            types::READY,
            false,
            reasons::AWAITING_TOKEN,
            check.condition.message.clone(),
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
const OWNED_FIELDS: &[&str] = &[
    "targetResourceId",
    "assigned",
    "adopted",
    "observedGeneration",
    "federatedCredentialName",
    "token",
    "access",
];

/// Write the status of a binding that waits for `reason`, and look again `next`.
pub(super) async fn write_waiting(
    obj: &IdentityBinding,
    ctx: &Context,
    reason: &str,
    message: &str,
    next: Next,
) -> Result<Action, ReconcileError> {
    write_status(obj, ctx, waiting(obj, reason, message)).await?;
    Ok(next.action(ctx))
}

pub(super) async fn write_status(
    obj: &IdentityBinding,
    ctx: &Context,
    status: IdentityBindingStatus,
) -> Result<(), ReconcileError> {
    write_owned(ctx, obj, &status, OWNED_FIELDS).await
}
