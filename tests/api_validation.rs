//! Bad objects are refused by the generated schemas with a message that names the field, and
//! every example is accepted.
//!
//! Structural rules (types, required, patterns, lengths, enums) are checked with a JSON-schema
//! validator; the CEL rules (`x-kubernetes-validations`, including the transition rules that make
//! fields immutable) are evaluated with kube-cel, as kube-apiserver evaluates them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/bad_objects.rs"]
mod bad_objects;

use std::collections::BTreeMap;
use std::path::Path;

use bad_objects::{edited, with};
use serde::Deserialize;
use serde_json::{Value, json};

/// The `openAPIV3Schema` of each kind, read from the committed `crds/` files.
fn schemas() -> BTreeMap<String, Value> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        let crd: Value = serde_yaml_ng::from_str(&text).unwrap();
        let kind = crd["spec"]["names"]["kind"].as_str().unwrap().to_string();
        out.insert(
            kind,
            crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone(),
        );
    }
    out
}

/// OpenAPI v3 `nullable` expressed in JSON Schema terms, in place: `nullable: true` next to
/// `type: T` becomes `type: [T, "null"]`.
fn nullable_as_json_schema(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            if map.remove("nullable") == Some(Value::Bool(true))
                && let Some(Value::String(t)) = map.get("type").cloned()
            {
                map.insert("type".into(), json!([t, "null"]));
            }
            map.values_mut().for_each(nullable_as_json_schema);
        }
        Value::Array(items) => items.iter_mut().for_each(nullable_as_json_schema),
        _ => {}
    }
}

/// Every error the schema and the CEL rules report for `object` (updating `old` when given),
/// each as `field.path: message`.
fn validate(schemas: &BTreeMap<String, Value>, object: &Value, old: Option<&Value>) -> Vec<String> {
    let kind = object["kind"].as_str().unwrap();
    let schema = &schemas[kind];
    let mut json_schema = schema.clone();
    nullable_as_json_schema(&mut json_schema);
    let validator = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft4)
        .should_validate_formats(true)
        .build(&json_schema)
        .unwrap();
    let mut errors: Vec<String> = validator
        .iter_errors(object)
        .map(|e| {
            let path = e
                .instance_path()
                .to_string()
                .trim_start_matches('/')
                .replace('/', ".");
            format!("{path}: {e}")
        })
        .collect();
    if let Err(cel_errors) = kube_cel::validate(schema, object, old) {
        errors.extend(cel_errors.iter().map(|e| e.to_string()));
    }
    errors
}

fn identity(spec: Value) -> Value {
    json!({"apiVersion": "uami.dev/v1alpha1", "kind": "UserAssignedIdentity",
           "metadata": {"name": "my-identity", "namespace": "team-a"}, "spec": spec})
}

fn identity_spec() -> Value {
    json!({"resourceGroup": "DevTest", "location": "eastus", "azureName": "myUserAssignedIdentity"})
}

fn binding(spec: Value) -> Value {
    json!({"apiVersion": "uami.dev/v1alpha1", "kind": "IdentityBinding",
           "metadata": {"name": "bind", "namespace": "team-a"}, "spec": spec})
}

fn binding_spec() -> Value {
    json!({"identityRef": {"name": "my-identity"},
           "target": {"virtualMachine": {"resourceGroup": "DevTest", "name": "myVM"}}})
}

fn grant(spec: Value) -> Value {
    json!({"apiVersion": "uami.dev/v1alpha1", "kind": "RoleGrant",
           "metadata": {"name": "grant", "namespace": "team-a"}, "spec": spec})
}

fn grant_spec() -> Value {
    json!({"identityRef": {"name": "my-identity"}, "role": "Reader",
           "scope": {"resourceGroup": {"name": "DevTest"}}})
}

fn policy(spec: Value) -> Value {
    json!({"apiVersion": "uami.dev/v1alpha1", "kind": "GrantPolicy",
           "metadata": {"name": "policy"}, "spec": spec})
}

fn policy_spec() -> Value {
    json!({"namespaces": ["team-a"],
           "roleGrants": [{"roles": ["Reader"], "scopes": [{"resourceGroup": {"name": "DevTest"}}]}],
           "identityBindings": [{"virtualMachine": {"resourceGroup": "DevTest", "name": "myVM"}}]})
}

/// The valid object of `kind` with `edits` applied in order.
fn edited_kind(kind: &str, edits: &[Vec<Value>]) -> Value {
    let base = match kind {
        "identity" => identity(identity_spec()),
        "binding" => binding(binding_spec()),
        "grant" => grant(grant_spec()),
        "policy" => policy(policy_spec()),
        other => panic!("no kind {other}"),
    };
    edited(base, edits)
}

/// The bad objects of `api_validation/bad_objects.yaml`.
fn bad_objects() -> Vec<(String, Value, Option<Value>, String)> {
    bad_objects::table()
        .into_iter()
        .map(|b| {
            let old = b.old.as_deref().map(|kind| edited_kind(kind, &b.old_edits));
            (
                b.name,
                edited_kind(&b.object, &b.object_edits),
                old,
                b.field,
            )
        })
        .collect()
}

#[test]
fn bad_objects_are_refused_naming_the_field() {
    let schemas = schemas();
    let cases = bad_objects();
    assert!(
        cases.len() >= 25,
        "at least 25 bad objects, got {}",
        cases.len()
    );
    let mut failures = Vec::new();
    for (name, object, old, field) in &cases {
        let errors = validate(&schemas, object, old.as_ref());
        if errors.is_empty() {
            failures.push(format!("{name}: accepted"));
        } else if !errors.iter().any(|e| e.contains(field.as_str())) {
            failures.push(format!("{name}: no message names {field}: {errors:?}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn good_objects_and_unchanged_updates_are_accepted() {
    let schemas = schemas();
    let good = [
        identity(identity_spec()),
        with(identity(identity_spec()), "spec.azureName", None),
        with(
            identity(identity_spec()),
            "spec.subscriptionId",
            Some(json!("6a2bd3a4-59c6-4d4e-9e8b-5c5a2f0a1b2c")),
        ),
        binding(binding_spec()),
        with(
            binding(binding_spec()),
            "spec.target",
            Some(
                json!({"virtualMachineScaleSet": {"resourceGroup": "DevTest", "name": "my_scale.set"}}),
            ),
        ),
        with(
            binding(binding_spec()),
            "spec.target",
            Some(json!({"serviceAccount": {"name": "app.v1"}})),
        ),
        with(
            policy(policy_spec()),
            "spec.identityBindings",
            Some(
                json!([{"serviceAccount": {"resourceGroup": "DevTest", "identityName": "myUserAssignedIdentity", "serviceAccounts": ["app", "*"]}}, {"serviceAccount": {"subscriptionId": "6a2bd3a4-59c6-4d4e-9e8b-5c5a2f0a1b2c", "resourceGroup": "DevTest"}}]),
            ),
        ),
        grant(grant_spec()),
        with(
            grant(grant_spec()),
            "spec.role",
            Some(json!("acdd72a7-3385-48ef-bd42-f606fba81ae7")),
        ),
        with(
            grant(grant_spec()),
            "spec.role",
            Some(json!(
                "/subscriptions/6a2bd3a4-59c6-4d4e-9e8b-5c5a2f0a1b2c/providers/Microsoft.Authorization/roleDefinitions/acdd72a7-3385-48ef-bd42-f606fba81ae7"
            )),
        ),
        with(
            grant(grant_spec()),
            "spec.scope",
            Some(
                json!({"resourceId": "/subscriptions/6a2bd3a4-59c6-4d4e-9e8b-5c5a2f0a1b2c/resourceGroups/DevTest/providers/Microsoft.Storage/storageAccounts/data"}),
            ),
        ),
        policy(policy_spec()),
    ];
    for object in &good {
        let errors = validate(&schemas, object, None);
        assert!(errors.is_empty(), "{object}: {errors:?}");
        let errors = validate(&schemas, object, Some(object));
        assert!(errors.is_empty(), "update of {object}: {errors:?}");
    }
    // Mutable fields stay mutable.
    let id = identity(identity_spec());
    let retagged = with(
        with(id.clone(), "spec.tags", Some(json!({"team": "a"}))),
        "spec.deletionPolicy",
        Some(json!("Orphan")),
    );
    assert!(validate(&schemas, &retagged, Some(&id)).is_empty());
    // A service account binding may become, or stop being, the account's default.
    let sa = with(
        binding(binding_spec()),
        "spec.target",
        Some(json!({"serviceAccount": {"name": "app"}})),
    );
    let marked = with(
        sa.clone(),
        "spec.target.serviceAccount.default",
        Some(json!(true)),
    );
    assert!(validate(&schemas, &marked, Some(&sa)).is_empty());
    assert!(validate(&schemas, &sa, Some(&marked)).is_empty());
}

#[test]
fn every_example_is_accepted() {
    let schemas = schemas();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let object = Value::deserialize(doc).unwrap();
            if object.is_null() {
                continue;
            }
            let Some(api_version) = object["apiVersion"].as_str() else {
                continue;
            };
            if !api_version.starts_with("uami.dev/") {
                continue;
            }
            let errors = validate(&schemas, &object, None);
            assert!(
                errors.is_empty(),
                "{}: {} {}: {errors:?}",
                path.display(),
                object["kind"],
                object["metadata"]["name"]
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 4,
        "the examples hold at least the tutorial's four objects, found {checked}"
    );
}
