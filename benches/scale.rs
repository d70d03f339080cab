//! Benchmarks that print counts and ratios (no pass/fail timing): run with
//! `cargo bench --bench scale` (or `-- sandbox` / `-- controller` for one part).
//!
//! - sandbox: 10,000 custom resources created through the API with three watchers open; the
//!   create rate, a full list, events per watcher, and resident memory per object.
//! - controller: N identities reconciled against the emulator; ARM requests per object to
//!   converge, ARM reads per object per resync and writes in the steady state; VM PATCHes for
//!   many bindings to one VM.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use uami_controller::api::UserAssignedIdentity;
use uami_controller::demo::stack::{Stack, StackOptions};
use uami_controller::sandbox::{self, SandboxOptions};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn identity(i: usize) -> UserAssignedIdentity {
    serde_json::from_value(json!({
        "apiVersion": "uami.dev/v1alpha1", "kind": "UserAssignedIdentity",
        "metadata": {"name": format!("identity-{i:05}")},
        "spec": {"subscriptionId": "6a2bd3a4-59c6-4d4e-9e8b-5c5a2f0a1b2c", "resourceGroup": "DevTest", "location": "eastus", "tags": {"n": i.to_string()}}
    }))
    .unwrap()
}

async fn sandbox_bench(n: usize) {
    let sb = sandbox::start(SandboxOptions::default()).await.unwrap();
    sb.install(
        uami_controller::api::crds()
            .into_iter()
            .map(|c| serde_json::to_value(c).unwrap())
            .collect(),
    )
    .unwrap();
    let api: Api<UserAssignedIdentity> = Api::namespaced(sb.client(), "default");
    let seen: Vec<Arc<AtomicUsize>> = (0..3).map(|_| Arc::new(AtomicUsize::new(0))).collect();
    for counter in &seen {
        let c = counter.clone();
        let w = watcher(
            Api::<UserAssignedIdentity>::all(sb.client()),
            watcher::Config::default(),
        )
        .applied_objects();
        tokio::spawn(async move {
            let mut w = w.boxed();
            while let Ok(Some(_)) = w.try_next().await {
                c.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_before = rss_kib();
    let started = Instant::now();
    futures::stream::iter(0..n)
        .for_each_concurrent(16, |i| {
            let api = api.clone();
            async move {
                api.create(&PostParams::default(), &identity(i))
                    .await
                    .unwrap();
            }
        })
        .await;
    let create = started.elapsed();
    let started = Instant::now();
    let listed = api.list(&ListParams::default()).await.unwrap().items.len();
    let list = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(120);
    while seen.iter().any(|c| c.load(Ordering::Relaxed) < n) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rss_after = rss_kib();
    println!(
        "sandbox: {n} objects created in {:.2}s ({:.0}/s, 16 clients)",
        create.as_secs_f64(),
        n as f64 / create.as_secs_f64()
    );
    println!(
        "sandbox: list of {listed} objects in {:.0} ms",
        list.as_secs_f64() * 1000.0
    );
    println!(
        "sandbox: events per watcher: {:?} (expected {n} each)",
        seen.iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect::<Vec<_>>()
    );
    println!(
        "sandbox: resident memory grew {} KiB: {:.1} KiB per object (store, watch history and three watchers' caches)",
        rss_after.saturating_sub(rss_before),
        rss_after.saturating_sub(rss_before) as f64 / n as f64
    );
    sb.shutdown().await;
}

async fn controller_bench(n: usize) {
    let mut opts = StackOptions::tutorial(Duration::from_secs(5)).unwrap();
    opts.agents = false;
    opts.world.lro_retry_after_seconds = 0;
    let stack = Stack::start(opts).await.unwrap();
    let mut yaml = String::from(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: bench}\n---\napiVersion: uami.dev/v1alpha1\nkind: GrantPolicy\nmetadata: {name: bench}\nspec:\n  namespaces: [bench]\n  roleGrants: [{roles: [Reader], scopes: [{resourceGroup: {name: DevTest}}]}]\n  identityBindings: [{virtualMachine: {resourceGroup: DevTest, name: myVM}}]\n",
    );
    for i in 0..n {
        yaml.push_str(&format!("---\napiVersion: uami.dev/v1alpha1\nkind: UserAssignedIdentity\nmetadata: {{name: id-{i:04}, namespace: bench}}\nspec: {{resourceGroup: DevTest, location: eastus}}\n---\napiVersion: uami.dev/v1alpha1\nkind: RoleGrant\nmetadata: {{name: g-{i:04}, namespace: bench}}\nspec: {{identityRef: {{name: id-{i:04}}}, role: Reader, scope: {{resourceGroup: {{name: DevTest}}}}, verifyAccess: false}}\n"));
    }
    for i in 0..20.min(n) {
        yaml.push_str(&format!("---\napiVersion: uami.dev/v1alpha1\nkind: IdentityBinding\nmetadata: {{name: b-{i:04}, namespace: bench}}\nspec: {{identityRef: {{name: id-{i:04}}}, target: {{virtualMachine: {{resourceGroup: DevTest, name: myVM}}}}}}\n"));
    }
    let started = Instant::now();
    stack.apply_yaml(&yaml).await.unwrap();
    if std::env::var("BENCH_DEBUG").is_ok() {
        println!(
            "controller: applied in {:.1}s",
            started.elapsed().as_secs_f64()
        );
    }
    let grants: Api<uami_controller::api::RoleGrant> = Api::namespaced(stack.client(), "bench");
    let bindings: Api<uami_controller::api::IdentityBinding> =
        Api::namespaced(stack.client(), "bench");
    loop {
        let ready = grants
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .filter(|g| {
                g.status.as_ref().is_some_and(|s| {
                    uami_controller::api::conditions::is_true(&s.conditions, "Ready")
                })
            })
            .count();
        let assigned = bindings
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .filter(|b| b.status.as_ref().is_some_and(|s| s.assigned == Some(true)))
            .count();
        if ready == n && assigned == 20.min(n) {
            break;
        }
        if std::env::var("BENCH_DEBUG").is_ok() {
            println!(
                "controller: {:.1}s {ready}/{n} ready, {assigned} assigned, {:?}",
                started.elapsed().as_secs_f64(),
                stack.emulator.counts().writes()
            );
        }
        if started.elapsed()
            > Duration::from_secs(
                std::env::var("BENCH_LIMIT")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(600),
            )
        {
            println!(
                "controller: not converged within the limit (BENCH_LIMIT, default 600 s): {ready}/{n} grants Ready, {assigned} bindings assigned"
            );
            for g in grants
                .list(&ListParams::default())
                .await
                .unwrap()
                .items
                .iter()
                .filter(|g| {
                    !g.status.as_ref().is_some_and(|s| {
                        uami_controller::api::conditions::is_true(&s.conditions, "Ready")
                    })
                })
                .take(3)
            {
                println!(
                    "controller:   {:?}: {:?}",
                    g.metadata.name,
                    g.status.as_ref().map(|s| s
                        .conditions
                        .iter()
                        .map(|c| (c.type_.clone(), c.reason.clone()))
                        .collect::<Vec<_>>())
                );
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let converge = started.elapsed();
    let c = stack.emulator.counts();
    let arm: u64 =
        c.0.iter()
            .filter(|((o, _), _)| !o.starts_with("Aad") && !o.starts_with("Imds"))
            .map(|(_, v)| v)
            .sum();
    println!(
        "controller: {n} identities + {n} grants + {} bindings converged in {:.1}s",
        20.min(n),
        converge.as_secs_f64()
    );
    println!(
        "controller: {arm} ARM requests to converge ({:.2} per identity+grant), {} writes, {} VM PATCHes for {} bindings to one VM",
        arm as f64 / n as f64,
        c.writes(),
        c.total("VirtualMachines_Update"),
        20.min(n)
    );
    println!(
        "controller: role definition lookups: {} (cached per subscription and role)",
        c.total("RoleDefinitions_List")
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    stack.emulator.reset_counts();
    tokio::time::sleep(Duration::from_secs(12)).await;
    let c = stack.emulator.counts();
    let reads: u64 =
        c.0.iter()
            .filter(|((o, _), _)| !o.starts_with("Aad") && !o.starts_with("Imds"))
            .map(|(_, v)| v)
            .sum();
    println!(
        "controller: steady state over 12 s (resync 5 s, about 2.4 resyncs): {} writes, {reads} reads = {:.2} reads per object per resync",
        c.writes(),
        reads as f64 / (2.0 * n as f64 + 20.0) / 2.4
    );
    stack.stop().await;
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo test --all-targets` runs bench targets too: only `cargo bench` (which passes
    // `--bench`) measures.
    if !std::env::args().any(|a| a == "--bench") {
        println!("scale: run with `cargo bench --bench scale`");
        return;
    }
    if std::env::var("BENCH_DEBUG").is_ok() {
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .init();
    }
    let which = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .unwrap_or_default();
    if which.is_empty() || which == "sandbox" {
        sandbox_bench(10_000).await;
    }
    if which.is_empty() || which == "controller" {
        let n = std::env::var("BENCH_IDENTITIES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(100);
        controller_bench(n).await;
    }
}
