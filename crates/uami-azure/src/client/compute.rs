//! [`ComputeApi`] over ARM (VMs and scale sets, with their long-running operations).

use async_trait::async_trait;
use reqwest::Method;
use reqwest::header::{ETAG, IF_MATCH};
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;

use super::ArmClient;
use super::transport::{ACCEPTED, FOUND, Request, decoded};
use crate::compute::{
    ComputeIdentity, ComputeResource, ComputeTarget, LroKind, LroPoll, OperationStatus,
    PatchOutcome, TargetKind, UserAssignedInfo,
};
use crate::{ArmError, ComputeApi, api_versions};

/// A VM or scale set as ARM answers it: its id is required, the rest may be absent.
#[derive(Deserialize)]
struct WireCompute {
    id: String,
    #[serde(default)]
    etag: Option<String>,
    #[serde(default)]
    identity: Option<WireComputeIdentity>,
    #[serde(default)]
    properties: Option<WireComputeProperties>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireComputeIdentity {
    #[serde(default, rename = "type")]
    type_: Option<String>,
    #[serde(default)]
    principal_id: Option<String>,
    #[serde(default)]
    user_assigned_identities: Option<BTreeMap<String, Option<WireUserAssigned>>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct WireUserAssigned {
    #[serde(default)]
    principal_id: Option<String>,
    #[serde(default)]
    client_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireComputeProperties {
    #[serde(default)]
    provisioning_state: Option<String>,
}

/// `v` as a [`ComputeResource`].
fn parse_compute(v: Value) -> Result<ComputeResource, serde_json::Error> {
    let w: WireCompute = serde_json::from_value(v)?;
    let identity = w.identity;
    let (type_, principal_id, user_assigned) = match identity {
        Some(i) => (i.type_, i.principal_id, i.user_assigned_identities),
        None => (None, None, None),
    };
    let user_assigned = user_assigned
        .into_iter()
        .flatten()
        .map(|(k, v)| {
            let v = v.unwrap_or_default();
            let info = UserAssignedInfo {
                principal_id: v.principal_id,
                client_id: v.client_id,
            };
            (k, info)
        })
        .collect();
    Ok(ComputeResource {
        id: w.id,
        etag: w.etag,
        identity: ComputeIdentity {
            type_: type_.unwrap_or_else(|| "None".to_string()),
            principal_id,
            user_assigned,
        },
        provisioning_state: w.properties.and_then(|p| p.provisioning_state),
    })
}

/// The (get, update) operations of a target's resource type.
fn compute_ops(target: &ComputeTarget) -> (&'static str, &'static str) {
    match target.kind {
        TargetKind::VirtualMachine => ("VirtualMachines_Get", "VirtualMachines_Update"),
        TargetKind::VirtualMachineScaleSet => (
            "VirtualMachineScaleSets_Get",
            "VirtualMachineScaleSets_Update",
        ),
    }
}

/// An `Azure-AsyncOperation` body: `status` with the operation's error when it failed.
fn async_operation_status(v: &Value, retry_after: Option<std::time::Duration>) -> OperationStatus {
    match v["status"].as_str() {
        Some("Succeeded") | None => OperationStatus::Succeeded,
        Some("Failed") | Some("Canceled") => {
            let text = |field: &str, default: &str| {
                v["error"][field].as_str().unwrap_or(default).to_string()
            };
            OperationStatus::Failed(ArmError {
                operation: "AsyncOperation_Get",
                status: Some(200),
                code: text("code", "OperationFailed"),
                message: text("message", "the long-running operation failed"),
                retry_after: None,
            })
        }
        Some(_) => OperationStatus::InProgress { retry_after },
    }
}

#[async_trait]
impl ComputeApi for ArmClient {
    async fn get_compute(
        &self,
        target: &ComputeTarget,
    ) -> Result<Option<ComputeResource>, ArmError> {
        let (op, _) = compute_ops(target);
        let url = self.url(&target.id(), api_versions::COMPUTE, &[]);
        let r = self.call(Request::get(op, url), FOUND).await?;
        if r.status == 404 {
            return Ok(None);
        }
        // The `ETag` header stands in for a body without `etag`.
        let etag = r.header(ETAG);
        let c = decoded(op, r.json(op)?, parse_compute)?;
        Ok(Some(ComputeResource {
            etag: c.etag.or(etag),
            ..c
        }))
    }

    async fn patch_identity(
        &self,
        target: &ComputeTarget,
        body: &Value,
        if_match: Option<&str>,
    ) -> Result<PatchOutcome, ArmError> {
        let (_, op) = compute_ops(target);
        let url = self.url(&target.id(), api_versions::COMPUTE, &[]);
        let req = Request::new(op, Method::PATCH, url)
            .json(body)
            .precondition(IF_MATCH, if_match);
        let r = self.call(req, ACCEPTED).await?;
        // D3: poll `Azure-AsyncOperation` when present, otherwise `Location`.
        let poll = match (r.header("azure-asyncoperation"), r.header("location")) {
            (Some(u), _) => Some(LroPoll {
                url: self.follow(op, "Azure-AsyncOperation", &u)?,
                kind: LroKind::AsyncOperation,
            }),
            (None, Some(u)) => Some(LroPoll {
                url: self.follow(op, "Location", &u)?,
                kind: LroKind::Location,
            }),
            (None, None) => None,
        };
        let v = r.json_or_null();
        let state = v["properties"]["provisioningState"]
            .as_str()
            .unwrap_or("Succeeded");
        let terminal = matches!(state, "Succeeded" | "Failed" | "Canceled");
        match poll {
            Some(poll) if r.status == 202 || !terminal => Ok(PatchOutcome::InProgress {
                poll,
                retry_after: r.retry_after(),
            }),
            None if r.status == 202 => Err(ArmError::local(
                op,
                "InvalidResponse",
                "ARM accepted the request (202) without a Location or Azure-AsyncOperation to poll",
            )),
            _ => decoded(op, v, parse_compute).map(PatchOutcome::Done),
        }
    }

    async fn poll_operation(&self, poll: &LroPoll) -> Result<OperationStatus, ArmError> {
        match poll.kind {
            LroKind::Location => {
                // D3: the Location URL answers 202 while the operation runs, 200 or 204 when it
                // succeeded, and the operation's error (4xx/5xx with ARM's envelope) when it
                // failed.
                const OP: &str = "LocationOperation_Get";
                let r = self.send(&Request::get(OP, poll.url.clone())).await?;
                Ok(match r.status {
                    202 => OperationStatus::InProgress {
                        retry_after: r.retry_after(),
                    },
                    200 | 201 | 204 => OperationStatus::Succeeded,
                    _ => OperationStatus::Failed(r.error(OP)),
                })
            }
            LroKind::AsyncOperation => {
                const OP: &str = "AsyncOperation_Get";
                let r = self
                    .call(Request::get(OP, poll.url.clone()), &[200, 202, 204])
                    .await?;
                if r.status == 202 {
                    return Ok(OperationStatus::InProgress {
                        retry_after: r.retry_after(),
                    });
                }
                Ok(async_operation_status(&r.json_or_null(), r.retry_after()))
            }
        }
    }
}
