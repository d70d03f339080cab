//! The controller against the sandbox and the emulator: batching of VM writes, GrantPolicy
//! enforcement before any ARM write, Azure's failure modes ending in Ready, restarts without
//! duplicates, Orphan and adopted resources left alone.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use kube::api::ListParams;
use support::arm::Admin;
use support::fixtures::{self, Fixture};
use support::*;
use uami::demo::stack::{Stack, StackOptions};
use uami_api::DeletionPolicy;
use uami_emulator::world::TUTORIAL_SUBSCRIPTION as SUB;
use uami_emulator::{Faults, faults::Throttling};

const NS: &str = "apps";

/// The principal id of identity `name`.
async fn principal_of(stack: &Stack, name: &str) -> String {
    let i = identities(stack, NS).get(name).await.unwrap();
    i.status.unwrap().principal_id.unwrap()
}

fn policy(roles: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {NS}}}\n---\napiVersion: uami.dev/v1alpha1\nkind: GrantPolicy\nmetadata: {{name: apps}}\nspec:\n  namespaces: [{NS}]\n  roleGrants:\n  - roles: [{roles}]\n    scopes: [{{resourceGroup: {{name: DevTest}}}}]\n  identityBindings:\n  - virtualMachine: {{resourceGroup: DevTest, name: myVM}}\n"
    )
}

fn identity(name: &str) -> String {
    fixtures::identity(NS, name).yaml()
}

fn binding(name: &str, identity: &str, vm: &str) -> String {
    fixtures::binding(NS, name, identity, fixtures::vm(vm)).yaml()
}

/// A Reader grant of `identity` on resource group DevTest.
fn devtest_reader(name: &str, identity: &str) -> String {
    let devtest = fixtures::resource_group("DevTest");
    fixtures::grant(NS, name, identity, "Reader", devtest).yaml()
}

async fn stack(resync: u64, configure: impl FnOnce(&mut StackOptions)) -> Stack {
    let mut opts = tutorial_options(Duration::from_secs(resync), 0.5);
    configure(&mut opts);
    Stack::start(opts).await.unwrap()
}

/// A stack without agents, changed by `configure`, with the GrantPolicy of `apps` and the
/// objects of `parts` applied.
async fn apps_with(configure: impl FnOnce(&mut StackOptions), parts: &[String]) -> Stack {
    let stack = stack(60, |o| {
        o.agents = false;
        configure(o);
    })
    .await;
    apply_all(&stack, &[&[policy("Reader")], parts].concat()).await;
    stack
}

/// A stack without agents, with the GrantPolicy of `apps` and the objects of `parts` applied.
async fn apps(parts: &[String]) -> Stack {
    apps_with(|_| {}, parts).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_identities_on_one_vm_cost_at_most_two_patches() {
    let stack = stack(60, |o| o.agents = false).await;
    let mut yaml = policy("Reader");
    for i in 0..5 {
        yaml.push_str(&identity(&format!("batch-{i}")));
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
        assigned(&api, &format!("batch-{i}"), 60).await;
    }
    let patches = stack.emulator.counts().total("VirtualMachines_Update");
    assert!(
        (1..=2).contains(&patches),
        "{patches} VM PATCHes for five identities"
    );
    assert_eq!(user_assigned(&stack.emulator.state(), "myVM"), 5);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_no_policy_allows_is_refused_without_an_arm_write() {
    let stack = apps(&[
        identity("denied-id"),
        fixtures::grant(
            NS,
            "owner-of-everything",
            "denied-id",
            "Owner",
            fixtures::subscription(SUB),
        )
        .yaml(),
        binding("elsewhere", "denied-id", "otherVM"),
    ])
    .await;
    ready(&identities(&stack, NS), "denied-id", 60).await;
    refused(&grants(&stack, NS), "owner-of-everything", "DeniedByPolicy").await;
    refused(&bindings(&stack, NS), "elsewhere", "DeniedByPolicy").await;
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
    let faults = Faults {
        principal_not_found_seconds: 15.0,
        lro_fail_next: 1,
        throttling: Some(Throttling { scale: 0.04 }),
        server_error_next: 1,
        ..Faults::default()
    };
    let stack = apps_with(
        |o| o.world.faults = faults,
        &[
            identity("faulty"),
            binding("faulty", "faulty", "myVM"),
            devtest_reader("faulty", "faulty"),
        ],
    )
    .await;
    ready(&identities(&stack, NS), "faulty", 90).await;
    let g = ready(&grants(&stack, NS), "faulty", 90).await;
    assigned(&bindings(&stack, NS), "faulty", 90).await;
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
    let pid = principal_of(&stack, "faulty").await;
    assert_eq!(assignments_of(&state, &pid).len(), 1);
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
    let first = Controller::start(&stack, None);
    apply_all(
        &stack,
        &[
            policy("Reader"),
            identity("restart"),
            binding("restart", "restart", "myVM"),
            devtest_reader("restart", "restart"),
        ],
    )
    .await;
    // Stop the first controller as soon as it has written to Azure.
    eventually(60, "a first ARM write", || async {
        (stack.emulator.counts().writes() >= 1).then_some(())
    })
    .await;
    first.stop().await;
    let second = Controller::start(&stack, None);
    ready(&identities(&stack, NS), "restart", 90).await;
    let g = ready(&grants(&stack, NS), "restart", 90).await;
    assert_eq!(
        g.status.unwrap().adopted,
        Some(false),
        "its own assignment, found again by name, is not adopted"
    );
    assigned(&bindings(&stack, NS), "restart", 90).await;
    let state = stack.emulator.state();
    assert_eq!(state["identities"].as_array().unwrap().len(), 1);
    let pid = principal_of(&stack, "restart").await;
    assert_eq!(assignments_of(&state, &pid).len(), 1);
    assert_eq!(user_assigned(&state, "myVM"), 1);
    second.stop().await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphan_and_adopted_resources_survive_deletion() {
    let stack = apps(&[
        fixtures::identity(NS, "kept")
            .with(|i| i.spec.deletion_policy = DeletionPolicy::Orphan)
            .yaml(),
        identity("shared"),
    ])
    .await;
    ready(&identities(&stack, NS), "kept", 60).await;
    let shared = ready(&identities(&stack, NS), "shared", 60).await;
    let pid = shared.status.unwrap().principal_id.unwrap();
    // Someone else already granted Reader on DevTest to this identity, under another name.
    let admin = Admin::of(&stack.emulator);
    let rg = format!("/subscriptions/{SUB}/resourceGroups/DevTest");
    let other = admin.create_assignment(&rg, &pid).await;
    stack
        .apply_yaml(&devtest_reader("adopts", "shared"))
        .await
        .unwrap();
    let g = ready(&grants(&stack, NS), "adopts", 60).await;
    let gs = g.status.unwrap();
    assert_eq!(gs.adopted, Some(true));
    assert!(
        gs.role_assignment_id
            .unwrap()
            .ends_with(other.rsplit('/').next().unwrap())
    );
    assert_eq!(
        stack.emulator.counts().get("RoleAssignments_Create", 409),
        1
    );
    // Deleting the grant leaves the adopted assignment; deleting the Orphan identity leaves it in Azure.
    delete(&grants(&stack, NS), "adopts").await;
    delete(&identities(&stack, NS), "kept").await;
    eventually(60, "both objects gone", || async {
        let g = grants(&stack, NS).get_opt("adopts").await.ok()?;
        let i = identities(&stack, NS).get_opt("kept").await.ok()?;
        (g.is_none() && i.is_none()).then_some(())
    })
    .await;
    assert!(admin.assignment_exists(&other).await);
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
