//! Two controllers on one cluster: only the leader writes (Kubernetes and Azure); stopping it
//! releases the Lease and the other takes over within the lease duration, with no duplicate
//! Azure writes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use support::*;
use uami::demo::stack::{Stack, StackOptions};

const WRITES: &[&str] = &["create", "update", "patch", "delete"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_writes_and_the_standby_takes_over() {
    let mut opts = StackOptions::tutorial(Duration::from_secs(60)).unwrap();
    opts.controller = false;
    opts.agents = false;
    opts.world.lro_retry_after_seconds = 0;
    let stack = Stack::start(opts).await.unwrap();
    let a = Controller::start(&stack, Some("a"));
    let leases: kube::Api<Lease> = kube::Api::namespaced(stack.client(), "default");
    wait_leader(&stack, "default", "a", 20).await;
    let b = Controller::start(&stack, Some("b"));
    let mut yaml = tutorial_yaml();
    yaml = yaml.replace("verifyAccess: true", "verifyAccess: false");
    stack.apply_yaml(&yaml).await.unwrap();
    ready(&identities(&stack, "tutorial"), "my-identity", 60).await;
    ready(&grants(&stack, "tutorial"), "my-identity-reads-devtest", 60).await;
    assigned(&bindings(&stack, TUTORIAL), TUTORIAL_BINDING, 60).await;

    let audit = stack.sandbox().unwrap().audit();
    let wrote = |user: &str| {
        audit
            .iter()
            .filter(|r| {
                r.user == user && r.group == "uami.dev" && WRITES.contains(&r.verb.as_str())
            })
            .count()
    };
    assert!(wrote("controller-a") > 0, "the leader wrote");
    assert_eq!(wrote("controller-b"), 0, "the standby wrote nothing");

    // Stop the leader: it releases the Lease on the way out.
    let writes_before = stack.emulator.counts().writes();
    let held = leases.get("uami-controller").await.unwrap().spec.unwrap();
    assert_eq!(held.holder_identity.as_deref(), Some("a"));
    a.stop_cleanly().await;
    wait_leader(&stack, "default", "b", 10).await;
    // b took over before a's lease could have expired: a released it on the way out.
    let taken = leases.get("uami-controller").await.unwrap().spec.unwrap();
    let expiry = held
        .renew_time
        .unwrap()
        .0
        .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(i64::from(
            held.lease_duration_seconds.unwrap(),
        )))
        .unwrap();
    assert!(
        taken.acquire_time.unwrap().0 < expiry,
        "b acquired the lease before a's would have expired"
    );
    // The new leader reconciles new work, and the converged objects cost no Azure writes.
    stack.apply_yaml("apiVersion: uami.dev/v1alpha1\nkind: UserAssignedIdentity\nmetadata: {name: after-handover, namespace: tutorial}\nspec: {resourceGroup: DevTest, location: eastus}\n").await.unwrap();
    ready(&identities(&stack, "tutorial"), "after-handover", 60).await;
    let writes_after = stack.emulator.counts().writes();
    assert_eq!(
        writes_after - writes_before,
        1,
        "only the new identity was written: {:?}",
        stack.emulator.counts()
    );
    assert_eq!(
        stack.emulator.state()["identities"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert!(
        stack
            .sandbox()
            .unwrap()
            .audit()
            .iter()
            .any(|r| r.user == "controller-b"
                && r.group == "uami.dev"
                && WRITES.contains(&r.verb.as_str()))
    );
    b.stop().await;
    stack.stop().await;
}
