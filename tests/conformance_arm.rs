//! Every ARM request the controller sent while the tutorial converged (and was deleted), and
//! every answer the emulator gave, validated against the official OpenAPI documents, Compute
//! included (the 2024-11-01 documents), each request's api-version against the document it
//! matched.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use serde_json::json;

use reqwest::Method;
use support::arm::Admin;
use support::armspec::{Specs, assert_valid};
use support::*;
use uami_emulator::world::TUTORIAL_SUBSCRIPTION as SUB;
use uami_emulator::{Exchange, Knobs, LroForm};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_requests_and_emulator_answers_follow_the_specs() {
    // A scale set too.
    let stack = web_stack(tutorial_options(Duration::from_secs(3), 0.5)).await;
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
    let (checked, unchecked) = assert_valid(&journal);
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
        !journal
            .iter()
            .any(|e| e.operation.ends_with("_Update") && e.status == 202),
        "Compute's updates answer only 200"
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

const VM: &str = "/resourceGroups/DevTest/providers/Microsoft.Compute/virtualMachines";
const VMSS: &str = "/resourceGroups/DevTest/providers/Microsoft.Compute/virtualMachineScaleSets";

/// The path of `collection/name` with the documents' api-version.
fn compute_path(collection: &str, name: &str) -> String {
    format!("/subscriptions/{SUB}{collection}/{name}?api-version=2024-11-01")
}

fn new_vm() -> serde_json::Value {
    json!({"location": "eastus", "tags": {"team": "a"}, "properties": {
        "hardwareProfile": {"vmSize": "Standard_D2s_v3"},
        "storageProfile": {
            "imageReference": {"publisher": "Canonical", "offer": "ubuntu-24_04-lts", "sku": "server", "version": "latest"},
            "osDisk": {"createOption": "FromImage", "managedDisk": {"storageAccountType": "Premium_LRS"}},
        },
        "osProfile": {"computerName": "vm2", "adminUsername": "azureuser", "adminPassword": "S3cret-not-returned"},
        "networkProfile": {"networkInterfaces": [{"id": format!("/subscriptions/{SUB}/resourceGroups/DevTest/providers/Microsoft.Network/networkInterfaces/vm2-nic")}]},
    }})
}

fn new_scale_set() -> serde_json::Value {
    json!({"location": "eastus", "sku": {"name": "Standard_D2s_v3", "tier": "Standard", "capacity": 2}, "properties": {
        "upgradePolicy": {"mode": "Manual"},
        "virtualMachineProfile": {
            "storageProfile": {"imageReference": {"publisher": "Canonical", "offer": "ubuntu-24_04-lts", "sku": "server", "version": "latest"}},
            "osProfile": {"computerNamePrefix": "ss", "adminUsername": "azureuser", "customData": "c2VjcmV0"},
            "networkProfile": {"networkInterfaceConfigurations": [{"name": "nic", "properties": {"primary": true, "ipConfigurations": [{"name": "ip", "properties": {"subnet": {"id": "/subnet"}}}]}}]},
        },
    }})
}

/// PUT, GET and PATCH of VMs and scale sets answer as the Compute documents say (validated
/// against them), and the `lroForms` knob applies only where an operation's document allows 202.
#[tokio::test]
async fn compute_put_get_patch_and_lro_forms_follow_the_specs() {
    let emulator = support::arm::tutorial_emulator(|w| w.lro_polls = 1).await;
    let admin = Admin::of(&emulator);
    let identity = admin.put_identity("id-compute", json!({})).await;
    let identity_id = identity["id"].as_str().unwrap().to_string();
    for (collection, name, body) in [(VM, "vm2", new_vm()), (VMSS, "ss2", new_scale_set())] {
        let path = compute_path(collection, name);
        // Created: 201, Creating, an operation to poll.
        let (status, headers, created) = admin
            .send(Method::PUT, &path, Some(body.clone()), &[])
            .await;
        assert_eq!(status, 201, "{created}");
        assert_eq!(
            created["properties"]["provisioningState"], "Creating",
            "{created}"
        );
        assert!(headers.get("azure-asyncoperation").is_some());
        assert_eq!(admin.wait_operation(&headers).await["status"], "Succeeded");
        let got = admin.get(&path).await;
        assert_eq!(got["properties"]["provisioningState"], "Succeeded", "{got}");
        assert!(got["properties"]["timeCreated"].is_string(), "{got}");
        assert!(
            !got.to_string().contains("S3cret") && !got.to_string().contains("customData"),
            "{got}"
        );
        // Replaced: 200, Updating, the identity given.
        let mut update = body.clone();
        update["identity"] =
            json!({"type": "UserAssigned", "userAssignedIdentities": {identity_id.clone(): {}}});
        let (status, headers, replaced) = admin.send(Method::PUT, &path, Some(update), &[]).await;
        assert_eq!(status, 200, "{replaced}");
        assert_eq!(replaced["properties"]["provisioningState"], "Updating");
        let ua = &replaced["identity"]["userAssignedIdentities"][&identity_id];
        assert_eq!(
            ua["clientId"], identity["properties"]["clientId"],
            "{replaced}"
        );
        admin.wait_operation(&headers).await;
        // Refused as the document requires: no location; a data disk without its lun.
        let mut no_location = body.clone();
        no_location.as_object_mut().unwrap().remove("location");
        let (status, _, v) = admin.send(Method::PUT, &path, Some(no_location), &[]).await;
        assert_eq!(
            (status, v["error"]["code"].as_str()),
            (400, Some("LocationRequired"))
        );
    }
    let mut no_lun = new_vm();
    no_lun["properties"]["storageProfile"]["dataDisks"] =
        json!([{"createOption": "Empty", "diskSizeGB": 8}]);
    let (status, _, v) = admin
        .send(Method::PUT, &compute_path(VM, "vm3"), Some(no_lun), &[])
        .await;
    assert_eq!(status, 400);
    assert_eq!(v["error"]["code"], "InvalidParameter", "{v}");
    assert_eq!(v["error"]["target"], "dataDisks.lun", "{v}");
    // A VM of the world: the full model.
    let my_vm = admin.get(&compute_path(VM, "myVM")).await;
    for field in [
        "hardwareProfile",
        "storageProfile",
        "osProfile",
        "networkProfile",
        "vmId",
        "provisioningState",
        "timeCreated",
    ] {
        assert!(my_vm["properties"].get(field).is_some(), "{field}: {my_vm}");
    }
    assert_eq!(
        my_vm["properties"]["hardwareProfile"]["vmSize"],
        "Standard_D2s_v3"
    );
    // PATCH: 200 with the new model (identity and tags), Updating, Azure-AsyncOperation, even
    // with the Location form asked for VirtualMachines_Update (its document allows only 200).
    let mut knobs = Knobs::default();
    knobs
        .lro_forms
        .insert("VirtualMachines_Update".into(), LroForm::Location);
    knobs
        .lro_forms
        .insert("VirtualMachines_Restart".into(), LroForm::Location);
    assert!(
        knobs
            .check()
            .unwrap_err()
            .contains("VirtualMachines_Update")
    );
    let (status, _, _) = admin
        .send(
            Method::PUT,
            &admin.url("/_emulator/knobs"),
            Some(serde_json::to_value(&knobs).unwrap()),
            &[],
        )
        .await;
    assert_eq!(status, 400, "the knob is refused");
    emulator.set_knobs(knobs);
    for (collection, name) in [(VM, "myVM"), (VMSS, "ss2")] {
        let body = json!({"tags": {"patched": "yes"}, "identity": {"type": "UserAssigned", "userAssignedIdentities": {identity_id.clone(): {}}}});
        let (status, headers, patched) = admin.patch(&compute_path(collection, name), body).await;
        assert_eq!(status, 200, "{patched}");
        assert_eq!(
            patched["properties"]["provisioningState"], "Updating",
            "{patched}"
        );
        assert_eq!(patched["tags"]["patched"], "yes", "{patched}");
        assert!(
            patched["identity"]["userAssignedIdentities"][&identity_id]["principalId"].is_string(),
            "{patched}"
        );
        assert!(headers.get("location").is_none());
        assert_eq!(admin.wait_operation(&headers).await["status"], "Succeeded");
    }
    // Restart allows 202: the Location form, polled to the end.
    let restart = format!("/subscriptions/{SUB}{VM}/myVM/restart?api-version=2024-11-01");
    let (status, headers, _) = admin.send(Method::POST, &restart, None, &[]).await;
    assert_eq!(status, 202);
    let location = headers["location"].to_str().unwrap().to_string();
    let mut polls = 0;
    loop {
        let (s, _, _) = admin.send(Method::GET, &location, None, &[]).await;
        if s != 202 {
            assert_eq!(s, 200);
            break;
        }
        polls += 1;
        assert!(polls < 50);
    }
    let journal = emulator.journal();
    // The refused requests lack what the documents require, on purpose: their answers are
    // checked, not their bodies.
    let answers: Vec<Exchange> = journal
        .iter()
        .cloned()
        .map(|mut e| {
            if e.status == 400 {
                e.request = None;
            }
            e
        })
        .collect();
    let (checked, _) = assert_valid(&answers);
    for op in [
        "VirtualMachines_CreateOrUpdate",
        "VirtualMachines_Get",
        "VirtualMachines_Update",
        "VirtualMachineScaleSets_CreateOrUpdate",
        "VirtualMachineScaleSets_Get",
        "VirtualMachineScaleSets_Update",
        "VirtualMachines_Restart",
    ] {
        assert!(
            journal.iter().any(|e| e.operation == op && e.status < 300),
            "{op}"
        );
    }
    assert!(checked >= 12, "{checked}");
    emulator.shutdown().await;
}
