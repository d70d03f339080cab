//! What the agent writes: `TokenAcquired` and the token's metadata on a binding, `AccessVerified`
//! and `access` on a grant, each under the agent's own field manager and only when they change.

use kube::ResourceExt;

use super::{Agent, CheckFailure, FIELD_MANAGER, MAX_INSTANCES, Token, TokenFailure};
use crate::api::binding::{InstanceTokenStatus, TokenStatus};
use crate::api::conditions::{NewCondition, types};
use crate::api::{IdentityBinding, RoleGrant};
use crate::controller::status::{self, Reported};

impl Agent {
    /// Report the token (metadata only) or why there is none on binding `b`.
    pub(super) async fn write_binding(
        &self,
        b: &IdentityBinding,
        result: &Result<Token, TokenFailure>,
    ) -> kube::Result<()> {
        let checked_by = self.me.checked_by();
        let (cond, token) = match result {
            Ok(t) => (
                NewCondition::new(
                    types::TOKEN_ACQUIRED,
                    true,
                    "TokenAcquired",
                    format!(
                        "{checked_by} obtained a token for {} through IMDS",
                        t.meta.resource.clone().unwrap_or_default()
                    ),
                ),
                Some(TokenStatus {
                    checked_by: Some(checked_by.clone()),
                    ..t.meta.clone()
                }),
            ),
            Err(e) => (
                failed(types::TOKEN_ACQUIRED, &checked_by, &e.reason, &e.message),
                None,
            ),
        };
        let own = status::own_condition(b.conditions(), cond, b.metadata.generation);
        let mut report = serde_json::json!({ "conditions": own });
        match &self.me.scale_set {
            None => {
                if let Some(token) = token {
                    report["token"] = serde_json::to_value(token).unwrap_or_default();
                }
            }
            Some(_) => {
                let instances = b
                    .status
                    .as_ref()
                    .map(|s| s.instances.as_slice())
                    .unwrap_or_default();
                let known = instances.iter().any(|i| i.instance_id == self.me.name);
                if !known && instances.len() >= MAX_INSTANCES {
                    tracing::warn!(binding = %b.name_any(), "instance list is full; not reporting this instance");
                } else {
                    let entry = InstanceTokenStatus {
                        instance_id: self.me.name.clone(),
                        acquired: result.is_ok(),
                        reason: result.as_ref().err().map(|e| e.reason.clone()),
                        token,
                    };
                    report["instances"] = serde_json::json!([entry]);
                }
            }
        }
        status::report(&self.client, b, &report, &report, &self.field_manager()).await
    }

    /// Report the access check of grant `g` at `scope`.
    pub(super) async fn write_grant(
        &self,
        g: &RoleGrant,
        scope: &str,
        outcome: Result<u16, CheckFailure>,
    ) -> kube::Result<()> {
        let checked_by = self.me.checked_by();
        let (cond, access) = match outcome {
            Ok(code) => {
                let (cond, access) =
                    status::access_checked(&checked_by, checked_by.clone(), scope, code);
                (cond, Some(access))
            }
            Err(e) => (
                failed(types::ACCESS_VERIFIED, &checked_by, &e.reason, &e.message),
                None,
            ),
        };
        let own = status::own_condition(g.conditions(), cond, g.metadata.generation);
        let mut report = serde_json::json!({ "conditions": own });
        if let Some(access) = &access {
            report["access"] = serde_json::to_value(access).unwrap_or_default();
        }
        // Several VMs may check one grant: `checkedBy` alone changing is not worth a write.
        let mut compare = report.clone();
        if let Some(a) = compare.get_mut("access").and_then(|a| a.as_object_mut()) {
            a.remove("checkedBy");
        }
        status::report(&self.client, g, &report, &compare, FIELD_MANAGER).await
    }
}

/// Condition `type_` False with the reason of a check that could not run on `checked_by`.
fn failed(type_: &str, checked_by: &str, reason: &str, message: &str) -> NewCondition {
    NewCondition::new(type_, false, reason, format!("{checked_by}: {message}"))
}
