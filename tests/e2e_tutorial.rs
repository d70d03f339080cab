//! The tutorial end to end on the emulator, on the sandbox and on a real API server:
//! `examples/tutorial.yaml` reaches
//! Ready; Azure holds the identity, the VM carries it, Reader is granted on DevTest to its
//! principal; steady state costs no ARM writes; drift is repaired; deletion undoes it all.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use kube::api::{DeleteParams, ListParams};
use serde_json::json;
use support::arm::Admin;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tutorial_reaches_ready_holds_steady_repairs_drift_and_cleans_up() {
    tutorial(tutorial_options(Duration::from_secs(2), 1.0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_real_api_server_the_tutorial_reaches_ready_and_cleans_up() {
    let mut opts = tutorial_options(Duration::from_secs(2), 1.0);
    let Some(_turn) = on_real_apiserver("e2e_tutorial", &mut opts).await else {
        return;
    };
    tutorial(opts).await;
}

async fn tutorial(opts: uami_controller::demo::stack::StackOptions) {
    let stack = tutorial_stack(opts).await;

    let ids = identities(&stack, "tutorial");
    let identity = ready(&ids, "my-identity", 60).await;
    let st = identity.status.clone().unwrap();
    let binding = ready(&bindings(&stack, "tutorial"), "my-identity-on-myvm", 60).await;
    let grant = ready(&grants(&stack, "tutorial"), "my-identity-reads-devtest", 60).await;

    // Azure: the identity with the status ids...
    let state = stack.emulator.state();
    let azure_identity = state["identities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "myUserAssignedIdentity")
        .unwrap()
        .clone();
    assert_eq!(
        azure_identity["properties"]["clientId"],
        json!(st.client_id.clone().unwrap())
    );
    assert_eq!(
        azure_identity["properties"]["principalId"],
        json!(st.principal_id.clone().unwrap())
    );
    assert_eq!(
        azure_identity["id"].as_str().unwrap().to_lowercase(),
        st.resource_id.clone().unwrap().to_lowercase()
    );
    // ...on the VM...
    let vm = compute(&state, "myVM");
    let assigned: Vec<String> = vm["identity"]["userAssignedIdentities"]
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.to_lowercase())
        .collect();
    assert_eq!(
        assigned,
        vec![st.resource_id.clone().unwrap().to_lowercase()]
    );
    // ...granted Reader on DevTest.
    let reader = state["roleAssignments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["properties"]["principalId"] == json!(st.principal_id.clone().unwrap()))
        .unwrap()
        .clone();
    assert!(
        reader["properties"]["roleDefinitionId"]
            .as_str()
            .unwrap()
            .ends_with("acdd72a7-3385-48ef-bd42-f606fba81ae7")
    );
    assert!(
        reader["properties"]["scope"]
            .as_str()
            .unwrap()
            .ends_with("/resourceGroups/DevTest")
    );
    assert_eq!(reader["properties"]["principalType"], "ServicePrincipal");
    let gs = grant.status.clone().unwrap();
    assert_eq!(
        gs.role_assignment_id.as_deref().map(str::to_lowercase),
        reader["id"].as_str().map(str::to_lowercase)
    );
    assert_eq!(
        condition(&gs.conditions, "AccessVerified").unwrap().0,
        "True"
    );
    assert_eq!(gs.access.unwrap().http_status, Some(200));
    let token = binding.status.clone().unwrap().token.unwrap();
    assert_eq!(token.client_id, st.client_id);
    assert_eq!(
        token.tenant_id.as_deref(),
        Some(stack.emulator.tenant_id().as_str())
    );
    assert!(token.expires_on.is_some());
    // The exported ConfigMap.
    let cms: kube::Api<k8s_openapi::api::core::v1::ConfigMap> =
        kube::Api::namespaced(stack.client(), "tutorial");
    let cm = cms.get("my-identity-ids").await.unwrap();
    assert_eq!(cm.data.unwrap()["clientId"], st.client_id.clone().unwrap());

    // Steady state: several resyncs, not one ARM write.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let reads = steady_state_reads(&stack, 7, "UserAssignedIdentities_Get").await;
    assert!(reads >= 2, "resyncs did read: {reads}");

    // Drift 1: the role assignment is deleted behind the controller's back.
    let admin = Admin::of(&stack.emulator);
    let ra_path = format!(
        "{}?api-version=2022-04-01",
        gs.role_assignment_id.clone().unwrap()
    );
    let (status, _, _) = admin
        .send(reqwest::Method::DELETE, &ra_path, None, &[])
        .await;
    assert_eq!(status, 200);
    eventually(30, "the role assignment to be recreated", || async {
        (admin
            .try_send(reqwest::Method::GET, &ra_path, None, &[])
            .await
            .ok()?
            .0
            == 200)
            .then_some(())
    })
    .await;

    // Drift 2: the identity is unassigned from the VM.
    let (status, _, _) = admin
        .patch_vm("myVM", json!({"identity": {"type": "None"}}))
        .await;
    assert_eq!(status, 200);
    eventually(30, "the identity to be assigned again", || async {
        let v = compute(&stack.emulator.state(), "myVM");
        v["identity"]["userAssignedIdentities"]
            .as_object()
            .filter(|m| m.len() == 1)
            .map(|_| ())
    })
    .await;

    // Deletion undoes everything, in order.
    let dp = DeleteParams::default();
    ids.delete("my-identity", &dp).await.unwrap();
    grants(&stack, "tutorial")
        .delete("my-identity-reads-devtest", &dp)
        .await
        .unwrap();
    bindings(&stack, "tutorial")
        .delete("my-identity-on-myvm", &dp)
        .await
        .unwrap();
    eventually(60, "everything to be gone", || async {
        let s = stack.emulator.state();
        let none_left = s["identities"].as_array()?.is_empty()
            && compute(&s, "myVM")["identity"]["userAssignedIdentities"].is_null()
            && !s["roleAssignments"]
                .as_array()?
                .iter()
                .any(|a| a["properties"]["principalId"] == json!(st.principal_id.clone().unwrap()));
        let k8s_left = ids.list(&ListParams::default()).await.ok()?.items.len();
        if std::env::var("E2E_DEBUG").is_ok() {
            let b = bindings(&stack, "tutorial")
                .list(&ListParams::default())
                .await
                .ok()?;
            let g = grants(&stack, "tutorial")
                .list(&ListParams::default())
                .await
                .ok()?;
            let i = ids.list(&ListParams::default()).await.ok()?;
            eprintln!(
                "azure ids={} vm={} | k8s ids={:?} bindings={:?} grants={:?}",
                s["identities"],
                compute(&s, "myVM")["identity"],
                i.items
                    .iter()
                    .map(|x| (x.metadata.finalizers.clone(), x.status.clone()))
                    .collect::<Vec<_>>(),
                b.items
                    .iter()
                    .map(|x| (
                        x.metadata.finalizers.clone(),
                        x.status.as_ref().map(|s| s.conditions.clone())
                    ))
                    .collect::<Vec<_>>(),
                g.items
                    .iter()
                    .map(|x| x.metadata.finalizers.clone())
                    .collect::<Vec<_>>()
            );
        }
        (none_left && k8s_left == 0).then_some(())
    })
    .await;
    stack.stop().await;
}
