//! Wiring: one watch and one shared store per kind, one `kube::runtime::Controller` per kind
//! sharing one [`Context`], the triggers that requeue dependents (a binding or grant when its
//! identity changes, all of them when a GrantPolicy changes, a binding when its target's writer
//! finishes), and graceful shutdown. Every controller runs its kind's reconciler through
//! [`pass::run`], with [`pass::error_policy`].

mod controllers;
mod siblings;
mod triggers;

use std::sync::Arc;

use futures::{Stream, StreamExt};
use kube::core::DeserializeGuard;
use kube::runtime::controller::{Config as ControllerConfig, Controller};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::UnboundedReceiverStream;

use super::context::{AzureApis, Context, Settings, Stores};
use super::pass;
use super::target_writer::{TargetWriter, WriterConfig};
use super::{budget, identity, objects};
use uami_api::{GrantPolicy, IdentityBinding, RoleGrant, UserAssignedIdentity};
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

/// The readers of one kind's watch (see [`watch::reader`]), in the order they were taken.
struct Readers<K> {
    senders: Vec<mpsc::Sender<Arc<K>>>,
}

impl<K: Send + Sync + 'static> Readers<K> {
    fn new() -> Self {
        Self {
            senders: Vec::new(),
        }
    }

    fn take(&mut self) -> impl Stream<Item = Arc<K>> + Send + use<K> {
        let (tx, rx) = watch::reader();
        self.senders.push(tx);
        rx
    }
}

/// A future that resolves when `tx` sends (or is dropped).
fn signal(tx: &broadcast::Sender<()>) -> impl Future<Output = ()> + Send + Sync + use<> {
    let mut rx = tx.subscribe();
    async move {
        let _ = rx.recv().await;
    }
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
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
    synced: impl FnOnce() + Send,
) {
    let wc = watcher::Config::default().any_semantic();
    let cfg = ControllerConfig::default().concurrency(parts.concurrency);
    let (id_store, id_writer) = reflector::store();
    let (b_store, b_writer) = reflector::store();
    let (g_store, g_writer) = reflector::store();
    let (policy_store, policy_writer) = reflector::store::<GrantPolicy>();
    let (mut ids, mut bs, mut gs) = (Readers::new(), Readers::new(), Readers::new());
    let (id_for_ids, id_for_bindings, id_for_grants) = (ids.take(), ids.take(), ids.take());
    let (b_for_bindings, b_for_ids) = (bs.take(), bs.take());
    let (g_for_grants, g_for_ids, g_for_bindings) = (gs.take(), gs.take(), gs.take());
    let stores = Stores {
        identities: id_store.clone(),
        bindings: b_store.clone(),
        grants: g_store.clone(),
        policies: policy_store,
    };
    let (writer, written) = TargetWriter::new(parts.azure.compute.clone(), parts.writer);
    writer.hold_for(siblings::waiting_siblings(
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
    let (shutdown_tx, _) = broadcast::channel::<()>(1);
    // Each object decodes on its own: one that does not is reported and left out.
    let rejects = watch::Rejects::reported(ctx.recorder.clone());
    let policies = watch_policies(
        Api::all(client.clone()),
        wc.clone(),
        policy_writer,
        &stores,
        rejects.clone(),
    );

    let stop = || signal(&shutdown_tx);
    let b_run = controllers::bindings(
        Controller::for_shared_stream(b_for_bindings, b_store).with_config(cfg.clone()),
        stores.clone(),
        (id_for_bindings, g_for_bindings),
        (
            UnboundedReceiverStream::new(policies.bindings),
            UnboundedReceiverStream::new(written),
        ),
        stop(),
        ctx.clone(),
    );
    let g_run = controllers::grants(
        Controller::for_shared_stream(g_for_grants, g_store).with_config(cfg.clone()),
        stores.clone(),
        id_for_grants,
        UnboundedReceiverStream::new(policies.grants),
        stop(),
        ctx.clone(),
    );
    let id_run = controllers::identities(
        Controller::for_shared_stream(id_for_ids, id_store).with_config(cfg),
        stores.clone(),
        (b_for_ids, g_for_ids),
        UnboundedReceiverStream::new(policies.denied_identities),
        stop(),
        ctx.clone(),
    );
    // Time to Ready is read from the same watches.
    let clocks = ready_clocks(&parts.metrics, &mut ids, &mut bs, &mut gs, &stores);
    let reflectors = [
        watch::drive(
            Api::all(client.clone()),
            wc.clone(),
            id_writer,
            ids.senders,
            rejects.clone(),
        ),
        watch::drive(
            Api::all(client.clone()),
            wc.clone(),
            b_writer,
            bs.senders,
            rejects.clone(),
        ),
        watch::drive(Api::all(client), wc, g_writer, gs.senders, rejects),
        tokio::spawn(policies.watch),
    ];
    // Azure's quotas are counted at start (once the caches are ready) and at every resync.
    let counting = budget::count_periodically(ctx.clone(), stop());
    let sweeping = pass::sweep_periodically(ctx.clone(), stop());
    let writers = ctx.writer.clone();
    let mut stopped = shutdown_tx.subscribe();
    let stopper = async move {
        shutdown.await;
        // Writers and their pollers stop at once: no VM write of this term starts or goes on.
        writers.stop();
        tracing::info!("shutting down: finishing in-flight reconciles");
        let _ = shutdown_tx.send(());
    };
    let controllers = async move {
        tokio::select! {
            ready = all_ready(&stores) => {
                if ready.is_err() {
                    return;
                }
                synced();
            }
            _ = stopped.recv() => return,
        }
        tokio::join!(id_run, b_run, g_run, counting, sweeping);
    };
    tokio::join!(stopper, controllers);
    for r in reflectors.into_iter().chain(clocks) {
        r.abort();
    }
    parts.metrics.objects.set_source(None);
}

/// Reconciles wait for every cache: right after a start an empty GrantPolicy cache would deny
/// (and revoke) everything a policy allows, and an empty identity cache would report the
/// identity of every binding and grant as missing.
async fn all_ready(s: &Stores) -> Result<(), reflector::store::WriterDropped> {
    let (p, i, b, g) = tokio::join!(
        s.policies.wait_until_ready(),
        s.identities.wait_until_ready(),
        s.bindings.wait_until_ready(),
        s.grants.wait_until_ready(),
    );
    p.and(i).and(b).and(g)
}

/// The time-to-Ready clocks of the three kinds, each reading its kind's watch; the object counts
/// are read from the stores.
fn ready_clocks(
    metrics: &ReconcileMetrics,
    ids: &mut Readers<UserAssignedIdentity>,
    bs: &mut Readers<IdentityBinding>,
    gs: &mut Readers<RoleGrant>,
    stores: &Stores,
) -> [tokio::task::JoinHandle<()>; 3] {
    metrics
        .objects
        .set_source(Some(objects::source(stores.clone())));
    let started = jiff::Timestamp::now();
    let clock = |kind| objects::ReadyClock::new(kind, started);
    [
        tokio::spawn(clock("UserAssignedIdentity").run(ids.take(), metrics.clone())),
        tokio::spawn(clock("IdentityBinding").run(bs.take(), metrics.clone())),
        tokio::spawn(clock("RoleGrant").run(gs.take(), metrics.clone())),
    ]
}

/// The GrantPolicy watch, and what it wakes.
struct PolicyWatch<W> {
    /// Keeps the policy store current.
    watch: W,
    /// A policy changed: every binding is evaluated again.
    bindings: mpsc::UnboundedReceiver<()>,
    /// ... and every grant.
    grants: mpsc::UnboundedReceiver<()>,
    /// ... and every identity whose adoption a policy refused.
    denied_identities: mpsc::UnboundedReceiver<ObjectRef<UserAssignedIdentity>>,
}

fn watch_policies(
    api: Api<DeserializeGuard<GrantPolicy>>,
    wc: watcher::Config,
    writer: reflector::store::Writer<GrantPolicy>,
    stores: &Stores,
    rejects: watch::Rejects,
) -> PolicyWatch<impl Future<Output = ()> + Send + 'static> {
    let (b_tx, bindings) = mpsc::unbounded_channel();
    let (g_tx, grants) = mpsc::unbounded_channel();
    let (id_tx, denied_identities) = mpsc::unbounded_channel();
    let identities = stores.identities.clone();
    let store = writer.as_reader();
    let watch = reflector::reflector(
        writer,
        watch::guarded(api, wc, store, rejects).modify(watch::trim),
    )
    .touched_objects()
    .for_each(move |ev| {
        if let Err(e) = ev {
            tracing::warn!(error = %e, "GrantPolicy watch error");
        } else {
            let _ = b_tx.send(());
            let _ = g_tx.send(());
            for id in identities.state() {
                if identity::denied_by_policy(&id) {
                    let _ = id_tx.send(ObjectRef::from_obj(&*id));
                }
            }
        }
        futures::future::ready(())
    });
    PolicyWatch {
        watch,
        bindings,
        grants,
        denied_identities,
    }
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
