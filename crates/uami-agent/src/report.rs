//! What the agent writes: `TokenAcquired` and the token's metadata on a binding, `AccessVerified`
//! and `access` on a grant, each under the agent's own field manager and only when they change.
//! A passing failure keeps the last definitive result and adds `lastCheckError`; the next
//! answer removes it.

use kube::ResourceExt;
use serde_json::{Value, json};

use super::{Agent, CheckFailure, FIELD_MANAGER, MAX_INSTANCES, Token, TokenFailure};
use uami_api::CheckError;
use uami_api::binding::{AccessCheck, InstanceTokenStatus, TokenStatus};
use uami_api::conditions::{self, NewCondition, Reason, types};
use uami_api::{IdentityBinding, RoleGrant};
use uami_kube::status::{self, Reported};

/// What a token check found.
pub(super) enum TokenReport {
    /// A token, with its metadata.
    Acquired(TokenStatus),
    /// A definitive failure: `TokenAcquired` False with this reason.
    Failed { reason: String, message: String },
    /// A passing failure: the last verified result stays.
    Passing { reason: String, message: String },
}

impl TokenReport {
    pub(super) fn acquired(t: &Token) -> Self {
        Self::Acquired(t.meta.clone())
    }

    pub(super) fn failed(reason: &str, message: &str) -> Self {
        Self::Failed {
            reason: reason.to_string(),
            message: message.to_string(),
        }
    }

    pub(super) fn passing(e: &TokenFailure) -> Self {
        Self::Passing {
            reason: e.reason.clone(),
            message: e.message.clone(),
        }
    }
}

/// What an access check found.
pub(super) enum AccessReport {
    /// ARM or the data plane answered with this HTTP status.
    Answered(u16),
    /// The scope cannot be checked (definitive).
    Failed(CheckFailure),
    /// No answer this time (passing).
    Passing(CheckFailure),
}

impl Agent {
    /// Report the token (metadata only), why there is none, or why it was not renewed, on
    /// binding `b`.
    pub(super) async fn write_binding(
        &self,
        b: &IdentityBinding,
        report: TokenReport,
    ) -> kube::Result<()> {
        let checked_by = self.me.checked_by();
        let current = b.status.as_ref();
        let held = conditions::find(b.conditions(), types::TOKEN_ACQUIRED)
            .filter(|c| c.status == conditions::status::TRUE);
        let (own, token, acquired, error) = match report {
            TokenReport::Acquired(meta) => {
                let cond = NewCondition::new(
                    types::TOKEN_ACQUIRED,
                    true,
                    Reason::TokenAcquired.as_str(),
                    format!(
                        "{checked_by} obtained a token for {} through IMDS",
                        meta.resource.clone().unwrap_or_default()
                    ),
                );
                let token = TokenStatus {
                    checked_by: Some(checked_by.clone()),
                    ..meta
                };
                let own = status::own_condition(b.conditions(), cond, b.metadata.generation);
                (own, Some(token), Ok(()), None)
            }
            TokenReport::Failed { reason, message } => {
                let cond = failed(types::TOKEN_ACQUIRED, &checked_by, &reason, &message);
                let own = status::own_condition(b.conditions(), cond, b.metadata.generation);
                (own, None, Err(reason), None)
            }
            TokenReport::Passing { reason, message } => {
                let since = current.and_then(|s| s.last_check_error.as_ref());
                let error = check_error(since, &reason, &message, &checked_by);
                match (held, &self.me.scale_set) {
                    // A verified token stays verified: the failure is noted beside it.
                    (Some(c), None) => {
                        let token = current.and_then(|s| s.token.clone());
                        (vec![c.clone()], token, Ok(()), Some(error))
                    }
                    (Some(c), Some(_))
                        if own_instance(b, &self.me.name).is_some_and(|i| i.acquired) =>
                    {
                        let token = own_instance(b, &self.me.name).and_then(|i| i.token.clone());
                        (vec![c.clone()], token, Ok(()), Some(error))
                    }
                    _ => {
                        let cond = failed(types::TOKEN_ACQUIRED, &checked_by, &reason, &message);
                        let own =
                            status::own_condition(b.conditions(), cond, b.metadata.generation);
                        (own, None, Err(reason), Some(error))
                    }
                }
            }
        };
        let mut report = json!({ "conditions": own });
        match &self.me.scale_set {
            None => {
                if let Some(token) = token {
                    report["token"] = serde_json::to_value(token).unwrap_or_default();
                }
            }
            Some(_) => {
                let instances = current.map(|s| s.instances.as_slice()).unwrap_or_default();
                let known = instances.iter().any(|i| i.instance_id == self.me.name);
                if !known && instances.len() >= MAX_INSTANCES {
                    tracing::warn!(binding = %b.name_any(), "instance list is full; not reporting this instance");
                } else {
                    let entry = InstanceTokenStatus {
                        instance_id: self.me.name.clone(),
                        acquired: acquired.is_ok(),
                        reason: acquired.err(),
                        token,
                    };
                    report["instances"] = json!([entry]);
                }
            }
        }
        let stale = current.and_then(|s| s.last_check_error.as_ref());
        let compare = with_error(&mut report, error.as_ref(), stale.is_some());
        status::report(&self.client, b, &report, &compare, &self.field_manager()).await
    }

    /// Report the access check `check` of grant `g`.
    pub(super) async fn write_grant(
        &self,
        g: &RoleGrant,
        check: &AccessCheck,
        outcome: AccessReport,
    ) -> kube::Result<()> {
        let checked_by = self.me.checked_by();
        let current = g.status.as_ref();
        let held = conditions::find(g.conditions(), types::ACCESS_VERIFIED);
        let (own, access, error) = match outcome {
            AccessReport::Answered(code) => {
                let (cond, access) = status::access_checked(
                    &checked_by,
                    checked_by.clone(),
                    &check.scope,
                    check.plane,
                    code,
                );
                let own = status::own_condition(g.conditions(), cond, g.metadata.generation);
                (own, Some(access), None)
            }
            AccessReport::Failed(e) => {
                let cond = failed(types::ACCESS_VERIFIED, &checked_by, &e.reason, &e.message);
                let own = status::own_condition(g.conditions(), cond, g.metadata.generation);
                (own, None, None)
            }
            AccessReport::Passing(e) => {
                let since = current.and_then(|s| s.last_check_error.as_ref());
                let error = check_error(since, &e.reason, &e.message, &checked_by);
                match held {
                    // The last answer stays: the failure is noted beside it.
                    Some(c) => {
                        let access = current.and_then(|s| s.access.clone());
                        (vec![c.clone()], access, Some(error))
                    }
                    None => {
                        let cond =
                            failed(types::ACCESS_VERIFIED, &checked_by, &e.reason, &e.message);
                        let own =
                            status::own_condition(g.conditions(), cond, g.metadata.generation);
                        (own, None, Some(error))
                    }
                }
            }
        };
        let mut report = json!({ "conditions": own });
        if let Some(access) = &access {
            report["access"] = serde_json::to_value(access).unwrap_or_default();
        }
        let stale = current.and_then(|s| s.last_check_error.as_ref());
        let mut compare = with_error(&mut report, error.as_ref(), stale.is_some());
        // Several VMs may check one grant: `checkedBy` alone changing is not worth a write.
        if let Some(a) = compare.get_mut("access").and_then(|a| a.as_object_mut()) {
            a.remove("checkedBy");
        }
        status::report(&self.client, g, &report, &compare, FIELD_MANAGER).await
    }
}

/// This instance's entry in a scale set binding.
fn own_instance<'a>(b: &'a IdentityBinding, name: &str) -> Option<&'a InstanceTokenStatus> {
    b.status
        .as_ref()?
        .instances
        .iter()
        .find(|i| i.instance_id == name)
}

/// The `lastCheckError` of a passing failure; `since` stays while the reason repeats.
fn check_error(
    current: Option<&CheckError>,
    reason: &str,
    message: &str,
    checked_by: &str,
) -> CheckError {
    let since = current
        .filter(|c| c.reason == reason)
        .map(|c| c.since.clone())
        .unwrap_or_else(|| status::now().0.strftime("%Y-%m-%dT%H:%M:%SZ").to_string());
    CheckError {
        reason: reason.to_string(),
        message: message.to_string(),
        since,
        checked_by: Some(checked_by.to_string()),
    }
}

/// Put `error` into `report` and return what is worth a write: the error's reason only (a new
/// message of the same failure is not), and the removal of a `lastCheckError` that `stale` says
/// is still there.
fn with_error(report: &mut Value, error: Option<&CheckError>, stale: bool) -> Value {
    let mut compare = report.clone();
    match error {
        Some(e) => {
            report["lastCheckError"] = serde_json::to_value(e).unwrap_or_default();
            compare["lastCheckError"] = json!({ "reason": e.reason });
        }
        // Not contained in any current value: the write that removes it is due.
        None if stale => compare["lastCheckError"] = Value::Null,
        None => {}
    }
    compare
}

/// Condition `type_` False with the reason of a check that could not run on `checked_by`.
fn failed(type_: &str, checked_by: &str, reason: &str, message: &str) -> NewCondition {
    NewCondition::new(type_, false, reason, format!("{checked_by}: {message}"))
}
