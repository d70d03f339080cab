//! One watch per kind: it keeps the kind's store current and hands every object it applies to
//! each controller that reads the kind, in watch order, once the store holds it.
//!
//! The hand-off is a bounded channel per reader. A reader that falls behind holds the watch back
//! (nothing is dropped), and an object deleted right after its update is still handed on, so the
//! reader's stream never waits on a store lookup that can no longer succeed.
//!
//! Every watch decodes each object on its own ([`guarded`]): an object that the API server
//! accepted but these types cannot read (a value its schema allows and the type does not, an
//! object written before a schema change) is reported and left out, and the store still syncs.

use std::fmt::Debug;
use std::pin::pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use kube::core::DeserializeGuard;
use kube::core::error_boundary::InvalidObject;
use kube::runtime::events::Recorder;
use kube::runtime::reflector::{ObjectRef, Store, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::events::send_event;
use uami_api::conditions::Reason;

/// Objects queued per reader before the watch waits for it.
pub const READER_BUFFER: usize = 4096;

/// What the stores keep of an object: no reconciler reads managedFields or kubectl's copy of the
/// last applied object, so they are dropped (an object applied with kubectl carries its whole
/// spec a second time in that annotation).
pub fn trim<K: Resource>(o: &mut K) {
    o.meta_mut().managed_fields = None;
    if let Some(a) = o.meta_mut().annotations.as_mut() {
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

/// A reader of a watch: the sender goes to [`drive`], the stream to a controller.
pub fn reader<K: Send + Sync + 'static>()
-> (mpsc::Sender<Arc<K>>, impl Stream<Item = Arc<K>> + Send) {
    let (tx, rx) = mpsc::channel(READER_BUFFER);
    (tx, ReceiverStream::new(rx))
}

/// What a watch does with an object that does not decode: it logs it, and with a recorder
/// publishes a Warning Event on it. The agent has no recorder (it may not write Events; the
/// controller's watch of the same object reports it).
#[derive(Clone)]
pub struct Rejects {
    recorder: Option<Recorder>,
}

impl Rejects {
    /// Log and publish a Warning Event through `recorder`.
    pub fn reported(recorder: Recorder) -> Self {
        Self {
            recorder: Some(recorder),
        }
    }

    /// Log only.
    pub fn logged() -> Self {
        Self { recorder: None }
    }

    fn reject<K: Resource<DynamicType = ()>>(&self, bad: InvalidObject) {
        let kind = K::kind(&());
        let ns = bad.metadata.namespace.clone().unwrap_or_default();
        let name = bad.metadata.name.clone().unwrap_or_default();
        tracing::warn!(
            kind = %kind, namespace = %ns, name = %name, error = %bad.error,
            "an object that does not decode is left out until it is fixed"
        );
        let Some(recorder) = self.recorder.clone() else {
            return;
        };
        let note = format!(
            "this {kind} cannot be read ({}); it is not reconciled until it is fixed",
            bad.error
        );
        let reference = DeserializeGuard::<K>(Err(bad)).object_ref(&());
        // Off the watch: it never waits for the API server to take the Event.
        tokio::spawn(async move {
            send_event(
                &recorder,
                &reference,
                true,
                Reason::InvalidObject.as_str(),
                "Decode",
                note,
            )
            .await;
        });
    }
}

/// A kind a [`guarded`] watch can decode, keep in a store and hand on.
pub trait Watched:
    Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static
{
}

impl<K> Watched for K where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static
{
}

/// The events of a watch of `api`, each object decoded on its own: an object that does not
/// decode is handed to `rejects` and left out (an update that does not decode leaves the last
/// version that did in `store`; its deletion removes that version), so one bad object neither
/// stops the watch nor keeps the store from syncing. Watch errors are retried with backoff.
pub fn guarded<K>(
    api: Api<DeserializeGuard<K>>,
    wc: watcher::Config,
    store: Store<K>,
    rejects: Rejects,
) -> impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send
where
    K: Watched,
{
    watcher(api, wc).default_backoff().filter_map(move |event| {
        futures::future::ready(match event {
            Ok(event) => decoded(event, &store, &rejects).map(Ok),
            Err(e) => Some(Err(e)),
        })
    })
}

/// `event` with its object decoded, or `None` when it has nothing left to say.
fn decoded<K>(
    event: watcher::Event<DeserializeGuard<K>>,
    store: &Store<K>,
    rejects: &Rejects,
) -> Option<watcher::Event<K>>
where
    K: Resource<DynamicType = ()> + Clone,
{
    use watcher::Event as E;
    let read =
        |DeserializeGuard(o): DeserializeGuard<K>| o.map_err(|bad| rejects.reject::<K>(bad)).ok();
    match event {
        E::Init => Some(E::Init),
        E::InitDone => Some(E::InitDone),
        E::InitApply(o) => read(o).map(E::InitApply),
        E::Apply(o) => read(o).map(E::Apply),
        E::Delete(DeserializeGuard(Ok(o))) => Some(E::Delete(o)),
        // The store may hold a version that decoded: it goes with the object.
        E::Delete(DeserializeGuard(Err(bad))) => {
            let name = bad.metadata.name.unwrap_or_default();
            let key = match bad.metadata.namespace {
                Some(ns) => ObjectRef::<K>::new(&name).within(&ns),
                None => ObjectRef::<K>::new(&name),
            };
            store.get(&key).map(|o| E::Delete((*o).clone()))
        }
    }
}

/// Keep `writer`'s store current from a [`guarded`] watch of `api` and hand its objects to
/// `readers`; watch errors are logged and retried with backoff.
pub fn drive<K>(
    api: Api<DeserializeGuard<K>>,
    wc: watcher::Config,
    writer: Writer<K>,
    readers: Vec<mpsc::Sender<Arc<K>>>,
    rejects: Rejects,
) -> tokio::task::JoinHandle<()>
where
    K: Watched,
{
    let store = writer.as_reader();
    let events = guarded(api, wc, store.clone(), rejects)
        .modify(trim)
        .reflect(writer);
    tokio::spawn(hand_on(events, store, readers))
}

/// Hand each object of `events` (already applied to `store`) to every reader: an applied or
/// deleted object as the watch delivered it, and after a relist, every object the store then
/// holds.
pub async fn hand_on<K, S>(events: S, store: Store<K>, readers: Vec<mpsc::Sender<Arc<K>>>)
where
    K: Resource<DynamicType = ()> + Clone + 'static,
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
{
    let kind = K::kind(&()).to_string();
    let mut events = pin!(events);
    while let Some(event) = events.next().await {
        let objects = match event {
            Ok(watcher::Event::Apply(o)) => vec![Arc::new(o)],
            // A deletion is handed on too (the store no longer holds it): a reader may wake
            // what waited for it, such as an identity whose deletion waits for its dependents.
            Ok(watcher::Event::Delete(o)) => vec![Arc::new(o)],
            Ok(watcher::Event::InitDone) => store.state(),
            Ok(_) => continue,
            Err(e) => {
                tracing::warn!(kind = %kind, error = %e, "watch error");
                continue;
            }
        };
        for object in objects {
            for reader in &readers {
                // A reader that is gone has stopped its controller: nothing to hand it.
                let _ = reader.send(object.clone()).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::ResourceExt;
    use kube::runtime::reflector;

    fn cm(name: &str, version: &str) -> ConfigMap {
        let mut c = ConfigMap::default();
        c.metadata.name = Some(name.into());
        c.metadata.namespace = Some("ns".into());
        c.metadata.resource_version = Some(version.into());
        c
    }

    #[tokio::test]
    async fn every_applied_and_deleted_object_reaches_every_reader() {
        let (store, mut writer) = reflector::store::<ConfigMap>();
        let events = vec![
            watcher::Event::Init,
            watcher::Event::InitApply(cm("a", "1")),
            watcher::Event::InitDone,
            watcher::Event::Apply(cm("a", "2")),
            // Deleted before any reader looked: its update is still handed on, and so is the
            // deletion.
            watcher::Event::Delete(cm("a", "3")),
            watcher::Event::Apply(cm("b", "4")),
        ];
        // Applied to the store first, as the reflector does.
        let applied = futures::stream::iter(events).map(move |e| {
            writer.apply_watcher_event(&e);
            Ok(e)
        });
        let (one, first) = reader();
        let (two, second) = reader();
        hand_on(applied, store.clone(), vec![one, two]).await;
        for stream in [first.boxed(), second.boxed()] {
            let seen: Vec<(String, String)> = stream
                .map(|o| {
                    let m = &o.metadata;
                    (m.name.clone().unwrap(), m.resource_version.clone().unwrap())
                })
                .collect()
                .await;
            let expected = [("a", "1"), ("a", "2"), ("a", "3"), ("b", "4")];
            assert_eq!(seen, expected.map(|(n, v)| (n.to_string(), v.to_string())));
        }
        assert!(store.get(&ObjectRef::new("a").within("ns")).is_none());
    }

    /// A ConfigMap as the API server would send it, through the guard.
    fn guarded_cm(name: &str, data: serde_json::Value) -> DeserializeGuard<ConfigMap> {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": "ns", "resourceVersion": "1"},
            "data": data,
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn an_object_that_does_not_decode_is_left_out_and_the_store_syncs() {
        let (store, mut writer) = reflector::store::<ConfigMap>();
        let rejects = Rejects::logged();
        // A number where the type wants a string.
        let bad = || guarded_cm("bad", serde_json::json!({"k": 1}));
        let good = guarded_cm("good", serde_json::json!({"k": "v"}));
        let events = [
            watcher::Event::Init,
            watcher::Event::InitApply(bad()),
            watcher::Event::InitApply(good),
            watcher::Event::InitDone,
        ];
        for e in events {
            if let Some(e) = decoded(e, &store, &rejects) {
                writer.apply_watcher_event(&e);
            }
        }
        tokio::time::timeout(std::time::Duration::from_secs(1), store.wait_until_ready())
            .await
            .unwrap()
            .unwrap();
        let names: Vec<String> = store.state().iter().map(|c| c.name_any()).collect();
        assert_eq!(names, ["good"]);

        // A version that decoded stays until the object is deleted, even as a bad one.
        let once_good = guarded_cm("bad", serde_json::json!({"k": "v"}));
        for e in [
            watcher::Event::Apply(once_good),
            watcher::Event::Apply(bad()),
        ] {
            if let Some(e) = decoded(e, &store, &rejects) {
                writer.apply_watcher_event(&e);
            }
        }
        let key = ObjectRef::new("bad").within("ns");
        assert!(store.get(&key).is_some());
        let gone = decoded(watcher::Event::Delete(bad()), &store, &rejects).unwrap();
        writer.apply_watcher_event(&gone);
        assert!(store.get(&key).is_none());
    }
}
