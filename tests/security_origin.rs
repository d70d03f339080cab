//! The ARM token goes only to ARM: a `nextLink`, `Azure-AsyncOperation` or `Location` that
//! names another origin (scheme, host or port) than the configured ARM endpoint is refused
//! without a request, so a compromised or misbehaving endpoint cannot make the controller send
//! its bearer token elsewhere. A listener on the foreign origin counts every connection.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::json;
use support::arm::arm_client;
use support::*;
use uami::demo::stack::{Stack, StackOptions};
use uami_azure::compute::{ComputeTarget, TargetKind};
use uami_azure::{ComputeApi, RoleApi};
use uami_emulator::world::TUTORIAL_SUBSCRIPTION;
use uami_emulator::{Knobs, World};

const SUB: &str = TUTORIAL_SUBSCRIPTION;
const CONTROLLER: &str = "7c9e6679-7425-40de-944b-e07fc1f90ae7";

/// A TCP listener on another port of 127.0.0.1 (another origin) that counts connections and
/// records whatever bytes arrive.
struct Foreign {
    base: String,
    connections: Arc<AtomicU64>,
    received: Arc<parking_lot::Mutex<Vec<u8>>>,
    task: tokio::task::JoinHandle<()>,
}

async fn foreign() -> Foreign {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicU64::new(0));
    let received = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let (c, r) = (connections.clone(), received.clone());
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            c.fetch_add(1, Ordering::SeqCst);
            let r = r.clone();
            tokio::spawn(async move {
                use tokio::io::AsyncReadExt;
                let mut buf = [0u8; 4096];
                while let Ok(n) = sock.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    r.lock().extend_from_slice(&buf[..n]);
                }
            });
        }
    });
    Foreign {
        base: format!("http://{addr}/"),
        connections,
        received,
        task,
    }
}

fn my_vm() -> ComputeTarget {
    ComputeTarget {
        kind: TargetKind::VirtualMachine,
        subscription: SUB.into(),
        resource_group: "DevTest".into(),
        name: "myVM".into(),
    }
}

#[tokio::test]
async fn next_link_and_lro_urls_on_another_origin_are_refused_without_a_request() {
    let elsewhere = foreign().await;
    let mut world = World::tutorial().unwrap();
    world.lro_retry_after_seconds = 0;
    world.knobs = Knobs {
        page_size: 1,
        link_base: Some(elsewhere.base.clone()),
        ..Default::default()
    };
    let emulator = uami_emulator::start(world).await.unwrap();
    let token = emulator.admin_token();
    let client = arm_client(&emulator, token.clone());
    let foreign_origin = elsewhere.base.trim_end_matches('/').to_string();

    // nextLink
    let e = client
        .list_role_assignments_for_principal(
            &format!("/subscriptions/{SUB}/resourceGroups/DevTest"),
            CONTROLLER,
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), "UntrustedOrigin", "{e}");
    assert!(!e.is_retryable());
    assert!(e.to_string().contains("nextLink"), "{e}");
    assert!(e.to_string().contains(&foreign_origin), "{e}");

    // Azure-AsyncOperation
    let body = json!({"identity": {"type": "None"}});
    let e = match client.patch_identity(&my_vm(), &body, None).await {
        Err(e) => e,
        Ok(_) => panic!("the Azure-AsyncOperation URL was accepted"),
    };
    assert_eq!(e.code(), "UntrustedOrigin", "{e}");
    assert!(e.to_string().contains("Azure-AsyncOperation"), "{e}");
    // (Compute's updates answer 200 with Azure-AsyncOperation only; a Location header goes
    // through the same check.)

    // Nothing reached the foreign origin: no connection, so no token.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(elsewhere.connections.load(Ordering::SeqCst), 0);
    assert!(elsewhere.received.lock().is_empty());
    for text in [e.to_string(), format!("{e:?}")] {
        assert!(!text.contains(&token), "the token is not in the error");
    }
    // The emulator did answer with those links (the test would pass for no reason otherwise).
    let links: Vec<String> = emulator
        .journal()
        .iter()
        .filter_map(|x| x.response.as_ref())
        .filter_map(|r| r["nextLink"].as_str().map(str::to_string))
        .collect();
    assert!(
        links.iter().all(|l| l.starts_with(&elsewhere.base)),
        "{links:?}"
    );
    assert!(!links.is_empty());
    elsewhere.task.abort();
    emulator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binding_names_the_refused_url_and_the_token_stays_home() {
    let elsewhere = foreign().await;
    let mut opts = StackOptions::tutorial(Duration::from_secs(300)).unwrap();
    opts.world.lro_retry_after_seconds = 0;
    opts.world.knobs = Knobs {
        link_base: Some(elsewhere.base.clone()),
        ..Default::default()
    };
    // The refused operations end without a change when the emulator settles them, so the VM
    // never shows the identity (a binding that looks again after its operation settled would
    // otherwise find it assigned).
    opts.world.faults.lro_fail_next = 1000;
    let stack = Stack::start(opts).await.unwrap();
    stack.apply_yaml(&tutorial_yaml()).await.unwrap();
    let api = bindings(&stack, "tutorial");
    let status = eventually(60, "Assigned=False, UntrustedOrigin", || async {
        let s = api.get("my-identity-on-myvm").await.ok()?.status?;
        let (st, reason) = condition(&s.conditions, "Assigned")?;
        (st == "False" && reason == "UntrustedOrigin").then_some(s)
    })
    .await;
    let message = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Assigned")
        .unwrap()
        .message
        .clone();
    assert!(message.contains("Azure-AsyncOperation"), "{message}");
    assert!(
        message.contains(elsewhere.base.trim_end_matches('/')),
        "{message}"
    );
    let events: kube::Api<k8s_openapi::api::events::v1::Event> =
        kube::Api::namespaced(stack.client(), "tutorial");
    let refused = eventually(30, "the AssignFailed event", || async {
        let l = events.list(&Default::default()).await.ok()?;
        l.items.into_iter().find(|e| {
            e.reason.as_deref() == Some("AssignFailed")
                && e.note
                    .as_deref()
                    .is_some_and(|n| n.starts_with("UntrustedOrigin: "))
        })
    })
    .await;
    assert!(
        refused
            .note
            .unwrap()
            .contains(elsewhere.base.trim_end_matches('/')),
        "the event names the refused origin"
    );
    assert_eq!(elsewhere.connections.load(Ordering::SeqCst), 0);
    assert!(elsewhere.received.lock().is_empty());
    let text = serde_json::to_string(&status).unwrap();
    for t in stack.emulator.issued_tokens() {
        assert!(!text.contains(&t), "no token in status");
    }
    elsewhere.task.abort();
    stack.stop().await;
}
