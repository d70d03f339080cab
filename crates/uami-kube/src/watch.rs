//! One watch per kind: it keeps the kind's store current and hands every object it applies to
//! each controller that reads the kind, in watch order, once the store holds it.
//!
//! The hand-off is a bounded channel per reader. A reader that falls behind holds the watch back
//! (nothing is dropped), and an object deleted right after its update is still handed on, so the
//! reader's stream never waits on a store lookup that can no longer succeed.

use std::pin::pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use kube::runtime::reflector::{Store, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource};
use tokio::sync::mpsc;

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
    let stream =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|o| (o, rx)) });
    (tx, stream)
}

/// Keep `writer`'s store current from a watch of `api` and hand its objects to `readers`; watch
/// errors are logged and retried with backoff.
pub fn drive<K>(
    api: Api<K>,
    wc: watcher::Config,
    writer: Writer<K>,
    readers: Vec<mpsc::Sender<Arc<K>>>,
) -> tokio::task::JoinHandle<()>
where
    K: Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let store = writer.as_reader();
    let events = watcher(api, wc)
        .default_backoff()
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
    use kube::runtime::reflector::{self, ObjectRef};

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
}
