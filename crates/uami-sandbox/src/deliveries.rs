//! Counts of the watch events the sandbox sent: per authenticated user and resource, and per
//! object (`namespace/name`), so a test or a benchmark can tell how many events each client
//! received for each change and which objects they were about. Bookmarks are counted apart.
//!
//! Names are interned, so an entry costs a few words; past [`MAX_OBJECT_ENTRIES`] distinct
//! (user, resource, object) entries only the per-user totals keep counting (and
//! [`WatchDeliveries::untracked`] says how many events went uncounted per object).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::Serialize;

/// Most distinct (user, resource, object) entries kept.
pub const MAX_OBJECT_ENTRIES: usize = 4_000_000;

/// Names to small numbers and back.
#[derive(Default)]
struct Interner {
    ids: HashMap<Arc<str>, u32>,
    names: Vec<Arc<str>>,
}

impl Interner {
    fn id(&mut self, name: &str) -> u32 {
        if let Some(id) = self.ids.get(name) {
            return *id;
        }
        let id = u32::try_from(self.names.len()).unwrap_or(u32::MAX);
        let name: Arc<str> = Arc::from(name);
        self.names.push(name.clone());
        self.ids.insert(name, id);
        id
    }

    fn name(&self, id: u32) -> &str {
        self.names.get(id as usize).map_or("", |n| n)
    }
}

/// What one watch stream counts under: its user and resource.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Stream {
    user: u32,
    resource: u32,
}

#[derive(Default)]
struct Totals {
    events: u64,
    bookmarks: u64,
}

/// The running counts (inside the sandbox's shared state).
#[derive(Default)]
pub(crate) struct Tally {
    users: Interner,
    resources: Interner,
    objects: Interner,
    totals: HashMap<(u32, u32), Totals>,
    per_object: HashMap<(u32, u32, u32), u64>,
    untracked: u64,
}

impl Tally {
    /// The stream of `user` watching `resource` (`plural.group`).
    pub fn stream(&mut self, user: &str, resource: &str) -> Stream {
        let s = Stream {
            user: self.users.id(user),
            resource: self.resources.id(resource),
        };
        self.totals.entry((s.user, s.resource)).or_default();
        s
    }

    /// An event (ADDED, MODIFIED or DELETED) about `namespace`/`name` was sent on `s`.
    pub fn event(&mut self, s: Stream, namespace: &str, name: &str) {
        self.totals.entry((s.user, s.resource)).or_default().events += 1;
        let object = if namespace.is_empty() {
            self.objects.id(name)
        } else {
            self.objects.id(&format!("{namespace}/{name}"))
        };
        let key = (s.user, s.resource, object);
        let full = self.per_object.len() >= MAX_OBJECT_ENTRIES;
        match self.per_object.get_mut(&key) {
            Some(n) => *n += 1,
            None if full => self.untracked += 1,
            None => {
                self.per_object.insert(key, 1);
            }
        }
    }

    /// A bookmark was sent on `s`.
    pub fn bookmark(&mut self, s: Stream) {
        self.totals
            .entry((s.user, s.resource))
            .or_default()
            .bookmarks += 1;
    }

    /// A copy of the counts, with the changes the store published by resource.
    pub fn snapshot(&self, changes: BTreeMap<String, u64>) -> WatchDeliveries {
        let mut streams: BTreeMap<(String, String), StreamDeliveries> = self
            .totals
            .iter()
            .map(|((u, r), t)| {
                let user = self.users.name(*u).to_string();
                let resource = self.resources.name(*r).to_string();
                (
                    (user.clone(), resource.clone()),
                    StreamDeliveries {
                        user,
                        resource,
                        events: t.events,
                        bookmarks: t.bookmarks,
                        objects: BTreeMap::new(),
                    },
                )
            })
            .collect();
        for ((u, r, o), n) in &self.per_object {
            let key = (
                self.users.name(*u).to_string(),
                self.resources.name(*r).to_string(),
            );
            if let Some(s) = streams.get_mut(&key) {
                s.objects.insert(self.objects.name(*o).to_string(), *n);
            }
        }
        WatchDeliveries {
            changes,
            streams: streams.into_values().collect(),
            untracked: self.untracked,
        }
    }
}

/// The watch events the sandbox has sent, from [`super::Sandbox::watch_deliveries`] (and `GET
/// /_sandbox/watch-deliveries`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WatchDeliveries {
    /// Changes the store published (events with a resourceVersion of their own), by resource
    /// (`plural.group`): what every watcher of the whole resource would receive once.
    pub changes: BTreeMap<String, u64>,
    /// Per user and resource, in order of user then resource.
    pub streams: Vec<StreamDeliveries>,
    /// Events counted in their stream's total but not per object (the entry limit was reached).
    pub untracked: u64,
}

/// What one user received of one resource, over all its watches.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamDeliveries {
    /// The authenticated user name.
    pub user: String,
    /// `plural.group` (`plural` for the core group).
    pub resource: String,
    /// ADDED, MODIFIED and DELETED events sent.
    pub events: u64,
    /// BOOKMARK events sent (the initial-events end marker included).
    pub bookmarks: u64,
    /// Events by object (`namespace/name`, or `name` when cluster-scoped).
    pub objects: BTreeMap<String, u64>,
}

impl WatchDeliveries {
    /// The streams of `resource`.
    pub fn of(&self, resource: &str) -> impl Iterator<Item = &StreamDeliveries> {
        self.streams.iter().filter(move |s| s.resource == resource)
    }

    /// Events of `resource` sent to `user`.
    pub fn events_to(&self, user: &str, resource: &str) -> u64 {
        self.of(resource)
            .filter(|s| s.user == user)
            .map(|s| s.events)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_user_resource_and_object() {
        let mut t = Tally::default();
        let a = t.stream("agent-a", "identitybindings.uami.dev");
        let b = t.stream("agent-b", "identitybindings.uami.dev");
        t.event(a, "ns", "x");
        t.event(a, "ns", "x");
        t.event(b, "ns", "y");
        t.bookmark(b);
        let again = t.stream("agent-a", "identitybindings.uami.dev");
        t.event(again, "ns", "y");
        let d = t.snapshot(BTreeMap::from([("identitybindings.uami.dev".into(), 3)]));
        assert_eq!(d.events_to("agent-a", "identitybindings.uami.dev"), 3);
        assert_eq!(d.events_to("agent-b", "identitybindings.uami.dev"), 1);
        assert_eq!(d.streams[0].objects.get("ns/x"), Some(&2));
        assert_eq!(d.streams[0].objects.get("ns/y"), Some(&1));
        assert_eq!(d.streams[1].bookmarks, 1);
        assert_eq!(d.changes.get("identitybindings.uami.dev"), Some(&3));
        assert_eq!(d.untracked, 0);
    }
}
