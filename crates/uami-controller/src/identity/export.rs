//! The ids of an identity published into a ConfigMap of its namespace (`spec.exportTo`).

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};

use super::super::context::Context;
use super::super::error::ReconcileError;
use uami_api::UserAssignedIdentity;
use uami_azure::identity::Identity;
use uami_kube::status::FIELD_MANAGER;

/// What became of the export.
pub(super) enum Export {
    /// The ConfigMap holds the ids.
    Written,
    /// The ConfigMap exists and is not this identity's: untouched.
    Refused(String),
}

/// Publish the ids into ConfigMap `name`, which this identity owns (controller owner reference,
/// so Kubernetes deletes it with the identity). A ConfigMap that exists without that reference
/// belongs to someone else: it is refused, never written, so it is never adopted into the
/// identity's garbage collection either.
pub(super) async fn export_config_map(
    obj: &UserAssignedIdentity,
    ctx: &Context,
    name: &str,
    identity: &Identity,
) -> Result<Export, ReconcileError> {
    let ns = obj.namespace().unwrap_or_default();
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ns);
    let uid = obj.uid().unwrap_or_default();
    let existing = api
        .get_opt(name)
        .await
        .map_err(ReconcileError::kube("GetConfigMap"))?;
    let foreign = || {
        Export::Refused(format!(
            "ConfigMap {name} exists and was not created for this identity; it is left untouched (choose another spec.exportTo.configMap)"
        ))
    };
    if let Some(existing) = &existing {
        let ours = existing.owner_references().iter().any(|r| {
            r.controller == Some(true) && r.uid == uid && r.kind == UserAssignedIdentity::kind(&())
        });
        if !ours {
            return Ok(foreign());
        }
    }
    let cm = ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(ns.clone()),
            labels: Some(std::collections::BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_string(),
                "uami-controller".to_string(),
            )])),
            owner_references: obj.controller_owner_ref(&()).map(|o| vec![o]),
            // Ours: applied on the version just read, so one replaced since then is not written.
            resource_version: existing.as_ref().and_then(|e| e.resource_version()),
            ..Default::default()
        },
        data: Some(std::collections::BTreeMap::from([
            ("clientId".to_string(), identity.client_id.clone()),
            ("principalId".to_string(), identity.principal_id.clone()),
            ("tenantId".to_string(), identity.tenant_id.clone()),
            ("resourceId".to_string(), identity.id.clone()),
        ])),
        ..Default::default()
    };
    if existing.is_none() {
        // A new ConfigMap is created, never applied: one that appeared since the read (someone
        // else's) makes the create fail instead of being taken over with the owner reference.
        let pp = kube::api::PostParams {
            field_manager: Some(FIELD_MANAGER.to_string()),
            ..Default::default()
        };
        match api.create(&pp, &cm).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => return Ok(foreign()),
            Err(e) => return Err(ReconcileError::kube("ExportConfigMap")(e)),
        }
    } else {
        // A ConfigMap always serializes; were it not to, the API server would refuse the body.
        let mut body = serde_json::to_value(&cm).unwrap_or_default();
        body["apiVersion"] = "v1".into();
        body["kind"] = "ConfigMap".into();
        api.patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
        .map_err(ReconcileError::kube("ExportConfigMap"))?;
    }
    Ok(Export::Written)
}
