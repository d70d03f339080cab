//! Writes: server-side apply (conflicts between managers, shared values, `force`), merge and JSON
//! patches (a failing `test`), the status subresource, and `fieldValidation`.

use serde_json::{Value, json};

use crate::harness::*;

const CONFIGMAPS: &str = "/api/v1/namespaces/{ns}/configmaps";
pub const IDENTITIES: &str = "/apis/uami.dev/v1alpha1/namespaces/{ns}/userassignedidentities";

fn cm(name: &str, data: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data})
}

/// A valid UserAssignedIdentity named `name`.
pub fn identity(name: &str) -> Value {
    json!({"apiVersion": "uami.dev/v1alpha1", "kind": "UserAssignedIdentity",
           "metadata": {"name": name},
           "spec": {"resourceGroup": "DevTest", "location": "eastus"}})
}

fn server_side_apply() -> Case {
    let ssa = format!("{CONFIGMAPS}/ssa");
    let by = |m: &str| format!("{ssa}?fieldManager={m}");
    let status = format!("{IDENTITIES}/id1/status");
    let condition = |status: &str| {
        json!({"apiVersion": "uami.dev/v1alpha1", "kind": "UserAssignedIdentity", "metadata": {"name": "id1"},
               "status": {"conditions": [{"type": "Ready", "status": status, "reason": "R", "message": "m",
                                          "lastTransitionTime": "2026-01-01T00:00:00Z"}]}})
    };
    Case::new(
        "server-side apply: conflicts between managers, shared values, force",
        vec![
            apply(by("a"), cm("ssa", json!({"k": "1", "j": "1"})))
                .what("apply creates, owned by a")
                .expect(201)
                .fields(&["/data"])
                .cmp(Cmp::ManagedFields),
            apply(by("b"), cm("ssa", json!({"k": "2", "j": "2"})))
                .what("b applies other values: 409 naming both fields and a")
                .expect(409)
                .cmp(Cmp::Message)
                .fields(&["/details"]),
            apply(by("b"), cm("ssa", json!({"k": "1"})))
                .what("b applies the same value: no conflict, shared")
                .expect(200)
                .fields(&["/data"])
                .cmp(Cmp::ManagedFields),
            apply(
                format!("{}&force=true", by("b")),
                cm("ssa", json!({"k": "2", "j": "2"})),
            )
            .what("force takes the fields")
            .expect(200)
            .fields(&["/data"])
            .cmp(Cmp::ManagedFields),
            merge_patch(
                format!("{ssa}?fieldManager=editor"),
                json!({"data": {"k": "3"}}),
            )
            .what("an update by another manager")
            .expect(200)
            .cmp(Cmp::ManagedFields),
            apply(by("b"), cm("ssa", json!({"k": "2", "j": "2"})))
                .what("a conflict with an updater names its API version")
                .expect(409)
                .cmp(Cmp::Message)
                .fields(&["/details"]),
            apply(by("a"), cm("ssa", json!({"j": "2"})))
                .what("a stops applying k: a field it shared stays")
                .expect(200)
                .fields(&["/data"])
                .cmp(Cmp::ManagedFields),
            apply(ssa.clone(), cm("ssa", json!({"k": "2"})))
                .what("apply without fieldManager")
                .expect(422)
                .cmp(Cmp::Message),
            apply(
                format!("{CONFIGMAPS}/other?fieldManager=a"),
                cm("ssa", json!({})),
            )
            .what("apply with a name that is not the URL's")
            .expect(400)
            .cmp(Cmp::Message),
            post(IDENTITIES, identity("id1"))
                .what("an identity")
                .expect(201),
            apply(
                format!("{status}?fieldManager=controller"),
                condition("True"),
            )
            .what("the controller applies Ready to /status")
            .expect(200)
            .fields(&["/status"])
            .cmp(Cmp::ManagedFields),
            apply(format!("{status}?fieldManager=agent"), condition("False"))
                .what("the agent applies another Ready status: conflict on the list-map entry")
                .expect(409)
                .cmp(Cmp::Message)
                .fields(&["/details"]),
            apply(
                format!("{status}?fieldManager=agent&force=true"),
                condition("False"),
            )
            .what("forced")
            .expect(200)
            .fields(&["/status"])
            .cmp(Cmp::ManagedFields),
        ],
    )
}

fn patches() -> Case {
    let c = format!("{CONFIGMAPS}/p");
    let id = format!("{IDENTITIES}/id1");
    Case::new(
        "merge patch and JSON patch (a failing test op)",
        vec![
            post(CONFIGMAPS, cm("p", json!({"a": "1", "b": "2"})))
                .what("a ConfigMap")
                .expect(201),
            merge_patch(c.clone(), json!({"data": {"a": null, "c": "3"}, "metadata": {"labels": {"l": "1"}}}))
                .what("merge patch: null removes, objects merge")
                .expect(200)
                .fields(&["/data", "/metadata/labels", "/metadata/generation"])
                .cmp(Cmp::ManagedFields),
            json_patch(c.clone(), json!([{"op": "test", "path": "/data/b", "value": "wrong"}, {"op": "remove", "path": "/data/b"}]))
                .what("a failing test op")
                .expect(422)
                .cmp(Cmp::Message)
                .fields(&["/details"]),
            json_patch(c.clone(), json!([{"op": "test", "path": "/data/zz", "value": null}, {"op": "add", "path": "/data/d", "value": "4"}]))
                .what("test for null of a missing key passes")
                .expect(200)
                .fields(&["/data"]),
            json_patch(c.clone(), json!([{"op": "test", "path": "/binaryData/zz", "value": null}, {"op": "add", "path": "/data/e", "value": "5"}]))
                .what("test for null under a missing parent fails")
                .expect(422)
                .cmp(Cmp::Message),
            json_patch(c.clone(), json!([{"op": "remove", "path": "/data/nothing"}]))
                .what("removing a missing key")
                .expect(422)
                .cmp(Cmp::Message),
            json_patch(c.clone(), json!([{"op": "bogus", "path": "/data"}]))
                .what("an unknown op")
                .expect(422)
                .cmp(Cmp::Message),
            json_patch(c.clone(), json!({"op": "add", "path": "/data/x", "value": "1"}))
                .what("a JSON patch that is not a list")
                .expect(400)
                .cmp(Cmp::Message),
            patch_raw(c.clone(), "application/merge-patch+json", "[1]")
                .what("a merge patch that is not an object")
                .expect(400)
                .cmp(Cmp::Message),
            merge_patch(c.clone(), json!({"metadata": {"resourceVersion": "1"}}))
                .what("a merge patch on a stale resourceVersion")
                .expect(409)
                .cmp(Cmp::Message),
            merge_patch(format!("{CONFIGMAPS}/missing"), json!({"data": {"a": "1"}}))
                .what("a patch of a missing object")
                .expect(404)
                .cmp(Cmp::Message)
                .fields(&["/details"]),
            post(IDENTITIES, identity("id1")).what("an identity").expect(201),
            merge_patch(id.clone(), json!({"spec": {"tags": {"team": "a"}}}))
                .what("merge patch of a custom resource's spec bumps its generation")
                .expect(200)
                .fields(&["/spec", "/metadata/generation"]),
            patch_raw(id.clone(), "application/strategic-merge-patch+json", r#"{"spec":{"tags":{"x":"y"}}}"#)
                .what("strategic merge patch of a custom resource")
                .expect(415)
                .cmp(Cmp::Message),
            merge_patch(id.clone(), json!({"spec": {"location": "westus"}}))
                .what("a patch that breaks a transition rule")
                .expect(422)
                .cmp(Cmp::Message),
        ],
    )
}

fn status_subresource() -> Case {
    let id = format!("{IDENTITIES}/id1");
    let status = format!("{id}/status");
    let with = |tags: Value, client_id: &str| {
        let mut o = identity("id1");
        o["metadata"]["resourceVersion"] = json!("{rv}");
        o["spec"]["tags"] = tags;
        o["status"] = json!({"clientId": client_id});
        o
    };
    Case::new(
        "status subresource: the main resource ignores status, /status ignores the rest",
        vec![
            post(IDENTITIES, {
                let mut o = identity("id1");
                o["status"] = json!({"clientId": "created"});
                o
            })
            .what("status in a create is dropped")
            .expect(201)
            .fields(&["/status", "/metadata/generation"])
            .save("rv", "/metadata/resourceVersion"),
            put(id.clone(), with(json!({"a": "1"}), "main"))
                .what("PUT of the resource: spec changes, status does not")
                .expect(200)
                .fields(&["/spec", "/status", "/metadata/generation"])
                .save("rv", "/metadata/resourceVersion"),
            put(status.clone(), with(json!({"b": "2"}), "status"))
                .what("PUT of /status: status changes, spec does not")
                .expect(200)
                .fields(&["/spec", "/status", "/metadata/generation"])
                .save("rv", "/metadata/resourceVersion"),
            merge_patch(status.clone(), json!({"spec": {"tags": {"c": "3"}}, "status": {"principalId": "p"}, "metadata": {"labels": {"l": "1"}}}))
                .what("PATCH of /status: status changes; spec and labels do not")
                .expect(200)
                .fields(&["/spec", "/status", "/metadata/labels", "/metadata/generation"]),
            merge_patch(id.clone(), json!({"status": {"clientId": "patched"}, "metadata": {"labels": {"l": "2"}}}))
                .what("PATCH of the resource: labels change, status does not")
                .expect(200)
                .fields(&["/spec", "/status", "/metadata/labels", "/metadata/generation"]),
            get(status.clone())
                .what("GET of /status is the whole object")
                .expect(200)
                .fields(&["/kind", "/spec", "/status"]),
            put(id.clone(), identity("id1"))
                .what("PUT of a custom resource without a resourceVersion")
                .expect(422)
                .cmp(Cmp::Message),
            put(format!("{CONFIGMAPS}/nocm"), cm("nocm", json!({"a": "1"})))
                .what("PUT of a ConfigMap that does not exist")
                .expect(404)
                .cmp(Cmp::Message),
            post(CONFIGMAPS, cm("nocm", json!({"a": "1"})))
                .what("a ConfigMap")
                .expect(201),
            put(format!("{CONFIGMAPS}/nocm"), cm("nocm", json!({"a": "2"})))
                .what("PUT of a ConfigMap without a resourceVersion")
                .expect(200)
                .fields(&["/data"]),
        ],
    )
}

fn field_validation() -> Case {
    let bogus_identity = |name: &str| {
        let mut o = identity(name);
        o["spec"]["bogus"] = json!(1);
        o["metadata"]["bogusMeta"] = json!("x");
        o
    };
    let bogus_cm = |name: &str| {
        let mut o = cm(name, json!({"a": "1"}));
        o["bogus"] = json!(1);
        o
    };
    let q = |coll: &str, mode: &str| format!("{coll}?fieldValidation={mode}");
    Case::new(
        "fieldValidation Strict, Warn, Ignore and the default, for a custom resource and a ConfigMap",
        vec![
            post(q(IDENTITIES, "Strict"), bogus_identity("strict"))
                .what("Strict refuses the unknown fields of a custom resource")
                .expect(400)
                .cmp(Cmp::Message),
            post(q(IDENTITIES, "Warn"), bogus_identity("warn"))
                .what("Warn prunes them with a warning each")
                .expect(201)
                .cmp(Cmp::Warnings)
                .fields(&["/spec", "/metadata/bogusMeta"]),
            post(q(IDENTITIES, "Ignore"), bogus_identity("ignore"))
                .what("Ignore prunes them silently")
                .expect(201)
                .cmp(Cmp::Warnings)
                .fields(&["/spec"]),
            post(IDENTITIES, bogus_identity("default"))
                .what("the default")
                .expect(201)
                .cmp(Cmp::Warnings)
                .fields(&["/spec"]),
            post(q(IDENTITIES, "Bogus"), identity("badmode"))
                .what("an unknown fieldValidation")
                .expect(422)
                .cmp(Cmp::Message),
            post(q(CONFIGMAPS, "Strict"), bogus_cm("strict"))
                .what("Strict refuses an unknown field of a ConfigMap")
                .expect(400)
                .cmp(Cmp::Message),
            post(q(CONFIGMAPS, "Warn"), bogus_cm("warn"))
                .what("Warn drops it with a warning")
                .expect(201)
                .cmp(Cmp::Warnings)
                .fields(&["/bogus", "/data"]),
            post(q(CONFIGMAPS, "Ignore"), bogus_cm("ignore"))
                .what("Ignore drops it silently")
                .expect(201)
                .cmp(Cmp::Warnings)
                .fields(&["/bogus"]),
            merge_patch(
                q(&format!("{IDENTITIES}/warn"), "Strict"),
                json!({"spec": {"bogus": 2}}),
            )
            .what("a Strict merge patch with an unknown field")
            .expect(422)
            .cmp(Cmp::MessageUntil("patch: Invalid value: "))
            .cmp(Cmp::MessageAfter("strict decoding error: ")),
            put(
                q(&format!("{IDENTITIES}/strict-put"), "Strict"),
                bogus_identity("strict-put"),
            )
            .what("a Strict PUT of a missing object with unknown fields")
            .expect(400)
            .cmp(Cmp::Message),
            apply(
                format!("{IDENTITIES}/warn?fieldManager=a&fieldValidation=Strict"),
                {
                    let mut o = identity("warn");
                    o["spec"]["bogus"] = json!(3);
                    o
                },
            )
            .what("a Strict apply with an unknown field")
            .expect(500)
            .cmp(Cmp::Message),
            apply(format!("{IDENTITIES}/warn?fieldManager=a"), {
                let mut o = identity("warn");
                o["metadata"]["namespace"] = json!("{ns}");
                o["spec"]["bogus"] = json!(3);
                o
            })
            .what("an apply with an unknown field, without fieldValidation")
            .expect(500)
            .cmp(Cmp::Message),
            apply(
                format!("{CONFIGMAPS}/warn?fieldManager=a"),
                bogus_cm("warn"),
            )
            .what("an apply of a ConfigMap with an unknown field")
            .expect(500)
            .cmp(Cmp::Message),
            merge_patch(
                q(&format!("{IDENTITIES}/warn"), "Warn"),
                json!({"spec": {"bogus": 2, "tags": {"a": "b"}}}),
            )
            .what("a Warn merge patch with an unknown field")
            .expect(200)
            .cmp(Cmp::Warnings)
            .fields(&["/spec"]),
        ],
    )
}

fn empty_fields() -> Case {
    let mut id = identity("id1");
    id["metadata"]["labels"] = json!({});
    id["metadata"]["annotations"] = json!({});
    id["metadata"]["finalizers"] = json!([]);
    id["spec"]["tags"] = json!({});
    let mut c = cm("c", json!({}));
    c["binaryData"] = json!({});
    c["metadata"]["labels"] = json!({});
    c["metadata"]["finalizers"] = json!([]);
    Case::new(
        "empty maps and lists in metadata and in a ConfigMap",
        vec![
            post(IDENTITIES, id)
                .what("a custom resource with empty labels, annotations, finalizers and tags")
                .expect(201)
                .fields(&[
                    "/metadata/labels",
                    "/metadata/annotations",
                    "/metadata/finalizers",
                    "/spec/tags",
                ]),
            post(CONFIGMAPS, c)
                .what("a ConfigMap with empty data, binaryData, labels and finalizers")
                .expect(201)
                .fields(&[
                    "/data",
                    "/binaryData",
                    "/metadata/labels",
                    "/metadata/finalizers",
                ]),
            merge_patch(
                format!("{CONFIGMAPS}/c"),
                json!({"data": {"a": "1"}, "metadata": {"annotations": {}}}),
            )
            .what("a patch that adds empty annotations")
            .expect(200)
            .fields(&["/data", "/metadata/annotations"]),
        ],
    )
}

fn create_existing() -> Case {
    let mut bad = identity("id1");
    bad["spec"]["location"] = json!(7);
    Case::new(
        "create: validation comes before the name's existence",
        vec![
            post(IDENTITIES, identity("id1"))
                .what("an identity")
                .expect(201),
            post(IDENTITIES, bad)
                .what("a bad object of the same name is refused as bad")
                .expect(422)
                .cmp(Cmp::Message),
            post(IDENTITIES, identity("id1"))
                .what("a good one of the same name already exists")
                .expect(409)
                .cmp(Cmp::Message)
                .fields(&["/details"]),
            post(CONFIGMAPS, cm("c", json!({"a": "1"})))
                .what("a ConfigMap")
                .expect(201),
            post(format!("{CONFIGMAPS}?fieldValidation=Strict"), {
                let mut o = cm("c", json!({"a": "1"}));
                o["bogus"] = json!(1);
                o
            })
            .what("a Strict create of the same name with an unknown field")
            .expect(400)
            .cmp(Cmp::Message),
        ],
    )
}

pub fn cases() -> Vec<Case> {
    vec![
        create_existing(),
        empty_fields(),
        server_side_apply(),
        patches(),
        status_subresource(),
        field_validation(),
    ]
}
