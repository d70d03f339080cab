//! The in-memory object store: objects by resource, namespace and name; one global
//! resourceVersion counter; a bounded history of watch events (older resourceVersions answer
//! 410 Gone) and a broadcast that feeds every watcher.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::registry::{ResourceDef, builtins};

/// A watch event.
#[derive(Clone, Debug)]
pub struct Event {
    /// resourceVersion of the change.
    pub rv: u64,
    /// (group, plural).
    pub resource: (String, String),
    /// Namespace ("" for cluster-scoped).
    pub namespace: String,
    /// `ADDED`, `MODIFIED` or `DELETED`.
    pub kind: &'static str,
    /// The object after the change (before, for DELETED).
    pub object: Arc<Value>,
}

/// Where namespaces are stored.
fn namespaces_key() -> (String, String) {
    (String::new(), "namespaces".into())
}

/// Objects of one resource: (namespace, name) -> object.
pub type Objects = BTreeMap<(String, String), Arc<Value>>;

/// The store.
pub struct Store {
    /// Last resourceVersion handed out.
    pub rv: u64,
    /// Served resources.
    pub resources: Vec<ResourceDef>,
    /// Objects by (group, plural).
    pub objects: HashMap<(String, String), Objects>,
    /// Retained events, oldest first.
    pub log: VecDeque<Arc<Event>>,
    /// Oldest resourceVersion a watch may start from.
    pub oldest: u64,
    /// Events retained.
    pub window: usize,
    /// Live feed.
    pub tx: broadcast::Sender<Arc<Event>>,
    /// Changes published, by resource (`plural.group`).
    pub changes: BTreeMap<String, u64>,
    /// The collections that paged lists still read from, newest last: the pages after the first
    /// are served from the collection as it was at the first page's resourceVersion, as the API
    /// server serves them from its storage's snapshot at that revision.
    snapshots: VecDeque<Snapshot>,
}

/// A collection as it was when a paged list read its first page.
struct Snapshot {
    rv: u64,
    resource: (String, String),
    objects: Arc<Objects>,
}

/// Paged lists in progress whose snapshot is kept; an older one answers 410 Expired.
const SNAPSHOTS_KEPT: usize = 64;

impl Store {
    /// A store with the built-in resources and the default namespaces.
    pub fn new(window: usize) -> Self {
        let (tx, _) = broadcast::channel(65_536);
        let mut s = Self {
            rv: 1,
            resources: builtins(),
            objects: HashMap::new(),
            log: VecDeque::new(),
            oldest: 1,
            window: window.max(1),
            tx,
            changes: BTreeMap::new(),
            snapshots: VecDeque::new(),
        };
        for ns in ["default", "kube-system", "kube-public"] {
            let rv = s.next_rv();
            let obj = json!({
                "apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": ns, "uid": uuid::Uuid::new_v4().to_string(), "resourceVersion": rv.to_string(), "creationTimestamp": super::now(), "labels": {"kubernetes.io/metadata.name": ns}},
                "spec": {"finalizers": ["kubernetes"]},
                "status": {"phase": "Active"},
            });
            s.objects
                .entry(namespaces_key())
                .or_default()
                .insert((String::new(), ns.to_string()), Arc::new(obj));
        }
        s.oldest = s.rv;
        s
    }

    /// The next resourceVersion.
    pub fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    /// The served resource of `group`/`version` named `plural`.
    pub fn resource(&self, group: &str, version: &str, plural: &str) -> Option<ResourceDef> {
        self.resources
            .iter()
            .find(|r| r.group == group && r.version == version && r.plural == plural)
            .cloned()
    }

    /// The object `namespace`/`name` of `def`.
    pub fn get(&self, def: &ResourceDef, namespace: &str, name: &str) -> Option<Arc<Value>> {
        self.objects
            .get(&def.key())
            .and_then(|o| o.get(&(namespace.to_string(), name.to_string())))
            .cloned()
    }

    /// The namespace object `name`.
    pub fn namespace(&self, name: &str) -> Option<Arc<Value>> {
        self.objects
            .get(&namespaces_key())
            .and_then(|o| o.get(&(String::new(), name.to_string())))
            .cloned()
    }

    /// Store `object` as `namespace`/`name` of `def` and tell the watchers it was `kind`
    /// (`ADDED` or `MODIFIED`) at `rv`.
    pub fn put(
        &mut self,
        rv: u64,
        def: &ResourceDef,
        namespace: &str,
        name: &str,
        kind: &'static str,
        object: Arc<Value>,
    ) {
        self.objects
            .entry(def.key())
            .or_default()
            .insert((namespace.to_string(), name.to_string()), object.clone());
        self.emit(rv, def, namespace, kind, object);
    }

    /// Remove `namespace`/`name` of `def` and tell the watchers it was `DELETED` at `rv`
    /// (`object` is its last state).
    pub fn take(
        &mut self,
        rv: u64,
        def: &ResourceDef,
        namespace: &str,
        name: &str,
        object: Arc<Value>,
    ) {
        if let Some(o) = self.objects.get_mut(&def.key()) {
            o.remove(&(namespace.to_string(), name.to_string()));
        }
        self.emit(rv, def, namespace, "DELETED", object);
    }

    /// Record a change and tell the watchers.
    pub fn emit(
        &mut self,
        rv: u64,
        def: &ResourceDef,
        namespace: &str,
        kind: &'static str,
        object: Arc<Value>,
    ) {
        *self.changes.entry(def.qualified()).or_insert(0) += 1;
        let ev = Arc::new(Event {
            rv,
            resource: def.key(),
            namespace: namespace.to_string(),
            kind,
            object,
        });
        self.log.push_back(ev.clone());
        while self.log.len() > self.window {
            if let Some(e) = self.log.pop_front() {
                self.oldest = e.rv;
            }
        }
        let _ = self.tx.send(ev);
    }

    /// The collection of `def` as it is now, kept for the later pages of a list at `rv`.
    pub fn snapshot(&mut self, def: &ResourceDef, rv: u64) -> Arc<Objects> {
        let resource = def.key();
        if let Some(s) = self
            .snapshots
            .iter()
            .find(|s| s.rv == rv && s.resource == resource)
        {
            return s.objects.clone();
        }
        let objects = Arc::new(self.objects.get(&resource).cloned().unwrap_or_default());
        self.snapshots.push_back(Snapshot {
            rv,
            resource,
            objects: objects.clone(),
        });
        while self.snapshots.len() > SNAPSHOTS_KEPT {
            self.snapshots.pop_front();
        }
        objects
    }

    /// The collection of `def` as it was at `rv`, if a list at `rv` kept it.
    pub fn snapshot_at(&self, def: &ResourceDef, rv: u64) -> Option<Arc<Objects>> {
        let resource = def.key();
        self.snapshots
            .iter()
            .find(|s| s.rv == rv && s.resource == resource)
            .map(|s| s.objects.clone())
    }

    /// Forget the whole history: every older resourceVersion now answers 410 Gone.
    pub fn compact(&mut self) {
        self.snapshots.clear();
        self.log.clear();
        self.rv += 1;
        self.oldest = self.rv;
    }

    /// Whether the namespace exists.
    pub fn namespace_exists(&self, ns: &str) -> bool {
        self.objects
            .get(&namespaces_key())
            .is_some_and(|o| o.contains_key(&(String::new(), ns.to_string())))
    }
}
