//! Scale correctness: the sandbox delivers every change to every watcher in resourceVersion order
//! under concurrent writes, and 100 identity sets on one VM all become Ready with the agent on
//! (every token obtained through IMDS, every grant's access verified), with no Ready flapping, on
//! the sandbox and on a real API server (a generous deadline, no timing claim; `cargo bench
//! --bench scale` measures the speed).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use parking_lot::Mutex;
use serde_json::json;
use support::*;
use uami::demo::stack::{Stack, StackOptions};
use uami_api::UserAssignedIdentity;
use uami_kube::status::Reported;

fn identity(ns: &str, i: usize) -> UserAssignedIdentity {
    serde_json::from_value(json!({
        "apiVersion": "uami.dev/v1alpha1", "kind": "UserAssignedIdentity",
        "metadata": {"name": format!("id-{i:04}"), "namespace": ns},
        "spec": {"resourceGroup": "DevTest", "location": "eastus"}
    }))
    .unwrap()
}

/// What one watcher saw: the last resourceVersion per object, and whether the events of one
/// watch arrived in increasing resourceVersion order.
#[derive(Default)]
struct Seen {
    last: BTreeMap<String, u64>,
    out_of_order: Vec<(u64, u64)>,
    previous: u64,
}

fn rv_of(o: &UserAssignedIdentity) -> u64 {
    o.metadata
        .resource_version
        .as_deref()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_watcher_sees_every_change_in_order_under_concurrent_writes() {
    let sb = sandbox_with_api_crds().await;
    let api: Api<UserAssignedIdentity> = Api::namespaced(sb.client(), "default");
    // A first batch exists before the watchers list, so their first lists span several pages
    // while the writers change those objects.
    for i in 0..40 {
        api.create(&PostParams::default(), &identity("default", i))
            .await
            .unwrap();
    }
    let seen: Vec<Arc<Mutex<Seen>>> = (0..3).map(|_| Arc::default()).collect();
    let mut tasks = Vec::new();
    for s in &seen {
        let s = s.clone();
        // Paged lists (the real API server's lists are consistent snapshots across pages).
        let cfg = watcher::Config::default().page_size(7);
        let mut w = watcher(Api::<UserAssignedIdentity>::all(sb.client()), cfg).boxed();
        tasks.push(tokio::spawn(async move {
            while let Ok(Some(ev)) = w.try_next().await {
                let mut s = s.lock();
                match ev {
                    watcher::Event::Apply(o) => {
                        // Live events come in resourceVersion order; a list is by name.
                        let rv = rv_of(&o);
                        if rv <= s.previous {
                            let p = s.previous;
                            s.out_of_order.push((p, rv));
                        }
                        s.previous = rv;
                        s.last
                            .insert(o.metadata.name.clone().unwrap_or_default(), rv);
                    }
                    watcher::Event::InitApply(o) => {
                        let rv = rv_of(&o);
                        s.previous = s.previous.max(rv);
                        s.last
                            .insert(o.metadata.name.clone().unwrap_or_default(), rv);
                    }
                    watcher::Event::Delete(o) => {
                        s.last.remove(&o.metadata.name.clone().unwrap_or_default());
                    }
                    watcher::Event::Init => s.last.clear(),
                    watcher::Event::InitDone => {}
                }
            }
        }));
    }
    futures::stream::iter(0..200)
        .for_each_concurrent(16, |i| {
            let api = api.clone();
            async move {
                if i >= 40 {
                    api.create(&PostParams::default(), &identity("default", i))
                        .await
                        .unwrap();
                }
                for round in 0..3 {
                    let status = json!({
                        "apiVersion": "uami.dev/v1alpha1", "kind": "UserAssignedIdentity",
                        "status": {"principalId": format!("00000000-0000-0000-0000-{round:04}{i:08}")}
                    });
                    api.patch_status(
                        &format!("id-{i:04}"),
                        &PatchParams::apply("writer").force(),
                        &Patch::Apply(&status),
                    )
                    .await
                    .unwrap();
                }
            }
        })
        .await;
    let truth: BTreeMap<String, u64> = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|o| (o.metadata.name.clone().unwrap_or_default(), rv_of(o)))
        .collect();
    assert_eq!(truth.len(), 200);
    for (n, s) in seen.iter().enumerate() {
        eventually(60, &format!("watcher {n} to see every change"), || async {
            (s.lock().last == truth).then_some(())
        })
        .await;
        assert!(
            s.lock().out_of_order.is_empty(),
            "watcher {n} got events out of resourceVersion order: {:?}",
            s.lock().out_of_order
        );
    }
    for t in tasks {
        t.abort();
    }
    sb.shutdown().await;
}

on_sandbox_and_real! {
    binary: "e2e_scale",
    options: scale_options(),
    join: on_real_apiserver;
    /// 100 identity sets (identity, Reader grant with `verifyAccess`, binding) on one VM, applied at
    /// once, the agent on: every identity, grant and binding becomes Ready (the agent obtained every
    /// token and verified every grant's access), none of them flaps, the VM carries all 100
    /// identities, and Azure holds one role assignment per grant. The agent lists and watches only
    /// its own bindings. A generous deadline, no timing claim.
    a_hundred_identity_sets_on_one_vm_all_become_ready on_a_real_api_server_a_hundred_identity_sets_on_one_vm_all_become_ready a_hundred_identity_sets;
}

fn scale_options() -> StackOptions {
    let mut opts = StackOptions::tutorial(Duration::from_secs(60)).unwrap();
    opts.agents = true;
    opts.agent_interval = Duration::from_secs(10);
    opts.world.lro_retry_after_seconds = 0;
    opts.world.rbac_propagation_seconds = 0.5;
    opts
}

/// The requests kube-apiserver counted (its `apiserver_request_total`) for `resource`'s
/// `subresource` in group `uami.dev`, any verb and code.
async fn apiserver_requests(client: &kube::Client, resource: &str, subresource: &str) -> u64 {
    let text = client
        .request_text(http::Request::get("/metrics").body(Vec::new()).unwrap())
        .await
        .unwrap();
    let labels = [
        "group=\"uami.dev\"".to_string(),
        format!("resource=\"{resource}\""),
        format!("subresource=\"{subresource}\""),
    ];
    text.lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
        .filter(|l| labels.iter().all(|x| l.contains(x.as_str())))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

async fn a_hundred_identity_sets(opts: StackOptions, real: Option<&envtest::Real>) {
    const N: usize = 100;
    let stack = Stack::start(opts).await.unwrap();
    let mut yaml = String::from(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: scale}\n---\napiVersion: uami.dev/v1alpha1\nkind: GrantPolicy\nmetadata: {name: scale}\nspec:\n  namespaces: [scale]\n  roleGrants: [{roles: [Reader], scopes: [{resourceGroup: {name: DevTest}}]}]\n  identityBindings: [{virtualMachine: {resourceGroup: DevTest, name: myVM}}]\n",
    );
    for i in 0..N {
        yaml.push_str(&format!(
            "---\napiVersion: uami.dev/v1alpha1\nkind: UserAssignedIdentity\nmetadata: {{name: id-{i:03}, namespace: scale}}\nspec: {{resourceGroup: DevTest, location: eastus}}\n---\napiVersion: uami.dev/v1alpha1\nkind: RoleGrant\nmetadata: {{name: g-{i:03}, namespace: scale}}\nspec: {{identityRef: {{name: id-{i:03}}}, role: Reader, scope: {{resourceGroup: {{name: DevTest}}}}, verifyAccess: true}}\n---\napiVersion: uami.dev/v1alpha1\nkind: IdentityBinding\nmetadata: {{name: b-{i:03}, namespace: scale}}\nspec: {{identityRef: {{name: id-{i:03}}}, target: {{virtualMachine: {{resourceGroup: DevTest, name: myVM}}}}}}\n"
        ));
    }
    let mut flaps = flaps::Flaps::start(&stack.client(), &["scale".to_string()]);
    stack.apply_yaml(&yaml).await.unwrap();
    let (ids, grants, binds) = (
        identities(&stack, "scale"),
        support::grants(&stack, "scale"),
        bindings(&stack, "scale"),
    );
    let lp = ListParams::default();
    let not_converged = eventually(300, "every identity, grant and binding", || async {
        let i = ids.list(&lp).await.ok()?.items;
        let g = grants.list(&lp).await.ok()?.items;
        let b = binds.list(&lp).await.ok()?.items;
        let pending: Vec<String> = not_ready("identity", &i)
            .chain(not_ready("grant", &g))
            .chain(not_ready("binding", &b))
            .collect();
        (i.len() == N && g.len() == N && b.len() == N && pending.is_empty()).then_some(pending)
    })
    .await;
    assert!(not_converged.is_empty());
    // Every binding carries its token's metadata and the scope it verified, every grant the
    // agent's answer.
    for b in binds.list(&lp).await.unwrap().items {
        let s = b.status.unwrap();
        assert!(
            s.token.is_some_and(|t| t.expires_on.is_some()),
            "{:?}",
            b.metadata.name
        );
        assert_eq!(s.access_checks.len(), 1, "{:?}", b.metadata.name);
        assert!(s.client_id.is_some());
        assert!(s.last_check_error.is_none());
    }
    for g in grants.list(&lp).await.unwrap().items {
        let s = g.status.unwrap();
        assert_eq!(
            s.access.map(|a| a.http_status),
            Some(Some(200)),
            "{:?}",
            g.metadata.name
        );
    }
    // A few more agent intervals: nothing that was Ready stops being Ready.
    tokio::time::sleep(Duration::from_secs(12)).await;
    flaps.stop();
    assert_eq!(flaps.flaps(), Vec::<String>::new(), "Ready flapped");
    assert_eq!(flaps.ready_now(), 3 * N);
    // The agent reads only its own bindings: no identity, no list or watch of grants.
    if let Some(sb) = stack.sandbox() {
        let agent: std::collections::BTreeSet<(String, String)> = sb
            .audit()
            .into_iter()
            .filter(|r| r.user.starts_with("agent-"))
            .map(|r| (r.verb.clone(), format!("{}/{}", r.resource, r.subresource)))
            .collect();
        let allowed = [
            ("list", "identitybindings/"),
            ("watch", "identitybindings/"),
            ("patch", "identitybindings/status"),
            ("get", "rolegrants/"),
            ("patch", "rolegrants/status"),
        ]
        .map(|(v, r)| (v.to_string(), r.to_string()));
        let extra: Vec<_> = agent.iter().filter(|p| !allowed.contains(p)).collect();
        assert!(extra.is_empty(), "the agent called {extra:?}");
    }
    // Azure agrees: the VM carries every identity, and each grant's assignment exists.
    let state = stack.emulator.state();
    let vm = compute(&state, "myVM");
    let assigned = vm["identity"]["userAssignedIdentities"]
        .as_object()
        .map_or(0, |m| m.len());
    assert_eq!(assigned, N, "{vm}");
    for g in grants.list(&lp).await.unwrap().items {
        let status = g.status.unwrap();
        assert!(status.role_assignment_id.is_some(), "{:?}", g.metadata.name);
    }
    // On the real API server, kube-apiserver itself counted the controller's status writes: at
    // least one per binding, grant and identity.
    if real.is_some() {
        for resource in ["identitybindings", "rolegrants", "userassignedidentities"] {
            let n = apiserver_requests(&stack.client(), resource, "status").await;
            assert!(
                n >= N as u64,
                "kube-apiserver counted {n} {resource} status requests"
            );
        }
    }
    stack.stop().await;
}

/// `kind name` of each of `objects` whose `Ready` is not True.
fn not_ready<'a, K: Reported>(
    kind: &'a str,
    objects: &'a [K],
) -> impl Iterator<Item = String> + 'a {
    objects
        .iter()
        .filter(|o| condition(o.conditions(), "Ready").is_none_or(|c| c.0 != "True"))
        .map(move |o| format!("{kind} {:?}", o.meta().name))
}
