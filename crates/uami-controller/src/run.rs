//! Wiring: one watch and one shared store per kind, one `kube::runtime::Controller` per kind
//! sharing one [`Context`], the triggers that requeue dependents (a binding or grant when its
//! identity changes, all of them when a GrantPolicy changes, a binding when its target's writer
//! finishes), and graceful shutdown.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use kube::core::DeserializeGuard;
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;

use super::context::{AzureApis, Context, Settings, Stores, object_key};
use super::error::{ReconcileError, backoff};
use super::target_writer::{TargetWriter, WaitingSiblings, WriterConfig};
use super::{binding, budget, grant, identity, objects};
use uami_api::conditions::{self, types};
use uami_api::{GrantPolicy, IdentityBinding, RoleGrant, UserAssignedIdentity};
use uami_azure::compute::ComputeTarget;
use uami_kube::watch;
use uami_telemetry::metrics::ReconcileMetrics;

/// Everything the controllers need besides the Kubernetes client.
#[derive(Clone)]
pub struct ControllerParts {
    /// The Azure APIs.
    pub azure: AzureApis,
    /// Reconciler settings.
    pub settings: Settings,
    /// Reconcile metrics.
    pub metrics: ReconcileMetrics,
    /// Concurrent reconciles per kind.
    pub concurrency: u16,
    /// Target writer tuning.
    pub writer: WriterConfig,
}

fn error_policy<K>(obj: Arc<K>, err: &ReconcileError, ctx: Arc<Context>) -> Action
where
    K: Resource<DynamicType = ()>,
{
    if let ReconcileError::Waiting { retry, message, .. } = err {
        tracing::info!(kind = %K::kind(&()), namespace = obj.namespace().unwrap_or_default(), name = %obj.name_any(), %message, "waiting");
        return Action::requeue(*retry);
    }
    if err.is_terminal() {
        // Retrying will not help until something changes: the object's spec (a new generation
        // triggers a reconcile), a related object (its trigger), or Azure (seen at the resync).
        tracing::warn!(kind = %K::kind(&()), namespace = obj.namespace().unwrap_or_default(), name = %obj.name_any(), step = err.category(), error = %err, "reconcile failed; not retrying before a change or the resync");
        return Action::requeue(ctx.settings.jittered_resync());
    }
    if let ReconcileError::Finalizer(message) = err {
        // Adding or removing the finalizer raced a cache that had not seen our last write yet
        // (the JSON patch's test failed): look again shortly, without growing the backoff.
        tracing::debug!(kind = %K::kind(&()), name = %obj.name_any(), %message, "finalizer patch raced the cache");
        return Action::requeue(std::time::Duration::from_millis(500));
    }
    let attempts = ctx.record_failure(&object_key(&*obj));
    let wait = backoff(attempts.saturating_sub(1), err.retry_after());
    tracing::warn!(
        kind = %K::kind(&()),
        namespace = obj.namespace().unwrap_or_default(),
        name = %obj.name_any(),
        step = err.category(),
        error = %err,
        retry_in = ?wait,
        "reconcile failed"
    );
    Action::requeue(wait)
}

macro_rules! timed {
    ($kind:expr, $f:path, $finalizer:expr) => {
        |obj, ctx: Arc<Context>| async move {
            let started = Instant::now();
            let key = object_key(&*obj);
            let version = obj.resource_version();
            if ctx.take_superseded(&key, version.as_deref()) {
                // The last pass added the finalizer to this very version: the newer version is
                // on its way through the watch and triggers the next pass. Patching from this
                // stale copy would only fail its test.
                return Ok(Action::requeue(std::time::Duration::from_secs(1)));
            }
            let adds_finalizer = $finalizer.is_some_and(|f: &str| {
                obj.meta().deletion_timestamp.is_none() && !obj.finalizers().iter().any(|x| x == f)
            });
            let result = $f(obj, ctx.clone()).await;
            if adds_finalizer
                && result.is_ok()
                && let Some(v) = version
            {
                ctx.note_superseded(&key, v);
            }
            let label = match &result {
                Ok(_) => {
                    // A success ends the object's run of failures: the next failure starts the
                    // backoff from the beginning.
                    ctx.record_success(&key);
                    "success"
                }
                // Waiting (for dependents, for Azure) is not a failure.
                Err(ReconcileError::Waiting { .. }) => "waiting",
                Err(e) => e.category(),
            };
            ctx.metrics.observe($kind, label, started.elapsed());
            result
        }
    };
}

/// Run the three controllers until `shutdown` resolves; in-flight reconciles finish first.
/// `synced` is called once every cache has synced.
///
/// Each kind has one watch and one store, shared by every controller that reads it: a binding or
/// grant is triggered by its identity's change only after the identity store holds that change,
/// so a reconcile never sees an identity older than the event that woke it.
pub async fn run_controllers(
    client: Client,
    parts: ControllerParts,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
    synced: impl FnOnce() + Send,
) {
    let wc = watcher::Config::default().any_semantic();
    let cfg = ControllerConfig::default().concurrency(parts.concurrency);

    // Each object decodes on its own: one that does not is reported and left out.
    let identities: Api<DeserializeGuard<UserAssignedIdentity>> = Api::all(client.clone());
    let bindings: Api<DeserializeGuard<IdentityBinding>> = Api::all(client.clone());
    let grants: Api<DeserializeGuard<RoleGrant>> = Api::all(client.clone());
    let policies: Api<DeserializeGuard<GrantPolicy>> = Api::all(client.clone());

    let (id_store, id_writer) = reflector::store();
    let (b_store, b_writer) = reflector::store();
    let (g_store, g_writer) = reflector::store();
    let (policy_store, policy_writer) = reflector::store::<GrantPolicy>();
    let (id_to_ids, id_for_ids) = watch::reader();
    let (id_to_bindings, id_for_bindings) = watch::reader();
    let (id_to_grants, id_for_grants) = watch::reader();
    let (b_to_bindings, b_for_bindings) = watch::reader();
    let (g_to_grants, g_for_grants) = watch::reader();
    let (b_to_ids, b_for_ids) = watch::reader();
    let (g_to_bindings, g_for_bindings) = watch::reader();
    let (g_to_ids, g_for_ids) = watch::reader();
    // Time to Ready is read from the same watches.
    let (id_to_clock, id_for_clock) = watch::reader();
    let (b_to_clock, b_for_clock) = watch::reader();
    let (g_to_clock, g_for_clock) = watch::reader();

    let stores = Stores {
        identities: id_store.clone(),
        bindings: b_store.clone(),
        grants: g_store.clone(),
        policies: policy_store,
    };
    let (writer, written) = TargetWriter::new(parts.azure.compute.clone(), parts.writer);
    writer.hold_for(waiting_siblings(
        stores.clone(),
        parts.settings.default_subscription.clone(),
    ));
    let ctx = Arc::new(Context::new(
        client.clone(),
        parts.azure,
        parts.settings,
        stores.clone(),
        writer,
        parts.metrics.clone(),
    ));
    parts
        .metrics
        .objects
        .set_source(Some(objects::source(stores.clone())));
    let started = jiff::Timestamp::now();
    let clocks = [
        tokio::spawn(
            objects::ReadyClock::new("UserAssignedIdentity", started)
                .run(id_for_clock, parts.metrics.clone()),
        ),
        tokio::spawn(
            objects::ReadyClock::new("IdentityBinding", started)
                .run(b_for_clock, parts.metrics.clone()),
        ),
        tokio::spawn(
            objects::ReadyClock::new("RoleGrant", started).run(g_for_clock, parts.metrics.clone()),
        ),
    ];

    // A GrantPolicy change re-evaluates every binding and grant.
    let (b_all_tx, b_all_rx) = mpsc::unbounded_channel::<()>();
    let (g_all_tx, g_all_rx) = mpsc::unbounded_channel::<()>();
    // ... and every identity whose adoption a policy refused.
    let (id_denied_tx, id_denied_rx) = mpsc::unbounded_channel::<ObjectRef<UserAssignedIdentity>>();
    let denied_store = stores.identities.clone();
    let rejects = watch::Rejects::reported(ctx.recorder.clone());
    let policy_store = policy_writer.as_reader();
    let policy_watch = reflector::reflector(
        policy_writer,
        watch::guarded(policies, wc.clone(), policy_store, rejects.clone()).modify(watch::trim),
    )
    .touched_objects()
    .for_each(move |ev| {
        if let Err(e) = ev {
            tracing::warn!(error = %e, "GrantPolicy watch error");
        } else {
            let _ = b_all_tx.send(());
            let _ = g_all_tx.send(());
            for id in denied_store.state() {
                if identity::denied_by_policy(&id) {
                    let _ = id_denied_tx.send(ObjectRef::from_obj(&*id));
                }
            }
        }
        futures::future::ready(())
    });

    let (shutdown_tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let signal = |tx: &tokio::sync::broadcast::Sender<()>| {
        let mut rx = tx.subscribe();
        async move {
            let _ = rx.recv().await;
        }
    };

    let b_deps = stores.bindings.clone();
    let sa_bindings = stores.bindings.clone();
    let b_run = Controller::for_shared_stream(b_for_bindings, b_store)
        .with_config(cfg.clone())
        .watches_shared_stream(id_for_bindings, move |id: Arc<UserAssignedIdentity>| {
            dependents(&b_deps, &id, |b: &IdentityBinding| {
                &b.spec.identity_ref.name
            })
        })
        // A grant of an identity (granted, changed, gone) changes what the identity's bindings
        // check: the scopes the agent on a VM reads, and the token check of a service account.
        .watches_shared_stream(g_for_bindings, move |g: Arc<RoleGrant>| {
            bindings_of_grant(&sa_bindings, &g)
        })
        .reconcile_all_on(UnboundedReceiverStream::new(b_all_rx))
        .reconcile_on(UnboundedReceiverStream::new(written))
        .graceful_shutdown_on(signal(&shutdown_tx))
        .run(
            timed!("IdentityBinding", binding::reconcile, None::<&str>),
            error_policy,
            ctx.clone(),
        )
        .for_each(|_| futures::future::ready(()));

    let g_deps = stores.grants.clone();
    let g_run = Controller::for_shared_stream(g_for_grants, g_store)
        .with_config(cfg.clone())
        .watches_shared_stream(id_for_grants, move |id: Arc<UserAssignedIdentity>| {
            dependents(&g_deps, &id, |g: &RoleGrant| &g.spec.identity_ref.name)
        })
        .reconcile_all_on(UnboundedReceiverStream::new(g_all_rx))
        .graceful_shutdown_on(signal(&shutdown_tx))
        .run(
            timed!("RoleGrant", grant::reconcile, Some(grant::FINALIZER)),
            error_policy,
            ctx.clone(),
        )
        .for_each(|_| futures::future::ready(()));

    // An identity whose deletion waits for its dependents wakes when one of them changes or goes.
    let (ids_b, ids_g) = (stores.identities.clone(), stores.identities.clone());
    let id_run = Controller::for_shared_stream(id_for_ids, id_store)
        .with_config(cfg)
        .watches_shared_stream(b_for_ids, move |b: Arc<IdentityBinding>| {
            deleting_identity(&ids_b, &*b, &b.spec.identity_ref.name)
        })
        .watches_shared_stream(g_for_ids, move |g: Arc<RoleGrant>| {
            deleting_identity(&ids_g, &*g, &g.spec.identity_ref.name)
        })
        .reconcile_on(UnboundedReceiverStream::new(id_denied_rx))
        .graceful_shutdown_on(signal(&shutdown_tx))
        .run(
            timed!(
                "UserAssignedIdentity",
                identity::reconcile,
                Some(identity::FINALIZER)
            ),
            error_policy,
            ctx.clone(),
        )
        .for_each(|_| futures::future::ready(()));

    let reflectors = [
        watch::drive(
            identities,
            wc.clone(),
            id_writer,
            vec![id_to_ids, id_to_bindings, id_to_grants, id_to_clock],
            rejects.clone(),
        ),
        watch::drive(
            bindings,
            wc.clone(),
            b_writer,
            vec![b_to_bindings, b_to_ids, b_to_clock],
            rejects.clone(),
        ),
        watch::drive(
            grants,
            wc,
            g_writer,
            vec![g_to_grants, g_to_ids, g_to_bindings, g_to_clock],
            rejects,
        ),
        tokio::spawn(policy_watch),
    ];
    // Azure's quotas are counted at start (once the caches are ready) and at every resync.
    let counting = budget::count_periodically(ctx.clone(), signal(&shutdown_tx));
    let writers = ctx.writer.clone();
    let mut stopped = shutdown_tx.subscribe();
    let stopper = async move {
        shutdown.await;
        // Writers and their pollers stop at once: no VM write of this term starts or goes on.
        writers.stop();
        tracing::info!("shutting down: finishing in-flight reconciles");
        let _ = shutdown_tx.send(());
    };
    // Reconciles wait for every cache: right after a start an empty GrantPolicy cache would deny
    // (and revoke) everything a policy allows, and an empty identity cache would report the
    // identity of every binding and grant as missing.
    let all_ready = {
        let s = stores.clone();
        async move {
            let (p, i, b, g) = tokio::join!(
                s.policies.wait_until_ready(),
                s.identities.wait_until_ready(),
                s.bindings.wait_until_ready(),
                s.grants.wait_until_ready(),
            );
            p.and(i).and(b).and(g)
        }
    };
    let controllers = async move {
        tokio::select! {
            ready = all_ready => {
                if ready.is_err() {
                    return;
                }
                synced();
            }
            _ = stopped.recv() => return,
        }
        tokio::join!(id_run, b_run, g_run, counting);
    };
    tokio::join!(stopper, controllers);
    for r in reflectors.into_iter().chain(clocks) {
        r.abort();
    }
    parts.metrics.objects.set_source(None);
}

/// How long one scan of the stores answers the writers' questions about waiting siblings: each
/// held VM asks every 500 ms, and one scan covers every VM.
const SIBLINGS_FRESH: std::time::Duration = std::time::Duration::from_millis(250);

/// For the target writer: the bindings of a target, from the shared stores, that wait for their
/// identity to be created (named by the identity's object), or whose identity is ready and that
/// have not been reconciled to a status yet (named by the identity's ARM id). One scan of the
/// stores, grouped by target, serves every target for [`SIBLINGS_FRESH`].
fn waiting_siblings(stores: Stores, default_subscription: Option<String>) -> WaitingSiblings {
    let scanned: parking_lot::Mutex<Option<(Instant, WaitingByTarget)>> =
        parking_lot::Mutex::new(None);
    Arc::new(move |target: &ComputeTarget| {
        let mut scanned = scanned.lock();
        if scanned
            .as_ref()
            .is_none_or(|(at, _)| at.elapsed() > SIBLINGS_FRESH)
        {
            let by_target = scan_waiting(&stores, default_subscription.as_deref());
            *scanned = Some((Instant::now(), by_target));
        }
        scanned
            .as_ref()
            .and_then(|(_, by_target)| by_target.get(&target.key()).cloned())
            .unwrap_or_default()
    })
}

/// The waiting bindings of each target, by target key.
type WaitingByTarget = HashMap<String, Vec<String>>;

/// The waiting bindings of every target. Only bindings a GrantPolicy allows count (another
/// namespace's binding that no policy allows never reaches the writer, and must not delay the
/// target's writes), and, of those whose identity has no Ready condition, only the ones whose
/// identity the controller has not answered yet (its creation is in flight).
fn scan_waiting(stores: &Stores, default_subscription: Option<&str>) -> WaitingByTarget {
    let policies: Vec<GrantPolicy> = stores
        .policies
        .state()
        .iter()
        .map(|p| (**p).clone())
        .collect();
    let identities = &stores.identities;
    let mut by_target = WaitingByTarget::new();
    for b in stores.bindings.state() {
        if b.meta().deletion_timestamp.is_some() {
            continue;
        }
        let (Some(target), Some(ns)) =
            (binding::target_of(&b, default_subscription), b.namespace())
        else {
            continue;
        };
        if !matches!(
            super::policy::check_binding(&policies, &ns, &target, default_subscription),
            super::policy::Decision::Allowed(_)
        ) {
            continue;
        }
        let name = &b.spec.identity_ref.name;
        let Some(identity) = identities.get(&ObjectRef::new(name).within(&ns)) else {
            continue;
        };
        if identity.meta().deletion_timestamp.is_some() {
            continue;
        }
        let status = identity.status.as_ref();
        let waiting = match status.and_then(|s| conditions::find(&s.conditions, types::READY)) {
            None if status.is_none() => Some(format!("{ns}/{name}")),
            None => None,
            Some(c) if c.status == conditions::status::TRUE && b.status.is_none() => {
                status.and_then(|s| s.resource_id.as_ref().map(|r| r.to_lowercase()))
            }
            Some(_) => None,
        };
        if let Some(w) = waiting {
            by_target.entry(target.key()).or_default().push(w);
        }
    }
    by_target
}

/// The bindings of `grant`'s identity.
fn bindings_of_grant(
    bindings: &reflector::Store<IdentityBinding>,
    grant: &RoleGrant,
) -> Vec<ObjectRef<IdentityBinding>> {
    let ns = grant.namespace();
    bindings
        .state()
        .iter()
        .filter(|b| b.namespace() == ns && b.spec.identity_ref.name == grant.spec.identity_ref.name)
        .map(|b| ObjectRef::from_obj(&**b))
        .collect()
}

/// The identity `name` in `obj`'s namespace, when it is being deleted (so waits for `obj`).
fn deleting_identity<K: Resource>(
    identities: &reflector::Store<UserAssignedIdentity>,
    obj: &K,
    name: &str,
) -> Option<ObjectRef<UserAssignedIdentity>> {
    let at = ObjectRef::new(name).within(&obj.namespace()?);
    identities
        .get(&at)
        .filter(|i| i.meta().deletion_timestamp.is_some())
        .map(|_| at)
}

fn dependents<K>(
    store: &reflector::Store<K>,
    identity: &UserAssignedIdentity,
    identity_ref: impl Fn(&K) -> &String,
) -> Vec<ObjectRef<K>>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    let ns = identity.namespace();
    let name = identity.name_any();
    store
        .state()
        .iter()
        .filter(|o| o.namespace() == ns && *identity_ref(o) == name)
        .map(|o| ObjectRef::from_obj(&**o))
        .collect()
}

/// Run the controllers, under leader election when `lease` is set: only while this replica holds
/// the Lease. Losing the Lease stops the controllers (in-flight reconciles finish) and the
/// replica campaigns again; cancelling `stop` stops everything and releases the Lease.
pub async fn run_with_leadership(
    client: Client,
    parts: ControllerParts,
    lease: Option<super::leader::LeaseConfig>,
    stop: tokio_util::sync::CancellationToken,
    ready: impl Fn(bool) + Send + Sync + 'static,
) {
    // Ready once leadership is settled and, on the leader, the caches have synced.
    let ready = Arc::new(ready);
    let synced = || {
        let ready = ready.clone();
        move || ready(true)
    };
    let Some(lease) = lease else {
        parts.metrics.leader.set(1);
        let s = stop.clone();
        run_controllers(client, parts, async move { s.cancelled().await }, synced()).await;
        return;
    };
    let campaign_stop = stop.child_token();
    let (mut leading, campaign) =
        super::leader::campaign(client.clone(), lease, campaign_stop.clone());
    // Leadership is settled at the campaign's first answer. A follower is then ready: it serves
    // metrics and takes over when the leader goes; a leader is ready once its caches sync.
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = leading.changed() => {}
    }
    if !*leading.borrow() && !stop.is_cancelled() {
        ready(true);
    }
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            changed = leading.wait_for(|l| *l) => {
                if changed.is_err() {
                    break;
                }
            }
        }
        parts.metrics.leader.set(1);
        let mut watch = leading.clone();
        let s = stop.clone();
        let lost = async move {
            tokio::select! {
                _ = s.cancelled() => {}
                _ = watch.wait_for(|l| !*l) => {}
            }
        };
        run_controllers(client.clone(), parts.clone(), lost, synced()).await;
        parts.metrics.leader.set(0);
        if stop.is_cancelled() {
            break;
        }
        tracing::warn!("leadership lost; controllers stopped, campaigning again");
    }
    campaign_stop.cancel();
    let _ = campaign.await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::watcher::Event;
    use serde_json::json;

    fn store_of<K>(objects: Vec<serde_json::Value>) -> reflector::Store<K>
    where
        K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + 'static,
    {
        let (store, mut writer) = reflector::store::<K>();
        writer.apply_watcher_event(&Event::Init);
        for o in objects {
            let obj: K = serde_json::from_value(o).expect("object");
            writer.apply_watcher_event(&Event::InitApply(obj));
        }
        writer.apply_watcher_event(&Event::InitDone);
        store
    }

    fn identity(ns: &str, status: Option<serde_json::Value>) -> serde_json::Value {
        let mut o = json!({
            "apiVersion": "uami.dev/v1alpha1", "kind": "UserAssignedIdentity",
            "metadata": {"name": "id", "namespace": ns},
            "spec": {"resourceGroup": "DevTest", "location": "eastus"},
        });
        if let Some(s) = status {
            o["status"] = s;
        }
        o
    }

    fn binding(ns: &str) -> serde_json::Value {
        json!({
            "apiVersion": "uami.dev/v1alpha1", "kind": "IdentityBinding",
            "metadata": {"name": "b", "namespace": ns},
            "spec": {"identityRef": {"name": "id"},
                     "target": {"virtualMachine": {"resourceGroup": "DevTest", "name": "myVM"}}},
        })
    }

    #[test]
    fn only_allowed_bindings_whose_identity_is_being_created_hold_a_target() {
        let policy = json!({
            "apiVersion": "uami.dev/v1alpha1", "kind": "GrantPolicy",
            "metadata": {"name": "p"},
            "spec": {"namespaces": ["team-a", "team-c"],
                     "identityBindings": [{"virtualMachine": {"resourceGroup": "DevTest"}}]},
        });
        let stores = Stores {
            // team-a: being created; team-b: being created but no policy allows the binding;
            // team-c: answered (a status without Ready, as after a failed first attempt).
            identities: store_of(vec![
                identity("team-a", None),
                identity("team-b", None),
                identity("team-c", Some(json!({"conditions": []}))),
            ]),
            bindings: store_of(vec![
                binding("team-a"),
                binding("team-b"),
                binding("team-c"),
            ]),
            grants: store_of(vec![]),
            policies: store_of(vec![policy]),
        };
        let waiting = scan_waiting(&stores, Some("6a2bd3a4-59c6-4d4e-9e8b-5c5a2f0a1b2c"));
        let all: Vec<&String> = waiting.values().flatten().collect();
        assert_eq!(all, vec!["team-a/id"], "{waiting:?}");
    }
}
