//! The controller against the sandbox and the emulator: batching of VM writes, GrantPolicy
//! enforcement before any ARM write, Azure's failure modes ending in Ready, restarts without
//! duplicates, Orphan and adopted resources left alone.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use kube::api::{DeleteParams, ListParams};
use serde_json::json;
use support::*;
use uami_controller::demo::stack::{Stack, StackOptions};
use uami_controller::emulator::world::TUTORIAL_SUBSCRIPTION as SUB;
use uami_controller::emulator::{Faults, faults::Throttling};

const NS: &str = "apps";

fn policy(roles: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {NS}}}\n---\napiVersion: uami.dev/v1alpha1\nkind: GrantPolicy\nmetadata: {{name: apps}}\nspec:\n  namespaces: [{NS}]\n  roleGrants:\n  - roles: [{roles}]\n    scopes: [{{resourceGroup: {{name: DevTest}}}}]\n  identityBindings:\n  - virtualMachine: {{resourceGroup: DevTest, name: myVM}}\n"
    )
}

fn identity(name: &str, extra: &str) -> String {
    format!(
        "---\napiVersion: uami.dev/v1alpha1\nkind: UserAssignedIdentity\nmetadata: {{name: {name}, namespace: {NS}}}\nspec: {{resourceGroup: DevTest, location: eastus{extra}}}\n"
    )
}

fn binding(name: &str, identity: &str, vm: &str) -> String {
    format!(
        "---\napiVersion: uami.dev/v1alpha1\nkind: IdentityBinding\nmetadata: {{name: {name}, namespace: {NS}}}\nspec: {{identityRef: {{name: {identity}}}, target: {{virtualMachine: {{resourceGroup: DevTest, name: {vm}}}}}}}\n"
    )
}

fn grant(name: &str, identity: &str, role: &str, scope: &str, extra: &str) -> String {
    format!(
        "---\napiVersion: uami.dev/v1alpha1\nkind: RoleGrant\nmetadata: {{name: {name}, namespace: {NS}}}\nspec: {{identityRef: {{name: {identity}}}, role: {role}, scope: {scope}, verifyAccess: false{extra}}}\n"
    )
}

async fn stack(resync: u64, configure: impl FnOnce(&mut StackOptions)) -> Stack {
    let mut opts = StackOptions::tutorial(Duration::from_secs(resync)).unwrap();
    opts.world.rbac_propagation_seconds = 0.5;
    opts.world.lro_retry_after_seconds = 0;
    configure(&mut opts);
    Stack::start(opts).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_identities_on_one_vm_cost_at_most_two_patches() {
    let stack = stack(60, |o| o.agents = false).await;
    let mut yaml = policy("Reader");
    for i in 0..5 {
        yaml.push_str(&identity(&format!("batch-{i}"), ""));
    }
    stack.apply_yaml(&yaml).await.unwrap();
    for i in 0..5 {
        ready(&identities(&stack, NS), &format!("batch-{i}"), 60).await;
    }
    stack.emulator.reset_counts();
    let mut yaml = String::new();
    for i in 0..5 {
        yaml.push_str(&binding(
            &format!("batch-{i}"),
            &format!("batch-{i}"),
            "myVM",
        ));
    }
    stack.apply_yaml(&yaml).await.unwrap();
    let api = bindings(&stack, NS);
    for i in 0..5 {
        eventually(60, "Assigned", || async {
            let b = api.get(&format!("batch-{i}")).await.ok()?;
            (condition(&b.status?.conditions, "Assigned")?.0 == "True").then_some(())
        })
        .await;
    }
    let patches = stack.emulator.counts().total("VirtualMachines_Update");
    assert!(
        (1..=2).contains(&patches),
        "{patches} VM PATCHes for five identities"
    );
    let vm = compute(&stack.emulator.state(), "myVM");
    assert_eq!(
        vm["identity"]["userAssignedIdentities"]
            .as_object()
            .unwrap()
            .len(),
        5
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_no_policy_allows_is_refused_without_an_arm_write() {
    let stack = stack(60, |o| o.agents = false).await;
    let yaml = format!(
        "{}{}{}{}",
        policy("Reader"),
        identity("denied-id", ""),
        grant(
            "owner-of-everything",
            "denied-id",
            "Owner",
            &format!("{{subscription: {{subscriptionId: {SUB}}}}}"),
            ""
        ),
        binding("elsewhere", "denied-id", "otherVM"),
    );
    stack.apply_yaml(&yaml).await.unwrap();
    ready(&identities(&stack, NS), "denied-id", 60).await;
    for (api_name, reason) in [("grant", "DeniedByPolicy"), ("binding", "DeniedByPolicy")] {
        eventually(30, api_name, || async {
            let conds = if api_name == "grant" {
                grants(&stack, NS)
                    .get("owner-of-everything")
                    .await
                    .ok()?
                    .status?
                    .conditions
            } else {
                bindings(&stack, NS)
                    .get("elsewhere")
                    .await
                    .ok()?
                    .status?
                    .conditions
            };
            let (status, r) = condition(&conds, "Ready")?;
            (status == "False" && r == reason).then_some(())
        })
        .await;
    }
    let counts = stack.emulator.counts();
    assert_eq!(counts.total("RoleAssignments_Create"), 0, "{counts:?}");
    assert_eq!(counts.total("VirtualMachines_Update"), 0, "{counts:?}");
    let events: kube::Api<k8s_openapi::api::events::v1::Event> =
        kube::Api::namespaced(stack.client(), NS);
    let warnings: Vec<_> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| {
            e.type_.as_deref() == Some("Warning") && e.reason.as_deref() == Some("DeniedByPolicy")
        })
        .collect();
    assert!(warnings.len() >= 2, "a Warning event for each refusal");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_failures_end_in_ready() {
    let stack = stack(60, |o| {
        o.agents = false;
        o.world.faults = Faults {
            principal_not_found_seconds: 15.0,
            lro_fail_next: 1,
            throttling: Some(Throttling { scale: 0.04 }),
            server_error_next: 1,
            ..Faults::default()
        };
    })
    .await;
    let yaml = format!(
        "{}{}{}{}",
        policy("Reader"),
        identity("faulty", ""),
        binding("faulty", "faulty", "myVM"),
        grant(
            "faulty",
            "faulty",
            "Reader",
            "{resourceGroup: {name: DevTest}}",
            ""
        )
    );
    stack.apply_yaml(&yaml).await.unwrap();
    ready(&identities(&stack, NS), "faulty", 90).await;
    let g = ready(&grants(&stack, NS), "faulty", 90).await;
    eventually(90, "binding Assigned", || async {
        let b = bindings(&stack, NS).get("faulty").await.ok()?;
        (condition(&b.status?.conditions, "Assigned")?.0 == "True").then_some(())
    })
    .await;
    let counts = stack.emulator.counts();
    assert!(
        counts.get("RoleAssignments_Create", 400) >= 1,
        "PrincipalNotFound was answered: {counts:?}"
    );
    assert!(
        counts.with_status(429) >= 1,
        "throttled at least once: {counts:?}"
    );
    assert!(
        counts.with_status(500) >= 1,
        "a 500 was answered: {counts:?}"
    );
    let failed_lro = stack.emulator.journal().iter().any(|e| {
        e.operation == "AsyncOperation_Get"
            && e.response.as_ref().is_some_and(|r| r["status"] == "Failed")
    });
    assert!(
        failed_lro,
        "a long-running operation failed and was retried"
    );
    assert_eq!(g.status.unwrap().adopted, Some(false));
    // One assignment, one identity on the VM: retries created no duplicates.
    let state = stack.emulator.state();
    let pid = identities(&stack, NS)
        .get("faulty")
        .await
        .unwrap()
        .status
        .unwrap()
        .principal_id
        .unwrap();
    assert_eq!(
        state["roleAssignments"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["properties"]["principalId"] == json!(pid))
            .count(),
        1
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_mid_reconcile_creates_no_duplicates() {
    let stack = stack(60, |o| {
        o.agents = false;
        o.controller = false;
        o.world.faults.latency_ms = 150;
    })
    .await;
    let first = tokio_util::sync::CancellationToken::new();
    let h1 = stack.start_controller(None, first.clone()).unwrap();
    let yaml = format!(
        "{}{}{}{}",
        policy("Reader"),
        identity("restart", ""),
        binding("restart", "restart", "myVM"),
        grant(
            "restart",
            "restart",
            "Reader",
            "{resourceGroup: {name: DevTest}}",
            ""
        )
    );
    stack.apply_yaml(&yaml).await.unwrap();
    // Stop the first controller as soon as it has written to Azure.
    eventually(60, "a first ARM write", || async {
        (stack.emulator.counts().writes() >= 1).then_some(())
    })
    .await;
    first.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(20), h1).await;
    let second = tokio_util::sync::CancellationToken::new();
    let h2 = stack.start_controller(None, second.clone()).unwrap();
    ready(&identities(&stack, NS), "restart", 90).await;
    let g = ready(&grants(&stack, NS), "restart", 90).await;
    assert_eq!(
        g.status.unwrap().adopted,
        Some(false),
        "its own assignment, found again by name, is not adopted"
    );
    eventually(90, "binding Assigned", || async {
        let b = bindings(&stack, NS).get("restart").await.ok()?;
        (condition(&b.status?.conditions, "Assigned")?.0 == "True").then_some(())
    })
    .await;
    let state = stack.emulator.state();
    assert_eq!(state["identities"].as_array().unwrap().len(), 1);
    let pid = identities(&stack, NS)
        .get("restart")
        .await
        .unwrap()
        .status
        .unwrap()
        .principal_id
        .unwrap();
    assert_eq!(
        state["roleAssignments"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["properties"]["principalId"] == json!(pid))
            .count(),
        1
    );
    assert_eq!(
        compute(&state, "myVM")["identity"]["userAssignedIdentities"]
            .as_object()
            .unwrap()
            .len(),
        1
    );
    second.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(20), h2).await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphan_and_adopted_resources_survive_deletion() {
    let stack = stack(60, |o| o.agents = false).await;
    let yaml = format!(
        "{}{}{}",
        policy("Reader"),
        identity("kept", ", deletionPolicy: Orphan"),
        identity("shared", "")
    );
    stack.apply_yaml(&yaml).await.unwrap();
    ready(&identities(&stack, NS), "kept", 60).await;
    let shared = ready(&identities(&stack, NS), "shared", 60).await;
    let pid = shared.status.unwrap().principal_id.unwrap();
    // Someone else already granted Reader on DevTest to this identity, under another name.
    let http = reqwest::Client::new();
    let other = uuid::Uuid::new_v4();
    let url = format!(
        "{}subscriptions/{SUB}/resourceGroups/DevTest/providers/Microsoft.Authorization/roleAssignments/{other}?api-version=2022-04-01",
        stack.emulator.arm_endpoint()
    );
    let resp = http.put(&url).bearer_auth(stack.emulator.admin_token()).json(&json!({"properties": {"roleDefinitionId": format!("/subscriptions/{SUB}/providers/Microsoft.Authorization/roleDefinitions/acdd72a7-3385-48ef-bd42-f606fba81ae7"), "principalId": pid, "principalType": "ServicePrincipal"}})).send().await.unwrap();
    assert_eq!(resp.status(), 201);
    stack
        .apply_yaml(&grant(
            "adopts",
            "shared",
            "Reader",
            "{resourceGroup: {name: DevTest}}",
            "",
        ))
        .await
        .unwrap();
    let g = ready(&grants(&stack, NS), "adopts", 60).await;
    let gs = g.status.unwrap();
    assert_eq!(gs.adopted, Some(true));
    assert!(gs.role_assignment_id.unwrap().ends_with(&other.to_string()));
    assert_eq!(
        stack.emulator.counts().get("RoleAssignments_Create", 409),
        1
    );
    // Deleting the grant leaves the adopted assignment; deleting the Orphan identity leaves it in Azure.
    grants(&stack, NS)
        .delete("adopts", &DeleteParams::default())
        .await
        .unwrap();
    identities(&stack, NS)
        .delete("kept", &DeleteParams::default())
        .await
        .unwrap();
    eventually(60, "both objects gone", || async {
        let g = grants(&stack, NS).get_opt("adopts").await.ok()?;
        let i = identities(&stack, NS).get_opt("kept").await.ok()?;
        (g.is_none() && i.is_none()).then_some(())
    })
    .await;
    assert_eq!(
        http.get(&url)
            .bearer_auth(stack.emulator.admin_token())
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let state = stack.emulator.state();
    assert!(
        state["identities"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["name"] == "kept")
    );
    assert_eq!(stack.emulator.counts().total("RoleAssignments_Delete"), 0);
    assert_eq!(
        stack
            .emulator
            .counts()
            .total("UserAssignedIdentities_Delete"),
        0
    );
    stack.stop().await;
}
