//! Reads: a watch from a resourceVersion that is too old (410 Expired in an ERROR event), a watch
//! resumed from a list's resourceVersion, and lists in pages (`limit`, `continue`,
//! `remainingItemCount`, tokens that are not valid).

use serde_json::json;

use crate::harness::*;
use crate::writes::{IDENTITIES, identity};

const CONFIGMAPS: &str = "/api/v1/namespaces/{ns}/configmaps";
const GRANTS: &str = "/apis/uami.dev/v1alpha1/namespaces/{ns}/rolegrants";

fn watch() -> Case {
    Case::new(
        "watch: too old resourceVersion, resumed from a list",
        vec![
            post(IDENTITIES, identity("id1"))
                .what("an identity")
                .expect(201),
            get(format!(
                "{GRANTS}?watch=true&resourceVersion=1&timeoutSeconds=2"
            ))
            .what("a watch from resourceVersion 1 is too old")
            .expect(200)
            .fields(&[
                "/0/type",
                "/0/object/kind",
                "/0/object/code",
                "/0/object/reason",
                "/1",
            ])
            .cmp(Cmp::MessageShape("/0/object/message")),
            get(format!(
                "{IDENTITIES}?watch=true&resourceVersion=1&timeoutSeconds=2"
            ))
            .what("the same for a kind with objects")
            .expect(200)
            .fields(&["/0/type", "/0/object/code", "/0/object/reason", "/1"])
            .cmp(Cmp::MessageShape("/0/object/message")),
            get(IDENTITIES)
                .what("list")
                .expect(200)
                .cmp(Cmp::ItemNames)
                .save("rv", "/metadata/resourceVersion"),
            post(IDENTITIES, identity("id2"))
                .what("another identity")
                .expect(201),
            get(format!(
                "{IDENTITIES}?watch=true&resourceVersion={{rv}}&timeoutSeconds=1"
            ))
            .what("a watch from the list's resourceVersion sees only the change since")
            .expect(200)
            .fields(&["/0/type", "/0/object/metadata/name", "/1"]),
            get(format!(
                "{IDENTITIES}?watch=true&resourceVersion=abc&timeoutSeconds=1"
            ))
            .what("a resourceVersion that is not a number")
            .expect(500)
            .cmp(Cmp::Message),
        ],
    )
}

/// A page of the ConfigMaps listed with `query`: its items' names, whether it goes on, and its
/// remainingItemCount.
fn page(query: &str, what: &str) -> Step {
    get(format!("{CONFIGMAPS}?{query}"))
        .what(what)
        .expect(200)
        .cmp(Cmp::ItemNames)
        .cmp(Cmp::Present("/metadata/continue"))
        .fields(&["/metadata/remainingItemCount"])
}

/// A continue token made of `json`.
fn token(json: &str) -> String {
    base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, json)
}

fn paging() -> Case {
    let mut steps: Vec<Step> = ["a", "b", "c", "d", "e"]
        .iter()
        .map(|n| {
            let labels = if *n == "b" {
                json!({})
            } else {
                json!({"page": "yes"})
            };
            post(
                CONFIGMAPS,
                json!({"metadata": {"name": n, "labels": labels}}),
            )
            .what(format!("ConfigMap {n}"))
            .expect(201)
        })
        .collect();
    steps.extend([
        page("limit=2", "first page")
            .fields(&["/kind", "/apiVersion"])
            .save("c1", "/metadata/continue"),
        post(CONFIGMAPS, json!({"metadata": {"name": "bb"}}))
            .what("a ConfigMap created between pages")
            .expect(201),
        page("limit=2&continue={c1}", "second page, as of the first page")
            .save("c2", "/metadata/continue"),
        page("limit=2&continue={c2}", "last page"),
        page(
            "limit=2&labelSelector=page%3Dyes",
            "a page with a label selector has no remainingItemCount",
        ),
        get(format!("{CONFIGMAPS}?limit=2&continue=not-a-token"))
            .what("a continue token that is not valid")
            .expect(400)
            .cmp(Cmp::MessageUntil("continue key is not valid")),
        get(format!(
            "{CONFIGMAPS}?limit=2&continue={}",
            token(r#"{"v":"meta.k8s.io/v0","rv":5,"start":"a\u0000"}"#)
        ))
        .what("a continue token of another version")
        .expect(400)
        .cmp(Cmp::Message),
        get(format!(
            "{CONFIGMAPS}?limit=2&continue={}",
            token(r#"{"v":"meta.k8s.io/v1","rv":5,"start":"a\u0000"}"#)
        ))
        .what("a continue token of a resourceVersion no list was served at")
        .expect(200)
        .cmp(Cmp::ItemNames)
        .differs(
            "the sandbox keeps no history of a collection, only the pages of the lists it served: \
             a continue token of another resourceVersion is answered 410 Expired, where \
             kube-apiserver reads the collection at that revision (until etcd compacts it)",
        ),
        get(format!(
            "{CONFIGMAPS}?limit=2&continue={{c1}}&resourceVersion=5"
        ))
        .what("continue with a resourceVersion")
        .expect(400)
        .cmp(Cmp::Message),
        page("limit=10", "a limit above the count: one page"),
    ]);
    Case::new("paged lists: limit, continue, remainingItemCount", steps)
}

pub fn cases() -> Vec<Case> {
    vec![watch(), paging()]
}
