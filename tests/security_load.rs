//! What one namespace can make the controller do to the API server. Threat: a tenant deletes
//! identities that its denied grants still name, so their deletion waits for ever; the waiting
//! must cost the cluster nothing (no LIST of bindings and grants per pass, no status rewrites)
//! and end as soon as the dependents go.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use kube::api::DeleteParams;
use support::*;

const NS: &str = "team";

fn objects(n: usize) -> String {
    let mut out = format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {NS}}}\n");
    for i in 0..n {
        out.push_str(&format!(
            r#"---
apiVersion: uami.dev/v1alpha1
kind: UserAssignedIdentity
metadata: {{name: held-{i}, namespace: {NS}}}
spec: {{resourceGroup: DevTest, location: eastus}}
---
apiVersion: uami.dev/v1alpha1
kind: RoleGrant
metadata: {{name: denied-{i}, namespace: {NS}}}
spec:
  identityRef: {{name: held-{i}}}
  role: Owner
  scope: {{resourceGroup: {{name: DevTest}}}}
"#
        ));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identities_waiting_for_their_dependents_cost_no_api_requests_and_go_with_them() {
    let n = 10;
    let stack = agentless_stack(300, 0.5, |_| {}).await;
    stack.apply_yaml(&objects(n)).await.unwrap();
    let ids = identities(&stack, NS);
    let gs = grants(&stack, NS);
    for i in 0..n {
        ready(&ids, &format!("held-{i}"), 60).await;
        refused(&gs, &format!("denied-{i}"), "DeniedByPolicy").await;
    }
    for i in 0..n {
        ids.delete(&format!("held-{i}"), &DeleteParams::default())
            .await
            .unwrap();
    }
    for i in 0..n {
        refused(&ids, &format!("held-{i}"), "WaitingForDependents").await;
    }

    // Ten identities waiting for 6 s: no LIST of their dependents, no status rewritten.
    let sb = stack.sandbox().unwrap();
    let from = sb.audit().len();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let during: Vec<_> = sb.audit_from(from);
    let lists = during
        .iter()
        .filter(|r| {
            r.verb == "list" && (r.resource == "rolegrants" || r.resource == "identitybindings")
        })
        .count();
    let status_writes = during
        .iter()
        .filter(|r| r.resource == "userassignedidentities" && r.subresource == "status")
        .count();
    assert_eq!(lists, 0, "LISTs of dependents while waiting");
    assert_eq!(status_writes, 0, "identity status writes while waiting");

    // A dependent's deletion wakes its identity at once (the safety-net look is a minute away).
    for i in 0..n {
        gs.delete(&format!("denied-{i}"), &DeleteParams::default())
            .await
            .unwrap();
    }
    for i in 0..n {
        gone(&ids, &format!("held-{i}"), 20).await;
    }
    let state = stack.emulator.state();
    assert_eq!(state["identities"].as_array().unwrap().len(), 0, "{state}");
    stack.stop().await;
}

/// A service account binding's token check runs off the reconcile, backs off while it has not
/// settled, and counts a scope it cannot read as no failure: once settled, it costs neither
/// token exchanges nor ARM reads before the resync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settled_token_check_costs_nothing_and_an_unreadable_scope_is_no_failure() {
    let stack = agentless_stack(300, 0.5, |_| {}).await;
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/workload-identity.yaml"
    ))
    .unwrap();
    let vnet = "/subscriptions/6a2bd3a4-59c6-4d4e-9e8b-5c5a2f0a1b2c/resourceGroups/DevTest/providers/Microsoft.Network/virtualNetworks/vnet1";
    let unreadable = format!(
        r#"---
apiVersion: uami.dev/v1alpha1
kind: RoleGrant
metadata: {{name: reads-vnet, namespace: workload}}
spec:
  identityRef: {{name: reporter-identity}}
  role: Reader
  scope: {{resourceId: {vnet}}}
"#
    );
    stack
        .apply_yaml(&format!("{example}\n{unreadable}"))
        .await
        .unwrap();
    let binding = ready(
        &bindings(&stack, "workload"),
        "reporter-identity-for-reporter",
        90,
    )
    .await;
    assert!(binding.status.unwrap().token.is_some());
    condition_is(
        &grants(&stack, "workload"),
        "reads-vnet",
        "AccessVerified",
        "False",
        Some("UnsupportedScope"),
        60,
    )
    .await;
    let binding_api = bindings(&stack, "workload");
    eventually(60, "the Reader access on DevTest verified", || async {
        let b = binding_api
            .get("reporter-identity-for-reporter")
            .await
            .ok()?;
        b.status?
            .access
            .iter()
            .any(|a| a.scope.ends_with("/resourceGroups/DevTest") && a.verified)
            .then_some(())
    })
    .await;

    // Settled: 8 s without a token exchange or an access read.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stack.emulator.reset_counts();
    tokio::time::sleep(Duration::from_secs(8)).await;
    let counts = stack.emulator.counts();
    assert_eq!(counts.total("Aad_Token"), 0, "{counts:?}");
    assert_eq!(counts.total("ResourceGroups_Get"), 0, "{counts:?}");
    stack.stop().await;
}
