//! Every ARM request the controller sent while the tutorial converged (and was deleted), and
//! every answer the emulator gave, validated against the official OpenAPI documents, Compute
//! included (the 2024-11-01 documents), each request's api-version against the document it
//! matched.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use serde_json::json;
use std::collections::BTreeMap;

use support::armspec::{Specs, validate_journal};
use support::*;
use uami_controller::emulator::{Exchange, Knobs, LroForm};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_requests_and_emulator_answers_follow_the_specs() {
    let mut opts = tutorial_options(Duration::from_secs(3), 0.5);
    // A scale set too, its PATCH answered in the Location form (the VM's in the
    // Azure-AsyncOperation form).
    add_web_scale_set(&mut opts);
    opts.world.knobs = Knobs {
        lro_forms: BTreeMap::from([(
            "VirtualMachineScaleSets_Update".to_string(),
            LroForm::Location,
        )]),
        ..Default::default()
    };
    let stack = tutorial_stack(opts).await;
    stack.apply_yaml(TUTORIAL_ON_WEB).await.unwrap();
    ready(&grants(&stack, "tutorial"), "my-identity-reads-devtest", 60).await;
    ready(&bindings(&stack, "tutorial"), "my-identity-on-myvm", 60).await;
    eventually(60, "the identity on web", || async {
        (user_assigned(&stack.emulator.state(), "web") == 1).then_some(())
    })
    .await;
    delete(&bindings(&stack, TUTORIAL), "my-identity-on-web").await;
    delete_tutorial(&stack).await;
    eventually(60, "deletion", || async {
        stack.emulator.state()["identities"]
            .as_array()?
            .is_empty()
            .then_some(())
    })
    .await;
    let journal = stack.emulator.journal();
    let (errors, checked, unchecked) = validate_journal(&journal);
    assert!(
        errors.is_empty(),
        "{} violations:\n{}",
        errors.len(),
        errors.join("\n")
    );
    let missing: Vec<&str> = [
        "UserAssignedIdentities_CreateOrUpdate",
        "UserAssignedIdentities_Get",
        "UserAssignedIdentities_Delete",
        "RoleAssignments_Create",
        "RoleAssignments_Get",
        "RoleAssignments_Delete",
        "RoleDefinitions_List",
        "VirtualMachines_Get",
        "VirtualMachines_Update",
        "VirtualMachineScaleSets_Get",
        "VirtualMachineScaleSets_Update",
    ]
    .into_iter()
    .filter(|op| !journal.iter().any(|e| e.operation == *op))
    .collect();
    assert!(missing.is_empty(), "the suite did not exercise {missing:?}");
    assert!(checked >= 15, "only {checked} exchanges checked");
    assert!(
        journal
            .iter()
            .any(|e| e.operation == "VirtualMachineScaleSets_Update" && e.status == 202),
        "the Location form was exercised"
    );
    eprintln!("checked {checked} exchanges; not covered by a stored document: {unchecked:?}");
    stack.stop().await;
}

#[test]
fn the_checker_catches_a_wrong_body() {
    let mut specs = Specs::load();
    let bad = Exchange {
        operation: "RoleAssignments_Create".into(),
        method: "PUT".into(),
        path: "/x".into(),
        query: String::new(),
        status: 201,
        request: Some(
            json!({"properties": {"roleDefinitionId": "/r", "principalId": "p", "principalType": "Robot"}}),
        ),
        response: Some(json!({"properties": {"scope": 5}})),
        ..Exchange::default()
    };
    let errors = specs.validate(&bad).unwrap();
    assert!(errors.iter().any(|e| e.contains("request")), "{errors:?}");
    assert!(errors.iter().any(|e| e.contains("response")), "{errors:?}");
    let patch =
        |query: &str, request: serde_json::Value, response: Option<serde_json::Value>| Exchange {
            operation: "VirtualMachines_Update".into(),
            method: "PATCH".into(),
            path: "/x".into(),
            query: query.into(),
            status: 200,
            request: Some(request),
            response,
            ..Exchange::default()
        };
    let current = "api-version=2024-11-01";
    let id = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/a";
    // The official enum has no "UserAssigned,SystemAssigned".
    let errors = specs
        .validate(&patch(
            current,
            json!({"identity": {"type": "UserAssigned,SystemAssigned"}}),
            None,
        ))
        .unwrap();
    assert!(errors.iter().any(|e| e.contains("request")), "{errors:?}");
    // A null entry removes an identity (D2), and passes.
    let errors = specs
        .validate(&patch(
            current,
            json!({"identity": {"type": "UserAssigned", "userAssignedIdentities": {id: null, "/x/y": {}}}}),
            None,
        ))
        .unwrap();
    assert_eq!(
        errors.len(),
        1,
        "only the key that is no identity id: {errors:?}"
    );
    // Another Compute api-version than the document's.
    let errors = specs
        .validate(&patch(
            "api-version=2023-03-01",
            json!({"identity": {"type": "None"}}),
            None,
        ))
        .unwrap();
    assert!(
        errors.iter().any(|e| e.contains("api-version 2023-03-01")),
        "{errors:?}"
    );
    // A VirtualMachine must have a location (Resource's `required`).
    let errors = specs
        .validate(&patch(
            current,
            json!({"identity": {"type": "None"}}),
            Some(json!({"id": "/x", "name": "vm", "properties": {}})),
        ))
        .unwrap();
    assert!(errors.iter().any(|e| e.contains("location")), "{errors:?}");
}
