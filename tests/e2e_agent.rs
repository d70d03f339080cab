//! The agent on the VM: access is denied (403) until the grant propagates, then verified; a
//! token nearing expiry is renewed and status follows; an identity removed from the VM turns
//! `TokenAcquired` False; IMDS faults are retried and IMDS's limits are never exceeded.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use serde_json::json;
use support::*;
use uami_controller::demo::stack::{Stack, StackOptions};
use uami_controller::emulator::Faults;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_is_denied_until_the_grant_propagates_then_verified() {
    let mut opts = StackOptions::tutorial(Duration::from_secs(60)).unwrap();
    // Long enough that the first check falls inside it even on a loaded machine.
    opts.world.rbac_propagation_seconds = 10.0;
    opts.world.lro_retry_after_seconds = 0;
    opts.agent_interval = Duration::from_millis(700);
    let stack = Stack::start(opts).await.unwrap();
    stack.apply_yaml(&tutorial_yaml()).await.unwrap();
    let api = grants(&stack, "tutorial");
    let denied = eventually(30, "AccessVerified=False with the 403", || async {
        let s = api.get("my-identity-reads-devtest").await.ok()?.status?;
        let (status, reason) = condition(&s.conditions, "AccessVerified")?;
        (status == "False" && reason == "AccessDenied").then_some(s)
    })
    .await;
    assert_eq!(denied.access.unwrap().http_status, Some(403));
    assert_eq!(
        condition(&denied.conditions, "Ready").unwrap(),
        ("False".to_string(), "AccessDenied".to_string()),
        "a reason, not a failure"
    );
    let verified = ready(&api, "my-identity-reads-devtest", 30)
        .await
        .status
        .unwrap();
    assert_eq!(
        condition(&verified.conditions, "AccessVerified").unwrap().0,
        "True"
    );
    assert_eq!(verified.access.unwrap().http_status, Some(200));
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_renewed_and_an_unbound_identity_loses_its_token() {
    let mut opts = StackOptions::tutorial(Duration::from_secs(120)).unwrap();
    opts.world.rbac_propagation_seconds = 0.2;
    opts.world.lro_retry_after_seconds = 0;
    opts.world.token_lifetime_seconds = 12;
    opts.agent_interval = Duration::from_secs(1);
    let stack = Stack::start(opts).await.unwrap();
    stack.apply_yaml(&tutorial_yaml()).await.unwrap();
    let api = bindings(&stack, "tutorial");
    let first = ready(&api, "my-identity-on-myvm", 60)
        .await
        .status
        .unwrap()
        .token
        .unwrap()
        .expires_on
        .unwrap();
    let renewed = eventually(40, "a renewed token", || async {
        let t = api
            .get("my-identity-on-myvm")
            .await
            .ok()?
            .status?
            .token?
            .expires_on?;
        (t != first).then_some(t)
    })
    .await;
    assert!(renewed > first, "{renewed} after {first}");
    // Between renewals the agent writes nothing new: the status only changes with the token. A
    // token of 12 s is renewed 6 s before it expires, so the 2 s after a renewal hold none.
    let before = api
        .get("my-identity-on-myvm")
        .await
        .unwrap()
        .metadata
        .resource_version;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = api.get("my-identity-on-myvm").await.unwrap();
    let t = after
        .status
        .clone()
        .unwrap()
        .token
        .unwrap()
        .expires_on
        .unwrap();
    assert_eq!(t, renewed, "no renewal within 2 s of the last one");
    assert_eq!(
        after.metadata.resource_version, before,
        "no write without a change"
    );

    // Someone removes the identity from the VM (the controller's resync is far away).
    let http = reqwest::Client::new();
    let vm_url = format!(
        "{}subscriptions/{}/resourceGroups/DevTest/providers/Microsoft.Compute/virtualMachines/myVM?api-version=2024-11-01",
        stack.emulator.arm_endpoint(),
        uami_controller::emulator::world::TUTORIAL_SUBSCRIPTION
    );
    let resp = http
        .patch(&vm_url)
        .bearer_auth(stack.emulator.admin_token())
        .json(&json!({"identity": {"type": "None"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    eventually(30, "TokenAcquired=False", || async {
        let s = api.get("my-identity-on-myvm").await.ok()?.status?;
        let (status, reason) = condition(&s.conditions, "TokenAcquired")?;
        (status == "False" && reason == "IdentityNotAssigned").then_some(())
    })
    .await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imds_faults_are_retried_within_imds_limits() {
    let mut opts = StackOptions::tutorial(Duration::from_secs(60)).unwrap();
    opts.world.rbac_propagation_seconds = 0.2;
    opts.world.lro_retry_after_seconds = 0;
    opts.agent_interval = Duration::from_millis(300);
    opts.world.faults = Faults {
        imds_throttle_next: 2,
        imds_gone_next: 1,
        imds_server_error_next: 1,
        ..Faults::default()
    };
    let stack = Stack::start(opts).await.unwrap();
    stack.apply_yaml(&tutorial_yaml()).await.unwrap();
    ready(&bindings(&stack, "tutorial"), "my-identity-on-myvm", 60).await;
    ready(&grants(&stack, "tutorial"), "my-identity-reads-devtest", 60).await;
    let counts = stack.emulator.counts();
    assert_eq!(counts.get("Imds_Token", 429), 2, "{counts:?}");
    assert_eq!(counts.get("Imds_Token", 410), 1, "{counts:?}");
    assert_eq!(counts.get("Imds_Token", 500), 1, "{counts:?}");
    assert!(counts.get("Imds_Token", 200) >= 1);
    // Keep the agent busy for a while, then check it never exceeded IMDS's limits.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stats = stack.emulator.imds_stats()["myVM"].clone();
    assert!(stats.max_concurrent <= 5, "{stats:?}");
    assert!(stats.max_per_second <= 20, "{stats:?}");
    assert_eq!(stats.limited, 0, "{stats:?}");
    // Cached tokens: far fewer IMDS requests than agent passes.
    assert!(
        stack.emulator.counts().total("Imds_Token") < 30,
        "{:?}",
        stack.emulator.counts()
    );
    stack.stop().await;
}
