//! Bad objects are refused by the generated schemas with a message that names the field, and
//! every example is accepted.
//!
//! Structural rules (types, required, patterns, lengths, enums) are checked with a JSON-schema
//! validator; the CEL rules (`x-kubernetes-validations`, including the transition rules that make
//! fields immutable) are evaluated with kube-cel, as kube-apiserver evaluates them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;

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

/// OpenAPI v3 `nullable` expressed in JSON Schema terms.
fn to_json_schema(schema: &Value) -> Value {
    match schema {
        Value::Object(map) => {
            let mut out = serde_json::Map::new();
            for (k, v) in map {
                out.insert(k.clone(), to_json_schema(v));
            }
            if out.remove("nullable") == Some(Value::Bool(true))
                && let Some(Value::String(t)) = out.get("type").cloned()
            {
                out.insert("type".into(), json!([t, "null"]));
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(to_json_schema).collect()),
        other => other.clone(),
    }
}

/// Every error the schema and the CEL rules report for `object` (updating `old` when given),
/// each as `field.path: message`.
fn validate(schemas: &BTreeMap<String, Value>, object: &Value, old: Option<&Value>) -> Vec<String> {
    let kind = object["kind"].as_str().unwrap();
    let schema = &schemas[kind];
    let validator = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft4)
        .should_validate_formats(true)
        .build(&to_json_schema(schema))
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

/// `base` with the JSON value at the dotted `path` replaced (or removed when `value` is None).
fn with(mut base: Value, path: &str, value: Option<Value>) -> Value {
    let parts: Vec<&str> = path.split('.').collect();
    let mut cur = &mut base;
    for part in &parts[..parts.len() - 1] {
        cur = if let Ok(i) = part.parse::<usize>() {
            &mut cur[i]
        } else {
            &mut cur[*part]
        };
    }
    let last = parts[parts.len() - 1];
    match value {
        Some(v) => cur[last] = v,
        None => {
            cur.as_object_mut().unwrap().remove(last);
        }
    }
    base
}

struct Case {
    name: &'static str,
    object: Value,
    old: Option<Value>,
    /// The field the error message must name.
    field: &'static str,
}

fn case(name: &'static str, object: Value, field: &'static str) -> Case {
    Case {
        name,
        object,
        old: None,
        field,
    }
}

fn update(name: &'static str, old: Value, object: Value, field: &'static str) -> Case {
    Case {
        name,
        object,
        old: Some(old),
        field,
    }
}

fn bad_objects() -> Vec<Case> {
    let id = identity(identity_spec());
    let b = binding(binding_spec());
    let g = grant(grant_spec());
    let p = policy(policy_spec());
    vec![
        // UserAssignedIdentity
        case(
            "subscription id not a GUID",
            with(
                id.clone(),
                "spec.subscriptionId",
                Some(json!("my-subscription")),
            ),
            "spec.subscriptionId",
        ),
        case(
            "subscription id one digit short",
            with(
                id.clone(),
                "spec.subscriptionId",
                Some(json!("0000000-0000-0000-0000-000000000000")),
            ),
            "spec.subscriptionId",
        ),
        case(
            "resource group missing",
            with(id.clone(), "spec.resourceGroup", None),
            "resourceGroup",
        ),
        case(
            "resource group empty",
            with(id.clone(), "spec.resourceGroup", Some(json!(""))),
            "spec.resourceGroup",
        ),
        case(
            "resource group over 90 characters",
            with(
                id.clone(),
                "spec.resourceGroup",
                Some(json!("r".repeat(91))),
            ),
            "spec.resourceGroup",
        ),
        case(
            "resource group ending in a period",
            with(id.clone(), "spec.resourceGroup", Some(json!("DevTest."))),
            "spec.resourceGroup",
        ),
        case(
            "resource group with a slash",
            with(id.clone(), "spec.resourceGroup", Some(json!("Dev/Test"))),
            "spec.resourceGroup",
        ),
        case(
            "location missing",
            with(id.clone(), "spec.location", None),
            "location",
        ),
        case(
            "azure name too short",
            with(id.clone(), "spec.azureName", Some(json!("ab"))),
            "spec.azureName",
        ),
        case(
            "azure name over 128 characters",
            with(id.clone(), "spec.azureName", Some(json!("a".repeat(129)))),
            "spec.azureName",
        ),
        case(
            "azure name with a period",
            with(id.clone(), "spec.azureName", Some(json!("my.identity"))),
            "spec.azureName",
        ),
        case(
            "azure name starting with a hyphen",
            with(id.clone(), "spec.azureName", Some(json!("-identity"))),
            "spec.azureName",
        ),
        case(
            "object name not an Azure name and no azureName",
            with(
                with(id.clone(), "spec.azureName", None),
                "metadata.name",
                Some(json!("my.identity")),
            ),
            "spec.azureName",
        ),
        case(
            "unknown deletion policy",
            with(id.clone(), "spec.deletionPolicy", Some(json!("Remove"))),
            "spec.deletionPolicy",
        ),
        case(
            "deletion policy in lower case",
            with(id.clone(), "spec.deletionPolicy", Some(json!("delete"))),
            "spec.deletionPolicy",
        ),
        case(
            "tag value over 256 characters",
            with(
                id.clone(),
                "spec.tags",
                Some(json!({"team": "x".repeat(257)})),
            ),
            "spec.tags",
        ),
        case(
            "export to an invalid ConfigMap name",
            with(
                id.clone(),
                "spec.exportTo",
                Some(json!({"configMap": "Bad_Name"})),
            ),
            "spec.exportTo.configMap",
        ),
        case(
            "adoptExisting not a boolean",
            with(id.clone(), "spec.adoptExisting", Some(json!("yes"))),
            "spec.adoptExisting",
        ),
        update(
            "resource group changed",
            id.clone(),
            with(id.clone(), "spec.resourceGroup", Some(json!("Prod"))),
            "spec.resourceGroup",
        ),
        update(
            "location changed",
            id.clone(),
            with(id.clone(), "spec.location", Some(json!("westeurope"))),
            "spec.location",
        ),
        update(
            "azure name changed",
            id.clone(),
            with(id.clone(), "spec.azureName", Some(json!("otherName"))),
            "spec.azureName",
        ),
        update(
            "azure name removed",
            id.clone(),
            with(id.clone(), "spec.azureName", None),
            "spec.azureName",
        ),
        update(
            "subscription id added later",
            id.clone(),
            with(
                id.clone(),
                "spec.subscriptionId",
                Some(json!("00000000-0000-0000-0000-000000000001")),
            ),
            "spec.subscriptionId",
        ),
        // IdentityBinding
        case(
            "two targets",
            with(
                b.clone(),
                "spec.target.virtualMachineScaleSet",
                Some(json!({"resourceGroup": "DevTest", "name": "myScaleSet"})),
            ),
            "spec.target",
        ),
        case(
            "no target",
            with(b.clone(), "spec.target", Some(json!({}))),
            "spec.target",
        ),
        case(
            "VM name over 64 characters",
            with(
                b.clone(),
                "spec.target.virtualMachine.name",
                Some(json!("v".repeat(65))),
            ),
            "spec.target.virtualMachine.name",
        ),
        case(
            "VM name ending in a period",
            with(
                b.clone(),
                "spec.target.virtualMachine.name",
                Some(json!("myVM.")),
            ),
            "spec.target.virtualMachine.name",
        ),
        case(
            "VM subscription not a GUID",
            with(
                b.clone(),
                "spec.target.virtualMachine.subscriptionId",
                Some(json!("sub")),
            ),
            "spec.target.virtualMachine.subscriptionId",
        ),
        case(
            "identity ref in upper case",
            with(
                b.clone(),
                "spec.identityRef.name",
                Some(json!("MyIdentity")),
            ),
            "spec.identityRef.name",
        ),
        case(
            "identity ref missing",
            with(b.clone(), "spec.identityRef", None),
            "identityRef",
        ),
        case(
            "token resource not a URI",
            with(
                b.clone(),
                "spec.tokenCheck",
                Some(json!({"resource": "management"})),
            ),
            "spec.tokenCheck.resource",
        ),
        update(
            "target changed",
            b.clone(),
            with(
                b.clone(),
                "spec.target.virtualMachine.name",
                Some(json!("otherVM")),
            ),
            "spec.target",
        ),
        case(
            "VM and service account at once",
            with(
                b.clone(),
                "spec.target.serviceAccount",
                Some(json!({"name": "app"})),
            ),
            "spec.target",
        ),
        case(
            "service account name in upper case",
            with(
                b.clone(),
                "spec.target",
                Some(json!({"serviceAccount": {"name": "App"}})),
            ),
            "spec.target.serviceAccount.name",
        ),
        case(
            "service account without a name",
            with(
                b.clone(),
                "spec.target",
                Some(json!({"serviceAccount": {}})),
            ),
            "spec.target.serviceAccount",
        ),
        update(
            "service account changed",
            with(
                b.clone(),
                "spec.target",
                Some(json!({"serviceAccount": {"name": "app"}})),
            ),
            with(
                b.clone(),
                "spec.target",
                Some(json!({"serviceAccount": {"name": "other"}})),
            ),
            "spec.target",
        ),
        update(
            "VM target changed to a service account",
            b.clone(),
            with(
                b.clone(),
                "spec.target",
                Some(json!({"serviceAccount": {"name": "app"}})),
            ),
            "spec.target",
        ),
        update(
            "identity ref changed",
            b.clone(),
            with(b.clone(), "spec.identityRef.name", Some(json!("other"))),
            "spec.identityRef",
        ),
        // RoleGrant
        case(
            "no scope",
            with(g.clone(), "spec.scope", Some(json!({}))),
            "spec.scope",
        ),
        case(
            "two scopes",
            with(
                g.clone(),
                "spec.scope.subscription",
                Some(json!({"subscriptionId": "00000000-0000-0000-0000-000000000001"})),
            ),
            "spec.scope",
        ),
        case(
            "resource id outside a subscription",
            with(
                g.clone(),
                "spec.scope",
                Some(json!({"resourceId": "/providers/Microsoft.Storage/storageAccounts/x"})),
            ),
            "spec.scope.resourceId",
        ),
        case(
            "scope subscription not a GUID",
            with(
                g.clone(),
                "spec.scope",
                Some(json!({"subscription": {"subscriptionId": "prod"}})),
            ),
            "spec.scope.subscription.subscriptionId",
        ),
        case(
            "role id with a bad GUID",
            with(
                g.clone(),
                "spec.role",
                Some(json!(
                    "/providers/Microsoft.Authorization/roleDefinitions/not-a-guid"
                )),
            ),
            "spec.role",
        ),
        case(
            "role empty",
            with(g.clone(), "spec.role", Some(json!(""))),
            "spec.role",
        ),
        case(
            "verifyAccess not a boolean",
            with(g.clone(), "spec.verifyAccess", Some(json!("true"))),
            "spec.verifyAccess",
        ),
        update(
            "role changed",
            g.clone(),
            with(g.clone(), "spec.role", Some(json!("Owner"))),
            "spec.role",
        ),
        update(
            "scope changed",
            g.clone(),
            with(
                g.clone(),
                "spec.scope.resourceGroup.name",
                Some(json!("Prod")),
            ),
            "spec.scope",
        ),
        // GrantPolicy
        case(
            "policy without namespaces",
            with(p.clone(), "spec.namespaces", Some(json!([]))),
            "spec.namespaces",
        ),
        case(
            "policy namespace with an underscore",
            with(p.clone(), "spec.namespaces", Some(json!(["team_a"]))),
            "spec.namespaces.0",
        ),
        case(
            "policy rule without roles",
            with(p.clone(), "spec.roleGrants.0.roles", Some(json!([]))),
            "spec.roleGrants.0.roles",
        ),
        case(
            "policy scope with two kinds",
            with(
                p.clone(),
                "spec.roleGrants.0.scopes.0.subscription",
                Some(json!({"subscriptionId": "00000000-0000-0000-0000-000000000001"})),
            ),
            "spec.roleGrants[0].scopes[0]",
        ),
        case(
            "policy rule for a VM and service accounts at once",
            with(
                p.clone(),
                "spec.identityBindings.0.serviceAccount",
                Some(json!({"resourceGroup": "DevTest"})),
            ),
            "spec.identityBindings[0]",
        ),
        case(
            "policy service account rule without a resource group",
            with(
                p.clone(),
                "spec.identityBindings",
                Some(json!([{"serviceAccount": {"identityName": "x-id"}}])),
            ),
            "spec.identityBindings.0.serviceAccount",
        ),
        case(
            "policy service account name not a DNS name",
            with(
                p.clone(),
                "spec.identityBindings",
                Some(
                    json!([{"serviceAccount": {"resourceGroup": "DevTest", "serviceAccounts": ["App_1"]}}]),
                ),
            ),
            "spec.identityBindings.0.serviceAccount.serviceAccounts.0",
        ),
        case(
            "policy binding rule with two targets",
            with(
                p.clone(),
                "spec.identityBindings.0.virtualMachineScaleSet",
                Some(json!({"resourceGroup": "DevTest"})),
            ),
            "spec.identityBindings[0]",
        ),
    ]
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
    for c in &cases {
        let errors = validate(&schemas, &c.object, c.old.as_ref());
        if errors.is_empty() {
            failures.push(format!("{}: accepted", c.name));
        } else if !errors.iter().any(|e| e.contains(c.field)) {
            failures.push(format!(
                "{}: no message names {}: {errors:?}",
                c.name, c.field
            ));
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
