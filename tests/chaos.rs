//! Crash safety with real process kills: the controller runs as its own OS process (the built
//! binary) against the sandbox and the emulator, with Azure's failure modes on (including writes
//! that fail after they were applied) and watches closed at random; it is killed with SIGKILL at
//! seeded random moments during convergence and during deletion and restarted each time. The
//! invariants are then checked from the emulator's state and journal: everything Ready, no
//! duplicate identity or role assignment, every VM holding exactly its bound identities (plus
//! one assigned out of band), and after deletion nothing the controller created left behind.
//!
//! `ci_chaos_run` is the small version; `full_chaos_run` (ignored) is 50 sets over 5 VMs with 10
//! kills during convergence and 5 during deletion:
//! `cargo test --release --test chaos full_chaos_run -- --ignored --nocapture`
//! (`CHAOS_SEED=<n>` replays a run).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

#[path = "chaos/harness.rs"]
mod harness;
#[path = "chaos/run.rs"]
mod run;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use harness::*;
use run::{run, scenario};
use serde_json::{Value, json};
use support::*;
use uami_emulator::Faults;
use uami_sandbox::WatchFaults;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ci_chaos_run() {
    let s = scenario(seed(7), 10, 5, (4, 2));
    let r = run(s, "ci").await;
    assert!(
        r.kills_converging >= 1,
        "the controller was killed while converging"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the full chaos run: 50 sets over 5 VMs, 15 kills; run it with --ignored"]
async fn full_chaos_run() {
    let mut s = scenario(seed(2026), 50, 5, (10, 5));
    s.deadline = Duration::from_secs(600);
    let r = run(s, "full").await;
    assert_eq!(r.kills_converging, 10);
    assert_eq!(r.kills_deleting, 5);
}

/// Send a signal to a process (`STOP`, `CONT`).
fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig}");
}

/// The replica a journal entry came from (`uami-controller/<version> (<replica>)`).
fn replica(e: &uami_emulator::Exchange) -> Option<String> {
    let ua = e.client.as_deref()?;
    let start = ua.rfind('(')?;
    Some(ua[start + 1..].trim_end_matches(')').to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_lost_its_lease_never_writes_after_the_new_one_started() {
    let vms = 2;
    let s = Scenario {
        sets: 12,
        vms,
        ..scenario(seed(11), 12, vms, (0, 0))
    };
    let stack = start_stack(vms).await;
    let dir = tempfile::tempdir().unwrap();
    let mut faults = Faults {
        latency_ms: 200,
        seed: s.seed,
        ..Faults::default()
    };
    stack.emulator.set_faults(faults.clone());
    let args = |who: &str| {
        let mut a = controller_args(&stack, dir.path(), who, "10s");
        a.extend(
            [
                "--leader-election",
                "--lease-namespace",
                "default",
                "--lease-duration",
                "4s",
            ]
            .map(String::from),
        );
        a
    };
    let log = |who: &str| std::env::temp_dir().join(format!("leader-{who}-{}.log", s.seed));
    let mut a = ControllerProcess::new(args("a"), log("a"));
    let mut b = ControllerProcess::new(args("b"), log("b"));
    a.start();
    wait_leader(&stack, "default", "a", 30).await;
    b.start();
    stack.apply_yaml(&objects_yaml(&s)).await.unwrap();
    eventually(60, "a's first ARM writes", || async {
        let j = stack.emulator.journal();
        (j.iter()
            .filter(|e| replica(e).as_deref() == Some("a") && e.method != "GET")
            .count()
            >= 3)
            .then_some(())
    })
    .await;

    // The leader stalls (a long GC pause, a frozen node): its lease expires, b takes over; then
    // it resumes with timers due and writes queued, and must not send any of them.
    signal(a.child.as_ref().unwrap(), "STOP");
    // Azure slows down for b's term, so b is still converging when it dies below (at 200 ms a
    // request, b could finish everything first and leave a nothing to take over).
    faults.latency_ms = 1500;
    stack.emulator.set_faults(faults.clone());
    wait_leader(&stack, "default", "b", 30).await;
    let b_started = eventually(30, "b's first ARM request", || async {
        stack
            .emulator
            .journal()
            .iter()
            .find(|e| replica(e).as_deref() == Some("b"))
            .map(|e| e.at_ms)
    })
    .await;
    signal(a.child.as_ref().unwrap(), "CONT");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let late: Vec<String> = stack
        .emulator
        .journal()
        .iter()
        .filter(|e| replica(e).as_deref() == Some("a") && e.at_ms >= b_started)
        .map(|e| format!("{} {} at {} ms", e.method, e.path, e.at_ms))
        .collect();
    assert!(
        late.is_empty(),
        "the old leader reached ARM after the new one started at {b_started} ms: {late:?}"
    );
    assert_eq!(
        lease_holder(&stack, "default").await.as_deref(),
        Some("b"),
        "a stepped down"
    );

    // Now the new leader dies mid-convergence: a takes over once the lease expires.
    let objs = all_objects(&stack, &s.namespaces).await;
    assert!(
        !objs.iter().all(|(_, o)| is_ready(o)),
        "b is still converging when it is killed"
    );
    b.kill();
    let leases: kube::Api<k8s_openapi::api::coordination::v1::Lease> =
        kube::Api::namespaced(stack.client(), "default");
    let last = leases.get("uami-controller").await.unwrap().spec.unwrap();
    assert_eq!(last.holder_identity.as_deref(), Some("b"));
    let b_renewed = last.renew_time.unwrap().0;
    wait_leader(&stack, "default", "a", 30).await;
    let taken = leases.get("uami-controller").await.unwrap().spec.unwrap();
    let expiry = b_renewed
        .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(i64::from(
            last.lease_duration_seconds.unwrap(),
        )))
        .unwrap();
    assert!(
        taken.acquire_time.unwrap().0 >= expiry,
        "a took the lease over only once b's had expired"
    );
    assert_eq!(
        taken.lease_transitions,
        last.lease_transitions.map(|t| t + 1)
    );
    faults.latency_ms = 0;
    stack.emulator.set_faults(faults);
    eventually(120, "everything Ready", || async {
        let objs = all_objects(&stack, &s.namespaces).await;
        (objs.len() == s.sets * 3 && objs.iter().all(|(_, o)| is_ready(o))).then_some(())
    })
    .await;

    // Writes ordered by holder: a's term, b's term, a's term, never interleaved. The journal
    // holds each exchange once answered; the terms are read in the order the requests arrived.
    let mut journal = stack.emulator.journal();
    journal.sort_by_key(|e| e.at_ms);
    let mut terms: Vec<String> = Vec::new();
    for e in &journal {
        if let Some(r) = replica(e)
            && terms.last() != Some(&r)
        {
            terms.push(r);
        }
    }
    assert_eq!(
        terms,
        ["a", "b", "a"],
        "ARM requests by replica, in arrival order"
    );
    // No duplicates: one assignment per grant, each VM holds exactly its bound identities.
    let state = stack.emulator.state();
    let objs = all_objects(&stack, &s.namespaces).await;
    let mut want: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (kind, o) in &objs {
        if kind == "IdentityBinding" {
            let id = objs
                .iter()
                .find(|(k, i)| {
                    k == "UserAssignedIdentity"
                        && i["metadata"]["name"] == o["spec"]["identityRef"]["name"]
                })
                .unwrap()
                .1["status"]["resourceId"]
                .as_str()
                .unwrap()
                .to_lowercase();
            want.entry(
                o["spec"]["target"]["virtualMachine"]["name"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            )
            .or_default()
            .insert(id);
        }
        if kind == "RoleGrant" {
            let p = o["status"]["principalId"].as_str().unwrap();
            let n = state["roleAssignments"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|a| a["properties"]["principalId"] == json!(p))
                .count();
            assert_eq!(n, 1, "one assignment for {}", o["metadata"]["name"]);
            assert_eq!(o["status"]["adopted"], json!(false));
        }
    }
    for (vm_name, ids) in want {
        assert_eq!(vm_identities(&state, &vm_name), ids, "{vm_name}");
    }
    a.stop();
    stack.stop().await;
}

/// Known break: 30 sets on one VM, the controller killed 8 times while converging, no ARM
/// faults; every object reported Ready while the VM missed one bound identity (an update
/// accepted while another ran dropped the running one's change).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kills_while_converging_on_one_vm_lose_no_assignment() {
    run(one_vm_kills(), "one-vm").await;
}

/// Known break: 30 sets on one VM, ARM faults (5% server errors, 3% dropped connections) and 8
/// kills while converging: everything reached Ready, then seconds later some bindings and grants
/// were not (a check that met a passing fault turned Ready False). Ready now never leaves True.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passing_faults_and_kills_never_turn_ready_false() {
    let mut s = scenario(seed(33), 30, 1, (8, 0));
    s.faults = Faults {
        seed: s.seed,
        ..server_errors_and_drops()
    };
    s.watch = WatchFaults::default();
    let r = run(s, "no-flap").await;
    assert!(r.flaps.is_empty(), "{:?}", r.flaps);
    assert!(
        r.injected.get("serverError").copied().unwrap_or(0) > 0,
        "faults were injected: {:?}",
        r.injected
    );
}

/// ARM faults: 5% server errors, 3% dropped connections.
fn server_errors_and_drops() -> Faults {
    Faults {
        server_error_rate: 0.05,
        drop_connection_rate: 0.03,
        ..Faults::default()
    }
}

/// 20 sets on one VM, 8 kills while converging, no Azure or watch faults.
fn one_vm_kills() -> Scenario {
    let mut s = scenario(seed(30), 20, 1, (8, 0));
    s.faults = Faults {
        seed: s.seed,
        ..Faults::default()
    };
    s.watch = WatchFaults::default();
    s.kill_within = Duration::from_millis(1500);
    s
}

/// The same on a real API server: the controller process, killed 8 times, watches and writes
/// through kube-apiserver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_real_api_server_kills_while_converging_on_one_vm_lose_no_assignment() {
    let mut s = one_vm_kills();
    let Some(real) = crate::support::envtest::cluster("chaos").await else {
        return;
    };
    s.external = Some(real.external.clone());
    run(s, "one-vm-real").await;
}

/// Known break: faults on (500s, dropped connections, PrincipalNotFound, another operation in
/// progress, failed long-running operations) and 4 kills during deletion left deleted
/// identities listed on the VM (a write whose answer was lost made the binding believe the
/// assignment was someone else's, so deletion left it and deleted the identity).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kills_while_deleting_under_faults_leave_no_identity_on_the_vm() {
    let mut s = scenario(seed(31), 15, 1, (0, 4));
    s.faults = Faults {
        applied_then_drop_rate: 0.03,
        applied_then_error_rate: 0.03,
        principal_not_found_seconds: 8.0,
        another_operation_in_progress: true,
        lro_fail_next: 2,
        seed: s.seed,
        ..server_errors_and_drops()
    };
    s.kill_within = Duration::from_secs(2);
    run(s, "deleting").await;
}

/// Known break: two namespaces declaring identities with the same Azure name, faults on; the
/// second namespace's are refused (`AlreadyExists`) and nothing of either is left assigned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_azure_name_in_two_namespaces_leaves_nothing_assigned() {
    let mut s = scenario(seed(32), 6, 2, (2, 2));
    s.namespaces = vec!["team-a".into(), "team-b".into()];
    s.shared_azure_names = true;
    run(s, "shared-names").await;
}

/// The controller killed with SIGKILL while its writes are applied in Azure but their answers
/// have not arrived: the restarted controller recognises its own identity, role assignment (by
/// its deterministic name) and VM assignment, adopts none of them and creates no duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_mid_put_creates_no_duplicate_and_adopts_nothing() {
    let s = scenario(seed(40), 1, 1, (0, 0));
    let stack = start_stack(1).await;
    let dir = tempfile::tempdir().unwrap();
    let log = std::env::temp_dir().join(format!("mid-put-{}.log", s.seed));
    let mut ctl = ControllerProcess::new(
        controller_args(&stack, dir.path(), "controller", "60s"),
        log.clone(),
    );
    // Every write is applied at once and answered 30 s later.
    stack.emulator.set_faults(Faults {
        applied_then_slow_rate: 1.0,
        slow_answer_ms: 30_000,
        seed: s.seed,
        ..Faults::default()
    });
    ctl.start();
    stack.apply_yaml(&objects_yaml(&s)).await.unwrap();
    let applied = |op: &'static str| {
        let stack = &stack;
        async move {
            stack
                .emulator
                .injected()
                .get("appliedThenSlow")
                .copied()
                .unwrap_or(0)
                >= 1
                && match op {
                    "identity" => !stack.emulator.state()["identities"]
                        .as_array()
                        .unwrap()
                        .is_empty(),
                    "assignment" => stack.emulator.state()["roleAssignments"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|a| {
                            a["properties"]["principalType"] == "ServicePrincipal"
                                && a["properties"]["roleDefinitionId"]
                                    .as_str()
                                    .unwrap()
                                    .ends_with("acdd72a7-3385-48ef-bd42-f606fba81ae7")
                        }),
                    _ => !vm_identities(&stack.emulator.state(), &vm(0)).is_empty(),
                }
        }
    };
    // Kill in the middle of the identity PUT: applied in Azure, answer not yet received.
    eventually(60, "the identity PUT applied", || async {
        applied("identity").await.then_some(())
    })
    .await;
    ctl.kill();
    // Answers come at once again for the identity; the assignment PUT and the VM PATCH are
    // applied and then the controller dies before either answer arrives.
    ctl.start();
    eventually(
        90,
        "the role assignment PUT and the VM PATCH applied",
        || async { (applied("assignment").await && applied("vm").await).then_some(()) },
    )
    .await;
    ctl.kill();
    stack.emulator.set_faults(Faults::default());
    ctl.start();
    let g = ready(&grants(&stack, "chaos"), "grant-0", 90).await;
    let b = ready(&bindings(&stack, "chaos"), "bind-0", 90).await;
    let gs = g.status.unwrap();
    assert_eq!(
        gs.adopted,
        Some(false),
        "the grant's own assignment is not adopted"
    );
    assert_eq!(
        b.status.unwrap().adopted,
        Some(false),
        "the binding's own assignment is not adopted"
    );
    let state = stack.emulator.state();
    let principal = gs.principal_id.unwrap();
    let assignments: Vec<&Value> = state["roleAssignments"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["properties"]["principalId"] == json!(principal))
        .collect();
    assert_eq!(assignments.len(), 1, "{assignments:?}");
    assert_eq!(
        assignments[0]["id"].as_str().unwrap().to_lowercase(),
        gs.role_assignment_id.unwrap().to_lowercase()
    );
    assert_eq!(
        state["identities"].as_array().unwrap().len(),
        1,
        "one identity"
    );
    ctl.stop();
    stack.stop().await;
}

/// The sandbox's watch faults: watches closed at random and resumes answered 410 Gone; a
/// kube-rs watcher sees every object anyway (it resumes, or relists after the 410).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_closed_at_random_and_resumes_answered_410() {
    use futures::TryStreamExt;
    use kube::runtime::{WatchStreamExt, watcher};
    let stack = start_stack(1).await;
    stack.sandbox().unwrap().set_watch_faults(WatchFaults {
        close_within: Duration::from_millis(400),
        gone_rate: 0.5,
        seed: 5,
    });
    stack
        .apply_yaml("apiVersion: v1\nkind: Namespace\nmetadata: {name: w}\n")
        .await
        .unwrap();
    let api = identities(&stack, "w");
    let mut seen = BTreeSet::new();
    let stream = watcher(api.clone(), watcher::Config::default())
        .default_backoff()
        .applied_objects();
    futures::pin_mut!(stream);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut created = 0;
    while seen.len() < 10 {
        assert!(Instant::now() < deadline, "saw only {seen:?}");
        if created < 10 {
            stack
                .apply_yaml(&format!("apiVersion: uami.dev/v1alpha1\nkind: UserAssignedIdentity\nmetadata: {{name: w-{created}, namespace: w}}\nspec: {{resourceGroup: {RG}, location: eastus}}\n"))
                .await
                .unwrap();
            created += 1;
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        if let Ok(Ok(Some(o))) =
            tokio::time::timeout(Duration::from_millis(200), stream.try_next()).await
        {
            seen.insert(o.metadata.name.unwrap());
        }
    }
    let (closed, gone) = stack.sandbox().unwrap().watch_faults_injected();
    assert!(closed >= 1, "watches closed: {closed}");
    assert!(gone >= 1, "resumes answered 410: {gone}");
    // Switched off at run time over HTTP, as the emulator's faults are.
    let url = format!("{}_sandbox/watch-faults", stack.sandbox().unwrap().url());
    let http = reqwest::Client::new();
    assert_eq!(put_json(&http, &url, json!({"goneRate": 0.0})).await, 200);
    let now = get_json(&http, &url).await;
    assert_eq!(
        (now["closeWithinMs"].as_u64(), now["gone"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(put_json(&http, &url, json!({"goneRates": 1})).await, 400);
    stack.stop().await;
}
