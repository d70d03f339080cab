//! No token or secret leaks: after the tutorial converges (with debug logs on), every access
//! token the emulator issued and the controller's client secret are searched for in all status,
//! Events, ConfigMaps, the captured logs and the metrics.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use kube::api::{Api, DynamicObject, ListParams};
use kube::discovery::ApiResource;
use support::capture::Capture;
use support::*;
use uami_emulator::world::TUTORIAL_CONTROLLER_SECRET;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_or_secret_appears_anywhere() {
    let capture = Capture::install();

    let stack = tutorial_stack(tutorial_options(Duration::from_secs(2), 1.0)).await;
    tutorial_ready(&stack, 60).await;
    tokio::time::sleep(Duration::from_secs(3)).await;

    let mut haystack = String::new();
    let client = stack.client();
    for (group, version, kind, plural) in [
        (
            "uami.dev",
            "v1alpha1",
            "UserAssignedIdentity",
            "userassignedidentities",
        ),
        (
            "uami.dev",
            "v1alpha1",
            "IdentityBinding",
            "identitybindings",
        ),
        ("uami.dev", "v1alpha1", "RoleGrant", "rolegrants"),
        ("", "v1", "ConfigMap", "configmaps"),
        ("", "v1", "Event", "events"),
        ("events.k8s.io", "v1", "Event", "events"),
    ] {
        let ar = ApiResource {
            group: group.into(),
            version: version.into(),
            api_version: if group.is_empty() {
                version.into()
            } else {
                format!("{group}/{version}")
            },
            kind: kind.into(),
            plural: plural.into(),
        };
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
        for o in api.list(&ListParams::default()).await.unwrap().items {
            haystack.push_str(&serde_json::to_string(&o).unwrap());
        }
    }
    let mut metrics = String::new();
    prometheus_client::encoding::text::encode(&mut metrics, &stack.registry.lock()).unwrap();
    let logs = capture.text();

    assert!(haystack.contains("expiresOn"), "status was captured");
    assert!(
        metrics.contains("uami_arm_requests"),
        "metrics were captured"
    );
    assert!(logs.lines().count() > 10, "logs were captured");
    let tokens = stack.emulator.issued_tokens();
    assert!(
        tokens.len() >= 2,
        "the controller and the agent obtained tokens"
    );
    for (what, text) in [
        ("status, events and config maps", &haystack),
        ("metrics", &metrics),
        ("logs", &logs),
    ] {
        for t in &tokens {
            assert!(
                !text.contains(t.as_str()),
                "an access token appears in {what}"
            );
            // Even the signature part alone.
            let sig = t.rsplit('.').next().unwrap();
            assert!(!text.contains(sig), "a token signature appears in {what}");
        }
        assert!(
            !text.contains(TUTORIAL_CONTROLLER_SECRET),
            "the client secret appears in {what}"
        );
    }
    stack.stop().await;
}
