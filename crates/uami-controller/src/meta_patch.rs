//! Typed patches of an object's metadata, for the writes kube's `finalizer` helper does not make:
//! a binding to a VM or scale set adds its finalizer in the same patch as its record of the
//! identity it assigns, and removes it itself after cleanup.
//!
//! JSON patches `test` what they extend, so a copy older than the object (a cache behind the API
//! server) fails with 422 instead of dropping someone else's finalizer; such a failure is a race,
//! retried soon ([`super::error::Retry::Soon`]).

use std::collections::BTreeMap;

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation, RemoveOperation, TestOperation};
use kube::api::ObjectMeta;
use serde::Serialize;
use serde_json::Value;

/// The pointer to `/metadata/<field>`, or to `/metadata/<field>/<key>` (escaped as RFC 6901 says).
fn pointer(field: &str, key: Option<&str>) -> PointerBuf {
    let mut tokens = vec!["metadata", field];
    tokens.extend(key);
    PointerBuf::from_tokens(tokens)
}

fn test(path: PointerBuf, value: Value) -> PatchOperation {
    PatchOperation::Test(TestOperation { path, value })
}

fn add(path: PointerBuf, value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation { path, value })
}

/// A JSON patch of metadata, built one change at a time.
#[derive(Debug, Default)]
pub struct MetaPatch {
    ops: Vec<PatchOperation>,
}

impl MetaPatch {
    /// Add `finalizer` unless `meta` has it, testing the list it extends (or its absence).
    pub fn add_finalizer(mut self, meta: &ObjectMeta, finalizer: &str) -> Self {
        let path = pointer("finalizers", None);
        match meta.finalizers.as_deref().unwrap_or_default() {
            current if current.iter().any(|f| f == finalizer) => {}
            [] => {
                self.ops.push(test(path.clone(), Value::Null));
                self.ops.push(add(path, Value::from(vec![finalizer])));
            }
            current => {
                self.ops
                    .push(test(path.clone(), Value::from(current.to_vec())));
                self.ops.push(add(
                    pointer("finalizers", Some("-")),
                    Value::from(finalizer),
                ));
            }
        }
        self
    }

    /// Remove `finalizer` from where `meta` has it, testing that it is still there; `None` when
    /// `meta` does not have it.
    pub fn remove_finalizer(meta: &ObjectMeta, finalizer: &str) -> Option<Self> {
        let i = meta
            .finalizers
            .as_deref()?
            .iter()
            .position(|f| f == finalizer)?;
        let path = pointer("finalizers", Some(&i.to_string()));
        Some(Self {
            ops: vec![
                test(path.clone(), Value::from(finalizer)),
                PatchOperation::Remove(RemoveOperation { path }),
            ],
        })
    }

    /// Set `key` to `value` in the map `field` (`annotations`, `labels`) that `current` is,
    /// testing its absence when there is none.
    pub fn put(
        mut self,
        field: &str,
        current: Option<&BTreeMap<String, String>>,
        key: &str,
        value: &str,
    ) -> Self {
        if current.is_some() {
            self.ops
                .push(add(pointer(field, Some(key)), Value::from(value)));
        } else {
            let path = pointer(field, None);
            self.ops.push(test(path.clone(), Value::Null));
            let map = serde_json::Map::from_iter([(key.to_string(), Value::from(value))]);
            self.ops.push(add(path, Value::Object(map)));
        }
        self
    }

    /// The patch.
    pub fn build(self) -> Patch {
        Patch(self.ops)
    }
}

/// A merge patch of metadata labels and annotations: `Some` sets a key, `None` removes it.
#[derive(Debug, Default, Serialize)]
pub struct MetaMerge<'a> {
    metadata: MergeFields<'a>,
}

#[derive(Debug, Default, Serialize)]
struct MergeFields<'a> {
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    labels: BTreeMap<&'a str, Option<&'a str>>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<&'a str, Option<&'a str>>,
}

impl<'a> MetaMerge<'a> {
    /// Set label `key` to `value`.
    pub fn label(mut self, key: &'a str, value: &'a str) -> Self {
        self.metadata.labels.insert(key, Some(value));
        self
    }

    /// Set annotation `key` to `value`.
    pub fn annotate(mut self, key: &'a str, value: &'a str) -> Self {
        self.metadata.annotations.insert(key, Some(value));
        self
    }

    /// Remove annotation `key`.
    pub fn remove_annotation(mut self, key: &'a str) -> Self {
        self.metadata.annotations.insert(key, None);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn meta(finalizers: &[&str]) -> ObjectMeta {
        ObjectMeta {
            finalizers: (!finalizers.is_empty())
                .then(|| finalizers.iter().map(|f| f.to_string()).collect()),
            ..Default::default()
        }
    }

    fn json_of(p: Patch) -> Value {
        serde_json::to_value(p).expect("patch")
    }

    #[test]
    fn finalizer_patches_test_what_they_change() {
        let first = MetaPatch::default().add_finalizer(&meta(&[]), "uami.dev/binding");
        assert_eq!(
            json_of(first.build()),
            json!([
                {"op": "test", "path": "/metadata/finalizers", "value": null},
                {"op": "add", "path": "/metadata/finalizers", "value": ["uami.dev/binding"]},
            ])
        );
        let second = MetaPatch::default().add_finalizer(&meta(&["other"]), "uami.dev/binding");
        assert_eq!(
            json_of(second.build()),
            json!([
                {"op": "test", "path": "/metadata/finalizers", "value": ["other"]},
                {"op": "add", "path": "/metadata/finalizers/-", "value": "uami.dev/binding"},
            ])
        );
        let present =
            MetaPatch::default().add_finalizer(&meta(&["uami.dev/binding"]), "uami.dev/binding");
        assert_eq!(json_of(present.build()), json!([]));
        let removal =
            MetaPatch::remove_finalizer(&meta(&["a", "uami.dev/binding"]), "uami.dev/binding");
        assert_eq!(
            json_of(removal.expect("present").build()),
            json!([
                {"op": "test", "path": "/metadata/finalizers/1", "value": "uami.dev/binding"},
                {"op": "remove", "path": "/metadata/finalizers/1"},
            ])
        );
        assert!(MetaPatch::remove_finalizer(&meta(&["a"]), "uami.dev/binding").is_none());
    }

    #[test]
    fn map_entries_are_escaped_or_created_with_their_map() {
        let existing = BTreeMap::from([("x".to_string(), "y".to_string())]);
        let put = MetaPatch::default()
            .put(
                "annotations",
                Some(&existing),
                "uami.dev/assigned-identity",
                "/id",
            )
            .put("labels", None, "uami.dev/target", "t");
        assert_eq!(
            json_of(put.build()),
            json!([
                {"op": "add", "path": "/metadata/annotations/uami.dev~1assigned-identity", "value": "/id"},
                {"op": "test", "path": "/metadata/labels", "value": null},
                {"op": "add", "path": "/metadata/labels", "value": {"uami.dev/target": "t"}},
            ])
        );
        let merge = MetaMerge::default()
            .label("uami.dev/target", "t")
            .remove_annotation("uami.dev/assigned-identity")
            .annotate("azure.workload.identity/client-id", "c");
        assert_eq!(
            serde_json::to_value(&merge).expect("merge"),
            json!({"metadata": {
                "labels": {"uami.dev/target": "t"},
                "annotations": {"uami.dev/assigned-identity": null, "azure.workload.identity/client-id": "c"},
            }})
        );
    }
}
