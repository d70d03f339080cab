//! The trust boundary, tried as a hostile tenant would: every attack below is a test.
//!
//! 1. Scopes are canonical before anything compares them: non-canonical `resourceId`s are
//!    refused at apply time, and again by the controller (`InvalidScope`, zero ARM requests), an
//!    object that would have crashed the policy check does not stop the controller, and ARM
//!    receives exactly the scope the policy approved.
//! 2. An identity has exactly one owner: the owner tag names the cluster, adoption needs a
//!    GrantPolicy rule and keeps the identity's tags, creation never overwrites (`If-None-Match`).
//! 3. Deletion acts only on what the controller can prove it created: forged status fields steer
//!    no delete, a binding refused by policy removes nothing, two grants of one assignment keep it
//!    until the last goes.
//! 5. Policy fails closed: the chart installs no GrantPolicy by default, and a policy that stops
//!    allowing a grant or binding revokes it in Azure.
//! 6. ConfigMaps the controller did not create are never written or adopted; the chart lets the
//!    managed-identity credential reach IMDS; tags are bounded by the schema.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};
use support::*;
use uami_controller::azure::{ArmClient, ArmClientOptions, IdentityApi};
use uami_controller::demo::stack::{Stack, StackOptions};
use uami_controller::emulator::world::TUTORIAL_SUBSCRIPTION as SUB;
use uami_controller::emulator::{self, World};

const NS: &str = "apps";
const READER_GUID: &str = "acdd72a7-3385-48ef-bd42-f606fba81ae7";

fn namespace(ns: &str) -> String {
    format!("---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n")
}

/// A GrantPolicy for `apps`: Reader on DevTest, binding to myVM, plus `extra` spec lines.
fn policy(extra: &str) -> String {
    format!(
        "---\napiVersion: uami.dev/v1alpha1\nkind: GrantPolicy\nmetadata: {{name: apps}}\nspec:\n  namespaces: [{NS}]\n  roleGrants:\n  - roles: [Reader]\n    scopes: [{{resourceGroup: {{name: DevTest}}}}]\n  identityBindings:\n  - virtualMachine: {{resourceGroup: DevTest, name: myVM}}\n{extra}"
    )
}

fn identity_in(ns: &str, name: &str, extra: &str) -> String {
    format!(
        "---\napiVersion: uami.dev/v1alpha1\nkind: UserAssignedIdentity\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {{resourceGroup: DevTest, location: eastus{extra}}}\n"
    )
}

fn identity(name: &str, extra: &str) -> String {
    identity_in(NS, name, extra)
}

fn binding_in(ns: &str, name: &str, identity: &str) -> String {
    format!(
        "---\napiVersion: uami.dev/v1alpha1\nkind: IdentityBinding\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {{identityRef: {{name: {identity}}}, target: {{virtualMachine: {{resourceGroup: DevTest, name: myVM}}}}}}\n"
    )
}

fn grant(name: &str, identity: &str, role: &str, scope: &str) -> String {
    format!(
        "---\napiVersion: uami.dev/v1alpha1\nkind: RoleGrant\nmetadata: {{name: {name}, namespace: {NS}}}\nspec: {{identityRef: {{name: {identity}}}, role: {role}, scope: {scope}, verifyAccess: false}}\n"
    )
}

fn grant_json(name: &str, identity: &str, resource_id: &str) -> Value {
    json!({"apiVersion": "uami.dev/v1alpha1", "kind": "RoleGrant",
           "metadata": {"name": name, "namespace": NS},
           "spec": {"identityRef": {"name": identity}, "role": "Reader",
                    "scope": {"resourceId": resource_id}, "verifyAccess": false}})
}

async fn stack(configure: impl FnOnce(&mut StackOptions)) -> Stack {
    let mut opts = StackOptions::tutorial(Duration::from_secs(120)).unwrap();
    opts.world.rbac_propagation_seconds = 0.5;
    opts.world.lro_retry_after_seconds = 0;
    opts.agents = false;
    configure(&mut opts);
    Stack::start(opts).await.unwrap()
}

/// Wait until condition `type_` of the object is (`status`, `reason`).
async fn condition_is<K>(api: &Api<K>, name: &str, type_: &str, status: &str, reason: &str) -> K
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + serde::Serialize,
{
    eventually(60, &format!("{name} {type_}={status} {reason}"), || async {
        let o = api.get(name).await.ok()?;
        let v = serde_json::to_value(&o).ok()?;
        let ok = v["status"]["conditions"]
            .as_array()?
            .iter()
            .any(|c| c["type"] == type_ && c["status"] == status && c["reason"] == reason);
        ok.then_some(o)
    })
    .await
}

async fn gone<K>(api: &Api<K>, name: &str)
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.delete(name, &DeleteParams::default()).await.unwrap();
    eventually(60, &format!("{name} deleted"), || async {
        api.get_opt(name).await.ok()?.is_none().then_some(())
    })
    .await;
}

/// Status fields written by someone other than the controller (a compromised agent, a user with
/// status rights): server-side apply with another field manager, forced.
async fn forge_status<K>(api: &Api<K>, name: &str, status: Value)
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let patch = json!({"apiVersion": K::api_version(&()), "kind": K::kind(&()), "status": status});
    api.patch_status(
        name,
        &PatchParams::apply("forger").force(),
        &Patch::Apply(&patch),
    )
    .await
    .unwrap();
}

/// ARM as the emulator's administrator.
struct Admin {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Admin {
    fn new(stack: &Stack) -> Self {
        Self::of(&stack.emulator)
    }

    fn of(emulator: &emulator::Emulator) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: emulator
                .arm_endpoint()
                .to_string()
                .trim_end_matches('/')
                .to_string(),
            token: emulator.admin_token(),
        }
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.json().await.unwrap_or(Value::Null);
        (status, headers, body)
    }

    fn identity_path(name: &str) -> String {
        format!(
            "/subscriptions/{SUB}/resourceGroups/DevTest/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{name}?api-version=2023-01-31"
        )
    }

    async fn put_identity(&self, name: &str, tags: Value) -> Value {
        let (s, _, v) = self
            .send(
                reqwest::Method::PUT,
                &Self::identity_path(name),
                Some(json!({"location": "eastus", "tags": tags})),
                &[],
            )
            .await;
        assert!(s == 200 || s == 201, "{s} {v}");
        v
    }

    /// The identity's tags, `None` when it does not exist.
    async fn identity_tags(&self, name: &str) -> Option<Value> {
        let (s, _, v) = self
            .send(reqwest::Method::GET, &Self::identity_path(name), None, &[])
            .await;
        (s == 200).then(|| v["tags"].clone())
    }

    async fn assignment_exists(&self, id: &str) -> bool {
        let (s, _, _) = self
            .send(
                reqwest::Method::GET,
                &format!("{id}?api-version=2022-04-01"),
                None,
                &[],
            )
            .await;
        s == 200
    }

    async fn create_assignment(&self, scope: &str, principal: &str) -> String {
        let id = format!(
            "{scope}/providers/Microsoft.Authorization/roleAssignments/{}",
            uuid::Uuid::new_v4()
        );
        let (s, _, v) = self
            .send(
                reqwest::Method::PUT,
                &format!("{id}?api-version=2022-04-01"),
                Some(json!({"properties": {
                    "roleDefinitionId": format!("/subscriptions/{SUB}/providers/Microsoft.Authorization/roleDefinitions/{READER_GUID}"),
                    "principalId": principal, "principalType": "ServicePrincipal"}})),
                &[],
            )
            .await;
        assert_eq!(s, 201, "{v}");
        id
    }

    /// Assign `identity_id` to myVM outside the controller, and wait for the operation.
    async fn assign_to_my_vm(&self, identity_id: &str) {
        let path = format!(
            "/subscriptions/{SUB}/resourceGroups/DevTest/providers/Microsoft.Compute/virtualMachines/myVM?api-version=2024-11-01"
        );
        let (s, h, v) = self
            .send(
                reqwest::Method::PATCH,
                &path,
                Some(json!({"identity": {"type": "UserAssigned", "userAssignedIdentities": {identity_id: {}}}})),
                &[],
            )
            .await;
        assert!(s == 200 || s == 202, "{s} {v}");
        let op = h["azure-asyncoperation"].to_str().unwrap().to_string();
        let op_path = op.strip_prefix(&self.base).unwrap().to_string();
        eventually(30, "VM operation done", || async {
            let (_, _, v) = self.send(reqwest::Method::GET, &op_path, None, &[]).await;
            (v["status"] == "Succeeded").then_some(())
        })
        .await;
    }
}

fn vm_has(stack: &Stack, identity_id: &str) -> bool {
    let vm = compute(&stack.emulator.state(), "myVM");
    vm["identity"]["userAssignedIdentities"]
        .as_object()
        .is_some_and(|m| m.keys().any(|k| k.eq_ignore_ascii_case(identity_id)))
}

async fn ready_identity(stack: &Stack, ns: &str, name: &str) -> (String, String) {
    let i = ready(
        &Api::<uami_controller::api::UserAssignedIdentity>::namespaced(stack.client(), ns),
        name,
        60,
    )
    .await;
    let s = i.status.unwrap();
    (s.resource_id.unwrap(), s.principal_id.unwrap())
}

fn api_error(e: uami_controller::demo::stack::StackError) -> String {
    match e {
        uami_controller::demo::stack::StackError::Kube(kube::Error::Api(r)) => {
            assert_eq!(r.code, 422, "{r:?}");
            r.message
        }
        other => panic!("expected a 422, got {other}"),
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Scopes are canonical before anything compares them.

const BAD_SUFFIXES: &[&str] = &[
    "/resourceGroups/DevTest/../..",
    "/resourceGroups/DevTest/./x",
    "/resourceGroups/DevTest/%2e%2e",
    "/resourceGroups//DevTest",
    "/resourceGroups/DevTest/",
    "/resourceGroups/DevTest?x=1",
    "/resourceGroups/DevTest#x",
    "/resourceGroups/Dev Test",
    "/resourceGroups/DevTest\t",
    "/resourceGroups/DevTest\\..",
    "/resourceGroups/DevTesé",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_canonical_scopes_are_refused_at_apply_time() {
    let stack = stack(|o| o.controller = false).await;
    stack.apply_yaml(&namespace(NS)).await.unwrap();
    let client = stack.client();
    let grants: Api<kube::api::DynamicObject> = Api::namespaced_with(
        client.clone(),
        NS,
        &kube::api::ApiResource::erase::<uami_controller::api::RoleGrant>(&()),
    );
    for (i, suffix) in BAD_SUFFIXES.iter().enumerate() {
        let obj = grant_json(
            &format!("bad-{i}"),
            "x",
            &format!("/subscriptions/{SUB}{suffix}"),
        );
        let err = stack
            .apply_yaml(&serde_json::to_string(&obj).unwrap())
            .await
            .err()
            .unwrap_or_else(|| panic!("{suffix:?} was accepted"));
        let message = api_error(err);
        assert!(
            message.contains("spec.scope.resourceId")
                && message.contains("canonical ARM resource id"),
            "{suffix:?}: {message}"
        );
    }
    // A GrantPolicy's resourceIdPrefix follows the same rule.
    let bad_policy = format!(
        "apiVersion: uami.dev/v1alpha1\nkind: GrantPolicy\nmetadata: {{name: wide}}\nspec:\n  namespaces: [{NS}]\n  roleGrants:\n  - roles: [Reader]\n    scopes: [{{resourceIdPrefix: '/subscriptions/{SUB}/resourceGroups/DevTest/..'}}]\n"
    );
    let message = api_error(stack.apply_yaml(&bad_policy).await.err().unwrap());
    assert!(
        message.contains("spec.roleGrants[0].scopes[0].resourceIdPrefix"),
        "{message}"
    );
    // Canonical ids, including ones with dots inside a name, are accepted.
    let good = grant_json(
        "good",
        "x",
        &format!(
            "/subscriptions/{SUB}/resourceGroups/DevTest/providers/Microsoft.Storage/storageAccounts/a.b-c_(1)"
        ),
    );
    stack
        .apply_yaml(&serde_json::to_string(&good).unwrap())
        .await
        .unwrap();
    assert_eq!(
        grants
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        1
    );
    stack.stop().await;
}

/// The RoleGrant CRD without the canonical-id rule, as a cluster still serving an older CRD
/// would: the controller is the last line of defence.
fn relaxed_role_grant_crd() -> Value {
    let crd = uami_controller::api::crds()
        .into_iter()
        .find(|c| c.spec.names.kind == "RoleGrant")
        .unwrap();
    let mut v = serde_json::to_value(crd).unwrap();
    let rid = &mut v["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
        ["scope"]["properties"]["resourceId"];
    let m = rid.as_object_mut().unwrap();
    m.remove("x-kubernetes-validations");
    m.remove("pattern");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_canonical_scopes_never_reach_arm_and_never_crash_the_controller() {
    let stack = stack(|o| o.controller = false).await;
    let crds: Api<CustomResourceDefinition> = Api::all(stack.client());
    crds.delete("rolegrants.uami.dev", &DeleteParams::default())
        .await
        .unwrap();
    stack
        .sandbox
        .install(vec![relaxed_role_grant_crd()])
        .unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let controller = stack.start_controller(None, stop.clone()).unwrap();
    stack
        .apply_yaml(&format!(
            "{}{}{}",
            namespace(NS),
            policy(""),
            identity("scoped", "")
        ))
        .await
        .unwrap();
    ready_identity(&stack, NS, "scoped").await;
    stack.emulator.reset_counts();
    let api = grants(&stack, NS);
    for (i, suffix) in BAD_SUFFIXES.iter().enumerate() {
        let obj = grant_json(
            &format!("bad-{i}"),
            "scoped",
            &format!("/subscriptions/{SUB}{suffix}"),
        );
        stack
            .apply_yaml(&serde_json::to_string(&obj).unwrap())
            .await
            .unwrap();
    }
    for i in 0..BAD_SUFFIXES.len() {
        let g = condition_is(&api, &format!("bad-{i}"), "Ready", "False", "InvalidScope").await;
        assert!(g.status.unwrap().role_assignment_id.is_none());
    }
    let arm: Vec<String> = stack
        .emulator
        .journal()
        .into_iter()
        .filter(|e| !e.operation.starts_with("Aad"))
        .map(|e| format!("{} {} {}", e.operation, e.method, e.path))
        .collect();
    assert!(arm.is_empty(), "ARM requests for invalid scopes: {arm:?}");

    // The controller is still reconciling: a canonical grant applied after them is granted, and
    // ARM received exactly the scope the policy approved.
    let scope = format!(
        "/subscriptions/{SUB}/resourceGroups/DevTest/providers/Microsoft.Storage/storageAccounts/sa1"
    );
    stack
        .apply_yaml(&serde_json::to_string(&grant_json("good", "scoped", &scope)).unwrap())
        .await
        .unwrap();
    let g = ready(&api, "good", 60).await;
    let id = g.status.unwrap().role_assignment_id.unwrap();
    let name = id.rsplit('/').next().unwrap().to_string();
    assert_eq!(
        id,
        format!("{scope}/providers/Microsoft.Authorization/roleAssignments/{name}")
    );
    let creates: Vec<String> = stack
        .emulator
        .journal()
        .into_iter()
        .filter(|e| e.operation == "RoleAssignments_Create")
        .map(|e| e.path)
        .collect();
    assert_eq!(creates, vec![id.clone()]);
    let state = stack.emulator.state();
    let created = state["roleAssignments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == name)
        .cloned()
        .unwrap();
    assert_eq!(created["properties"]["scope"], scope);
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), controller).await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_scopes_match_whole_segments() {
    let stack = stack(|_| {}).await;
    stack
        .apply_yaml(&format!(
            "{}{}{}{}{}",
            namespace(NS),
            policy(""),
            identity("seg", ""),
            grant("next-door", "seg", "Reader", "{resourceGroup: {name: DevTest2}}"),
            grant(
                "inside",
                "seg",
                "Reader",
                &format!("{{resourceId: /subscriptions/{SUB}/resourceGroups/devtest/providers/Microsoft.Storage/storageAccounts/sa2}}")
            ),
        ))
        .await
        .unwrap();
    condition_is(
        &grants(&stack, NS),
        "next-door",
        "Ready",
        "False",
        "DeniedByPolicy",
    )
    .await;
    ready(&grants(&stack, NS), "inside", 60).await;
    stack.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 2. An identity has exactly one owner.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_tag_names_the_cluster() {
    let stack = stack(|_| {}).await;
    let admin = Admin::new(&stack);
    // Another cluster with the same namespace and names got there first: once under the
    // namespace/name tag, once under its own cluster name.
    admin
        .put_identity("twin", json!({"uami.dev-owner": "apps/twin"}))
        .await;
    admin
        .put_identity("cousin", json!({"uami.dev-owner": "east/apps/cousin"}))
        .await;
    stack
        .apply_yaml(&format!(
            "{}{}{}{}",
            namespace(NS),
            identity("mine", ""),
            identity("twin", ""),
            identity("cousin", ", adoptExisting: true"),
        ))
        .await
        .unwrap();
    ready_identity(&stack, NS, "mine").await;
    assert_eq!(
        admin.identity_tags("mine").await.unwrap()["uami.dev-owner"],
        "sandbox/apps/mine"
    );
    for name in ["twin", "cousin"] {
        condition_is(
            &identities(&stack, NS),
            name,
            "Ready",
            "False",
            "AlreadyExists",
        )
        .await;
    }
    // Deleting our objects never deletes the other cluster's identities.
    for name in ["twin", "cousin"] {
        gone(&identities(&stack, NS), name).await;
    }
    assert_eq!(
        admin.identity_tags("twin").await,
        Some(json!({"uami.dev-owner": "apps/twin"}))
    );
    assert_eq!(
        admin.identity_tags("cousin").await,
        Some(json!({"uami.dev-owner": "east/apps/cousin"}))
    );
    assert_eq!(
        stack
            .emulator
            .counts()
            .total("UserAssignedIdentities_Delete"),
        0
    );
    stack.stop().await;
}

#[test]
fn the_controller_refuses_to_run_without_a_cluster_name() {
    let out = Command::new(env!("CARGO_BIN_EXE_uami-controller"))
        .args(["run", "--credential", "client-secret"])
        .env_remove("UAMI_CLUSTER_NAME")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--cluster-name"), "{stderr}");
    let out = Command::new(env!("CARGO_BIN_EXE_uami-controller"))
        .args(["run", "--cluster-name", "a/b"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is not a cluster name"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adoption_needs_a_policy_rule_and_keeps_existing_tags() {
    let stack = stack(|_| {}).await;
    let admin = Admin::new(&stack);
    admin
        .put_identity("legacy", json!({"cost-center": "42"}))
        .await;
    admin
        .put_identity("foreign", json!({"uami.dev-owner": "east/apps/foreign"}))
        .await;
    stack
        .apply_yaml(&format!(
            "{}{}{}{}",
            namespace(NS),
            policy(""),
            identity("legacy", ", adoptExisting: true"),
            identity("foreign", ", adoptExisting: true"),
        ))
        .await
        .unwrap();
    condition_is(
        &identities(&stack, NS),
        "legacy",
        "Ready",
        "False",
        "DeniedByPolicy",
    )
    .await;
    condition_is(
        &identities(&stack, NS),
        "foreign",
        "Ready",
        "False",
        "AlreadyExists",
    )
    .await;
    assert_eq!(
        admin.identity_tags("legacy").await,
        Some(json!({"cost-center": "42"}))
    );
    assert_eq!(
        stack
            .emulator
            .counts()
            .total("UserAssignedIdentities_Update"),
        0
    );
    // A rule allows adopting identities from DevTest: the identity is adopted, keeps its tags.
    stack
        .apply_yaml(&policy("  identityAdoption:\n  - resourceGroup: DevTest\n"))
        .await
        .unwrap();
    ready_identity(&stack, NS, "legacy").await;
    assert_eq!(
        admin.identity_tags("legacy").await,
        Some(
            json!({"cost-center": "42", "uami.dev-owner": "sandbox/apps/legacy", "uami.dev-adopted": "true"})
        )
    );
    // Never an identity tagged for another owner, even with the rule.
    tokio::time::sleep(Duration::from_secs(1)).await;
    condition_is(
        &identities(&stack, NS),
        "foreign",
        "Ready",
        "False",
        "AlreadyExists",
    )
    .await;
    assert_eq!(
        admin.identity_tags("foreign").await,
        Some(json!({"uami.dev-owner": "east/apps/foreign"}))
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creating_an_identity_never_overwrites_one_that_appeared() {
    let world = World::tutorial().unwrap();
    let emulator = emulator::start(world.clone()).await.unwrap();
    let admin = Admin::of(&emulator);
    admin
        .put_identity("raced", json!({"uami.dev-owner": "east/apps/raced"}))
        .await;
    // The emulator answers If-None-Match: * on an existing identity as ARM does.
    let (s, _, v) = admin
        .send(
            reqwest::Method::PUT,
            &Admin::identity_path("raced"),
            Some(json!({"location": "eastus", "tags": {"x": "y"}})),
            &[("If-None-Match", "*")],
        )
        .await;
    assert_eq!(s, 412, "{v}");
    assert_eq!(v["error"]["code"], "PreconditionFailed");
    // The controller's create sends it: the identity that appeared between its read and its
    // create is not overwritten.
    let opts = uami_controller::demo::stack::controller_options(
        &world,
        &emulator.arm_endpoint(),
        &emulator.authority_host(),
        Duration::from_secs(60),
    )
    .unwrap();
    let http = reqwest::Client::new();
    let credential = uami_controller::auth::build_credential(
        opts.credential,
        http.clone(),
        Duration::from_secs(60),
    );
    let arm = ArmClient::new(
        http,
        ArmClientOptions {
            endpoint: emulator.arm_endpoint(),
            ..ArmClientOptions::default()
        },
        credential,
        None,
    );
    let tags = [(
        "uami.dev-owner".to_string(),
        "sandbox/apps/raced".to_string(),
    )]
    .into_iter()
    .collect();
    let err = arm
        .create_identity(SUB, "DevTest", "raced", "eastus", &tags)
        .await
        .unwrap_err();
    assert_eq!(err.code, "PreconditionFailed");
    assert_eq!(
        admin.identity_tags("raced").await,
        Some(json!({"uami.dev-owner": "east/apps/raced"}))
    );
    let created = arm
        .create_identity(SUB, "DevTest", "fresh", "eastus", &tags)
        .await
        .unwrap();
    assert_eq!(created.tags, tags);
    emulator.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 3. Deletion acts only on what the controller can prove it created.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_grant_status_steers_no_delete() {
    let stack = stack(|_| {}).await;
    let admin = Admin::new(&stack);
    stack
        .apply_yaml(&format!(
            "{}{}{}{}{}",
            namespace(NS),
            policy(""),
            identity("g-id", ""),
            identity("g-id2", ""),
            identity("bystander", ""),
        ))
        .await
        .unwrap();
    let (_, bystander) = ready_identity(&stack, NS, "bystander").await;
    let rg = format!("/subscriptions/{SUB}/resourceGroups/DevTest");
    let victim = admin.create_assignment(&rg, &bystander).await;
    stack
        .apply_yaml(&format!(
            "{}{}",
            grant(
                "g-main",
                "g-id",
                "Reader",
                "{resourceGroup: {name: DevTest}}"
            ),
            grant(
                "g-other",
                "g-id2",
                "Reader",
                "{resourceGroup: {name: DevTest}}"
            ),
        ))
        .await
        .unwrap();
    let api = grants(&stack, NS);
    let own = ready(&api, "g-main", 60)
        .await
        .status
        .unwrap()
        .role_assignment_id
        .unwrap();
    let other = ready(&api, "g-other", 60)
        .await
        .status
        .unwrap()
        .role_assignment_id
        .unwrap();
    // A forged id pointing at someone else's assignment: deleting the grant deletes its own
    // assignment, never the forged one.
    forge_status(
        &api,
        "g-main",
        json!({"roleAssignmentId": victim, "adopted": false}),
    )
    .await;
    gone(&api, "g-main").await;
    assert!(
        admin.assignment_exists(&victim).await,
        "the forged id was deleted"
    );
    assert!(
        !admin.assignment_exists(&own).await,
        "the grant's own assignment was left"
    );
    // A forged `adopted: true` does not keep the controller from deleting what it created.
    forge_status(&api, "g-other", json!({"adopted": true})).await;
    gone(&api, "g-other").await;
    assert!(
        !admin.assignment_exists(&other).await,
        "forged adopted kept the assignment"
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_grants_of_one_assignment_keep_it_until_the_last_goes() {
    let stack = stack(|_| {}).await;
    let admin = Admin::new(&stack);
    stack
        .apply_yaml(&format!(
            "{}{}{}{}{}",
            namespace(NS),
            policy(""),
            identity("dup", ""),
            grant(
                "by-name",
                "dup",
                "Reader",
                "{resourceGroup: {name: DevTest}}"
            ),
            grant(
                "by-guid",
                "dup",
                READER_GUID,
                "{resourceGroup: {name: devtest}}"
            ),
        ))
        .await
        .unwrap();
    let api = grants(&stack, NS);
    let a = ready(&api, "by-name", 60)
        .await
        .status
        .unwrap()
        .role_assignment_id
        .unwrap();
    let b = ready(&api, "by-guid", 60)
        .await
        .status
        .unwrap()
        .role_assignment_id
        .unwrap();
    assert!(a.eq_ignore_ascii_case(&b), "{a} {b}");
    gone(&api, "by-name").await;
    assert!(
        admin.assignment_exists(&a).await,
        "deleting one grant revoked the other's access"
    );
    ready(&api, "by-guid", 5).await;
    gone(&api, "by-guid").await;
    assert!(
        !admin.assignment_exists(&a).await,
        "the last grant left its assignment"
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bindings_remove_only_identities_the_controller_added() {
    let stack = stack(|_| {}).await;
    let admin = Admin::new(&stack);
    stack
        .apply_yaml(&format!(
            "{}{}{}{}{}{}",
            namespace(NS),
            namespace("closed"),
            policy(""),
            identity("pre", ""),
            identity("own", ""),
            identity_in("closed", "d-id", ""),
        ))
        .await
        .unwrap();
    let (pre, _) = ready_identity(&stack, NS, "pre").await;
    let (own, _) = ready_identity(&stack, NS, "own").await;
    let (denied, _) = ready_identity(&stack, "closed", "d-id").await;
    // Assigned to myVM by someone else before any binding.
    admin.assign_to_my_vm(&pre).await;
    admin.assign_to_my_vm(&denied).await;
    stack
        .apply_yaml(&format!(
            "{}{}{}",
            binding_in(NS, "b-pre", "pre"),
            binding_in(NS, "b-own", "own"),
            binding_in("closed", "b-denied", "d-id"),
        ))
        .await
        .unwrap();
    let api = bindings(&stack, NS);
    let b_pre = condition_is(&api, "b-pre", "Assigned", "True", "Assigned").await;
    assert_eq!(b_pre.status.unwrap().adopted, Some(true));
    let b_own = condition_is(&api, "b-own", "Assigned", "True", "Assigned").await;
    assert_eq!(b_own.status.as_ref().unwrap().adopted, Some(false));
    assert_eq!(
        b_own.annotations().get("uami.dev/assigned-identity"),
        Some(&own)
    );
    let closed = bindings(&stack, "closed");
    condition_is(&closed, "b-denied", "Ready", "False", "DeniedByPolicy").await;

    // Forged status: `adopted: false` on the adopted binding, `adopted: true` on ours.
    forge_status(&api, "b-pre", json!({"adopted": false})).await;
    forge_status(&api, "b-own", json!({"adopted": true})).await;
    gone(&api, "b-pre").await;
    gone(&api, "b-own").await;
    gone(&closed, "b-denied").await;
    assert!(
        vm_has(&stack, &pre),
        "an identity someone else assigned was removed"
    );
    assert!(
        vm_has(&stack, &denied),
        "a binding refused by policy removed an identity"
    );
    assert!(
        !vm_has(&stack, &own),
        "the identity the controller added was left"
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binding_deleted_before_its_first_reconcile_removes_nothing() {
    let stack = stack(|o| o.controller = false).await;
    let admin = Admin::new(&stack);
    let stop = tokio_util::sync::CancellationToken::new();
    let first = stack.start_controller(None, stop.clone()).unwrap();
    stack
        .apply_yaml(&format!(
            "{}{}{}",
            namespace(NS),
            policy(""),
            identity("early", "")
        ))
        .await
        .unwrap();
    let (early, _) = ready_identity(&stack, NS, "early").await;
    admin.assign_to_my_vm(&early).await;
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), first).await;
    // While no controller runs, a binding (finalizer already set) is created and deleted: the
    // controller's first look at it is its cleanup.
    let yaml = binding_in(NS, "early-b", "early").replace(
        "namespace: apps}",
        "namespace: apps, finalizers: [uami.dev/binding]}",
    );
    stack.apply_yaml(&yaml).await.unwrap();
    let api = bindings(&stack, NS);
    api.delete("early-b", &DeleteParams::default())
        .await
        .unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let second = stack.start_controller(None, stop.clone()).unwrap();
    eventually(60, "early-b gone", || async {
        api.get_opt("early-b").await.ok()?.is_none().then_some(())
    })
    .await;
    assert!(
        vm_has(&stack, &early),
        "a binding that never assigned removed the identity"
    );
    assert_eq!(stack.emulator.counts().total("VirtualMachines_Update"), 1);
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), second).await;
    stack.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 5. Policy fails closed.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_that_stops_allowing_revokes_in_azure() {
    let stack = stack(|_| {}).await;
    let admin = Admin::new(&stack);
    stack
        .apply_yaml(&format!(
            "{}{}{}{}{}",
            namespace(NS),
            policy(""),
            identity("rev", ""),
            grant("rev-g", "rev", "Reader", "{resourceGroup: {name: DevTest}}"),
            binding_in(NS, "rev-b", "rev"),
        ))
        .await
        .unwrap();
    let (rev, _) = ready_identity(&stack, NS, "rev").await;
    let g = ready(&grants(&stack, NS), "rev-g", 60).await;
    let assignment = g.status.unwrap().role_assignment_id.unwrap();
    condition_is(
        &bindings(&stack, NS),
        "rev-b",
        "Assigned",
        "True",
        "Assigned",
    )
    .await;
    assert!(vm_has(&stack, &rev));

    let policies: Api<uami_controller::api::GrantPolicy> = Api::all(stack.client());
    policies
        .delete("apps", &DeleteParams::default())
        .await
        .unwrap();
    let g = condition_is(
        &grants(&stack, NS),
        "rev-g",
        "Ready",
        "False",
        "DeniedByPolicy",
    )
    .await;
    assert!(g.status.unwrap().role_assignment_id.is_none());
    condition_is(
        &bindings(&stack, NS),
        "rev-b",
        "Ready",
        "False",
        "DeniedByPolicy",
    )
    .await;
    assert!(
        !admin.assignment_exists(&assignment).await,
        "the assignment survived the policy"
    );
    eventually(60, "identity removed from myVM", || async {
        (!vm_has(&stack, &rev)).then_some(())
    })
    .await;
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(stack.client(), NS);
    eventually(30, "revocation events", || async {
        let notes: Vec<String> = events
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some("DeniedByPolicy"))
            .filter_map(|e| e.note)
            .collect();
        let grant = notes.iter().any(|n| n.contains("deleted role assignment"));
        let binding = notes.iter().any(|n| n.contains("removed the identity"));
        (grant && binding).then_some(())
    })
    .await;
    // Allowed again: granted and assigned again.
    stack.apply_yaml(&policy("")).await.unwrap();
    ready(&grants(&stack, NS), "rev-g", 60).await;
    condition_is(
        &bindings(&stack, NS),
        "rev-b",
        "Assigned",
        "True",
        "Assigned",
    )
    .await;
    stack.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 6. Smaller holes.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_config_map_is_never_taken_over() {
    let stack = stack(|_| {}).await;
    stack
        .apply_yaml(&format!(
            "{}---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: app-settings, namespace: {NS}}}\ndata: {{foo: bar}}\n{}{}",
            namespace(NS),
            identity("exp", ", exportTo: {configMap: app-settings}"),
            identity("exp2", ", exportTo: {configMap: exp2-ids}"),
        ))
        .await
        .unwrap();
    condition_is(
        &identities(&stack, NS),
        "exp",
        "Ready",
        "False",
        "ConfigMapConflict",
    )
    .await;
    let exp2 = ready(&identities(&stack, NS), "exp2", 60).await;
    let cms: Api<ConfigMap> = Api::namespaced(stack.client(), NS);
    let foreign = cms.get("app-settings").await.unwrap();
    assert_eq!(
        foreign.data.unwrap(),
        [("foo".to_string(), "bar".to_string())]
            .into_iter()
            .collect()
    );
    assert!(
        foreign
            .metadata
            .owner_references
            .unwrap_or_default()
            .is_empty(),
        "the identity became an owner: Kubernetes would garbage-collect the ConfigMap with it"
    );
    let ours = cms.get("exp2-ids").await.unwrap();
    let refs = ours.metadata.owner_references.unwrap();
    assert!(
        refs.iter()
            .any(|r| r.controller == Some(true) && Some(&r.uid) == exp2.uid().as_ref())
    );
    assert_eq!(
        ours.data.unwrap()["clientId"],
        exp2.status.unwrap().client_id.unwrap()
    );
    gone(&identities(&stack, NS), "exp").await;
    assert!(cms.get_opt("app-settings").await.unwrap().is_some());
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_are_bounded_by_the_schema() {
    let stack = stack(|o| o.controller = false).await;
    stack.apply_yaml(&namespace(NS)).await.unwrap();
    let with_tags = |name: &str, tags: Value| {
        serde_json::to_string(
            &json!({"apiVersion": "uami.dev/v1alpha1", "kind": "UserAssignedIdentity",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"resourceGroup": "DevTest", "location": "eastus", "tags": tags}}),
        )
        .unwrap()
    };
    let many = |n: usize| -> Value {
        (0..n)
            .map(|i| (format!("t{i}"), json!("v")))
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    stack
        .apply_yaml(&with_tags("fits", many(48)))
        .await
        .unwrap();
    let message = api_error(
        stack
            .apply_yaml(&with_tags("too-many", many(49)))
            .await
            .err()
            .unwrap(),
    );
    assert!(message.contains("spec.tags"), "{message}");
    for bad in ["a<b", "a>b", "100%", "a&b", "a\\b", "a?b", "a/b"] {
        let message = api_error(
            stack
                .apply_yaml(&with_tags("bad-name", json!({bad: "v"})))
                .await
                .err()
                .unwrap_or_else(|| panic!("tag {bad:?} accepted")),
        );
        assert!(
            message.contains("spec.tags") && message.contains("may not contain"),
            "{message}"
        );
    }
    let message = api_error(
        stack
            .apply_yaml(&with_tags("reserved", json!({"uami.dev-adopted": "true"})))
            .await
            .err()
            .unwrap(),
    );
    assert!(message.contains("reserved"), "{message}");
    stack.stop().await;
}

// ---------------------------------------------------------------------------------------------
// The chart.

const CHART: &str = "deploy/helm/uami-controller";

fn helm(args: &[&str]) -> std::process::Output {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let helm = std::env::var_os("UAMI_HELM")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join(".tools/bin/helm"));
    Command::new(helm)
        .args(args)
        .current_dir(root)
        .output()
        .unwrap()
}

fn render(extra: &[&str]) -> Vec<Value> {
    use serde::Deserialize;
    let mut args = vec![
        "template",
        "uami-controller",
        CHART,
        "--namespace",
        "uami-system",
    ];
    args.extend_from_slice(extra);
    let out = helm(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_yaml_ng::Deserializer::from_str(&String::from_utf8(out.stdout).unwrap())
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn imds_egress(objects: &[Value]) -> bool {
    let np = objects
        .iter()
        .find(|o| o["kind"] == "NetworkPolicy")
        .unwrap();
    np["spec"]["egress"].as_array().unwrap().iter().any(|rule| {
        rule["to"].as_array().is_some_and(|to| {
            to.iter()
                .any(|t| t["ipBlock"]["cidr"] == "169.254.169.254/32")
        }) && rule["ports"]
            .as_array()
            .is_some_and(|p| p.iter().any(|p| p["port"] == 80))
    })
}

#[test]
fn the_chart_fails_closed_and_names_the_cluster() {
    // clusterName is required.
    let out = helm(&["template", "uami-controller", CHART]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("clusterName is required"));

    let objects = render(&["--set", "clusterName=aks-east"]);
    assert!(
        !objects.iter().any(|o| o["kind"] == "GrantPolicy"),
        "a GrantPolicy is installed by default"
    );
    let deploy = objects.iter().find(|o| o["kind"] == "Deployment").unwrap();
    let args = &deploy["spec"]["template"]["spec"]["containers"][0]["args"];
    assert!(
        args.as_array()
            .unwrap()
            .iter()
            .any(|a| a == "--cluster-name=aks-east"),
        "{args}"
    );
    assert!(
        !imds_egress(&objects),
        "IMDS reachable without the managed-identity credential"
    );

    let objects = render(&[
        "--set",
        "clusterName=aks-east",
        "--set",
        "controller.credential=managed-identity",
    ]);
    assert!(
        imds_egress(&objects),
        "the managed-identity credential cannot reach IMDS"
    );
    let objects = render(&[
        "--set",
        "clusterName=aks-east",
        "--set",
        "defaultGrantPolicy.enabled=true",
    ]);
    assert!(objects.iter().any(|o| o["kind"] == "GrantPolicy"));

    let readme =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("README.md"))
            .unwrap();
    assert!(readme.contains("## Security model"));
    assert!(readme.contains("every pod on the node"));
}
