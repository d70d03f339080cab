//! The federated identity credential and the service account's annotations: written only when
//! they differ, one credential writer per identity at a time, never a 21st credential, and
//! removed only when this binding made them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::ServiceAccount;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};

use super::super::context::{Context, object_key};
use super::super::error::ReconcileError;
use super::{
    AzureIdentity, CLIENT_ID_ANNOTATION, DRIFT_DETECTED, MAX_CREDENTIALS_PER_IDENTITY,
    TENANT_ID_ANNOTATION,
};
use crate::api::IdentityBinding;
use crate::azure::federated::FederatedCredential;

/// One writer at a time per identity: Azure refuses concurrent federated identity credential
/// writes on one identity (`ConcurrentFederatedIdentityCredentialsWritesForSingleManagedIdentity`).
/// It also remembers which credentials this process wrote, so that one it created in a pass
/// that failed later is never mistaken for someone else's.
#[derive(Default)]
pub struct IdentityLocks {
    locks: parking_lot::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    written: parking_lot::Mutex<HashSet<String>>,
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

/// Whether the credential is in place.
pub(super) enum Ensured {
    /// It trusts the service account (`adopted`: someone else made it).
    Present {
        credential: FederatedCredential,
        adopted: bool,
    },
    /// The identity has Azure's maximum of credentials already (how many).
    LimitReached(usize),
}

/// Make the credential exist as desired, writing only when it differs, under the identity's lock.
pub(super) async fn ensure_credential(
    ctx: &Context,
    obj: &IdentityBinding,
    id: &AzureIdentity,
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

/// Delete the credential this binding made (never an adopted one), then the service account's
/// annotations when they still name this identity.
pub(super) async fn remove_trust(
    ctx: &Context,
    obj: &IdentityBinding,
    id: &AzureIdentity,
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
