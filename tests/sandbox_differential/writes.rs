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
    // b applies k=2 and j=2 where another manager holds other values: 409 naming them.
    let b_conflicts = |what: &str| {
        apply(by("b"), cm("ssa", json!({"k": "2", "j": "2"})))
            .what(what)
            .status_error(409)
    };
    Case::new(
        "server-side apply: conflicts between managers, shared values, force",
        vec![
            apply(by("a"), cm("ssa", json!({"k": "1", "j": "1"})))
                .what("apply creates, owned by a")
                .managed(201, "/data"),
            b_conflicts("b applies other values: 409 naming both fields and a"),
            apply(by("b"), cm("ssa", json!({"k": "1"})))
                .what("b applies the same value: no conflict, shared")
                .managed(200, "/data"),
            apply(
                format!("{}&force=true", by("b")),
                cm("ssa", json!({"k": "2", "j": "2"})),
            )
            .what("force takes the fields")
            .managed(200, "/data"),
            merge_patch(
                format!("{ssa}?fieldManager=editor"),
                json!({"data": {"k": "3"}}),
            )
            .what("an update by another manager")
            .expect(200)
            .cmp(Cmp::ManagedFields),
            b_conflicts("a conflict with an updater names its API version"),
            apply(by("a"), cm("ssa", json!({"j": "2"})))
                .what("a stops applying k: a field it shared stays")
                .managed(200, "/data"),
            apply(ssa.clone(), cm("ssa", json!({"k": "2"})))
                .what("apply without fieldManager")
                .refused(422),
            apply(
                format!("{CONFIGMAPS}/other?fieldManager=a"),
                cm("ssa", json!({})),
            )
            .what("apply with a name that is not the URL's")
            .refused(400),
            post(IDENTITIES, identity("id1"))
                .what("an identity")
                .expect(201),
            apply(
                format!("{status}?fieldManager=controller"),
                condition("True"),
            )
            .what("the controller applies Ready to /status")
            .managed(200, "/status"),
            apply(format!("{status}?fieldManager=agent"), condition("False"))
                .what("the agent applies another Ready status: conflict on the list-map entry")
                .status_error(409),
            apply(
                format!("{status}?fieldManager=agent&force=true"),
                condition("False"),
            )
            .what("forced")
            .managed(200, "/status"),
        ],
    )
}

fn patches() -> Case {
    let c = format!("{CONFIGMAPS}/p");
    let id = format!("{IDENTITIES}/id1");
    let mut steps = vec![
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
            .status_error(422),
        json_patch(c.clone(), json!([{"op": "test", "path": "/data/zz", "value": null}, {"op": "add", "path": "/data/d", "value": "4"}]))
            .what("test for null of a missing key passes")
            .expect(200)
            .fields(&["/data"]),
    ];
    // JSON patches refused with a message: the operations, what each checks and the code.
    let refused = [
        (
            r#"[{"op": "test", "path": "/binaryData/zz", "value": null}, {"op": "add", "path": "/data/e", "value": "5"}]"#,
            "test for null under a missing parent fails",
            422,
        ),
        (
            r#"[{"op": "remove", "path": "/data/nothing"}]"#,
            "removing a missing key",
            422,
        ),
        (
            r#"[{"op": "bogus", "path": "/data"}]"#,
            "an unknown op",
            422,
        ),
        (
            r#"{"op": "add", "path": "/data/x", "value": "1"}"#,
            "a JSON patch that is not a list",
            400,
        ),
    ];
    steps.extend(refused.map(|(ops, what, code)| {
        let ops: Value = serde_json::from_str(ops).unwrap();
        json_patch(c.clone(), ops)
            .what(what)
            .expect(code)
            .cmp(Cmp::Message)
    }));
    steps.extend([
        patch_raw(c.clone(), "application/merge-patch+json", "[1]")
            .what("a merge patch that is not an object")
            .refused(400),
        merge_patch(c.clone(), json!({"metadata": {"resourceVersion": "1"}}))
            .what("a merge patch on a stale resourceVersion")
            .refused(409),
        merge_patch(format!("{CONFIGMAPS}/missing"), json!({"data": {"a": "1"}}))
            .what("a patch of a missing object")
            .status_error(404),
        post(IDENTITIES, identity("id1"))
            .what("an identity")
            .expect(201),
        merge_patch(id.clone(), json!({"spec": {"tags": {"team": "a"}}}))
            .what("merge patch of a custom resource's spec bumps its generation")
            .expect(200)
            .fields(&["/spec", "/metadata/generation"]),
        patch_raw(
            id.clone(),
            "application/strategic-merge-patch+json",
            r#"{"spec":{"tags":{"x":"y"}}}"#,
        )
        .what("strategic merge patch of a custom resource")
        .refused(415),
        merge_patch(id.clone(), json!({"spec": {"location": "westus"}}))
            .what("a patch that breaks a transition rule")
            .refused(422),
    ]);
    Case::new("merge patch and JSON patch (a failing test op)", steps)
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
                .refused(422),
            put(format!("{CONFIGMAPS}/nocm"), cm("nocm", json!({"a": "1"})))
                .what("PUT of a ConfigMap that does not exist")
                .refused(404),
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
    let mut steps = by_mode(
        IDENTITIES,
        bogus_identity,
        "Strict refuses the unknown fields of a custom resource",
        (
            "Warn prunes them with a warning each",
            &["/spec", "/metadata/bogusMeta"],
        ),
        ("Ignore prunes them silently", &["/spec"]),
    );
    steps.extend([
        post(IDENTITIES, bogus_identity("default"))
            .what("the default")
            .expect(201)
            .cmp(Cmp::Warnings)
            .fields(&["/spec"]),
        post(q(IDENTITIES, "Bogus"), identity("badmode"))
            .what("an unknown fieldValidation")
            .refused(422),
    ]);
    steps.extend(by_mode(
        CONFIGMAPS,
        bogus_cm,
        "Strict refuses an unknown field of a ConfigMap",
        ("Warn drops it with a warning", &["/bogus", "/data"]),
        ("Ignore drops it silently", &["/bogus"]),
    ));
    steps.extend([
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
        .refused(400),
        apply(
            format!("{IDENTITIES}/warn?fieldManager=a&fieldValidation=Strict"),
            {
                let mut o = identity("warn");
                o["spec"]["bogus"] = json!(3);
                o
            },
        )
        .what("a Strict apply with an unknown field")
        .refused(500),
        apply(format!("{IDENTITIES}/warn?fieldManager=a"), {
            let mut o = identity("warn");
            o["metadata"]["namespace"] = json!("{ns}");
            o["spec"]["bogus"] = json!(3);
            o
        })
        .what("an apply with an unknown field, without fieldValidation")
        .refused(500),
        apply(
            format!("{CONFIGMAPS}/warn?fieldManager=a"),
            bogus_cm("warn"),
        )
        .what("an apply of a ConfigMap with an unknown field")
        .refused(500),
        merge_patch(
            q(&format!("{IDENTITIES}/warn"), "Warn"),
            json!({"spec": {"bogus": 2, "tags": {"a": "b"}}}),
        )
        .what("a Warn merge patch with an unknown field")
        .expect(200)
        .cmp(Cmp::Warnings)
        .fields(&["/spec"]),
    ]);
    Case::new(
        "fieldValidation Strict, Warn, Ignore and the default, for a custom resource and a ConfigMap",
        steps,
    )
}

/// Creates of `coll` objects with unknown fields under `fieldValidation` Strict (refused), Warn
/// and Ignore (created; what each is said to do and the fields compared).
fn by_mode(
    coll: &str,
    bogus: impl Fn(&str) -> Value,
    strict: &str,
    warn: (&str, &[&'static str]),
    ignore: (&str, &[&'static str]),
) -> Vec<Step> {
    let q = |mode: &str| format!("{coll}?fieldValidation={mode}");
    let mut steps = vec![post(q("Strict"), bogus("strict")).what(strict).refused(400)];
    for (mode, name, (what, fields)) in [("Warn", "warn", warn), ("Ignore", "ignore", ignore)] {
        steps.push(
            post(q(mode), bogus(name))
                .what(what)
                .expect(201)
                .cmp(Cmp::Warnings)
                .fields(fields),
        );
    }
    steps
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
                .refused(422),
            post(IDENTITIES, identity("id1"))
                .what("a good one of the same name already exists")
                .status_error(409),
            post(CONFIGMAPS, cm("c", json!({"a": "1"})))
                .what("a ConfigMap")
                .expect(201),
            post(format!("{CONFIGMAPS}?fieldValidation=Strict"), {
                let mut o = cm("c", json!({"a": "1"}));
                o["bogus"] = json!(1);
                o
            })
            .what("a Strict create of the same name with an unknown field")
            .refused(400),
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
