//! Scenario (d): the sets of (a) with access checks on and one agent process per VM, and what
//! the agents cost: time until every object is Ready (a binding's `Ready` needs its agent's
//! `TokenAcquired`, a grant's its `AccessVerified`), the watch events the sandbox delivered to
//! the agents per binding change (to the agent of the binding's VM and to the others), the
//! agents' memory and CPU, IMDS requests per binding, and the agents' memory once the cluster
//! holds 10,000 objects of which only (d)'s concern them.
//!
//! Each agent is `uami-controller agent` with its VM's IMDS endpoint from the emulator and a
//! kubeconfig of its own user `agent-<vm>`, in a group bound to the chart's agent ClusterRole
//! (read from the rendered manifests), so the sandbox counts its watch events apart and RBAC
//! holds it to what the chart grants.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use uami_api::{IdentityBinding, RoleGrant, UserAssignedIdentity};
use uami_emulator::Emulator;
use uami_sandbox::{Sandbox, UserInfo, WatchDeliveries};

use super::fixtures::{self, Fixture};
use super::table::ready_and_ratio;
use super::{
    NS, SUB, Scenario, WRITE_BURST, WRITE_REFILL, apis, binding, count_true, create_all, env_f64,
    grant, identity, limit, proc_cpu_seconds, proc_status_kib, setup, spawn_controller,
    spawn_logged, work_and_log_dirs,
};

const BINDINGS: &str = "identitybindings.uami.dev";
const GRANTS: &str = "rolegrants.uami.dev";
const IDENTITIES: &str = "userassignedidentities.uami.dev";
/// The group the agents' users are in, bound to the chart's agent ClusterRole.
const AGENT_GROUP: &str = "uami:bench-agents";
/// The namespace of the objects added once (d) has converged.
const OTHER_NS: &str = "bench-other";
/// Bindings of the second phase that target `vm-000` (which has 10 of (d)'s): its agent then
/// holds 100 bindings of its VM among 10,000 objects.
const ON_FIRST_VM: usize = 90;
/// The label the controller puts on a binding to a VM or scale set.
const TARGET_LABEL: &str = "uami.dev/target";

/// What (d) measured.
#[derive(Default)]
pub struct Row {
    objects: usize,
    agents: usize,
    converged: usize,
    ready: Option<f64>,
    bound: f64,
    /// Events from the start of the controller and the agents to convergence.
    events: AgentEvents,
    rss_peak_kib: Vec<u64>,
    cpu_seconds: Vec<f64>,
    imds_tokens: u64,
    imds_requests: u64,
    bindings: usize,
    /// The cluster's object count in the second phase, and the agents' VmRSS and VmHWM then.
    crowded: Option<(usize, Vec<u64>, Vec<u64>)>,
    /// Events during the second phase only.
    crowded_events: AgentEvents,
    interval: Duration,
    rbac_propagation: f64,
    note: String,
}

/// Watch events the agents received, classified by whether the agent cares.
#[derive(Clone, Copy, Debug, Default)]
struct AgentEvents {
    /// Changes of bindings the store published.
    changes: u64,
    /// Binding events to the agent of the binding's VM.
    own: u64,
    /// Binding events to agents of other VMs (or about bindings of no agent's VM).
    other: u64,
    /// Grant and identity events to agents.
    grants_identities: u64,
    /// Bookmarks to agents, every resource.
    bookmarks: u64,
    /// Binding events to the controller.
    controller: u64,
}

impl AgentEvents {
    /// Classify `d`'s events; `targets` maps a binding (`namespace/name`) to its VM.
    fn of(d: &WatchDeliveries, targets: &HashMap<String, String>) -> Self {
        let mut e = Self {
            changes: d.changes.get(BINDINGS).copied().unwrap_or(0),
            controller: d.events_to("controller", BINDINGS),
            ..Self::default()
        };
        for s in &d.streams {
            let Some(vm) = s.user.strip_prefix("agent-") else {
                continue;
            };
            e.bookmarks += s.bookmarks;
            match s.resource.as_str() {
                BINDINGS => {
                    for (object, n) in &s.objects {
                        if targets.get(object).is_some_and(|t| t == vm) {
                            e.own += n;
                        } else {
                            e.other += n;
                        }
                    }
                }
                GRANTS | IDENTITIES => e.grants_identities += s.events,
                _ => {}
            }
        }
        e
    }

    fn minus(self, before: Self) -> Self {
        Self {
            changes: self.changes - before.changes,
            own: self.own - before.own,
            other: self.other - before.other,
            grants_identities: self.grants_identities - before.grants_identities,
            bookmarks: self.bookmarks - before.bookmarks,
            controller: self.controller - before.controller,
        }
    }

    fn per_change(&self, n: u64) -> String {
        if self.changes == 0 {
            "n/a".into()
        } else {
            format!("{:.2}", n as f64 / self.changes as f64)
        }
    }
}

/// The value of [`TARGET_LABEL`] for a VM: the first 32 hex digits of the SHA-256 of its ARM
/// id in lower case.
fn target_label(vm: &str) -> String {
    uami_api::binding::target_label_value(&format!(
        "/subscriptions/{SUB}/resourceGroups/DevTest/providers/Microsoft.Compute/virtualMachines/{vm}"
    ))
}

/// The chart's agent ClusterRole from the rendered manifests, and a binding of it to
/// [`AGENT_GROUP`].
fn agent_rbac() -> Vec<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/manifests/uami-controller.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let role = serde_yaml_ng::Deserializer::from_str(&text)
        .filter_map(|doc| serde::Deserialize::deserialize(doc).ok())
        .find(|v: &Value| {
            v["kind"] == "ClusterRole" && v["metadata"]["name"] == "uami-controller-agent"
        })
        .unwrap_or_else(|| panic!("no ClusterRole uami-controller-agent in {}", path.display()));
    vec![
        role,
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
               "metadata": {"name": "bench-agents"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "uami-controller-agent"},
               "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": AGENT_GROUP}]}),
    ]
}

/// A kubeconfig of the sandbox for the user `agent-<vm>`, in [`AGENT_GROUP`] (not an
/// administrator: RBAC applies).
fn agent_kubeconfig(sb: &Sandbox, vm: &str) -> String {
    let user = format!("agent-{vm}");
    let token = sb.token_for(UserInfo {
        username: user.clone(),
        uid: String::new(),
        groups: vec![AGENT_GROUP.into(), "system:authenticated".into()],
        extra: BTreeMap::new(),
    });
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: sandbox\n  cluster:\n    server: {}\ncontexts:\n- name: sandbox\n  context:\n    cluster: sandbox\n    user: {user}\n    namespace: default\ncurrent-context: sandbox\nusers:\n- name: {user}\n  user:\n    token: {token}\n",
        sb.url().as_str().trim_end_matches('/'),
    )
}

/// Start the agent of `vm` as its own process, with the Kubernetes API of `kubeconfig_yaml`.
pub fn spawn_agent(
    kubeconfig_yaml: &str,
    em: &Emulator,
    vm: &str,
    interval: Duration,
    dir: &Path,
    logs: &Path,
) -> tokio::process::Child {
    let kubeconfig = dir.join(format!("agent-{vm}.kubeconfig"));
    std::fs::write(&kubeconfig, kubeconfig_yaml).unwrap();
    let imds = em
        .imds_endpoint(vm)
        .unwrap_or_else(|| panic!("no IMDS for {vm}"));
    let log = std::fs::File::create(logs.join(format!("agent-{vm}.log"))).unwrap();
    // The emulator's ARM is HTTPS with its own certificate authority.
    let ca = dir.join("emulator-ca.pem");
    if !ca.exists() {
        std::fs::write(&ca, em.ca_pem().unwrap()).unwrap();
    }
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_uami-controller"));
    command
        .arg("agent")
        .arg("--azure-ca-file")
        .arg(&ca)
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["--imds-endpoint", imds.as_str()])
        .args(["--arm-endpoint", em.arm_endpoint().as_str()])
        .args(["--interval", &format!("{}ms", interval.as_millis())])
        .args(["--admin-listen", "127.0.0.1:0"]);
    spawn_logged(&mut command, log)
}

/// Identities, grants and bindings Ready.
pub async fn ready(client: &kube::Client) -> usize {
    count_true::<UserAssignedIdentity>(client, "Ready").await
        + count_true::<RoleGrant>(client, "Ready").await
        + count_true::<IdentityBinding>(client, "Ready").await
}

fn median<T: Copy + PartialOrd + Default>(values: &[T]) -> T {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn max<T: Copy + PartialOrd + Default>(values: &[T]) -> T {
    values
        .iter()
        .copied()
        .fold(T::default(), |m, v| if v > m { v } else { m })
}

/// Objects of another namespace: identities, grants and bindings. The first [`ON_FIRST_VM`]
/// bindings target `vm-000` and carry its label as the controller would put it, so that its
/// agent holds 100 bindings of its VM; the others target VMs of other names, half labelled for
/// their target, half unlabelled as a user applies them. `count` objects in all.
fn crowd(
    count: usize,
) -> (
    Vec<UserAssignedIdentity>,
    Vec<RoleGrant>,
    Vec<IdentityBinding>,
) {
    let sets = count / 3;
    let extra_bindings = count - 2 * sets;
    let identities = (0..sets)
        .map(|j| fixtures::identity(OTHER_NS, &format!("x-id-{j:05}")))
        .collect();
    let grants = (0..sets)
        .map(|j| {
            let (name, identity) = (format!("x-g-{j:05}"), format!("x-id-{j:05}"));
            let scope = fixtures::resource_group("DevTest");
            fixtures::grant(OTHER_NS, &name, &identity, "Reader", scope)
                .with(|g| g.spec.verify_access = true)
        })
        .collect();
    let bindings = (0..extra_bindings)
        .map(|j| {
            let vm = if j < ON_FIRST_VM {
                "vm-000".to_string()
            } else {
                format!("other-{j:05}")
            };
            let identity = format!("x-id-{:05}", j % sets.max(1));
            let labelled = j < ON_FIRST_VM || j % 2 == 0;
            let label = BTreeMap::from([(TARGET_LABEL.to_string(), target_label(&vm))]);
            fixtures::binding(
                OTHER_NS,
                &format!("x-b-{j:05}"),
                &identity,
                fixtures::vm(&vm),
            )
            .with(|b| b.metadata.labels = labelled.then_some(label))
        })
        .collect();
    (identities, grants, bindings)
}

pub async fn run(s: &Scenario) -> Row {
    let interval = Duration::from_secs_f64(env_f64("BENCH_D_INTERVAL", 10.0));
    let mut row = Row {
        agents: s.vms,
        interval,
        ..Row::default()
    };
    let (sb, em) = setup(s.vms, s.scale).await;
    row.rbac_propagation = em.world().rbac_propagation_seconds;
    sb.install(agent_rbac()).unwrap();
    let client = sb.client();
    let n = s.sets;
    let (ids, grants, bindings) = apis(&client);
    create_all(&ids, (0..n).map(identity).collect()).await;
    create_all(&grants, (0..n).map(|i| grant(i, true)).collect()).await;
    create_all(&bindings, (0..n).map(|i| binding(i, s.vms)).collect()).await;
    row.objects = 3 * n;
    row.bindings = n;
    let vms: Vec<String> = (0..s.vms).map(|i| format!("vm-{i:03}")).collect();
    let mut targets: HashMap<String, String> = (0..n)
        .map(|i| (format!("{NS}/b-{i:05}"), vms[i % s.vms].clone()))
        .collect();
    em.reset_counts();

    let (dir, logs) = work_and_log_dirs(s);
    // Changes before the controller and the agents start reach them by their first list, not
    // by watch events: count from here.
    let baseline = AgentEvents::of(&sb.watch_deliveries(), &targets);
    let started = Instant::now();
    let mut controller = spawn_controller(&sb.kubeconfig_yaml("controller"), &em, s, &dir);
    let mut agents: Vec<(String, tokio::process::Child)> = vms
        .iter()
        .map(|vm| {
            (
                vm.clone(),
                spawn_agent(&agent_kubeconfig(&sb, vm), &em, vm, interval, &dir, &logs),
            )
        })
        .collect();
    let pids: Vec<u32> = agents.iter().map(|(_, c)| c.id().unwrap_or(0)).collect();

    let deadline = started + limit();
    let mut said = Instant::now();
    loop {
        if let Ok(Some(exit)) = controller.try_wait() {
            panic!("the controller exited ({exit}); see {}", dir.display());
        }
        for (vm, a) in &mut agents {
            if let Ok(Some(exit)) = a.try_wait() {
                panic!(
                    "the agent of {vm} exited ({exit}); see {}",
                    logs.join(format!("agent-{vm}.log")).display()
                );
            }
        }
        row.converged = ready(&client).await;
        if row.converged >= row.objects {
            row.ready = Some(started.elapsed().as_secs_f64());
            break;
        }
        if Instant::now() > deadline {
            row.note = format!("{}/{} Ready within BENCH_LIMIT", row.converged, row.objects);
            break;
        }
        if said.elapsed() > Duration::from_secs(15) {
            eprintln!(
                "d: {}/{} Ready after {:.0} s",
                row.converged,
                row.objects,
                started.elapsed().as_secs_f64()
            );
            said = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let converged = sb.watch_deliveries();
    row.events = AgentEvents::of(&converged, &targets).minus(baseline);
    row.rss_peak_kib = pids.iter().map(|p| proc_status_kib(*p, "VmHWM:")).collect();
    row.cpu_seconds = pids.iter().map(|p| proc_cpu_seconds(*p)).collect();
    let c = em.counts();
    row.imds_tokens = c.total("Imds_Token");
    row.imds_requests =
        c.0.iter()
            .filter(|((o, _), _)| o.starts_with("Imds"))
            .map(|(_, n)| n)
            .sum();
    // Writes needed, as in (a); then the role assignment's propagation and one agent interval.
    let needed = (2 * n + s.vms) as f64;
    row.bound = ((needed - WRITE_BURST * s.scale).max(0.0)) / (WRITE_REFILL * s.scale)
        + row.rbac_propagation
        + interval.as_secs_f64();
    if std::env::var("BENCH_DEBUG").is_ok() {
        eprintln!("d: IMDS and ARM: {:?}", em.counts());
        for st in converged
            .streams
            .iter()
            .filter(|s| !s.user.starts_with("agent-"))
        {
            eprintln!(
                "d: {} received {} events of {} ({} bookmarks)",
                st.user, st.events, st.resource, st.bookmarks
            );
        }
    }

    // The second phase: no controller, and the cluster filled up to `BENCH_D_TOTAL` objects
    // (default 10,000) that no agent serves.
    let _ = controller.start_kill();
    let _ = controller.wait().await;
    let total = env_f64("BENCH_D_TOTAL", 10_000.0) as usize;
    if total > row.objects {
        let ns: Value =
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": OTHER_NS}});
        Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
            .create(&PostParams::default(), &serde_json::from_value(ns).unwrap())
            .await
            .unwrap();
        let (xi, xg, xb) = crowd(total - row.objects);
        for b in &xb {
            let name = b.metadata.name.clone().unwrap_or_default();
            if let Some(vm) = name.strip_prefix("x-b-") {
                let target = match vm.parse::<usize>() {
                    Ok(j) if j < ON_FIRST_VM => "vm-000".to_string(),
                    _ => format!("other-{vm}"),
                };
                targets.insert(format!("{OTHER_NS}/{name}"), target);
            }
        }
        let count = xi.len() + xg.len() + xb.len() + row.objects;
        create_all(&Api::namespaced(client.clone(), OTHER_NS), xi).await;
        create_all(&Api::namespaced(client.clone(), OTHER_NS), xg).await;
        create_all(&Api::namespaced(client.clone(), OTHER_NS), xb).await;
        tokio::time::sleep(Duration::from_secs_f64(env_f64("BENCH_D_SETTLE", 10.0))).await;
        let rss = pids.iter().map(|p| proc_status_kib(*p, "VmRSS:")).collect();
        let hwm = pids.iter().map(|p| proc_status_kib(*p, "VmHWM:")).collect();
        row.crowded = Some((count, rss, hwm));
        row.crowded_events = AgentEvents::of(&sb.watch_deliveries(), &targets)
            .minus(AgentEvents::of(&converged, &targets));
    }
    for (_, a) in &mut agents {
        let _ = a.start_kill();
    }
    for (_, a) in &mut agents {
        let _ = a.wait().await;
    }
    em.shutdown().await;
    sb.shutdown().await;
    row
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

pub fn print(r: &Row) {
    let e = &r.events;
    let (ready, ratio) = ready_and_ratio(r.ready, r.bound);
    let crowded = match &r.crowded {
        Some((count, rss, hwm)) => format!(
            "{count}: {:.1} MiB max, {:.1} MiB median ({:.1} MiB peak)",
            mib(max(rss)),
            mib(median(rss)),
            mib(max(hwm))
        ),
        None => "n/a".into(),
    };
    let bindings = r.bindings.max(1) as f64;
    println!();
    println!(
        "| scenario | objects | agents | time to Ready | lower bound | ratio | binding changes | binding events to agents/change | to its VM's agent/change | to other agents/change | grant and identity events to agents | agent RSS peak (max / median) | agent CPU to Ready (total / median) | IMDS requests/binding (token requests) | agent RSS at N objects |"
    );
    println!(
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    println!(
        "| d | {} | {} | {ready} | {:.1} s | {ratio} | {} | {} | {} | {} | {} | {:.1} / {:.1} MiB | {:.1} / {:.2} s | {:.2} ({:.2}) | {crowded} |",
        r.objects,
        r.agents,
        r.bound,
        e.changes,
        e.per_change(e.own + e.other),
        e.per_change(e.own),
        e.per_change(e.other),
        e.grants_identities,
        mib(max(&r.rss_peak_kib)),
        mib(median(&r.rss_peak_kib)),
        r.cpu_seconds.iter().sum::<f64>(),
        median(&r.cpu_seconds),
        r.imds_requests as f64 / bindings,
        r.imds_tokens as f64 / bindings,
    );
    println!();
    println!(
        "d: lower bound = ARM's write bucket as in (a) + rbac_propagation_seconds ({} s) + one agent interval ({} s); watch events counted by the sandbox per user; {} binding events per change to the controller, {} bookmarks to agents{}",
        r.rbac_propagation,
        r.interval.as_secs_f64(),
        e.per_change(e.controller),
        e.bookmarks,
        if r.note.is_empty() {
            String::new()
        } else {
            format!("; {}", r.note)
        }
    );
    if r.crowded.is_some() {
        let c = &r.crowded_events;
        println!(
            "d: with the controller stopped, {} binding changes no agent serves: {} binding events to agents ({} per change), {} grant and identity events to agents",
            c.changes,
            c.own + c.other,
            c.per_change(c.own + c.other),
            c.grants_identities
        );
    }
}
