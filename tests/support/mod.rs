//! Shared helpers of the end-to-end tests.
#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use kube::Api;
use serde_json::Value;
use uami_controller::api::{IdentityBinding, RoleGrant, UserAssignedIdentity};
use uami_controller::demo::stack::Stack;

/// Poll `f` until it returns `Some`, at most `secs` seconds (an upper bound, not a timing claim).
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {secs}s waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The condition `type_` of a status, as (status, reason).
pub fn condition(
    conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    type_: &str,
) -> Option<(String, String)> {
    conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone()))
}

pub fn identities(stack: &Stack, ns: &str) -> Api<UserAssignedIdentity> {
    Api::namespaced(stack.client(), ns)
}

pub fn bindings(stack: &Stack, ns: &str) -> Api<IdentityBinding> {
    Api::namespaced(stack.client(), ns)
}

pub fn grants(stack: &Stack, ns: &str) -> Api<RoleGrant> {
    Api::namespaced(stack.client(), ns)
}

/// Wait until the object's `Ready` is `True`.
pub async fn ready<K>(api: &Api<K>, name: &str, secs: u64) -> K
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + serde::Serialize,
{
    eventually(secs, &format!("{name} Ready"), || async {
        let o = api.get(name).await.ok()?;
        let v = serde_json::to_value(&o).ok()?;
        let ok = v["status"]["conditions"]
            .as_array()?
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        ok.then_some(o)
    })
    .await
}

/// The computes of the emulator's state dump, by name.
pub fn compute(state: &Value, name: &str) -> Value {
    state["computes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .cloned()
        .unwrap_or(Value::Null)
}

/// The tutorial's objects.
pub fn tutorial_yaml() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/tutorial.yaml"
    ))
    .unwrap()
}
pub mod armspec;
pub mod kubectl;

/// The chart rendered with default values (`deploy/manifests/uami-controller.yaml`).
pub fn chart_manifests() -> Vec<Value> {
    use serde::Deserialize;
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/manifests/uami-controller.yaml"
    ))
    .unwrap();
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

/// A stack whose controller and agents run as the chart's service accounts of `uami-system`,
/// with the chart's service accounts, roles, bindings and admission policies installed (and so
/// enforced by the sandbox). The controller runs under leader election as `holder`.
pub async fn enforced_stack(mut opts: uami_controller::demo::stack::StackOptions) -> Stack {
    let controller = opts.controller;
    let agents = opts.agents;
    opts.controller = false;
    opts.agents = false;
    opts.service_accounts = Some("uami-system".into());
    let mut stack = Stack::start(opts).await.unwrap();
    let mut objects = vec![
        serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "uami-system"}}),
    ];
    objects.extend(chart_manifests().into_iter().filter(|v| {
        matches!(
            v["kind"].as_str(),
            Some(
                "ServiceAccount"
                    | "ClusterRole"
                    | "ClusterRoleBinding"
                    | "Role"
                    | "RoleBinding"
                    | "ValidatingAdmissionPolicy"
                    | "ValidatingAdmissionPolicyBinding"
            )
        )
    }));
    stack.sandbox.install(objects).unwrap();
    if agents {
        for name in stack.emulator.imds_names() {
            stack.start_agent(&name).await.unwrap();
        }
    }
    if controller {
        stack.spawn_controller(Some("main")).unwrap();
    }
    stack
}
