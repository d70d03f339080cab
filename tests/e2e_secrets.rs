//! No token or secret leaks: after the tutorial converges (with debug logs on), every access
//! token the emulator issued and the controller's client secret are searched for in all status,
//! Events, ConfigMaps, the captured logs and the metrics.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::api::{Api, DynamicObject, ListParams};
use kube::discovery::ApiResource;
use support::*;
use uami_controller::demo::stack::{Stack, StackOptions};
use uami_controller::emulator::world::TUTORIAL_CONTROLLER_SECRET;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_or_secret_appears_anywhere() {
    let capture = Capture::default();
    tracing_subscriber::fmt()
        .json()
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(capture.clone())
        .init();

    let mut opts = StackOptions::tutorial(Duration::from_secs(2)).unwrap();
    opts.world.rbac_propagation_seconds = 1.0;
    opts.world.lro_retry_after_seconds = 0;
    let stack = Stack::start(opts).await.unwrap();
    stack.apply_yaml(&tutorial_yaml()).await.unwrap();
    ready(&identities(&stack, "tutorial"), "my-identity", 60).await;
    ready(&bindings(&stack, "tutorial"), "my-identity-on-myvm", 60).await;
    ready(&grants(&stack, "tutorial"), "my-identity-reads-devtest", 60).await;
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
    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();

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
