//! The apply-time validation table (`tests/api_validation/bad_objects.yaml`, as
//! `tests/api_validation.rs` reads it): each bad object is sent to both servers, created (or, with
//! `old`, the old object created and the bad one sent as its update), and both must refuse it the
//! same way: 422 Invalid, the same causes (field and reason) and the same message.

use serde_json::{Value, json};

use crate::bad_objects::{self, edited};
use crate::harness::*;

/// The valid object of a kind of the table, in the case's namespace (a GrantPolicy, cluster-wide,
/// takes the namespace's name).
fn base(kind: &str) -> Value {
    match kind {
        "identity" => json!({"apiVersion": "uami.dev/v1alpha1", "kind": "UserAssignedIdentity",
            "metadata": {"name": "my-identity", "namespace": "{ns}"},
            "spec": {"resourceGroup": "DevTest", "location": "eastus", "azureName": "myUserAssignedIdentity"}}),
        "binding" => json!({"apiVersion": "uami.dev/v1alpha1", "kind": "IdentityBinding",
            "metadata": {"name": "bind", "namespace": "{ns}"},
            "spec": {"identityRef": {"name": "my-identity"},
                     "target": {"virtualMachine": {"resourceGroup": "DevTest", "name": "myVM"}}}}),
        "grant" => json!({"apiVersion": "uami.dev/v1alpha1", "kind": "RoleGrant",
            "metadata": {"name": "grant", "namespace": "{ns}"},
            "spec": {"identityRef": {"name": "my-identity"}, "role": "Reader",
                     "scope": {"resourceGroup": {"name": "DevTest"}}}}),
        "policy" => json!({"apiVersion": "uami.dev/v1alpha1", "kind": "GrantPolicy",
            "metadata": {"name": "{ns}"},
            "spec": {"namespaces": ["team-a"],
                     "roleGrants": [{"roles": ["Reader"], "scopes": [{"resourceGroup": {"name": "DevTest"}}]}],
                     "identityBindings": [{"virtualMachine": {"resourceGroup": "DevTest", "name": "myVM"}}]}}),
        other => panic!("no kind {other}"),
    }
}

/// The collection of a kind of the table.
fn collection(kind: &str) -> &'static str {
    match kind {
        "identity" => "/apis/uami.dev/v1alpha1/namespaces/{ns}/userassignedidentities",
        "binding" => "/apis/uami.dev/v1alpha1/namespaces/{ns}/identitybindings",
        "grant" => "/apis/uami.dev/v1alpha1/namespaces/{ns}/rolegrants",
        "policy" => "/apis/uami.dev/v1alpha1/grantpolicies",
        other => panic!("no kind {other}"),
    }
}

fn edited_kind(kind: &str, edits: &[Vec<Value>]) -> Value {
    edited(base(kind), edits)
}

pub fn cases() -> Vec<Case> {
    bad_objects::table()
        .into_iter()
        .map(|b| {
            let object = edited_kind(&b.object, &b.object_edits);
            let coll = collection(&b.object);
            let name = object["metadata"]["name"].as_str().unwrap().to_string();
            let steps = match b.old.as_deref() {
                None => vec![
                    post(coll, object)
                        .what("create the bad object")
                        .expect(422)
                        .fields(&["/details/name", "/details/group", "/details/kind"])
                        .cmp(Cmp::Message),
                ],
                Some(kind) => {
                    let mut object = object;
                    object["metadata"]["resourceVersion"] = json!("{rv}");
                    vec![
                        post(coll, edited_kind(kind, &b.old_edits))
                            .what("create the valid object")
                            .expect(201)
                            .save("rv", "/metadata/resourceVersion"),
                        put(format!("{coll}/{name}"), object)
                            .what("update it to the bad object")
                            .expect(422)
                            .fields(&["/details/name", "/details/group", "/details/kind"])
                            .cmp(Cmp::Message),
                    ]
                }
            };
            let cleanup = if b.object == "policy" {
                vec![delete(format!("{coll}/{name}"))]
            } else {
                Vec::new()
            };
            Case::new(format!("bad object: {}", b.name), steps).cleanup(cleanup)
        })
        .collect()
}
