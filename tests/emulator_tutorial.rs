//! The tutorial, walked over HTTP against the emulator exactly as `az` and `curl` do it: sign in
//! as the controller's service principal, create the identity, assign it to the VM (a
//! long-running PATCH, polled), grant Reader on DevTest, then on the VM get a token from IMDS with
//! the identity's client id and read DevTest with it: 403 before the grant has propagated, 200
//! after.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use serde_json::{Value, json};
use uami_controller::emulator::{self, World, world};

const SUB: &str = world::TUTORIAL_SUBSCRIPTION;

async fn sp_token(http: &reqwest::Client, emu: &emulator::Emulator) -> String {
    let url = format!(
        "{}{}/oauth2/v2.0/token",
        emu.authority_host(),
        emu.tenant_id()
    );
    let resp = http
        .post(url)
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", world::TUTORIAL_CONTROLLER_CLIENT_ID),
            ("client_secret", world::TUTORIAL_CONTROLLER_SECRET),
            ("scope", "https://management.azure.com/.default"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    let token = v["access_token"].as_str().unwrap().to_string();
    assert_eq!(token.split('.').count(), 3, "JWT-shaped");
    token
}

#[tokio::test]
async fn the_tutorial_over_http() {
    let mut w = World::tutorial().unwrap();
    w.rbac_propagation_seconds = 1.5;
    let emu = emulator::start(w).await.unwrap();
    let http = reqwest::Client::new();
    let arm = emu.arm_endpoint();
    let token = sp_token(&http, &emu).await;
    let rg = format!("{arm}subscriptions/{SUB}/resourceGroups/DevTest");

    // Step 1: az identity create -g DevTest -n myUserAssignedIdentity
    let identity_url = format!(
        "{rg}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/myUserAssignedIdentity?api-version=2023-01-31"
    );
    let resp = http
        .put(&identity_url)
        .bearer_auth(&token)
        .json(&json!({"location": "eastus"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let identity: Value = resp.json().await.unwrap();
    let client_id = identity["properties"]["clientId"]
        .as_str()
        .unwrap()
        .to_string();
    let principal_id = identity["properties"]["principalId"]
        .as_str()
        .unwrap()
        .to_string();
    let identity_id = identity["id"].as_str().unwrap().to_string();
    assert_eq!(identity["properties"]["tenantId"], emu.tenant_id());

    // Step 2: az vm identity assign (GET for the etag, PATCH with If-Match, poll the operation).
    let vm_url =
        format!("{rg}/providers/Microsoft.Compute/virtualMachines/myVM?api-version=2024-11-01");
    let vm: Value = http
        .get(&vm_url)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let etag = vm["etag"].as_str().unwrap().to_string();
    let resp = http
        .patch(&vm_url)
        .bearer_auth(&token)
        .header("If-Match", &etag)
        .json(&json!({"identity": {"type": "UserAssigned", "userAssignedIdentities": {identity_id.clone(): {}}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let poll = resp.headers()["azure-asyncoperation"]
        .to_str()
        .unwrap()
        .to_string();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["properties"]["provisioningState"], "Updating");
    let mut status = String::new();
    for _ in 0..10 {
        let op: Value = http
            .get(&poll)
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        status = op["status"].as_str().unwrap().to_string();
        if status != "InProgress" {
            break;
        }
    }
    assert_eq!(status, "Succeeded");
    let vm: Value = http
        .get(&vm_url)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(vm["identity"]["type"], "UserAssigned");
    assert_eq!(
        vm["identity"]["userAssignedIdentities"][&identity_id]["clientId"],
        client_id.as_str()
    );
    assert_ne!(
        vm["etag"].as_str().unwrap(),
        etag,
        "a change gets a new etag"
    );

    // Step 4 before step 3: on the VM, an IMDS token for the identity...
    let imds = emu.imds_endpoint("myVM").unwrap();
    let imds_token = |client_id: String| {
        let http = http.clone();
        let imds = imds.clone();
        async move {
            let resp = http
                .get(format!("{imds}metadata/identity/oauth2/token"))
                .query(&[
                    ("api-version", "2018-02-01"),
                    ("resource", "https://management.azure.com/"),
                    ("client_id", &client_id),
                ])
                .header("Metadata", "true")
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            let v: Value = resp.json().await.unwrap();
            for k in ["expires_in", "expires_on", "not_before", "ext_expires_in"] {
                assert!(v[k].is_string(), "{k} is a string: {v}");
            }
            assert_eq!(v["token_type"], "Bearer");
            v["access_token"].as_str().unwrap().to_string()
        }
    };
    let mi_token = imds_token(client_id.clone()).await;
    // ...reads DevTest: 403 AuthorizationFailed, no grant yet.
    let rg_url = format!("{rg}?api-version=2024-03-01");
    let resp = http
        .get(&rg_url)
        .bearer_auth(&mi_token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "AuthorizationFailed");

    // Step 3: az role assignment create --role Reader --scope .../resourceGroups/DevTest
    let name = uuid::Uuid::new_v4();
    let ra_url = format!(
        "{rg}/providers/Microsoft.Authorization/roleAssignments/{name}?api-version=2022-04-01"
    );
    let resp = http
        .put(&ra_url)
        .bearer_auth(&token)
        .json(&json!({"properties": {
            "roleDefinitionId": format!("/subscriptions/{SUB}/providers/Microsoft.Authorization/roleDefinitions/acdd72a7-3385-48ef-bd42-f606fba81ae7"),
            "principalId": principal_id,
            "principalType": "ServicePrincipal"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);

    // During the propagation delay: still 403.
    let resp = http
        .get(&rg_url)
        .bearer_auth(&mi_token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    // After it: 200 with the resource group.
    let mut last = 0;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let resp = http
            .get(&rg_url)
            .bearer_auth(&mi_token)
            .send()
            .await
            .unwrap();
        last = resp.status().as_u16();
        if last == 200 {
            let v: Value = resp.json().await.unwrap();
            assert_eq!(v["name"], "DevTest");
            break;
        }
    }
    assert_eq!(last, 200, "Reader takes effect after the propagation delay");

    // The counts saw it all, exactly.
    let counts = emu.counts();
    assert_eq!(counts.get("UserAssignedIdentities_CreateOrUpdate", 201), 1);
    assert_eq!(counts.get("VirtualMachines_Update", 200), 1);
    assert_eq!(counts.get("RoleAssignments_Create", 201), 1);
    assert_eq!(counts.get("Aad_Token", 200), 1);
    assert_eq!(counts.get("Imds_Token", 200), 1);
    assert!(counts.get("ResourceGroups_Get", 403) >= 2);
    assert_eq!(counts.writes(), 3);
    emu.shutdown().await;
}
