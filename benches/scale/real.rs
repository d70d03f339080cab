//! Scenario (d-real): (d)'s watch-event count on a real kube-apiserver (the test suite's
//! control plane, from `KUBEBUILDER_ASSETS`), smaller by default (10 VMs, 10 sets each). The
//! API server counts the events it sends per resource in `apiserver_watch_events_total`, for
//! every watcher together and bookmarks included; the events the agents received are that
//! count's increase for `identitybindings` less one event per change for each of the three
//! other watchers of every binding: the controller, kube-controller-manager's garbage collector
//! (it watches the metadata of every resource) and the benchmark's own watch (without
//! bookmarks), which also counts the changes.

use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use serde_json::json;
use uami::demo::cluster::Cluster;
use uami_api::{GrantPolicy, IdentityBinding, RoleGrant, UserAssignedIdentity};
use uami_emulator as emulator;

use super::agents::{ready, spawn_agent};
use super::{NS, Scenario, binding, create_all, env_f64, envtest, grant, identity, limit, world};

/// What (d-real) measured.
pub struct Row {
    objects: usize,
    agents: usize,
    ready: Option<f64>,
    /// Binding changes the benchmark's watch received.
    changes: u64,
    /// The increase of `apiserver_watch_events_total` by resource.
    events: Vec<(String, f64)>,
    note: String,
}

/// `apiserver_watch_events_total` of `uami.dev`, by resource (`kind` on servers that label by
/// kind), from the API server's `/metrics`.
async fn watch_events(client: &kube::Client) -> Vec<(String, f64)> {
    let request = http::Request::get("/metrics").body(Vec::new()).unwrap();
    let text = client.request_text(request).await.unwrap();
    let mut out: Vec<(String, f64)> = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("apiserver_watch_events_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.split_once("} ") else {
            continue;
        };
        let label = |name: &str| {
            labels.split(',').find_map(|l| {
                l.strip_prefix(&format!("{name}=\""))
                    .and_then(|v| v.strip_suffix('"'))
            })
        };
        if label("group") != Some("uami.dev") {
            continue;
        }
        let Some(resource) = label("resource").or_else(|| label("kind")) else {
            continue;
        };
        let value: f64 = value.trim().parse().unwrap_or(0.0);
        match out.iter_mut().find(|(r, _)| r == resource) {
            Some((_, v)) => *v += value,
            None => out.push((resource.to_string(), value)),
        }
    }
    out
}

fn minus(after: &[(String, f64)], before: &[(String, f64)]) -> Vec<(String, f64)> {
    after
        .iter()
        .map(|(r, v)| {
            let b = before.iter().find(|(x, _)| x == r).map_or(0.0, |(_, b)| *b);
            (r.clone(), v - b)
        })
        .collect()
}

/// Count the changes of bindings from now on, with a watch of its own (no bookmarks), resumed
/// when the server ends it.
fn count_changes(
    client: kube::Client,
) -> (
    tokio::task::JoinHandle<()>,
    tokio::sync::watch::Receiver<u64>,
) {
    let (tx, rx) = tokio::sync::watch::channel(0u64);
    let api: Api<IdentityBinding> = Api::all(client);
    let handle = tokio::spawn(async move {
        let mut rv = api
            .list_metadata(&ListParams::default().limit(1))
            .await
            .unwrap()
            .metadata
            .resource_version
            .unwrap_or_default();
        let wp = WatchParams::default().disable_bookmarks().timeout(290);
        loop {
            let Ok(stream) = api.watch(&wp, &rv).await else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            let mut stream = stream.boxed();
            while let Ok(Some(ev)) = stream.try_next().await {
                match ev {
                    WatchEvent::Added(o) | WatchEvent::Modified(o) | WatchEvent::Deleted(o) => {
                        rv = o.metadata.resource_version.clone().unwrap_or_default();
                        tx.send_modify(|n| *n += 1);
                    }
                    WatchEvent::Bookmark(b) => rv = b.metadata.resource_version,
                    WatchEvent::Error(_) => break,
                }
            }
        }
    });
    (handle, rx)
}

/// Run (d-real), or say why it cannot run (no `KUBEBUILDER_ASSETS`).
pub async fn run(s: &Scenario) -> Option<Row> {
    let real = envtest::cluster("d-real").await?;
    let interval = Duration::from_secs_f64(env_f64("BENCH_D_INTERVAL", 10.0));
    let cluster = Cluster::External(Box::new(real.external.clone()));
    real.external.reset().await.unwrap();
    cluster
        .install(
            uami_api::crds()
                .into_iter()
                .map(|c| serde_json::to_value(c).unwrap())
                .collect(),
        )
        .await
        .unwrap();
    let em = emulator::start(world(s.vms, s.scale)).await.unwrap();
    let client = cluster.client().unwrap();
    let policy = json!({
        "apiVersion": "uami.dev/v1alpha1", "kind": "GrantPolicy", "metadata": {"name": "bench"},
        "spec": {"namespaces": [NS],
                 "roleGrants": [{"roles": ["Reader"], "scopes": [{"resourceGroup": {"name": "DevTest"}}]}],
                 "identityBindings": (0..s.vms).map(|i| json!({"virtualMachine": {"resourceGroup": "DevTest", "name": format!("vm-{i:03}")}})).collect::<Vec<_>>()}
    });
    let _: GrantPolicy = serde_json::from_value(policy.clone()).unwrap();
    cluster
        .install(vec![
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}),
            policy,
        ])
        .await
        .unwrap();
    let n = s.sets;
    create_all(
        &Api::<UserAssignedIdentity>::namespaced(client.clone(), NS),
        (0..n).map(identity).collect(),
    )
    .await;
    create_all(
        &Api::<RoleGrant>::namespaced(client.clone(), NS),
        (0..n).map(|i| grant(i, true)).collect(),
    )
    .await;
    create_all(
        &Api::<IdentityBinding>::namespaced(client.clone(), NS),
        (0..n).map(|i| binding(i, s.vms)).collect(),
    )
    .await;
    let (watch, changes) = count_changes(client.clone());
    // Let the watch start before counting from here.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = watch_events(&client).await;

    let (dir, logs) = super::work_and_log_dirs(s);
    let started = Instant::now();
    let mut controller = super::spawn_controller(
        &cluster.admin_kubeconfig("controller").unwrap(),
        &em,
        s,
        &dir,
    );
    let mut agents: Vec<tokio::process::Child> = (0..s.vms)
        .map(|i| {
            let vm = format!("vm-{i:03}");
            let kubeconfig = cluster.admin_kubeconfig(&format!("agent-{vm}")).unwrap();
            spawn_agent(&kubeconfig, &em, &vm, interval, &dir, &logs)
        })
        .collect();
    let mut row = Row {
        objects: 3 * n,
        agents: s.vms,
        ready: None,
        changes: 0,
        events: Vec::new(),
        note: String::new(),
    };
    let deadline = started + limit();
    loop {
        let got = ready(&client).await;
        if got >= row.objects {
            row.ready = Some(started.elapsed().as_secs_f64());
            break;
        }
        if Instant::now() > deadline {
            row.note = format!("{got}/{} Ready within BENCH_LIMIT", row.objects);
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The last changes reach every watcher.
    tokio::time::sleep(Duration::from_secs(1)).await;
    row.changes = *changes.borrow();
    row.events = minus(&watch_events(&client).await, &before);
    watch.abort();
    let _ = controller.start_kill();
    let _ = controller.wait().await;
    for a in &mut agents {
        let _ = a.start_kill();
    }
    for a in &mut agents {
        let _ = a.wait().await;
    }
    em.shutdown().await;
    real.external.reset().await.unwrap();
    Some(row)
}

pub fn print(r: &Row) {
    // By resource, or by kind on servers that label by kind.
    let bindings: f64 = r
        .events
        .iter()
        .filter(|(x, _)| x == "identitybindings" || x == "IdentityBinding")
        .map(|(_, v)| *v)
        .sum();
    // The controller, the garbage collector and the benchmark each get every change.
    let to_agents = bindings - 3.0 * r.changes as f64;
    let per_change = if r.changes == 0 {
        "n/a".to_string()
    } else {
        format!("{:.2}", to_agents / r.changes as f64)
    };
    let ready = r
        .ready
        .map_or_else(|| "not converged".to_string(), |t| format!("{t:.1} s"));
    println!();
    println!(
        "| scenario | objects | agents | time to Ready | binding changes | binding watch events (all watchers) | to agents (less controller, garbage collector and bench) | per change |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    println!(
        "| d-real | {} | {} | {ready} | {} | {bindings} | {to_agents} | {per_change} |",
        r.objects, r.agents, r.changes
    );
    println!();
    println!(
        "d-real: apiserver_watch_events_total increase by resource (bookmarks included): {:?}{}",
        r.events,
        if r.note.is_empty() {
            String::new()
        } else {
            format!("; {}", r.note)
        }
    );
}
