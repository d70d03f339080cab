//! The agent on the VM: access is denied (403) until the grant propagates, then verified; a
//! token nearing expiry is renewed and status follows; an identity removed from the VM turns
//! `TokenAcquired` False; IMDS faults are retried and IMDS's limits are never exceeded.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use serde_json::json;
use support::arm::Admin;
use support::*;
use uami_controller::emulator::Faults;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_is_denied_until_the_grant_propagates_then_verified() {
    // Long enough that the first check falls inside it even on a loaded machine.
    let mut opts = tutorial_options(Duration::from_secs(60), 10.0);
    opts.agent_interval = Duration::from_millis(700);
    let stack = tutorial_stack(opts).await;
    let api = grants(&stack, TUTORIAL);
    // The agent writes AccessVerified, the controller then derives Ready from it: both show the
    // denial, Ready as a reason, not a failure.
    let denied = eventually(
        30,
        "AccessVerified and Ready False with the 403",
        || async {
            let s = api.get(TUTORIAL_GRANT).await.ok()?.status?;
            let access_denied = ("False".to_string(), "AccessDenied".to_string());
            (condition(&s.conditions, "AccessVerified")? == access_denied
                && condition(&s.conditions, "Ready")? == access_denied)
                .then_some(s)
        },
    )
    .await;
    assert_eq!(denied.access.unwrap().http_status, Some(403));
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
    let mut opts = tutorial_options(Duration::from_secs(120), 0.2);
    opts.world.token_lifetime_seconds = 12;
    opts.agent_interval = Duration::from_secs(1);
    let stack = tutorial_stack(opts).await;
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
    let (status, _, _) = Admin::of(&stack.emulator)
        .patch_vm("myVM", json!({"identity": {"type": "None"}}))
        .await;
    assert_eq!(status, 200);
    condition_is(
        &api,
        TUTORIAL_BINDING,
        "TokenAcquired",
        "False",
        Some("IdentityNotAssigned"),
        30,
    )
    .await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imds_faults_are_retried_within_imds_limits() {
    let mut opts = tutorial_options(Duration::from_secs(60), 0.2);
    opts.agent_interval = Duration::from_millis(300);
    opts.world.faults = Faults {
        imds_throttle_next: 2,
        imds_gone_next: 1,
        imds_server_error_next: 1,
        ..Faults::default()
    };
    let stack = tutorial_stack(opts).await;
    ready(&bindings(&stack, TUTORIAL), TUTORIAL_BINDING, 60).await;
    ready(&grants(&stack, TUTORIAL), TUTORIAL_GRANT, 60).await;
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

/// Passing failures after everything is Ready: IMDS answering 500 past its retries, and ARM
/// answering every access read with 500. The binding and the grant stay Ready, each says why
/// its last check failed in `lastCheckError`, and once the faults end the next check removes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passing_failures_keep_ready_and_show_last_check_error() {
    let mut opts = tutorial_options(Duration::from_secs(120), 0.2);
    opts.agent_interval = Duration::from_millis(700);
    let stack = tutorial_stack(opts).await;
    let (b_api, g_api) = (bindings(&stack, TUTORIAL), grants(&stack, TUTORIAL));
    ready(&b_api, TUTORIAL_BINDING, 60).await;
    ready(&g_api, TUTORIAL_GRANT, 60).await;
    let mut flaps = flaps::Flaps::start(&stack.client(), &[TUTORIAL.to_string()]);

    stack.emulator.set_faults(Faults {
        imds_server_error_next: 1000,
        server_error_rate: 1.0,
        ..Faults::default()
    });
    let b = eventually(30, "the binding's lastCheckError", || async {
        let s = b_api.get(TUTORIAL_BINDING).await.ok()?.status?;
        s.last_check_error.clone().map(|e| (s, e))
    })
    .await;
    assert_eq!(b.1.reason, "ImdsUnavailable", "{:?}", b.1);
    assert_eq!(b.1.checked_by.as_deref(), Some("myVM"));
    assert_eq!(
        condition(&b.0.conditions, "TokenAcquired").unwrap().0,
        "True"
    );
    assert_eq!(condition(&b.0.conditions, "Ready").unwrap().0, "True");
    assert!(b.0.token.is_some(), "the last token's metadata stays");
    let g = eventually(30, "the grant's lastCheckError", || async {
        let s = g_api.get(TUTORIAL_GRANT).await.ok()?.status?;
        s.last_check_error.clone().map(|e| (s, e))
    })
    .await;
    assert_eq!(g.1.reason, "CheckFailed", "{:?}", g.1);
    assert!(g.1.message.contains("500"), "{:?}", g.1);
    assert_eq!(
        condition(&g.0.conditions, "AccessVerified").unwrap().0,
        "True"
    );
    assert_eq!(
        g.0.access.unwrap().http_status,
        Some(200),
        "the last answer stays"
    );
    // A while of failing checks: Ready never leaves True, and nothing secret is written.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let text = serde_json::to_string(&b_api.get(TUTORIAL_BINDING).await.unwrap()).unwrap();
    assert!(!text.contains("eyJ"), "no token in status: {text}");

    stack.emulator.set_faults(Faults::default());
    eventually(30, "lastCheckError removed from both", || async {
        let b = b_api.get(TUTORIAL_BINDING).await.ok()?.status?;
        let g = g_api.get(TUTORIAL_GRANT).await.ok()?.status?;
        (b.last_check_error.is_none() && g.last_check_error.is_none()).then_some(())
    })
    .await;
    flaps.stop();
    assert_eq!(flaps.flaps(), Vec::<String>::new(), "Ready flapped");
    stack.stop().await;
}
