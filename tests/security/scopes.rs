//! 1. Scopes are canonical before anything compares them.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, ListParams};
use uami_emulator::world::TUTORIAL_SUBSCRIPTION as SUB;

use super::*;

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

/// A grant named `bad-<i>` of `identity` for each bad suffix.
fn bad_grants(identity: &str) -> impl Iterator<Item = (&'static str, String)> {
    BAD_SUFFIXES.iter().enumerate().map(move |(i, suffix)| {
        (
            *suffix,
            grant_json(
                &format!("bad-{i}"),
                identity,
                &format!("/subscriptions/{SUB}{suffix}"),
            ),
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_canonical_scopes_are_refused_at_apply_time() {
    let stack = stack(|o| o.controller = false).await;
    stack.apply_yaml(&namespace(NS)).await.unwrap();
    for (suffix, obj) in bad_grants("x") {
        let message = refused_at_apply(&stack, &obj).await;
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
    let message = refused_at_apply(&stack, &bad_policy).await;
    assert!(
        message.contains("spec.roleGrants[0].scopes[0].resourceIdPrefix"),
        "{message}"
    );
    // Canonical ids, including ones with dots inside a name, are accepted.
    let good = format!(
        "/subscriptions/{SUB}/resourceGroups/DevTest/providers/Microsoft.Storage/storageAccounts/a.b-c_(1)"
    );
    apply_all(&stack, &[grant_json("good", "x", &good)]).await;
    let listed = grants(&stack, NS).list(&ListParams::default()).await;
    assert_eq!(listed.unwrap().items.len(), 1);
    stack.stop().await;
}

/// The RoleGrant CRD without the canonical-id rule, as a cluster still serving an older CRD
/// would: the controller is the last line of defence.
fn relaxed_role_grant_crd() -> Value {
    let crd = uami_api::crds()
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
        .sandbox()
        .unwrap()
        .install(vec![relaxed_role_grant_crd()])
        .unwrap();
    let controller = Controller::start(&stack, None);
    apply_all(&stack, &[namespace(NS), policy(""), identity("scoped")]).await;
    ready_identity(&stack, NS, "scoped").await;
    stack.emulator.reset_counts();
    let api = grants(&stack, NS);
    for (_, obj) in bad_grants("scoped") {
        stack.apply_yaml(&obj).await.unwrap();
    }
    for i in 0..BAD_SUFFIXES.len() {
        let g = refused(&api, &format!("bad-{i}"), "InvalidScope").await;
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
    apply_all(&stack, &[grant_json("good", "scoped", &scope)]).await;
    let id = assignment_id(&api, "good").await;
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
    controller.stop().await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_scopes_match_whole_segments() {
    let stack = stack(|_| {}).await;
    let inside = fixtures::resource(&format!(
        "/subscriptions/{SUB}/resourceGroups/devtest/providers/Microsoft.Storage/storageAccounts/sa2"
    ));
    apply_all(
        &stack,
        &[
            namespace(NS),
            policy(""),
            identity("seg"),
            grant(
                "next-door",
                "seg",
                "Reader",
                fixtures::resource_group("DevTest2"),
            ),
            grant("inside", "seg", "Reader", inside),
        ],
    )
    .await;
    refused(&grants(&stack, NS), "next-door", "DeniedByPolicy").await;
    ready(&grants(&stack, NS), "inside", 60).await;
    stack.stop().await;
}
