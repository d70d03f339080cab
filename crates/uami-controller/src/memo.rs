//! What the controller remembers about each object between its passes: runs of failures (for
//! backoff), the inputs of the last Azure check (so a pass woken by its own status write need not
//! read ARM again), and the steps in progress. One entry per object, under a typed key, dropped
//! when the object is cleaned up or no longer in its cache.

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

use kube::Resource;
use parking_lot::Mutex;

/// One object of one kind.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ObjectKey {
    /// The kind, such as `RoleGrant`.
    pub kind: Cow<'static, str>,
    /// The namespace (empty for a cluster-scoped object).
    pub namespace: String,
    /// The name.
    pub name: String,
}

impl ObjectKey {
    /// The key of `obj`.
    pub fn of<K: Resource<DynamicType = ()>>(obj: &K) -> Self {
        Self {
            kind: K::kind(&()),
            namespace: obj.meta().namespace.clone().unwrap_or_default(),
            name: obj.meta().name.clone().unwrap_or_default(),
        }
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.kind, self.namespace, self.name)
    }
}

/// The inputs an Azure check was made with (generation, ids, scope, ...), as a hash of their
/// values: equal inputs, equal fingerprints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fingerprint(u64);

impl Fingerprint {
    /// The fingerprint of `inputs`.
    pub fn of(inputs: &impl Hash) -> Self {
        // SipHash with fixed keys: the same inputs give the same value for the process's life.
        let mut h = std::hash::DefaultHasher::new();
        inputs.hash(&mut h);
        Self(h.finish())
    }
}

/// The runs of failures counted per object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Run {
    /// Failed reconciles (the controller's backoff).
    Reconcile,
    /// Failed writes of the target writer for a binding.
    TargetWrite,
    /// Passing ARM failures kept out of the status (see `passing::keep_on_passing_failure`).
    Passing,
    /// `PrincipalNotFound` answers to a grant's role assignment.
    PrincipalNotFound,
}

/// What is remembered of one object.
#[derive(Debug, Default)]
struct Entry {
    runs: [u32; 4],
    checked: Option<(Fingerprint, Instant)>,
    superseded: Option<String>,
    replacing: bool,
    replaced_principal: Option<String>,
}

impl Entry {
    fn is_empty(&self) -> bool {
        self.runs == [0; 4]
            && self.checked.is_none()
            && self.superseded.is_none()
            && !self.replacing
            && self.replaced_principal.is_none()
    }
}

fn slot(run: Run) -> usize {
    match run {
        Run::Reconcile => 0,
        Run::TargetWrite => 1,
        Run::Passing => 2,
        Run::PrincipalNotFound => 3,
    }
}

/// The per-object memory shared by the reconcilers.
#[derive(Default)]
pub struct Memo {
    entries: Mutex<HashMap<ObjectKey, Entry>>,
}

impl Memo {
    fn with<T>(&self, key: &ObjectKey, f: impl FnOnce(&mut Entry) -> T) -> T {
        let mut entries = self.entries.lock();
        let entry = entries.entry(key.clone()).or_default();
        let out = f(entry);
        if entry.is_empty() {
            entries.remove(key);
        }
        out
    }

    /// `f` on the entry of `key` if it has one (dropped once it holds nothing); `None` without
    /// one, so clearing what is not there creates no entry.
    fn with_existing<T>(&self, key: &ObjectKey, f: impl FnOnce(&mut Entry) -> T) -> Option<T> {
        let mut entries = self.entries.lock();
        let entry = entries.get_mut(key)?;
        let out = f(entry);
        if entry.is_empty() {
            entries.remove(key);
        }
        Some(out)
    }

    /// Count one more failure in `run` of `key`; returns the failures in a row.
    pub fn failed(&self, key: &ObjectKey, run: Run) -> u32 {
        self.with(key, |e| {
            let n = &mut e.runs[slot(run)];
            *n = n.saturating_add(1);
            *n
        })
    }

    /// End `run` of `key`: the next failure starts from the beginning.
    pub fn succeeded(&self, key: &ObjectKey, run: Run) {
        self.with_existing(key, |e| e.runs[slot(run)] = 0);
    }

    /// Whether the Azure side of `key` was checked with `fingerprint` within `window`.
    pub fn recently_checked(
        &self,
        key: &ObjectKey,
        fingerprint: Fingerprint,
        window: Duration,
    ) -> bool {
        self.entries
            .lock()
            .get(key)
            .and_then(|e| e.checked)
            .is_some_and(|(f, at)| f == fingerprint && at.elapsed() < window)
    }

    /// Record that the Azure side of `key` was just checked with `fingerprint`.
    pub fn mark_checked(&self, key: &ObjectKey, fingerprint: Fingerprint) {
        self.with(key, |e| e.checked = Some((fingerprint, Instant::now())));
    }

    /// Forget the check of `key` (after a write, or a change found).
    pub fn forget_checked(&self, key: &ObjectKey) {
        self.with_existing(key, |e| e.checked = None);
    }

    /// Record that the copy of `key` at `version` was just patched by its reconcile (its
    /// finalizer added), so that copy is stale.
    pub fn note_superseded(&self, key: &ObjectKey, version: String) {
        self.with(key, |e| e.superseded = Some(version));
    }

    /// Whether the copy of `key` at `version` is one its last reconcile patched; the record is
    /// used once.
    pub fn take_superseded(&self, key: &ObjectKey, version: Option<&str>) -> bool {
        self.with_existing(key, |e| e.superseded.take())
            .flatten()
            .is_some_and(|v| Some(v.as_str()) == version)
    }

    /// Whether a stale entry of `key`'s identity is being taken off its target.
    pub fn replacing(&self, key: &ObjectKey) -> bool {
        self.entries.lock().get(key).is_some_and(|e| e.replacing)
    }

    /// Start or end the replacement of `key`'s stale entry.
    pub fn set_replacing(&self, key: &ObjectKey, replacing: bool) {
        if replacing {
            self.with(key, |e| e.replacing = true);
        } else {
            self.with_existing(key, |e| e.replacing = false);
        }
    }

    /// The replaced principal whose role assignment `key` last revoked.
    pub fn replaced_principal(&self, key: &ObjectKey) -> Option<String> {
        self.entries
            .lock()
            .get(key)
            .and_then(|e| e.replaced_principal.clone())
    }

    /// Record that `key` revoked the role assignment of the replaced `principal`.
    pub fn set_replaced_principal(&self, key: &ObjectKey, principal: String) {
        self.with(key, |e| e.replaced_principal = Some(principal));
    }

    /// Forget everything about `key` (cleaned up).
    pub fn forget(&self, key: &ObjectKey) {
        self.entries.lock().remove(key);
    }

    /// Keep only the objects `exists` says are still there.
    pub fn retain(&self, exists: impl Fn(&ObjectKey) -> bool) {
        self.entries.lock().retain(|k, _| exists(k));
    }

    /// How many objects have an entry.
    pub fn len(&self) -> usize {
        self.entries.lock().len()
    }

    /// Whether no object has an entry.
    pub fn is_empty(&self) -> bool {
        self.entries.lock().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> ObjectKey {
        ObjectKey {
            kind: "RoleGrant".into(),
            namespace: "team-a".into(),
            name: name.into(),
        }
    }

    #[test]
    fn entries_exist_only_while_they_hold_something() {
        let memo = Memo::default();
        assert_eq!(memo.failed(&key("a"), Run::Reconcile), 1);
        assert_eq!(memo.failed(&key("a"), Run::Reconcile), 2);
        assert_eq!(memo.failed(&key("a"), Run::TargetWrite), 1);
        memo.succeeded(&key("a"), Run::Reconcile);
        assert_eq!(memo.failed(&key("a"), Run::Reconcile), 1);
        memo.succeeded(&key("a"), Run::Reconcile);
        memo.succeeded(&key("a"), Run::TargetWrite);
        assert!(memo.is_empty(), "an entry with nothing in it is dropped");
        let f = Fingerprint::of(&(Some(1i64), "id", "p"));
        memo.mark_checked(&key("b"), f);
        assert!(memo.recently_checked(&key("b"), f, Duration::from_secs(60)));
        let other = Fingerprint::of(&(Some(2i64), "id", "p"));
        assert!(!memo.recently_checked(&key("b"), other, Duration::from_secs(60)));
        memo.note_superseded(&key("c"), "7".into());
        assert!(!memo.take_superseded(&key("c"), Some("8")));
        assert!(!memo.take_superseded(&key("c"), Some("7")), "used once");
        memo.set_replacing(&key("d"), true);
        memo.retain(|k| k.name != "d");
        assert!(!memo.replacing(&key("d")));
        memo.forget(&key("b"));
        assert!(memo.is_empty());
    }
}
