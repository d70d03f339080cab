//! The tutorial, walked over HTTP against the emulator exactly as `az` and `curl` do it: sign in
//! as the controller's service principal, create the identity, assign it to the VM (a
//! long-running PATCH, polled), grant Reader on DevTest, then on the VM get a token from IMDS with
//! the identity's client id and read DevTest with it: 403 before the grant has propagated, 200
//! after.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

mod support;

use serde_json::{Value, json};
use support::arm::{Admin, identity_path, new_assignment_path, reader_assignment, vm_path};
use support::{client_and_principal, controller_sign_in};
use uami_emulator::{self as emulator, world};

const SUB: &str = world::TUTORIAL_SUBSCRIPTION;

async fn sp_token(http: &reqwest::Client, emu: &emulator::Emulator) -> String {
    let url = format!(
        "{}{}/oauth2/v2.0/token",
        emu.authority_host(),
        emu.tenant_id()
    );
    let resp = controller_sign_in(http, &url).await;
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    let token = v["access_token"].as_str().unwrap().to_string();
    assert_eq!(token.split('.').count(), 3, "JWT-shaped");
    token
}

#[tokio::test]
async fn the_tutorial_over_http() {
    let emu = support::arm::tutorial_emulator(|w| w.rbac_propagation_seconds = 1.5).await;
    let http = support::emulator_http(&emu);
    let az = Admin::with_token(&emu, sp_token(&http, &emu).await);
    let rg = format!("/subscriptions/{SUB}/resourceGroups/DevTest");

    // Step 1: az identity create -g DevTest -n myUserAssignedIdentity
    let (status, _, identity) = az
        .send(
            reqwest::Method::PUT,
            &identity_path("myUserAssignedIdentity"),
            Some(json!({"location": "eastus"})),
            &[],
        )
        .await;
    assert_eq!(status, 201);
    let (client_id, principal_id) = client_and_principal(&identity);
    let identity_id = identity["id"].as_str().unwrap().to_string();
    assert_eq!(identity["properties"]["tenantId"], emu.tenant_id());

    // Step 2: az vm identity assign (GET for the etag, PATCH with If-Match, poll the operation).
    let vm_url = vm_path("myVM");
    let vm = az.get(&vm_url).await;
    let etag = vm["etag"].as_str().unwrap().to_string();
    let (status, headers, body) = az
        .send(
            reqwest::Method::PATCH,
            &vm_url,
            Some(json!({"identity": {"type": "UserAssigned", "userAssignedIdentities": {identity_id.clone(): {}}}})),
            &[("If-Match", &etag)],
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["properties"]["provisioningState"], "Updating");
    assert_eq!(az.poll_operation(&headers, 10).await["status"], "Succeeded");
    let vm = az.get(&vm_url).await;
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
    let on_vm = Admin::with_token(&emu, mi_token);
    // ...reads DevTest: 403 AuthorizationFailed, no grant yet.
    let rg_url = format!("{rg}?api-version=2024-03-01");
    let (status, _, v) = on_vm.send(reqwest::Method::GET, &rg_url, None, &[]).await;
    assert_eq!(status, 403);
    assert_eq!(v["error"]["code"], "AuthorizationFailed");

    // Step 3: az role assignment create --role Reader --scope .../resourceGroups/DevTest
    let (status, _, _) = az
        .send(
            reqwest::Method::PUT,
            &new_assignment_path(&rg),
            Some(reader_assignment(&principal_id)),
            &[],
        )
        .await;
    assert_eq!(status, 201);

    // During the propagation delay: still 403.
    assert_eq!(on_vm.get_status(&rg_url).await, 403);
    // After it: 200 with the resource group.
    let mut last = 0;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let (status, _, v) = on_vm.send(reqwest::Method::GET, &rg_url, None, &[]).await;
        last = status;
        if last == 200 {
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
