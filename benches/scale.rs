//! The scale benchmark: `cargo bench --bench scale` prints a table (counts and ratios, no
//! pass/fail timing) for (a) to (c) and one for (d). `cargo bench --bench scale -- a` (or `b`,
//! `c`, `d`) runs one scenario.
//!
//! - (a) 1000 identity sets (identity, Reader grant, binding) over 100 VMs in a generated
//!   emulator world, ARM throttling on (`BENCH_SCALE` multiplies ARM's buckets, default 2).
//! - (b) 100 sets on one VM: identities and grants first, the bindings once those are Ready
//!   (so one VM PATCH can carry them), then one resync period of steady state.
//! - (c) 10,000 identities that exist before the controller starts: start-up to the first
//!   reconcile and the controller's memory.
//! - (d) the sets of (a) with access checks on and one agent process per VM (`agents.rs`).
//!
//! The sandbox and the emulator run in this process; the controller runs as its own process
//! (`uami-controller run`, the binary cargo builds with the bench) against them, so its resident
//! memory is read from `/proc/<pid>/status` apart from theirs. In (a) to (c) agent checks are off: a binding
//! counts as converged when `Assigned=True` (its `Ready` needs the agent's token), identities
//! and grants when `Ready=True`. Every scenario is bounded by `BENCH_LIMIT` seconds (default 600).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "scale/agents.rs"]
mod agents;
#[path = "../tests/support/envtest.rs"]
mod envtest;
#[path = "../tests/support/fixtures.rs"]
mod fixtures;
#[path = "scale/measure.rs"]
mod measure;
#[path = "scale/real.rs"]
mod real;
#[path = "scale/table.rs"]
mod table;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use fixtures::Fixture;
use futures::StreamExt;
use kube::api::{Api, PostParams};
use measure::{
    arm_counts, controller_requests, count_true, proc_cpu_seconds, proc_status_kib, wait_converged,
};
use serde_json::{Value, json};
use uami_api::{GrantPolicy, IdentityBinding, RoleGrant, UserAssignedIdentity};
use uami_emulator::faults::Throttling;
use uami_emulator::world::{
    ResourceGroup, Subscription, TUTORIAL_CONTROLLER_CLIENT_ID, TUTORIAL_CONTROLLER_SECRET,
    TUTORIAL_SUBSCRIPTION as SUB, VirtualMachine,
};
use uami_emulator::{self as emulator, Emulator, World};
use uami_sandbox::{self as sandbox, Sandbox, SandboxOptions};

const NS: &str = "bench";
/// ARM's write bucket (ARM-NOTES §4): 200 burst, then 10 per second.
const WRITE_BURST: f64 = 200.0;
const WRITE_REFILL: f64 = 10.0;

fn limit() -> Duration {
    Duration::from_secs(
        std::env::var("BENCH_LIMIT")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(600),
    )
}

fn env_f64(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Scenario {
    name: &'static str,
    sets: usize,
    vms: usize,
    /// Identities only (no grants or bindings).
    identities_only: bool,
    /// Bindings applied after identities and grants are Ready.
    bindings_later: bool,
    /// ARM throttling scale (1 = ARM's buckets).
    scale: f64,
    resync: Duration,
    /// Wait one resync after convergence and count ARM requests.
    steady: bool,
    /// Extra controller flags.
    flags: Vec<String>,
}

impl Scenario {
    /// `sets` identity sets (identity, grant, binding at once) over `vms` VMs at throttling
    /// `scale`, with a resync period of ten minutes and no steady state.
    fn sets(name: &'static str, sets: usize, vms: usize, scale: f64) -> Self {
        Scenario {
            name,
            sets,
            vms,
            identities_only: false,
            bindings_later: false,
            scale,
            resync: Duration::from_secs(600),
            steady: false,
            flags: Self::flags(&[]),
        }
    }

    /// The controller's flags: a concurrency of 16, then `extra`.
    fn flags(extra: &[&str]) -> Vec<String> {
        let mut f = vec!["--concurrency".to_string(), "16".to_string()];
        f.extend(extra.iter().map(|s| s.to_string()));
        f
    }
}

#[derive(Default)]
struct Row {
    name: String,
    objects: usize,
    converged: usize,
    ready: Option<f64>,
    bound: f64,
    reads: u64,
    writes: u64,
    throttled: u64,
    patches: u64,
    vms: usize,
    kube: usize,
    rss_peak_kib: u64,
    rss_kib: u64,
    cpu_seconds: f64,
    startup: Option<f64>,
    steady: Option<(u64, u64, usize)>,
    note: String,
}

fn world(vms: usize, scale: f64) -> World {
    let mut w = World::tutorial().unwrap();
    w.rbac_propagation_seconds = 0.5;
    w.lro_retry_after_seconds = 0;
    w.subscriptions = vec![Subscription {
        id: SUB.into(),
        resource_groups: vec![ResourceGroup {
            name: "DevTest".into(),
            location: "eastus".into(),
            virtual_machines: (0..vms)
                .map(|i| VirtualMachine::named(&format!("vm-{i:03}")))
                .collect(),
            virtual_machine_scale_sets: Vec::new(),
            storage_accounts: Vec::new(),
            key_vaults: Vec::new(),
        }],
    }];
    w.faults.throttling = Some(Throttling { scale });
    w
}

fn identity(i: usize) -> UserAssignedIdentity {
    fixtures::identity(NS, &format!("id-{i:05}"))
}

fn grant(i: usize, verify_access: bool) -> RoleGrant {
    let (name, identity) = (format!("g-{i:05}"), format!("id-{i:05}"));
    let scope = fixtures::resource_group("DevTest");
    fixtures::grant(NS, &name, &identity, "Reader", scope)
        .with(|g| g.spec.verify_access = verify_access)
}

fn binding(i: usize, vms: usize) -> IdentityBinding {
    let (name, identity) = (format!("b-{i:05}"), format!("id-{i:05}"));
    let vm = fixtures::vm(&format!("vm-{:03}", i % vms));
    fixtures::binding(NS, &name, &identity, vm)
}

/// The identities, grants and bindings of the bench namespace.
fn apis(
    client: &kube::Client,
) -> (
    Api<UserAssignedIdentity>,
    Api<RoleGrant>,
    Api<IdentityBinding>,
) {
    let api = || client.clone();
    (
        Api::namespaced(api(), NS),
        Api::namespaced(api(), NS),
        Api::namespaced(api(), NS),
    )
}

async fn create_all<K>(api: &Api<K>, objects: Vec<K>)
where
    K: kube::Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    futures::stream::iter(objects)
        .for_each_concurrent(16, |o| {
            let api = api.clone();
            async move {
                api.create(&PostParams::default(), &o).await.unwrap();
            }
        })
        .await;
}

/// The sandbox with the CRDs, the bench namespace and a GrantPolicy that allows Reader on
/// `DevTest` and every VM; the emulator with `vms` VMs and ARM throttling at `scale`.
async fn setup(vms: usize, scale: f64) -> (Sandbox, Emulator) {
    let sb = sandbox::start(SandboxOptions::default()).await.unwrap();
    sb.install(
        uami_api::crds()
            .into_iter()
            .map(|c| serde_json::to_value(c).unwrap())
            .collect(),
    )
    .unwrap();
    let em = emulator::start(world(vms, scale)).await.unwrap();
    let client = sb.client();
    let ns: Value = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}});
    let nsapi: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    nsapi
        .create(&PostParams::default(), &serde_json::from_value(ns).unwrap())
        .await
        .unwrap();
    let policy: GrantPolicy = serde_json::from_value(json!({
        "apiVersion": "uami.dev/v1alpha1", "kind": "GrantPolicy", "metadata": {"name": "bench"},
        "spec": {"namespaces": [NS],
                 "roleGrants": [{"roles": ["Reader"], "scopes": [{"resourceGroup": {"name": "DevTest"}}]}],
                 "identityBindings": (0..vms).map(|i| json!({"virtualMachine": {"resourceGroup": "DevTest", "name": format!("vm-{i:03}")}})).collect::<Vec<_>>()}
    }))
    .unwrap();
    Api::<GrantPolicy>::all(client.clone())
        .create(&PostParams::default(), &policy)
        .await
        .unwrap();
    (sb, em)
}

/// Start the controller as its own process against a Kubernetes API (`kubeconfig_yaml`) and the
/// emulator, its log in
/// `dir` (with `BENCH_DEBUG`, in `target/bench-<scenario>.log`, level `BENCH_RUST_LOG`, default
/// warn).
fn spawn_controller(
    kubeconfig_yaml: &str,
    em: &Emulator,
    s: &Scenario,
    dir: &std::path::Path,
) -> tokio::process::Child {
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(&kubeconfig, kubeconfig_yaml).unwrap();
    let secret = dir.join("secret");
    std::fs::write(&secret, TUTORIAL_CONTROLLER_SECRET).unwrap();
    // The emulator's ARM and Entra ID are HTTPS with its own certificate authority.
    let ca = dir.join("emulator-ca.pem");
    std::fs::write(&ca, em.ca_pem().unwrap()).unwrap();
    let log_path = if std::env::var("BENCH_DEBUG").is_ok() {
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("../bench-{}.log", s.name))
    } else {
        dir.join("controller.log")
    };
    let log = std::fs::File::create(&log_path).unwrap();
    // `BENCH_WRAPPER` runs the controller under a command (a profiler that execs it, so that the
    // process measured is still the controller).
    let wrapper: Vec<String> = std::env::var("BENCH_WRAPPER")
        .map(|w| w.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default();
    let mut command = match wrapper.split_first() {
        Some((first, rest)) => {
            let mut c = tokio::process::Command::new(first);
            c.args(rest).arg(env!("CARGO_BIN_EXE_uami-controller"));
            c
        }
        None => tokio::process::Command::new(env!("CARGO_BIN_EXE_uami-controller")),
    };
    command
        .arg("run")
        .args(["--cluster-name", "bench"])
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["--arm-endpoint", em.arm_endpoint().as_str()])
        .args(["--authority-host", em.authority_host().as_str()])
        .arg("--azure-ca-file")
        .arg(&ca)
        .args(["--credential", "client-secret"])
        .args(["--tenant-id", &World::tutorial().unwrap().tenant_id])
        .args(["--client-id", TUTORIAL_CONTROLLER_CLIENT_ID])
        .arg("--client-secret-file")
        .arg(&secret)
        .args(["--default-subscription", SUB])
        .args(["--resync-period", &format!("{}s", s.resync.as_secs())])
        .args(["--admin-listen", "127.0.0.1:0"])
        .args(&s.flags);
    spawn_logged(&mut command, log)
}

/// The work directory of scenario `s` (`target/tmp/scale-<name>/`), and where its agents' logs
/// go: there too, or with `BENCH_DEBUG` in `target/bench-<name>-agents/`; both created.
fn work_and_log_dirs(s: &Scenario) -> (PathBuf, PathBuf) {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("scale-{}", s.name));
    std::fs::create_dir_all(&dir).unwrap();
    let logs = if std::env::var("BENCH_DEBUG").is_ok() {
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("../bench-{}-agents", s.name))
    } else {
        dir.clone()
    };
    std::fs::create_dir_all(&logs).unwrap();
    (dir, logs)
}

/// Start `command` (the controller or an agent) with its log in `log`, at `BENCH_RUST_LOG`
/// (default `warn`), killed when dropped.
fn spawn_logged(
    command: &mut tokio::process::Command,
    log: std::fs::File,
) -> tokio::process::Child {
    command
        .env(
            "RUST_LOG",
            std::env::var("BENCH_RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

async fn run(s: &Scenario) -> Row {
    let mut row = Row {
        name: s.name.into(),
        ..Row::default()
    };
    let (sb, em) = setup(s.vms, s.scale).await;
    let client = sb.client();
    let n = s.sets;
    let (ids, grants, bindings) = apis(&client);
    create_all(&ids, (0..n).map(identity).collect()).await;
    if !s.identities_only {
        create_all(&grants, (0..n).map(|i| grant(i, false)).collect()).await;
        if !s.bindings_later {
            create_all(&bindings, (0..n).map(|i| binding(i, s.vms)).collect()).await;
        }
    }
    row.objects = if s.identities_only { n } else { 3 * n };
    em.reset_counts();

    // The controller, as its own process.
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("scale-{}", s.name));
    std::fs::create_dir_all(&dir).unwrap();
    let started = Instant::now();
    let mut child = spawn_controller(&sb.kubeconfig_yaml("controller"), &em, s, &dir);
    let pid = child.id().unwrap_or(0);

    // Start-up: until the controller's first write to the API (its first reconcile).
    let deadline = started + limit();
    let mut seen = sb.audit().len();
    while row.startup.is_none() && Instant::now() < deadline {
        if let Ok(Some(exit)) = child.try_wait() {
            panic!(
                "the controller exited ({exit}); see {}",
                dir.join("controller.log").display()
            );
        }
        let new = sb.audit_from(seen);
        seen += new.len();
        if new
            .iter()
            .any(|a| a.user == "controller" && (a.verb == "patch" || a.verb == "create"))
        {
            row.startup = Some(started.elapsed().as_secs_f64());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let grants_on = !s.identities_only;
    let want = if s.bindings_later { 2 * n } else { row.objects };
    let mut got = wait_converged(
        &sb,
        grants_on,
        grants_on && !s.bindings_later,
        want,
        deadline,
    )
    .await;
    if s.bindings_later && got >= want {
        create_all(&bindings, (0..n).map(|i| binding(i, s.vms)).collect()).await;
        got = wait_converged(&sb, true, true, row.objects, deadline).await;
    }
    if got >= row.objects {
        row.ready = Some(started.elapsed().as_secs_f64());
    }
    row.converged = got;
    let (reads, writes, throttled, patches) = arm_counts(&em);
    row.reads = reads;
    row.writes = writes;
    row.throttled = throttled;
    row.patches = patches;
    row.vms = if s.identities_only { 0 } else { s.vms };
    row.kube = controller_requests(&sb);
    if std::env::var("BENCH_DEBUG").is_ok() {
        let mut by: std::collections::BTreeMap<String, usize> = Default::default();
        for a in sb.audit().iter().filter(|a| a.user == "controller") {
            *by.entry(format!(
                "{} {} {} {}",
                a.verb, a.resource, a.subresource, a.code
            ))
            .or_default() += 1;
        }
        eprintln!("{}: Kubernetes requests by the controller: {by:#?}", s.name);
        // Objects whose status the controller wrote more than once, and how two of them ended.
        let mut writes: std::collections::BTreeMap<(String, String), usize> = Default::default();
        for a in sb.audit().iter() {
            if a.user == "controller" && a.verb == "patch" && a.subresource == "status" {
                *writes
                    .entry((a.resource.clone(), a.name.clone()))
                    .or_default() += 1;
            }
        }
        let again: Vec<_> = writes.iter().filter(|(_, n)| **n > 1).collect();
        eprintln!(
            "{}: {} objects with more than one status write: {:?}",
            s.name,
            again.len(),
            again.iter().take(5).collect::<Vec<_>>()
        );
        let bindings: Api<IdentityBinding> = Api::namespaced(sb.client(), NS);
        for ((resource, name), n) in again.iter().take(2) {
            if resource == "identitybindings"
                && let Ok(b) = bindings.get(name).await
            {
                eprintln!(
                    "{name}: {n} status writes; {}",
                    serde_json::to_string(&b.status).unwrap_or_default()
                );
            }
        }
        eprintln!("{}: ARM: {:?}", s.name, em.counts());
    }
    // Writes needed: every identity, every role assignment, one PATCH per VM.
    let needed = if s.identities_only {
        n as f64
    } else {
        (2 * n + s.vms) as f64
    };
    row.bound = ((needed - WRITE_BURST * s.scale).max(0.0)) / (WRITE_REFILL * s.scale);
    row.rss_peak_kib = proc_status_kib(pid, "VmHWM:");
    row.rss_kib = proc_status_kib(pid, "VmRSS:");
    row.cpu_seconds = proc_cpu_seconds(pid);
    if s.steady && row.ready.is_some() {
        em.reset_counts();
        let before = controller_requests(&sb);
        tokio::time::sleep(s.resync.mul_f64(1.1)).await;
        let (r, w, _, _) = arm_counts(&em);
        row.steady = Some((r, w, controller_requests(&sb) - before));
        row.rss_kib = proc_status_kib(pid, "VmRSS:");
        row.rss_peak_kib = proc_status_kib(pid, "VmHWM:");
    }
    if row.ready.is_none() {
        row.note = format!("{got}/{} converged within BENCH_LIMIT", row.objects);
    }
    let _ = child.start_kill();
    let _ = child.wait().await;
    em.shutdown().await;
    sb.shutdown().await;
    row
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo test --all-targets` runs bench targets too: only `cargo bench` (which passes
    // `--bench`) measures.
    if !std::env::args().any(|a| a == "--bench") {
        println!("scale: run with `cargo bench --bench scale`");
        return;
    }
    let which: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let scale = env_f64("BENCH_SCALE", 2.0);
    let all = vec![
        Scenario::sets(
            "a",
            env_f64("BENCH_SETS", 1000.0) as usize,
            env_f64("BENCH_VMS", 100.0) as usize,
            scale,
        ),
        Scenario {
            bindings_later: true,
            resync: Duration::from_secs(30),
            steady: true,
            ..Scenario::sets("b", 100, 1, 1.0)
        },
        Scenario {
            identities_only: true,
            flags: Scenario::flags(&[
                "--arm-writes-ceiling",
                "2000",
                "--arm-reads-ceiling",
                "5000",
            ]),
            ..Scenario::sets("c", 10_000, 0, 100.0)
        },
    ];
    let scenarios: Vec<Scenario> = all
        .into_iter()
        .filter(|s| which.is_empty() || which.iter().any(|w| w == s.name))
        .collect();
    let d = Scenario::sets(
        "d",
        env_f64("BENCH_D_SETS", 1000.0) as usize,
        env_f64("BENCH_D_VMS", 100.0) as usize,
        scale,
    );
    let mut rows = Vec::new();
    for s in &scenarios {
        let row = run(s).await;
        eprintln!("scale: scenario {} done", s.name);
        rows.push(row);
        // The table so far, so that an interrupted run still reports what it measured.
        table::print(&rows, &scenarios[..rows.len()]);
    }
    if which.is_empty() || which.iter().any(|w| w == "d") {
        let row = agents::run(&d).await;
        eprintln!("scale: scenario d done");
        agents::print(&row);
    }
    // On a real API server: only when asked for.
    if which.iter().any(|w| w == "d-real") {
        let d_real = Scenario {
            name: "d-real",
            sets: env_f64("BENCH_D_REAL_SETS", 100.0) as usize,
            vms: env_f64("BENCH_D_REAL_VMS", 10.0) as usize,
            ..d
        };
        if let Some(row) = real::run(&d_real).await {
            eprintln!("scale: scenario d-real done");
            real::print(&row);
        }
    }
}
