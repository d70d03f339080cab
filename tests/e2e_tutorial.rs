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

on_sandbox_and_real! {
    binary: "e2e_tutorial",
    options: tutorial_options(Duration::from_secs(2), 1.0),
    join: on_real_apiserver;
    tutorial_reaches_ready_holds_steady_repairs_drift_and_cleans_up on_a_real_api_server_the_tutorial_reaches_ready_and_cleans_up tutorial;
    /// The tutorial's identity deleted and created again out of band (a new principal under the same
    /// ARM id): the controller notices, assigns it to the VM again (which still listed the old
    /// principal), grants Reader to the new principal and deletes its assignment to the old one, and
    /// the agent's token works again.
    an_identity_deleted_and_created_again_is_assigned_and_granted_again on_a_real_api_server_an_identity_deleted_and_created_again_is_restored recreated_identity;
}

async fn tutorial(opts: uami::demo::stack::StackOptions, _real: Option<&envtest::Real>) {
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

async fn recreated_identity(opts: uami::demo::stack::StackOptions, _real: Option<&envtest::Real>) {
    let stack = tutorial_stack(opts).await;
    tutorial_ready(&stack, 60).await;
    let before = read(&identities(&stack, TUTORIAL), TUTORIAL_IDENTITY)
        .await
        .status
        .unwrap();
    let old_principal = before.principal_id.clone().unwrap();
    let old_assignment = grants(&stack, TUTORIAL)
        .get(TUTORIAL_GRANT)
        .await
        .unwrap()
        .status
        .unwrap()
        .role_assignment_id
        .unwrap();

    // Out of band: deleted, then created again with the same tags (a script restoring it).
    let admin = Admin::of(&stack.emulator);
    let azure_name = "myUserAssignedIdentity";
    stack.emulator.reset_counts();
    let created = admin.recreate_identity(azure_name).await;
    let (new_client, new_principal) = client_and_principal(&created);
    assert_ne!(new_principal, old_principal);

    // As in Azure, the VM still lists the identity with the principal it was assigned with
    // (unless the controller is already replacing it).
    let vm_principal = |state: &serde_json::Value| {
        compute(state, "myVM")["identity"]["userAssignedIdentities"]
            .as_object()?
            .values()
            .next()
            .map(|v| v["principalId"].as_str().unwrap_or_default().to_string())
    };
    let state = stack.emulator.state();
    assert_ne!(
        vm_principal(&state).as_deref(),
        Some(new_principal.as_str()),
        "{}",
        compute(&state, "myVM")
    );

    // The identity's status shows the new principal, and an Event says what happened.
    eventually(60, "the new principal in the identity's status", || async {
        let i = identities(&stack, TUTORIAL)
            .get(TUTORIAL_IDENTITY)
            .await
            .ok()?;
        (i.status?.principal_id? == new_principal).then_some(())
    })
    .await;
    let recreated = events::event_about(&stack, "IdentityRecreated", TUTORIAL_IDENTITY).await;
    assert!(recreated.note.unwrap_or_default().contains(&new_principal));

    // The VM lists it with the new principal (removed and assigned again).
    eventually(60, "the VM lists the new principal", || async {
        (vm_principal(&stack.emulator.state())? == new_principal).then_some(())
    })
    .await;
    let patches = stack.emulator.counts().total("VirtualMachines_Update");
    assert!(
        patches >= 2,
        "one PATCH removes it, one assigns it again: {patches}"
    );

    // Reader for the new principal; the old assignment, ours, is gone.
    let reader_of = |state: &serde_json::Value, principal: &str| {
        state["roleAssignments"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["properties"]["principalId"] == json!(principal))
    };
    eventually(60, "Reader granted to the new principal only", || async {
        let state = stack.emulator.state();
        (reader_of(&state, &new_principal) && !reader_of(&state, &old_principal)).then_some(())
    })
    .await;
    assert!(!admin.assignment_exists(&old_assignment).await);

    // The binding and the grant are Ready again: the agent's token is the new identity's.
    let b = eventually(90, "the agent's token of the new identity", || async {
        let b = bindings(&stack, TUTORIAL)
            .get(TUTORIAL_BINDING)
            .await
            .ok()?;
        let s = b.status.clone()?;
        let token = s.token.clone()?;
        (condition(&s.conditions, "TokenAcquired")?.0 == "True"
            && condition(&s.conditions, "Ready")?.0 == "True"
            && token.object_id.as_deref() == Some(new_principal.as_str()))
        .then_some(b)
    })
    .await;
    assert_eq!(
        b.status.unwrap().token.unwrap().client_id.as_deref(),
        Some(new_client.as_str())
    );
    eventually(60, "the grant Ready for the new principal", || async {
        let s = grants(&stack, TUTORIAL)
            .get(TUTORIAL_GRANT)
            .await
            .ok()?
            .status?;
        (s.principal_id.as_deref() == Some(new_principal.as_str())
            && condition(&s.conditions, "AccessVerified")?.0 == "True"
            && condition(&s.conditions, "Ready")?.0 == "True")
            .then_some(())
    })
    .await;
    stack.stop().await;
}
