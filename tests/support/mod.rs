//! Shared helpers of the end-to-end tests: polls with a deadline, condition waits, the tutorial's
//! stack and teardown, and the chart's manifests.
#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use kube::Api;
use kube::api::DeleteParams;
use serde_json::Value;
use uami::demo::stack::{Stack, StackOptions};
use uami_api::{IdentityBinding, RoleGrant, UserAssignedIdentity};
use uami_emulator::Emulator;

pub mod arm;
pub mod armspec;
pub mod capture;
pub mod envtest;
pub mod events;
pub mod fixtures;
pub mod flaps;
pub mod helm;
pub mod kubectl;

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

/// The `Ready` condition of a status.
pub fn ready_condition(
    conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    let ready = conditions.iter().find(|c| c.type_ == "Ready");
    ready.cloned().unwrap()
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

/// Wait until the object has the condition `type_` with `status` and, when given, `reason`.
pub async fn condition_is<K>(
    api: &Api<K>,
    name: &str,
    type_: &str,
    status: &str,
    reason: Option<&str>,
    secs: u64,
) -> K
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + serde::Serialize,
{
    let what = format!("{name} {type_}={status} {}", reason.unwrap_or_default());
    eventually(secs, &what, || async {
        let o = api.get(name).await.ok()?;
        let v = serde_json::to_value(&o).ok()?;
        let ok = v["status"]["conditions"].as_array()?.iter().any(|c| {
            c["type"] == type_ && c["status"] == status && reason.is_none_or(|r| c["reason"] == r)
        });
        ok.then_some(o)
    })
    .await
}

/// Wait until the object's `Ready` is `True`.
pub async fn ready<K>(api: &Api<K>, name: &str, secs: u64) -> K
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + serde::Serialize,
{
    condition_is(api, name, "Ready", "True", None, secs).await
}

/// Wait until the binding's `Assigned` is `True`.
pub async fn assigned(api: &Api<IdentityBinding>, name: &str, secs: u64) -> IdentityBinding {
    condition_is(api, name, "Assigned", "True", None, secs).await
}

/// Wait (60 s at most) until the object's `Ready` is `False` with `reason`.
pub async fn refused<K>(api: &Api<K>, name: &str, reason: &str) -> K
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + serde::Serialize,
{
    condition_is(api, name, "Ready", "False", Some(reason), 60).await
}

/// Apply the objects of every document in `parts`.
pub async fn apply_all(stack: &Stack, parts: &[String]) {
    stack.apply_yaml(&parts.concat()).await.unwrap();
}

/// The object, which must be there.
pub async fn read<K>(api: &Api<K>, name: &str) -> K
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.get(name).await.unwrap()
}

/// Delete the object (without waiting for its finalizers).
pub async fn delete<K>(api: &Api<K>, name: &str)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.delete(name, &DeleteParams::default()).await.unwrap();
}

/// Reset the emulator's counts and let `secs` seconds of steady state pass: no ARM write may
/// happen; how many `read` requests did.
pub async fn steady_state_reads(stack: &Stack, secs: u64, read: &str) -> u64 {
    stack.emulator.reset_counts();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let counts = stack.emulator.counts();
    assert_eq!(counts.writes(), 0, "steady state wrote to ARM: {counts:?}");
    counts.total(read)
}

/// Wait until the object no longer exists.
pub async fn gone<K>(api: &Api<K>, name: &str, secs: u64)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    eventually(secs, &format!("{name} gone"), || async {
        api.get_opt(name).await.ok()?.is_none().then_some(())
    })
    .await;
}

/// Delete the object and wait (60 s at most) until it no longer exists.
pub async fn delete_and_wait<K>(api: &Api<K>, name: &str)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    delete(api, name).await;
    gone(api, name, 60).await;
}

/// A controller started beside (or instead of) the stack's own, stopped on demand.
pub struct Controller {
    stop: tokio_util::sync::CancellationToken,
    handle: tokio::task::JoinHandle<()>,
}

impl Controller {
    /// Start a controller; with `holder` it runs under leader election.
    pub fn start(stack: &Stack, holder: Option<&str>) -> Self {
        let stop = tokio_util::sync::CancellationToken::new();
        let handle = stack.start_controller(holder, stop.clone()).unwrap();
        Self { stop, handle }
    }

    /// Stop it: it must finish within 20 s.
    pub async fn stop_cleanly(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(20), self.handle)
            .await
            .unwrap()
            .unwrap();
    }

    /// Stop it and give it 20 s to finish.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(20), self.handle).await;
    }
}

/// A kubeconfig for the stack's Kubernetes API as an administrator, written into `dir` (for
/// kubectl and helm).
pub fn admin_kubeconfig(stack: &Stack, dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("admin.kubeconfig");
    std::fs::write(&path, stack.cluster.admin_kubeconfig("admin").unwrap()).unwrap();
    path
}

/// The request was refused by the API server with `code`, its message containing `needle`.
pub fn denied(r: Result<(), kube::Error>, code: u16, needle: &str) {
    match r {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, code, "{s:?}");
            assert!(s.message.contains(needle), "{}", s.message);
        }
        other => panic!("expected {code} containing {needle:?}, got {other:?}"),
    }
}

/// Every needle is in `text`.
pub fn contains_all(text: &str, needles: &[&str]) {
    for needle in needles {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
}

/// Run the built `uami-controller` with `args`, without the environment variables
/// `env_remove`: (exit success, stdout, stderr).
pub fn run_uami(args: &[&str], env_remove: &[&str]) -> (bool, String, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_uami-controller"));
    cmd.args(args);
    for var in env_remove {
        cmd.env_remove(var);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// PUT `body` to `url` (a run-time knob of the emulator or the sandbox) with `http`; the
/// answer's status.
pub async fn put_json(http: &reqwest::Client, url: &str, body: Value) -> u16 {
    let resp = http.put(url).json(&body).send().await.unwrap();
    resp.status().as_u16()
}

/// GET `url` (a run-time knob or a count of the emulator or the sandbox) as JSON with `http`.
pub async fn get_json(http: &reqwest::Client, url: &str) -> Value {
    let resp = http.get(url).send().await.unwrap();
    resp.json().await.unwrap()
}

/// A JSON merge patch of object `name` (of its status with `status`), its answer dropped.
pub async fn merge_patch<K>(
    api: &Api<K>,
    name: &str,
    status: bool,
    patch: Value,
) -> kube::Result<()>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let (pp, patch) = (
        kube::api::PatchParams::default(),
        kube::api::Patch::Merge(patch),
    );
    if status {
        api.patch_status(name, &pp, &patch).await.map(|_| ())
    } else {
        api.patch(name, &pp, &patch).await.map(|_| ())
    }
}

/// The client id and principal id of an identity as ARM shows it.
pub fn client_and_principal(identity: &Value) -> (String, String) {
    let id = |field: &str| identity["properties"][field].as_str().unwrap().to_string();
    (id("clientId"), id("principalId"))
}

/// The tutorial controller's client-credentials request for an ARM token, POSTed to
/// `token_endpoint` with `http`.
pub async fn controller_sign_in(http: &reqwest::Client, token_endpoint: &str) -> reqwest::Response {
    use uami_emulator::world;
    http.post(token_endpoint)
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", world::TUTORIAL_CONTROLLER_CLIENT_ID),
            ("client_secret", world::TUTORIAL_CONTROLLER_SECRET),
            ("scope", "https://management.azure.com/.default"),
        ])
        .send()
        .await
        .unwrap()
}

/// A client builder that trusts the emulator's certificate authority besides the system's roots
/// (its ARM and Entra ID are HTTPS), as the controller does with `--azure-ca-file`.
pub fn emulator_http_builder(emulator: &Emulator) -> reqwest::ClientBuilder {
    let builder = reqwest::Client::builder();
    match emulator.ca_pem() {
        Some(pem) => {
            builder.tls_certs_merge(reqwest::Certificate::from_pem_bundle(pem.as_bytes()).unwrap())
        }
        None => builder,
    }
}

/// An HTTP client of the emulator (see [`emulator_http_builder`]).
pub fn emulator_http(emulator: &Emulator) -> reqwest::Client {
    emulator_http_builder(emulator).build().unwrap()
}

/// The emulator's certificate authority written to `dir`, for `--azure-ca-file` of a controller
/// run as its own process (what `uami-controller emulator --ca-out` writes).
pub fn write_emulator_ca(emulator: &Emulator, dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("emulator-ca.pem");
    std::fs::write(&path, emulator.ca_pem().expect("the emulator serves HTTPS")).unwrap();
    path
}

/// The holder of the controller's Lease in `ns`, if any.
pub async fn lease_holder(stack: &Stack, ns: &str) -> Option<String> {
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(stack.client(), ns);
    leases
        .get_opt("uami-controller")
        .await
        .ok()??
        .spec?
        .holder_identity
        .filter(|h| !h.is_empty())
}

/// Wait until `who` holds the controller's Lease in `ns`.
pub async fn wait_leader(stack: &Stack, ns: &str, who: &str, secs: u64) {
    eventually(secs, &format!("{who} to lead"), || async {
        (lease_holder(stack, ns).await.as_deref() == Some(who)).then_some(())
    })
    .await;
}

/// The element of JSON array `list` whose `key` is `value` (`null` when there is none).
pub fn find_by(list: &Value, key: &str, value: &str) -> Value {
    list.as_array()
        .into_iter()
        .flatten()
        .find(|item| item[key] == value)
        .cloned()
        .unwrap_or(Value::Null)
}

/// The computes of the emulator's state dump, by name.
pub fn compute(state: &Value, name: &str) -> Value {
    find_by(&state["computes"], "name", name)
}

/// The number of user-assigned identities a compute holds.
pub fn user_assigned(state: &Value, name: &str) -> usize {
    compute(state, name)["identity"]["userAssignedIdentities"]
        .as_object()
        .map_or(0, |m| m.len())
}

/// The role assignments of the emulator's state dump held by `principal`.
pub fn assignments_of(state: &Value, principal: &str) -> Vec<Value> {
    state["roleAssignments"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["properties"]["principalId"] == principal)
        .cloned()
        .collect()
}

/// The tutorial's objects.
pub fn tutorial_yaml() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/tutorial.yaml"
    ))
    .unwrap()
}

/// The tutorial's namespace and the names of its identity, binding and grant.
pub const TUTORIAL: &str = "tutorial";
pub const TUTORIAL_IDENTITY: &str = "my-identity";
pub const TUTORIAL_BINDING: &str = "my-identity-on-myvm";
pub const TUTORIAL_GRANT: &str = "my-identity-reads-devtest";

/// The tutorial's world: resyncs every `resync`, role assignments visible after `rbac_seconds`,
/// long-running operations that may be polled at once.
pub fn tutorial_options(resync: Duration, rbac_seconds: f64) -> StackOptions {
    let mut opts = StackOptions::tutorial(resync).unwrap();
    opts.world.rbac_propagation_seconds = rbac_seconds;
    opts.world.lro_retry_after_seconds = 0;
    opts
}

/// Point `opts` at the real API server of this test binary (see [`envtest`]); `None` when that
/// layer is not turned on (the test then says so and ends). Keep the answer for the whole test:
/// it holds the test's turn on the server.
pub async fn on_real_apiserver(test: &str, opts: &mut StackOptions) -> Option<envtest::Real> {
    let real = envtest::cluster(test).await?;
    opts.external = Some(real.external.clone());
    Some(real)
}

/// For each `[doc] sandbox_test real_test scenario`, a test of `scenario` on the sandbox and one
/// on the real API server of this test binary (`binary`; skipped when that layer is off), both
/// with the options `options` gives. `join` puts the options on the real API server (as
/// [`on_real_apiserver`] does). A scenario takes the options and the real API server, `None` on
/// the sandbox. (Not every test binary has such a pair.)
#[allow(unused_macros)]
macro_rules! on_sandbox_and_real {
    (
        binary: $binary:literal,
        options: $options:expr,
        join: $join:path;
        $($(#[$doc:meta])* $sandbox:ident $real:ident $scenario:path;)*
    ) => {$(
        $(#[$doc])*
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $sandbox() {
            $scenario($options, None).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $real() {
            let mut opts = $options;
            let Some(real) = $join($binary, &mut opts).await else {
                return;
            };
            $scenario(opts, Some(&real)).await;
        }
    )*};
}
#[allow(unused_imports)]
pub(crate) use on_sandbox_and_real;

/// The tutorial's stack without agents (resync `resync_secs`, RBAC propagation `rbac_seconds`),
/// changed by `configure` before it starts.
pub async fn agentless_stack(
    resync_secs: u64,
    rbac_seconds: f64,
    configure: impl FnOnce(&mut StackOptions),
) -> Stack {
    let mut opts = tutorial_options(Duration::from_secs(resync_secs), rbac_seconds);
    opts.agents = false;
    configure(&mut opts);
    Stack::start(opts).await.unwrap()
}

/// A stack started with `opts` but without the controller and the agents (the test starts what
/// it needs).
pub async fn bare_stack(mut opts: StackOptions) -> Stack {
    opts.controller = false;
    opts.agents = false;
    Stack::start(opts).await.unwrap()
}

/// A stack started with `opts` and the tutorial's objects applied.
pub async fn tutorial_stack(opts: StackOptions) -> Stack {
    let stack = Stack::start(opts).await.unwrap();
    stack.apply_yaml(&tutorial_yaml()).await.unwrap();
    stack
}

/// Wait until the tutorial's identity, binding and grant are Ready.
pub async fn tutorial_ready(stack: &Stack, secs: u64) {
    ready(&identities(stack, TUTORIAL), TUTORIAL_IDENTITY, secs).await;
    ready(&bindings(stack, TUTORIAL), TUTORIAL_BINDING, secs).await;
    ready(&grants(stack, TUTORIAL), TUTORIAL_GRANT, secs).await;
}

/// Delete the tutorial's grant, binding and identity, in that order (without waiting).
pub async fn delete_tutorial(stack: &Stack) {
    let dp = DeleteParams::default();
    grants(stack, TUTORIAL)
        .delete(TUTORIAL_GRANT, &dp)
        .await
        .unwrap();
    bindings(stack, TUTORIAL)
        .delete(TUTORIAL_BINDING, &dp)
        .await
        .unwrap();
    identities(stack, TUTORIAL)
        .delete(TUTORIAL_IDENTITY, &dp)
        .await
        .unwrap();
}

/// The GrantPolicy and IdentityBinding that put the tutorial's identity on scale set `web` too.
pub const TUTORIAL_ON_WEB: &str = r#"
apiVersion: uami.dev/v1alpha1
kind: GrantPolicy
metadata:
  name: tutorial-web
spec:
  namespaces: ["tutorial"]
  identityBindings:
    - virtualMachineScaleSet:
        resourceGroup: DevTest
        name: web
---
apiVersion: uami.dev/v1alpha1
kind: IdentityBinding
metadata:
  name: my-identity-on-web
  namespace: tutorial
spec:
  identityRef:
    name: my-identity
  target:
    virtualMachineScaleSet:
      resourceGroup: DevTest
      name: web
"#;

/// The tutorial's stack with scale set `web` (one instance, with a system-assigned identity)
/// beside the tutorial's VM, and `TUTORIAL_ON_WEB` applied.
pub async fn web_stack(mut opts: StackOptions) -> Stack {
    opts.world.subscriptions[0].resource_groups[0]
        .virtual_machine_scale_sets
        .push(uami_emulator::world::ScaleSet {
            system_assigned: true,
            ..uami_emulator::world::ScaleSet::named("web", 1)
        });
    let stack = tutorial_stack(opts).await;
    stack.apply_yaml(TUTORIAL_ON_WEB).await.unwrap();
    stack
}

/// A sandbox serving the project's CRDs (as the code generates them).
pub async fn sandbox_with_api_crds() -> uami_sandbox::Sandbox {
    let sb = uami_sandbox::start(uami_sandbox::SandboxOptions::default())
        .await
        .unwrap();
    let crds = uami_api::crds().into_iter();
    sb.install(crds.map(|c| serde_json::to_value(c).unwrap()).collect())
        .unwrap();
    sb
}

/// The chart rendered with default values (`deploy/manifests/uami-controller.yaml`).
pub fn chart_manifests() -> Vec<Value> {
    helm::docs(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/deploy/manifests/uami-controller.yaml"
        ))
        .unwrap(),
    )
}

/// A stack whose controller and agents run as the chart's service accounts of `uami-system`,
/// with the chart's service accounts, roles, bindings and admission policies installed (and so
/// enforced by the sandbox). The controller runs under leader election as `holder`.
pub async fn enforced_stack(mut opts: StackOptions) -> Stack {
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
    stack.cluster.install(objects).await.unwrap();
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
