//! The federated identity credential and the service account's annotations: written only when
//! they differ, one credential writer per identity at a time, never a 21st credential, and
//! removed only when this binding made them.
//!
//! The credential always goes by its deterministic name ([`credential_name`] over the issuer,
//! namespace and service account), never by a name read from status: only that name is ever
//! written or deleted, and a delete first checks that the credential there trusts this
//! cluster's issuer for this service account. One with the same trust under another name is
//! someone else's (`adopted`) and is never deleted.

use k8s_openapi::api::core::v1::ServiceAccount;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};

use super::super::budget::{Room, room_for_one};
use super::super::context::Context;
use super::super::error::ReconcileError;
use super::super::meta_patch::MetaMerge;
use super::{
    AzureIdentity, CLIENT_ID_ANNOTATION, DRIFT_DETECTED, MAX_CREDENTIALS_PER_IDENTITY,
    TENANT_ID_ANNOTATION, credential_name, subject,
};
use uami_api::IdentityBinding;
use uami_azure::federated::FederatedCredential;

/// Whether the credential is in place.
pub(super) enum Ensured {
    /// It trusts the service account, under the controller's name for it.
    Ours(FederatedCredential),
    /// It trusts the service account under another name: someone else made it, and it is used
    /// but never deleted.
    Adopted(FederatedCredential),
    /// The identity has Azure's maximum of credentials already (how many).
    LimitReached(usize),
}

/// Make the credential exist as desired (under its deterministic name, `desired.name`), writing
/// only when it differs, under the identity's lock.
pub(super) async fn ensure_credential(
    ctx: &Context,
    obj: &IdentityBinding,
    id: &AzureIdentity,
    desired: FederatedCredential,
    assigned_before: bool,
) -> Result<Ensured, ReconcileError> {
    let api = &ctx.azure.federated;
    let lock = ctx.fic_locks.of(&id.coordinates);
    let _writer = lock.lock().await;
    let current = api
        .get_federated_credential(&id.coordinates, &desired.name)
        .await
        .map_err(ReconcileError::arm("GetFederatedCredential"))?;
    if let Some(c) = current.as_ref().filter(|c| c.same_trust(&desired)) {
        return Ok(Ensured::Ours(c.clone()));
    }
    let mut to_write = desired;
    let mut listed = None;
    if current.is_none() {
        let all = api
            .list_federated_credentials(&id.coordinates)
            .await
            .map_err(ReconcileError::arm("ListFederatedCredentials"))?;
        ctx.budgets
            .set_federated_credentials(&id.coordinates, all.len());
        if let Some(existing) = all.iter().find(|c| c.same_trust(&to_write)) {
            return Ok(Ensured::Adopted(existing.clone()));
        }
        if all.len() >= MAX_CREDENTIALS_PER_IDENTITY {
            return Ok(Ensured::LimitReached(all.len()));
        }
        listed = Some(all.len());
    }
    if assigned_before {
        tracing::info!(credential = %to_write.name, "federated identity credential missing or changed; repairing drift");
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
    if let Some(before) = listed {
        ctx.budgets
            .set_federated_credentials(&id.coordinates, before + 1);
        if let Room::Near { .. } = room_for_one(before, MAX_CREDENTIALS_PER_IDENTITY)
            && let Some((reason, message)) = ctx.budgets.credential_condition(&id.coordinates)
        {
            ctx.event(obj, true, &reason, "CreateFederatedCredential", message)
                .await;
        }
    }
    Ok(Ensured::Ours(to_write))
}

/// Put the client id and tenant id on the service account, as the workload identity webhook
/// expects them; a merge patch only when they differ.
pub(super) async fn annotate(
    ctx: &Context,
    obj: &IdentityBinding,
    sa_api: &Api<ServiceAccount>,
    account: &ServiceAccount,
    id: &AzureIdentity,
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
    let patch = want
        .into_iter()
        .fold(MetaMerge::default(), |patch, (k, v)| patch.annotate(k, v));
    sa_api
        .patch(
            &account.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .map_err(ReconcileError::kube("AnnotateServiceAccount"))?;
    Ok(())
}

/// Delete the credential this binding made: the one under its deterministic name on the
/// identity as Azure has it, and only when it trusts this cluster's issuer for this service
/// account (never one under another name, never one with another trust); then the service
/// account's annotations when they still name this identity. Returns whether anything was
/// removed.
pub(super) async fn remove_trust(
    ctx: &Context,
    id: &AzureIdentity,
    ns: &str,
    sa: &str,
) -> Result<bool, ReconcileError> {
    let mut removed = false;
    if let Some(wl) = &ctx.settings.workload {
        let name = credential_name(&wl.oidc_issuer, ns, sa);
        let lock = ctx.fic_locks.of(&id.coordinates);
        let _writer = lock.lock().await;
        let api = &ctx.azure.federated;
        let found = api
            .get_federated_credential(&id.coordinates, &name)
            .await
            .map_err(ReconcileError::arm("GetFederatedCredential"))?;
        match found {
            Some(c) if c.issuer == wl.oidc_issuer && c.subject == subject(ns, sa) => {
                api.delete_federated_credential(&id.coordinates, &name)
                    .await
                    .map_err(ReconcileError::arm("DeleteFederatedCredential"))?;
                removed = true;
            }
            Some(c) => {
                tracing::warn!(credential = %c.name, issuer = %c.issuer, subject = %c.subject, "the credential under this binding's name trusts something else; left alone");
            }
            None => {}
        }
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
                &Patch::Merge(
                    &MetaMerge::default()
                        .remove_annotation(CLIENT_ID_ANNOTATION)
                        .remove_annotation(TENANT_ID_ANNOTATION),
                ),
            )
            .await
            .map_err(ReconcileError::kube("AnnotateServiceAccount"))?;
        removed = true;
    }
    Ok(removed)
}
