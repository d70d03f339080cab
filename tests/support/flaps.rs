//! Ready transitions, as a dashboard watching the objects would see them: every `Ready`
//! condition that went from True to anything else.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::{WatchStreamExt, watcher};
use parking_lot::Mutex;

/// Watches the three kinds in the namespaces given and records each `Ready` True→not-True
/// transition. Stops with [`Flaps::stop`] or when dropped.
pub struct Flaps {
    seen: Arc<Mutex<BTreeMap<String, String>>>,
    flaps: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Flaps {
    /// Start watching `namespaces` through `client`.
    pub fn start(client: &kube::Client, namespaces: &[String]) -> Self {
        let seen = Arc::new(Mutex::new(BTreeMap::new()));
        let flaps = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for ns in namespaces {
            for kind in ["UserAssignedIdentity", "IdentityBinding", "RoleGrant"] {
                let gvk = GroupVersionKind::gvk("uami.dev", "v1alpha1", kind);
                let ar = ApiResource::from_gvk(&gvk);
                let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
                let (seen, flaps) = (seen.clone(), flaps.clone());
                let stream = watcher(api, watcher::Config::default())
                    .default_backoff()
                    .applied_objects();
                tasks.push(tokio::spawn(async move {
                    futures::pin_mut!(stream);
                    while let Some(ev) = stream.next().await {
                        let Ok(o) = ev else { continue };
                        let key = format!(
                            "{kind} {}/{}",
                            o.metadata.namespace.clone().unwrap_or_default(),
                            o.metadata.name.clone().unwrap_or_default()
                        );
                        let ready = o.data["status"]["conditions"]
                            .as_array()
                            .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
                            .map(|c| {
                                format!(
                                    "{}/{}",
                                    c["status"].as_str().unwrap_or_default(),
                                    c["reason"].as_str().unwrap_or_default()
                                )
                            })
                            .unwrap_or_default();
                        let deleting = o.metadata.deletion_timestamp.is_some();
                        let before = seen.lock().insert(key.clone(), ready.clone());
                        if let Some(b) = before
                            && b.starts_with("True/")
                            && !ready.starts_with("True/")
                            && !deleting
                        {
                            flaps.lock().push(format!("{key}: {b} -> {ready}"));
                        }
                    }
                }));
            }
        }
        Self { seen, flaps, tasks }
    }

    /// The transitions from Ready True seen so far.
    pub fn flaps(&self) -> Vec<String> {
        self.flaps.lock().clone()
    }

    /// How many objects have been seen Ready at least once, or are Ready now.
    pub fn ready_now(&self) -> usize {
        self.seen
            .lock()
            .values()
            .filter(|r| r.starts_with("True/"))
            .count()
    }

    /// Stop watching.
    pub fn stop(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

impl Drop for Flaps {
    fn drop(&mut self) {
        self.stop();
    }
}
