//! Deletion: finalizers hold an object (deletionTimestamp set, no new finalizers), removing the
//! last one deletes it; a namespace terminates (phase, conditions, new content refused with the
//! NamespaceTerminating cause) and goes once its content is gone.

use serde_json::{Value, json};

use crate::harness::*;
use crate::writes::{IDENTITIES, identity};

const CONFIGMAPS: &str = "/api/v1/namespaces/{ns}/configmaps";
const HOLD: &str = "example.com/hold";

fn held(mut o: Value) -> Value {
    o["metadata"]["finalizers"] = json!([HOLD]);
    o
}

fn gone(a: &Answer) -> bool {
    a.code == 404
}

/// A merge patch that adds a finalizer to an object being deleted: refused.
fn add_finalizer(path: &str, what: &str) -> Step {
    merge_patch(
        path,
        json!({"metadata": {"finalizers": [HOLD, "example.com/more"]}}),
    )
    .what(what)
    .expect(422)
    .cmp(Cmp::Message)
}

/// DELETE of an object without finalizers: a Status naming it (and the `more` fields).
fn delete_answers(path: String, what: &str, more: &[&'static str]) -> Step {
    delete(path)
        .what(what)
        .expect(200)
        .fields(&[
            "/kind",
            "/status",
            "/details/name",
            "/details/kind",
            "/details/group",
        ])
        .fields(more)
        .cmp(Cmp::Present("/details/uid"))
}

fn finalizers() -> Case {
    let c = format!("{CONFIGMAPS}/held");
    let id = format!("{IDENTITIES}/id1");
    Case::new(
        "finalizers hold a deleted object until the last one is removed",
        vec![
            post(
                CONFIGMAPS,
                held(json!({"metadata": {"name": "held"}, "data": {"a": "1"}})),
            )
            .what("a ConfigMap with a finalizer")
            .expect(201)
            .fields(&["/metadata/finalizers", "/metadata/generation"]),
            delete(c.clone())
                .what("DELETE marks it")
                .expect(200)
                .fields(&[
                    "/kind",
                    "/metadata/finalizers",
                    "/metadata/deletionGracePeriodSeconds",
                ])
                .cmp(Cmp::Present("/metadata/deletionTimestamp")),
            get(c.clone())
                .what("it is still there")
                .expect(200)
                .fields(&["/metadata/finalizers", "/data"])
                .cmp(Cmp::Present("/metadata/deletionTimestamp")),
            add_finalizer(&c, "no new finalizer on an object being deleted"),
            merge_patch(c.clone(), json!({"data": {"b": "2"}}))
                .what("other changes are allowed")
                .expect(200)
                .fields(&["/data"]),
            delete(c.clone())
                .what("DELETE again")
                .expect(200)
                .fields(&["/kind", "/metadata/finalizers"]),
            merge_patch(c.clone(), json!({"metadata": {"finalizers": null}}))
                .what("removing the last finalizer deletes it")
                .expect(200)
                .fields(&["/kind", "/metadata/finalizers"]),
            get(c.clone()).what("gone").expect(404).cmp(Cmp::Message),
            post(CONFIGMAPS, json!({"metadata": {"name": "plain"}}))
                .what("a ConfigMap without finalizers")
                .expect(201),
            delete_answers(format!("{CONFIGMAPS}/plain"), "DELETE answers", &[]),
            post(IDENTITIES, held(identity("id1")))
                .what("an identity with a finalizer")
                .expect(201),
            delete(id.clone())
                .what("DELETE of a custom resource marks it")
                .expect(200)
                .fields(&["/kind", "/metadata/finalizers", "/metadata/generation"])
                .cmp(Cmp::Present("/metadata/deletionTimestamp")),
            add_finalizer(&id, "no new finalizer on a custom resource being deleted")
                .fields(&["/details"]),
            json_patch(
                id.clone(),
                json!([{"op": "remove", "path": "/metadata/finalizers"}]),
            )
            .what("removing the finalizer deletes it")
            .expect(200)
            .fields(&["/kind", "/metadata/finalizers"]),
            get(id.clone()).what("gone").expect(404).cmp(Cmp::Message),
            post(IDENTITIES, identity("id2"))
                .what("an identity")
                .expect(201),
            delete_answers(
                format!("{IDENTITIES}/id2"),
                "DELETE of a custom resource without finalizers answers",
                &["/metadata/name"],
            ),
            delete(format!("{IDENTITIES}/id2"))
                .what("DELETE of a missing object")
                .status_error(404),
        ],
    )
}

fn namespace_termination() -> Case {
    let ns = "/api/v1/namespaces/{ns}";
    Case::new(
        "namespace termination: Terminating, conditions, new content refused, then gone",
        vec![
            post(CONFIGMAPS, held(json!({"metadata": {"name": "held"}})))
                .what("a ConfigMap with a finalizer")
                .expect(201),
            post(CONFIGMAPS, json!({"metadata": {"name": "plain"}}))
                .what("and one without")
                .expect(201),
            get(ns).what("a new namespace").expect(200).fields(&[
                "/spec",
                "/status",
                "/metadata/labels",
                "/metadata/generation",
            ]),
            delete(ns)
                .what("DELETE of the namespace answers it marked")
                .expect(200)
                .fields(&["/kind", "/spec", "/status/phase", "/metadata/finalizers"])
                .cmp(Cmp::Conditions)
                .cmp(Cmp::Present("/metadata/deletionTimestamp")),
            get(ns)
                .what("its conditions say what remains")
                .until(
                    |a| {
                        a.body["status"]["conditions"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .any(|c| {
                                c["type"] == "NamespaceFinalizersRemaining" && c["status"] == "True"
                            })
                    },
                    60,
                )
                .expect(200)
                .fields(&["/status/phase", "/spec"])
                .cmp(Cmp::Conditions),
            post(CONFIGMAPS, json!({"metadata": {"name": "late"}}))
                .what("new content is refused")
                .status_error(403),
            get(format!("{CONFIGMAPS}/plain"))
                .what("content without finalizers is deleted")
                .until(gone, 60)
                .expect(404),
            get(format!("{CONFIGMAPS}/held"))
                .what("content with finalizers waits")
                .expect(200)
                .cmp(Cmp::Present("/metadata/deletionTimestamp")),
            merge_patch(
                format!("{CONFIGMAPS}/held"),
                json!({"metadata": {"finalizers": null}}),
            )
            .what("its finalizer removed")
            .expect(200),
            get(ns)
                .what("the namespace goes")
                .until(gone, 60)
                .expect(404)
                .cmp(Cmp::Message),
        ],
    )
}

pub fn cases() -> Vec<Case> {
    vec![finalizers(), namespace_termination()]
}
