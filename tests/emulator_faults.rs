//! The emulator's fault knobs, each shown to happen and to stop when switched off, and the VM
//! identity PATCH semantics: add, remove, keep the system-assigned identity, 412 on a stale etag.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::{Value, json};
use support::arm::{Admin, identity_path, new_assignment_path, reader_assignment};
use support::{get_json, put_json};
use uami_emulator::faults::Throttling;
use uami_emulator::world::TUTORIAL_SUBSCRIPTION as SUB;
use uami_emulator::{self as emulator, Emulator, Faults, World};

/// An emulator of the tutorial's world (long-running operations polled at once), changed by
/// `configure`, and its administrator.
struct T {
    emu: Emulator,
    admin: Admin,
}

impl T {
    async fn new(configure: impl FnOnce(&mut World)) -> Self {
        let mut w = World::tutorial().unwrap();
        w.lro_retry_after_seconds = 0;
        configure(&mut w);
        let emu = emulator::start(w).await.unwrap();
        let admin = Admin::of(&emu);
        T { emu, admin }
    }

    /// One ARM request with an optional `If-Match`.
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        if_match: Option<&str>,
    ) -> reqwest::Result<(u16, reqwest::header::HeaderMap, Value)> {
        let headers: Vec<(&str, &str)> = if_match.map(|m| ("If-Match", m)).into_iter().collect();
        self.admin.try_send(method, path, body, &headers).await
    }

    /// The status of a GET of `path`.
    async fn status(&self, path: &str) -> u16 {
        self.admin.get_status(path).await
    }

    /// The virtual machine as ARM returns it.
    async fn vm(&self) -> Value {
        self.admin.get(VM).await
    }

    /// PATCH the VM's identity with `identity`; the answer.
    async fn patch_vm(
        &self,
        identity: Value,
        if_match: Option<&str>,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        self.send(
            reqwest::Method::PATCH,
            VM,
            Some(json!({ "identity": identity })),
            if_match,
        )
        .await
        .unwrap()
    }

    /// A new identity in DevTest; its id.
    async fn identity_id(&self, name: &str) -> String {
        self.identity(name).await["id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// A new identity in DevTest, as ARM returns it.
    async fn identity(&self, name: &str) -> Value {
        let (s, _, v) = self
            .admin
            .send(
                reqwest::Method::PUT,
                &identity_path(name),
                Some(json!({"location": "eastus"})),
                &[],
            )
            .await;
        assert!(s == 201 || s == 200);
        v
    }
}

const RG: &str = "/subscriptions/6a2bd3a4-59c6-4d4e-9e8b-5c5a2f0a1b2c/resourceGroups/DevTest?api-version=2024-03-01";
const VM: &str = "/subscriptions/6a2bd3a4-59c6-4d4e-9e8b-5c5a2f0a1b2c/resourceGroups/DevTest/providers/Microsoft.Compute/virtualMachines/myVM?api-version=2024-11-01";

#[tokio::test]
async fn throttling_answers_429_with_retry_after_until_switched_off() {
    let t = T::new(|_| {}).await;
    let (s, h, _) = t.send(reqwest::Method::GET, RG, None, None).await.unwrap();
    assert_eq!(s, 200);
    assert!(h.contains_key("x-ms-ratelimit-remaining-subscription-reads"));
    t.emu.set_faults(Faults {
        throttling: Some(Throttling { scale: 0.004 }),
        ..Faults::default()
    });
    let mut saw = None;
    for _ in 0..5 {
        let (s, h, v) = t.send(reqwest::Method::GET, RG, None, None).await.unwrap();
        if s == 429 {
            saw = Some((h, v));
            break;
        }
    }
    let (h, v) = saw.expect("a 429");
    assert_eq!(v["error"]["code"], "TooManyRequests");
    assert!(h["retry-after"].to_str().unwrap().parse::<u64>().unwrap() >= 1);
    assert_eq!(h["x-ms-ratelimit-remaining-subscription-reads"], "0");
    t.emu.set_faults(Faults::default());
    assert_eq!(t.status(RG).await, 200);
}

#[tokio::test]
async fn server_errors_dropped_connections_and_latency() {
    let t = T::new(|_| {}).await;
    t.emu.set_faults(Faults {
        server_error_next: 1,
        ..Faults::default()
    });
    assert_eq!(t.status(RG).await, 500);
    assert_eq!(t.status(RG).await, 200);
    t.emu.set_faults(Faults {
        drop_connection_next: 1,
        ..Faults::default()
    });
    assert!(
        t.send(reqwest::Method::GET, RG, None, None).await.is_err(),
        "the connection was dropped"
    );
    assert_eq!(t.status(RG).await, 200);
    assert_eq!(
        t.emu.counts().get("ResourceGroups_Get", 0),
        1,
        "the drop is counted"
    );
    t.emu.set_faults(Faults {
        server_error_rate: 1.0,
        ..Faults::default()
    });
    assert_eq!(t.status(RG).await, 500);
    t.emu.set_faults(Faults {
        latency_ms: 300,
        ..Faults::default()
    });
    let started = std::time::Instant::now();
    assert_eq!(t.status(RG).await, 200);
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(300),
        "the injected delay was applied"
    );
    t.emu.set_faults(Faults::default());
    assert_eq!(t.status(RG).await, 200);
}

#[tokio::test]
async fn principal_not_found_while_the_window_lasts() {
    let t = T::new(|w| w.faults.principal_not_found_seconds = 600.0).await;
    let id = t.identity("fresh").await;
    let body = reader_assignment(id["properties"]["principalId"].as_str().unwrap());
    let rg = format!("/subscriptions/{SUB}/resourceGroups/DevTest");
    let put = |path: String| {
        let (t, body) = (&t, body.clone());
        async move {
            let (s, _, v) = t
                .send(reqwest::Method::PUT, &path, Some(body), None)
                .await
                .unwrap();
            (s, v["error"]["code"].as_str().map(str::to_string))
        }
    };
    let path = new_assignment_path(&rg);
    assert_eq!(
        put(path.clone()).await,
        (400, Some("PrincipalNotFound".into()))
    );
    t.emu.set_faults(Faults::default());
    assert_eq!(put(path).await.0, 201);
    // The same triple under another name: RoleAssignmentExists; a non-GUID name: InvalidRoleAssignmentId.
    assert_eq!(
        put(new_assignment_path(&rg)).await,
        (409, Some("RoleAssignmentExists".into()))
    );
    let bad = format!(
        "{rg}/providers/Microsoft.Authorization/roleAssignments/not-a-guid?api-version=2022-04-01"
    );
    assert_eq!(
        put(bad).await,
        (400, Some("InvalidRoleAssignmentId".into()))
    );
}

#[tokio::test]
async fn vm_patch_semantics() {
    let t = T::new(|w| {
        if let Some(vm) = w.subscriptions[0].resource_groups[0]
            .virtual_machines
            .first_mut()
        {
            vm.system_assigned = true;
        }
    })
    .await;
    let a = t.identity_id("ida").await;
    let b = t.identity_id("idb").await;
    let vm = t.vm().await;
    assert_eq!(vm["identity"]["type"], "SystemAssigned");
    let etag = vm["etag"].as_str().unwrap().to_string();
    // Add two, keeping the system-assigned identity.
    let (s, h, _) = t.patch_vm(json!({"type": "SystemAssigned, UserAssigned", "userAssignedIdentities": {a.clone(): {}, b.clone(): {}}}), Some(&etag)).await;
    assert_eq!(s, 200);
    assert_eq!(t.admin.wait_operation(&h).await["status"], "Succeeded");
    let vm = t.vm().await;
    assert_eq!(vm["identity"]["type"], "SystemAssigned, UserAssigned");
    assert_eq!(
        vm["identity"]["userAssignedIdentities"]
            .as_object()
            .unwrap()
            .len(),
        2
    );
    assert!(vm["identity"]["principalId"].is_string());
    // The old etag is stale now: 412.
    let (s, _, v) = t
        .patch_vm(json!({"type": "SystemAssigned"}), Some(&etag))
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (412, Some("PreconditionFailed"))
    );
    // Remove one with null; the other and the system identity stay.
    let etag = vm["etag"].as_str().unwrap().to_string();
    let (s, h, _) = t.patch_vm(json!({"type": "SystemAssigned, UserAssigned", "userAssignedIdentities": {a.clone(): null}}), Some(&etag)).await;
    assert_eq!(s, 200);
    t.admin.wait_operation(&h).await;
    let vm = t.vm().await;
    let keys: Vec<String> = vm["identity"]["userAssignedIdentities"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(keys, vec![b.clone()]);
    assert_eq!(vm["identity"]["type"], "SystemAssigned, UserAssigned");
    // A type that leaves out SystemAssigned removes the system identity.
    let (_, h, _) = t
        .patch_vm(
            json!({"type": "UserAssigned", "userAssignedIdentities": {b.clone(): {}}}),
            None,
        )
        .await;
    t.admin.wait_operation(&h).await;
    let vm = t.vm().await;
    assert_eq!(vm["identity"]["type"], "UserAssigned");
    assert!(vm["identity"]["principalId"].is_null());
    // A failing long-running operation changes nothing.
    t.emu.set_faults(Faults {
        lro_fail_next: 1,
        ..Faults::default()
    });
    let (_, h, _) = t.patch_vm(json!({"type": "None"}), None).await;
    assert_eq!(t.admin.wait_operation(&h).await["status"], "Failed");
    let vm = t.vm().await;
    assert_eq!(vm["identity"]["type"], "UserAssigned");
    // Concurrent writes: AnotherOperationInProgress while one is pending, when switched on.
    t.emu.set_faults(Faults {
        another_operation_in_progress: true,
        ..Faults::default()
    });
    let (s1, h1, _) = t.patch_vm(json!({"type": "None"}), None).await;
    let (s2, _, v2) = t.patch_vm(json!({"type": "None"}), None).await;
    assert_eq!(s1, 200);
    assert_eq!(
        (s2, v2["error"]["code"].as_str()),
        (409, Some("AnotherOperationInProgress"))
    );
    t.admin.wait_operation(&h1).await;
    t.emu.set_faults(Faults::default());
    let (s, h, _) = t.patch_vm(json!({"type": "None"}), None).await;
    assert_eq!(s, 200);
    t.admin.wait_operation(&h).await;
}

#[tokio::test]
async fn imds_faults_and_rules() {
    let t = T::new(|_| {}).await;
    let imds = t.emu.imds_endpoint("myVM").unwrap();
    let http = reqwest::Client::new();
    let get = |meta: bool, client: &str| {
        let mut req = http
            .get(format!("{imds}metadata/identity/oauth2/token"))
            .query(&[
                ("api-version", "2018-02-01"),
                ("resource", "https://management.azure.com/"),
                ("client_id", client),
            ]);
        if meta {
            req = req.header("Metadata", "true");
        }
        async move {
            let r = req.send().await.unwrap();
            let s = r.status().as_u16();
            (s, r.json::<Value>().await.unwrap())
        }
    };
    let (s, v) = get(false, "x").await;
    assert_eq!((s, v["error"].as_str()), (400, Some("bad_request_102")));
    let (s, v) = get(true, "00000000-0000-0000-0000-000000000001").await;
    assert_eq!(s, 400, "identity not assigned: {v}");
    t.emu.set_faults(Faults {
        imds_throttle_next: 1,
        imds_gone_next: 1,
        ..Faults::default()
    });
    assert_eq!(get(true, "x").await.0, 429);
    assert_eq!(get(true, "x").await.0, 410);
    assert_eq!(get(true, "x").await.0, 400, "faults used up");
    // The admin endpoint changes faults at run time.
    let url = format!("{}_emulator/faults", t.emu.arm_endpoint());
    let admin = &t.admin.http;
    assert_eq!(
        put_json(admin, &url, json!({"imdsServerErrorNext": 1})).await,
        200
    );
    assert_eq!(get(true, "x").await.0, 500);
    let f = get_json(admin, &url).await;
    assert_eq!(f["imdsServerErrorNext"], 0);
    let counts = get_json(admin, &format!("{}_emulator/counts", t.emu.arm_endpoint())).await;
    assert!(
        counts["counts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["operation"] == "Imds_Token" && c["status"] == 429 && c["count"] == 1)
    );
}
/// The identity names the emulator holds.
fn identity_names(t: &T) -> Vec<String> {
    t.emu.state()["identities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn writes_fail_after_they_were_applied() {
    let t = T::new(|_| {}).await;
    let put = |name: &str| {
        let path = identity_path(name);
        let t = &t;
        async move {
            t.send(
                reqwest::Method::PUT,
                &path,
                Some(json!({"location": "eastus"})),
                None,
            )
            .await
        }
    };
    // Applied, then the connection drops: the client sees an error, the identity exists.
    t.emu.set_faults(Faults {
        applied_then_drop_next: 1,
        ..Faults::default()
    });
    assert!(put("dropped").await.is_err(), "the answer never arrives");
    assert!(identity_names(&t).contains(&"dropped".to_string()));
    // Applied, then 500.
    t.emu.set_faults(Faults {
        applied_then_error_next: 1,
        ..Faults::default()
    });
    let (s, _, v) = put("errored").await.unwrap();
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (500, Some("InternalServerError"))
    );
    assert!(identity_names(&t).contains(&"errored".to_string()));
    // Applied, then answered after the client's timeout.
    t.emu.set_faults(Faults {
        applied_then_slow_next: 1,
        slow_answer_ms: 3_000,
        ..Faults::default()
    });
    let impatient = support::emulator_http_builder(&t.emu)
        .timeout(std::time::Duration::from_millis(500))
        .build()
        .unwrap();
    let r = impatient
        .put(t.admin.url(&identity_path("late")))
        .bearer_auth(&t.admin.token)
        .json(&json!({"location": "eastus"}))
        .send()
        .await;
    assert!(r.unwrap_err().is_timeout());
    assert!(identity_names(&t).contains(&"late".to_string()));
    // A read is never "applied then failed"; the counters are used up: the next write is clean.
    let (s, _, _) = put("clean").await.unwrap();
    assert_eq!(s, 201);
    let injected = t.emu.injected();
    for kind in ["appliedThenDrop", "appliedThenError", "appliedThenSlow"] {
        assert_eq!(injected.get(kind), Some(&1), "{kind}: {injected:?}");
    }
    let journal = t.emu.journal();
    assert!(
        journal
            .iter()
            .any(|e| e.fault.as_deref() == Some("appliedThenDrop") && e.status == 0)
    );
    // The rate forms, seeded: about the given fraction, and none when switched off.
    t.emu.set_faults(Faults {
        applied_then_error_rate: 0.5,
        seed: 3,
        ..Faults::default()
    });
    let mut errors = 0;
    for i in 0..40 {
        let (s, _, _) = put(&format!("rate-{i}")).await.unwrap();
        errors += u32::from(s == 500);
    }
    assert!((8..=32).contains(&errors), "{errors} of 40");
    assert_eq!(
        identity_names(&t)
            .iter()
            .filter(|n| n.starts_with("rate-"))
            .count(),
        40,
        "every write was applied"
    );
    t.emu.set_faults(Faults::default());
    for i in 0..10 {
        assert_eq!(put(&format!("rate-{i}")).await.unwrap().0, 200);
    }
}

#[tokio::test]
async fn a_long_running_operation_succeeds_after_the_client_stopped_polling() {
    let t = T::new(|_| {}).await;
    let id = t.identity_id("late-lro").await;
    t.emu.set_faults(Faults {
        lro_late_next: 1,
        ..Faults::default()
    });
    let (s, h, _) = t
        .patch_vm(
            json!({"type": "UserAssigned", "userAssignedIdentities": {id.clone(): {}}}),
            None,
        )
        .await;
    assert_eq!(s, 200);
    let url = h["azure-asyncoperation"].to_str().unwrap().to_string();
    let (status, _, _) = t.admin.send(reqwest::Method::GET, &url, None, &[]).await;
    assert_eq!(
        status, 500,
        "the status endpoint fails: the client gives up"
    );
    let vm = t.vm().await;
    assert_eq!(vm["properties"]["provisioningState"], "Updating");
    // The operation goes on without anyone polling and succeeds.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let vm = t.vm().await;
        if vm["properties"]["provisioningState"] == "Succeeded" {
            assert!(vm["identity"]["userAssignedIdentities"].get(&id).is_some());
            break;
        }
        assert!(std::time::Instant::now() < deadline, "still running: {vm}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(t.emu.injected().get("lroLate"), Some(&1));
}

#[tokio::test]
async fn an_update_accepted_while_another_runs_keeps_the_running_change() {
    let t = T::new(|w| w.lro_polls = 3).await;
    let a = t.identity_id("first").await;
    let b = t.identity_id("second").await;
    let (_, h0, _) = t.admin.send(reqwest::Method::GET, VM, None, &[]).await;
    let etag = h0["etag"].to_str().unwrap().to_string();
    let patch = |id: &str, with_etag: bool| {
        let body =
            json!({"identity": {"type": "UserAssigned", "userAssignedIdentities": {id: {}}}});
        let m = with_etag.then(|| etag.clone());
        let t = &t;
        async move {
            t.send(reqwest::Method::PATCH, VM, Some(body), m.as_deref())
                .await
        }
    };
    let (s1, h1, _) = patch(&a, true).await.unwrap();
    assert_eq!(s1, 200);
    // The accepted update changed the etag: a writer holding the old one is refused.
    let (s, _, _) = patch(&b, true).await.unwrap();
    assert_eq!(s, 412);
    let (s2, h2, _) = patch(&b, false).await.unwrap();
    assert_eq!(s2, 200);
    t.admin.wait_operation(&h2).await;
    t.admin.wait_operation(&h1).await;
    let vm = t.vm().await;
    let assigned = vm["identity"]["userAssignedIdentities"]
        .as_object()
        .unwrap();
    assert!(
        assigned.contains_key(&a) && assigned.contains_key(&b),
        "{vm}"
    );
}
