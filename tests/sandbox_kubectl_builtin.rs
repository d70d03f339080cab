//! What people type in their first minutes, with the real kubectl 1.33 against the sandbox:
//! events from the controller in `kubectl describe` and `kubectl get events`; kubectl's typed
//! commands (protobuf) for namespaces, ConfigMaps, service accounts and RBAC objects; namespace
//! deletion through `Terminating` with the controller's cleanup (also on a real API server, where
//! kube-controller-manager's namespace controller finishes it); `kubectl apply -f
//! deploy/manifests/`; a service account's kubeconfig authorized by RBAC; and the chart's
//! admission policy refusing the agent's forged status. kubectl comes from
//! `scripts/install-tools.sh` (`.tools/bin`) or `$UAMI_KUBECTL`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::contains_all;
use support::kubectl::{Kubectl, sandbox_with_crds, service_account_kubectl};
use support::*;
use uami::demo::stack::{Stack, StackOptions};
use uami_sandbox::Sandbox;

/// A sandbox with `namespaces`, the chart's manifests and the tutorial applied, and kubectl on
/// loopback (an administrator).
async fn chart_and_tutorial(namespaces: &[&str]) -> (Sandbox, Kubectl, tempfile::TempDir) {
    let (sb, admin, dir) = sandbox_with_crds(true).await;
    for ns in namespaces {
        admin.ok(&["create", "namespace", ns]).await;
    }
    admin.ok_line("apply -f deploy/manifests/").await;
    admin.ok_line("apply -f examples/tutorial.yaml").await;
    (sb, admin, dir)
}

/// The arguments of a merge patch of the tutorial grant's status.
fn grant_status_patch(patch: &str) -> [&str; 9] {
    [
        "patch",
        "rolegrant",
        "my-identity-reads-devtest",
        "-n",
        "tutorial",
        "--subresource=status",
        "--type=merge",
        "-p",
        patch,
    ]
}

fn stack_options() -> StackOptions {
    let mut opts = StackOptions::tutorial(Duration::from_secs(30)).unwrap();
    opts.world.rbac_propagation_seconds = 0.5;
    opts.world.lro_retry_after_seconds = 0;
    opts
}

async fn stack_kubectl() -> (Stack, Kubectl, tempfile::TempDir) {
    stack_kubectl_on(stack_options()).await
}

/// The stack started with `opts` (on the sandbox, or on the real API server it names) and kubectl
/// as its administrator.
async fn stack_kubectl_on(opts: StackOptions) -> (Stack, Kubectl, tempfile::TempDir) {
    let stack = Stack::start(opts).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = admin_kubeconfig(&stack, dir.path());
    (stack, Kubectl { kubeconfig }, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_and_get_events_show_the_controllers_events() {
    let (stack, k, _dir) = stack_kubectl().await;
    k.ok(&["apply", "-f", "examples/tutorial.yaml"]).await;
    ready(&grants(&stack, "tutorial"), "my-identity-reads-devtest", 60).await;
    // The controller records through events.k8s.io/v1; kubectl reads core v1.
    let describe = k
        .ok_line("describe rolegrant my-identity-reads-devtest -n tutorial")
        .await;
    let events = describe.split("Events:").nth(1).unwrap_or_default();
    assert!(
        events.contains("Granted") && events.contains("uami-controller"),
        "{describe}"
    );
    let get = k.ok(&["get", "events", "-n", "tutorial"]).await;
    let header = get.lines().next().unwrap();
    for col in ["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"] {
        assert!(header.contains(col), "{get}");
    }
    assert!(
        get.contains("rolegrant/my-identity-reads-devtest") && get.contains("Granted"),
        "{get}"
    );
    // One store: the core view and the events.k8s.io view list the same events, each in its
    // own shape.
    let core = k.json(&["get", "events.v1.", "-n", "tutorial"]).await;
    let new = k.json_line("get events.v1.events.k8s.io -n tutorial").await;
    let names = |v: &Value| -> Vec<String> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["metadata"]["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert!(!names(&core).is_empty());
    assert_eq!(names(&core), names(&new));
    assert!(
        core["items"][0]["involvedObject"]["name"].is_string(),
        "{core}"
    );
    assert!(core["items"][0]["message"].is_string(), "{core}");
    assert!(new["items"][0]["regarding"]["name"].is_string(), "{new}");
    assert!(new["items"][0]["note"].is_string(), "{new}");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_create_and_delete_commands_work() {
    let (sb, k, _dir) = sandbox_with_crds(true).await;
    assert_eq!(
        k.ok(&["create", "namespace", "team-a"]).await.trim(),
        "namespace/team-a created"
    );
    k.ok_line(
        "create configmap settings -n team-a --from-literal=region=eastus --from-literal=tier=dev",
    )
    .await;
    let cm = k.json_line("get configmap settings -n team-a").await;
    assert_eq!(cm["data"]["region"], "eastus");
    assert_eq!(cm["data"]["tier"], "dev");
    k.ok(&["create", "serviceaccount", "robot", "-n", "team-a"])
        .await;
    k.ok_line("create secret generic sp -n team-a --from-literal=clientSecret=not-a-real-secret")
        .await;
    let secret = k.json(&["get", "secret", "sp", "-n", "team-a"]).await;
    assert_eq!(secret["type"], "Opaque");
    assert_eq!(secret["data"]["clientSecret"], "bm90LWEtcmVhbC1zZWNyZXQ=");
    k.ok_line("create role reader -n team-a --verb=get,list --resource=configmaps")
        .await;
    k.ok_line(
        "create rolebinding robot-reads -n team-a --role=reader --serviceaccount=team-a:robot",
    )
    .await;
    let rb = k.json_line("get rolebinding robot-reads -n team-a").await;
    assert_eq!(rb["roleRef"]["name"], "reader");
    assert_eq!(rb["subjects"][0]["name"], "robot");
    // kubectl waits until the namespace is gone.
    let del = k.ok(&["delete", "namespace", "team-a"]).await;
    assert!(del.contains("namespace \"team-a\" deleted"), "{del}");
    let err = k.fails(&["get", "namespace", "team-a"]).await;
    assert!(err.contains("namespaces \"team-a\" not found"), "{err}");
    let err = k
        .fails(&["get", "configmap", "settings", "-n", "team-a"])
        .await;
    assert!(err.contains("not found"), "{err}");
    sb.shutdown().await;
}

on_sandbox_and_real! {
    binary: "sandbox_kubectl_builtin",
    options: stack_options(),
    join: on_real_apiserver;
    deleting_a_namespace_terminates_through_the_controllers_cleanup on_a_real_api_server_deleting_a_namespace_terminates_through_the_controllers_cleanup namespace_deletion;
}

/// `kubectl delete namespace` of the tutorial: the namespace is Terminating and refuses new
/// content, its conditions name the controller's finalizers while the controller cleans Azure
/// up, and it goes once they are removed (on a real API server, through kube-controller-manager's
/// namespace controller), leaving nothing in Azure.
async fn namespace_deletion(opts: StackOptions, real: Option<&envtest::Real>) {
    let (stack, k, _dir) = stack_kubectl_on(opts).await;
    k.ok(&["apply", "-f", "examples/tutorial.yaml"]).await;
    let grant = ready(&grants(&stack, "tutorial"), "my-identity-reads-devtest", 60).await;
    ready(&bindings(&stack, "tutorial"), "my-identity-on-myvm", 60).await;
    let principal = grant.status.unwrap().principal_id.unwrap();
    assert!(
        !stack.emulator.state()["identities"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    // Azure answers slowly while the namespace goes, so the cleanup takes a few seconds and the
    // namespace's conditions can be seen naming what holds it.
    stack.emulator.set_faults(uami_emulator::Faults {
        latency_ms: 400,
        ..Default::default()
    });
    k.ok(&["delete", "namespace", "tutorial", "--wait=false"])
        .await;
    let ns = k.json(&["get", "namespace", "tutorial"]).await;
    assert_eq!(ns["status"]["phase"], "Terminating", "{ns}");
    assert!(ns["metadata"]["deletionTimestamp"].is_string(), "{ns}");
    assert_eq!(ns["spec"]["finalizers"], serde_json::json!(["kubernetes"]));
    let get = k.ok(&["get", "namespace", "tutorial"]).await;
    assert!(get.contains("Terminating"), "{get}");
    // No new content while terminating.
    let err = k
        .fails(&["create", "configmap", "late", "-n", "tutorial"])
        .await;
    assert!(
        err.contains(
            "unable to create new content in namespace tutorial because it is being terminated"
        ),
        "{err}"
    );
    // The controller's finalizers run: Azure is cleaned up, then the namespace goes. Meanwhile
    // its conditions say which finalizers hold its content.
    let namespaces: kube::Api<k8s_openapi::api::core::v1::Namespace> =
        kube::Api::all(stack.client());
    let mut seen: Vec<Value> = Vec::new();
    let secs = if real.is_some() { 120 } else { 60 };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while let Some(ns) = namespaces.get_opt("tutorial").await.unwrap() {
        let conditions = serde_json::to_value(ns.status.and_then(|s| s.conditions)).unwrap();
        if seen.last() != Some(&conditions) {
            seen.push(conditions);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the namespace still exists after {secs} s: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (ok, _, err) = k.run(&["get", "namespace", "tutorial"]).await;
    assert!(!ok && err.contains("not found"), "{err}");
    // While it terminated, its conditions named the content left and the controller's
    // finalizers holding it.
    let held = seen.iter().find(|conditions| {
        let f = find_by(conditions, "type", "NamespaceFinalizersRemaining");
        let c = find_by(conditions, "type", "NamespaceContentRemaining");
        f["status"] == "True"
            && f["reason"] == "SomeFinalizersRemain"
            && f["message"].as_str().is_some_and(|m| {
                m.starts_with("Some content in the namespace has finalizers remaining: ")
                    && m.contains("uami.dev/identity in 1 resource instances")
            })
            && c["status"] == "True"
            && c["reason"] == "SomeResourcesRemain"
            && c["message"].as_str().is_some_and(|m| {
                m.contains("userassignedidentities.uami.dev has 1 resource instances")
            })
    });
    let held = held.unwrap_or_else(|| panic!("no condition named the finalizers: {seen:?}"));
    // On the real API server those conditions come from kube-controller-manager's namespace
    // controller, which also reports its own steps.
    if real.is_some() {
        for (type_, reason) in [
            ("NamespaceDeletionDiscoveryFailure", "ResourcesDiscovered"),
            (
                "NamespaceDeletionGroupVersionParsingFailure",
                "ParsedGroupVersions",
            ),
            ("NamespaceDeletionContentFailure", "ContentDeleted"),
        ] {
            let c = find_by(held, "type", type_);
            assert_eq!(
                (&c["status"], &c["reason"]),
                (&json!("False"), &json!(reason)),
                "{held}"
            );
        }
    }
    let s = stack.emulator.state();
    assert!(s["identities"].as_array().unwrap().is_empty(), "{s}");
    assert!(
        !s["roleAssignments"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["properties"]["principalId"] == principal.as_str()),
        "{s}"
    );
    assert!(compute(&s, "myVM")["identity"]["userAssignedIdentities"].is_null());
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_of_the_rendered_chart_succeeds() {
    let (sb, k, _dir) = sandbox_with_crds(true).await;
    k.ok(&["create", "namespace", "uami-system"]).await;
    let out = k.ok(&["apply", "-f", "deploy/manifests/"]).await;
    contains_all(
        &out,
        &[
            "serviceaccount/uami-agent created",
            "clusterrole.rbac.authorization.k8s.io/uami-controller-controller created",
            "clusterrolebinding.rbac.authorization.k8s.io/uami-controller-agent created",
            "role.rbac.authorization.k8s.io/uami-controller-leader-election created",
            "rolebinding.rbac.authorization.k8s.io/uami-controller-leader-election created",
            "validatingadmissionpolicy.admissionregistration.k8s.io/uami-controller-agent-bindings created",
            "validatingadmissionpolicybinding.admissionregistration.k8s.io/uami-controller-agent-grants created",
            "deployment.apps/uami-controller-controller created",
            "daemonset.apps/uami-controller-agent created",
        ],
    );
    // Again: nothing changes.
    let again = k.ok(&["apply", "-f", "deploy/manifests/"]).await;
    assert!(
        again.contains("clusterrole.rbac.authorization.k8s.io/uami-controller-agent unchanged"),
        "{again}"
    );
    let roles = k.ok(&["get", "clusterroles"]).await;
    assert!(roles.contains("uami-controller-agent"), "{roles}");
    sb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_account_kubeconfig_is_authorized_by_rbac() {
    let (sb, admin, dir) = chart_and_tutorial(&["uami-system", "team-a"]).await;
    let agent = system_kubectl(&sb, dir.path(), "agent", None);
    // Who it is, and what it may do, as kubectl asks.
    let who = agent.ok(&["auth", "whoami"]).await;
    assert!(
        who.contains("system:serviceaccount:uami-system:uami-agent")
            && who.contains("system:serviceaccounts:uami-system"),
        "{who}"
    );
    let yes = agent
        .ok_line("auth can-i patch rolegrants.uami.dev --subresource=status -n tutorial")
        .await;
    assert_eq!(yes.trim(), "yes");
    let (ok, no, _) = agent
        .run(&[
            "auth",
            "can-i",
            "delete",
            "rolegrants.uami.dev",
            "-n",
            "tutorial",
        ])
        .await;
    assert!(!ok && no.trim() == "no", "{no}");
    // What the agent's ClusterRole grants.
    let list = agent.ok(&["get", "identitybindings", "-A"]).await;
    assert!(list.contains("my-identity-on-myvm"), "{list}");
    // And nothing else, answered as the API server words it.
    let err = agent
        .fails_line("delete rolegrant my-identity-reads-devtest -n tutorial")
        .await;
    assert!(
        err.contains("Error from server (Forbidden): rolegrants.uami.dev \"my-identity-reads-devtest\" is forbidden: User \"system:serviceaccount:uami-system:uami-agent\" cannot delete resource \"rolegrants\" in API group \"uami.dev\" in the namespace \"tutorial\""),
        "{err}"
    );
    let err = agent.fails(&["get", "configmaps", "-n", "team-a"]).await;
    assert!(
        err.contains(
            "cannot list resource \"configmaps\" in API group \"\" in the namespace \"team-a\""
        ),
        "{err}"
    );
    let err = agent.fails(&["get", "namespaces"]).await;
    assert!(err.contains("at the cluster scope"), "{err}");
    // A RoleBinding in one namespace grants there only.
    admin
        .ok_line("create role cm-reader -n team-a --verb=list --resource=configmaps")
        .await;
    admin
        .ok_line("create rolebinding agent-reads-cm -n team-a --role=cm-reader --serviceaccount=uami-system:uami-agent")
        .await;
    agent.ok(&["get", "configmaps", "-n", "team-a"]).await;
    agent.fails(&["get", "configmaps", "-n", "tutorial"]).await;
    // kubectl on loopback without a token stays an administrator.
    admin
        .ok_line("delete rolegrant my-identity-reads-devtest -n tutorial")
        .await;
    sb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admission_policy_refuses_the_agents_forged_status() {
    let (sb, admin, dir) = chart_and_tutorial(&["uami-system"]).await;
    // kubectl patch reads the object first: let the agent and the controller read it, and more.
    // The policies hold whatever RBAC allows.
    admin
        .ok_line("create clusterrole grant-status-editor --verb=get,patch,update --resource=rolegrants.uami.dev/status")
        .await;
    admin
        .ok_line("create clusterrolebinding agent-edits-grant-status --clusterrole=grant-status-editor --serviceaccount=uami-system:uami-agent --serviceaccount=uami-system:uami-controller")
        .await;
    // The controller's status, written as the controller (the chart lets nobody else write it:
    // not even an administrator).
    let id = "/subscriptions/6a2bd3a4-59c6-4d4e-9e8b-5c5a2f0a1b2c/providers/Microsoft.Authorization/roleAssignments/1b4a4d4e-0000-0000-0000-000000000001";
    let status = format!("{{\"status\":{{\"roleAssignmentId\":\"{id}\",\"adopted\":false}}}}");
    let err = admin.fails(&grant_status_patch(&status)).await;
    assert!(
        err.contains("status of rolegrants is written by the controller and the agent only"),
        "{err}"
    );
    let controller = system_kubectl(&sb, dir.path(), "controller", None);
    controller.ok(&grant_status_patch(&status)).await;
    let agent = system_kubectl(&sb, dir.path(), "agent", Some("myvm"));
    let err = agent
        .fails(&grant_status_patch("{\"status\":{\"adopted\":true}}"))
        .await;
    assert!(
        err.contains("The rolegrants \"my-identity-reads-devtest\" is invalid: : ValidatingAdmissionPolicy 'uami-controller-agent-grants' with binding 'uami-controller-agent-grants' denied request: status.adopted is written by the controller only"),
        "{err}"
    );
    // Its own field passes.
    agent
        .ok(&grant_status_patch("{\"status\":{\"access\":{\"verified\":true,\"httpStatus\":200,\"checkedBy\":\"myVM\"}}}"))
        .await;
    let g = admin
        .json_line("get rolegrant my-identity-reads-devtest -n tutorial")
        .await;
    assert_eq!(g["status"]["adopted"], false);
    assert_eq!(g["status"]["roleAssignmentId"], id);
    assert_eq!(g["status"]["access"]["verified"], true);
    sb.shutdown().await;
}

/// kubectl as service account `uami-{name}` of uami-system (bound to a pod on `node`, if any),
/// its kubeconfig at `dir/{name}`.
fn system_kubectl(sb: &Sandbox, dir: &std::path::Path, name: &str, node: Option<&str>) -> Kubectl {
    service_account_kubectl(
        sb,
        dir.join(name),
        "uami-system",
        &format!("uami-{name}"),
        node,
    )
}
