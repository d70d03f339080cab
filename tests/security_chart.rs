//! What the chart gives a namespace's users, on the sandbox and on a real API server: the tenant
//! roles edit identities, bindings and grants but not their status; and whatever RBAC allows
//! (here a namespace Role over `uami.dev` with `*`, which covers `/status`), the chart's
//! admission policies keep status to the controller and the agent, and the controller's records
//! (the `uami.dev/` finalizers and annotations, which steer its deletes in Azure) to the
//! controller.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use support::*;
use uami_api::{IdentityBinding, RoleGrant};

const NS: &str = TUTORIAL;

on_sandbox_and_real! {
    binary: "security_chart",
    options: tutorial_options(Duration::from_secs(30), 0.5),
    join: on_real_apiserver;
    tenants_write_their_objects_but_not_status_or_the_controllers_records on_a_real_api_server_tenants_write_their_objects_but_not_status_or_the_controllers_records case;
}

/// `real`: on a real API server, whose kube-controller-manager aggregates ClusterRoles.
async fn case(opts: uami::demo::stack::StackOptions, real: Option<&envtest::Real>) {
    let aggregation = real.is_some();
    let stack = enforced_stack(opts).await;
    stack.apply_yaml(&tutorial_yaml()).await.unwrap();
    tutorial_ready(&stack, 90).await;
    let admin = stack.client();

    // alice may edit the namespace's objects through uami-tenant-edit; bob has a Role over
    // uami.dev with `*`, status included.
    let rbac = format!(
        r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: alice-edits, namespace: {NS}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: uami-tenant-edit}}
subjects: [{{apiGroup: rbac.authorization.k8s.io, kind: User, name: alice}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: everything-uami, namespace: {NS}}}
rules: [{{apiGroups: [uami.dev], resources: ["*"], verbs: ["*"]}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: bob-everything, namespace: {NS}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: everything-uami}}
subjects: [{{apiGroup: rbac.authorization.k8s.io, kind: User, name: bob}}]
"#
    );
    stack.apply_yaml(&rbac).await.unwrap();
    let alice = stack.cluster.client_for_user("alice", &[]).unwrap();
    let bob = stack.cluster.client_for_user("bob", &[]).unwrap();

    // alice creates a grant, and may not write status (RBAC: the tenant role has no /status).
    let alice_grants: Api<RoleGrant> = Api::namespaced(alice.clone(), NS);
    let grant: RoleGrant = serde_json::from_value(json!({
        "apiVersion": "uami.dev/v1alpha1", "kind": "RoleGrant",
        "metadata": {"name": "alice-grant", "namespace": NS},
        "spec": {"identityRef": {"name": TUTORIAL_IDENTITY}, "role": "Reader",
                 "scope": {"resourceGroup": {"name": "DevTest"}}},
    }))
    .unwrap();
    eventually(30, "alice's role binding to take effect", || async {
        alice_grants
            .create(&PostParams::default(), &grant)
            .await
            .ok()
            .map(|_| ())
    })
    .await;
    let body = json!({"status": {"adopted": true}});
    let write = merge_patch(&alice_grants, TUTORIAL_GRANT, true, body).await;
    denied(
        write,
        403,
        "User \"alice\" cannot patch resource \"rolegrants/status\"",
    );

    // bob's RBAC allows status; the chart's policy does not.
    let bob_bindings: Api<IdentityBinding> = Api::namespaced(bob.clone(), NS);
    let bob_grants: Api<RoleGrant> = Api::namespaced(bob.clone(), NS);
    eventually(30, "bob's role binding to take effect", || async {
        bob_bindings.get(TUTORIAL_BINDING).await.ok().map(|_| ())
    })
    .await;
    let assigned = json!({"status": {"assigned": false}});
    let assignment = json!({"status": {"roleAssignmentId": "/subscriptions/x"}});
    let status_writes = [
        (
            merge_patch(&bob_bindings, TUTORIAL_BINDING, true, assigned).await,
            "identitybindings",
        ),
        (
            merge_patch(&bob_grants, TUTORIAL_GRANT, true, assignment).await,
            "rolegrants",
        ),
    ];
    for (write, kind) in status_writes {
        let needle =
            format!("status of {kind} is written by the controller and the agent only, not by bob");
        denied(write, 403, &needle);
    }

    // The controller's records: its finalizer and the assigned-identity annotation.
    let records = "are the controller's record and only the controller may change them";
    let pre = "/subscriptions/6a2bd3a4-59c6-4d4e-9e8b-5c5a2f0a1b2c/resourcegroups/devtest/providers/microsoft.managedidentity/userassignedidentities/pre";
    for record in [
        json!({"metadata": {"finalizers": null}}),
        json!({"metadata": {"annotations": {"uami.dev/assigned-identity": pre}}}),
    ] {
        let write = merge_patch(&bob_bindings, TUTORIAL_BINDING, false, record).await;
        denied(write, 422, records);
    }
    let forged: IdentityBinding = serde_json::from_value(json!({
        "apiVersion": "uami.dev/v1alpha1", "kind": "IdentityBinding",
        "metadata": {"name": "forged-record", "namespace": NS,
                     "annotations": {"uami.dev/assigned-identity": "pre"},
                     "finalizers": ["uami.dev/binding"]},
        "spec": {"identityRef": {"name": TUTORIAL_IDENTITY},
                 "target": {"virtualMachine": {"resourceGroup": "DevTest", "name": "myVM"}}},
    }))
    .unwrap();
    denied(
        bob_bindings
            .create(&PostParams::default(), &forged)
            .await
            .map(|_| ()),
        422,
        records,
    );
    // Anything else of the metadata stays theirs.
    bob_bindings
        .patch(
            TUTORIAL_BINDING,
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"labels": {"team": "a"}, "annotations": {"note": "mine"}}}),
            ),
        )
        .await
        .unwrap();

    // Nothing forged reached the binding, and the controller still finalizes it: bob deletes it
    // and the identity leaves the VM.
    let binding = bindings(&stack, NS).get(TUTORIAL_BINDING).await.unwrap();
    let st = binding.status.clone().unwrap();
    assert_eq!(st.assigned, Some(true));
    assert_eq!(
        binding.metadata.finalizers.clone().unwrap_or_default(),
        vec!["uami.dev/binding".to_string()]
    );
    assert!(
        binding
            .metadata
            .annotations
            .clone()
            .unwrap_or_default()
            .get("uami.dev/assigned-identity")
            .is_some_and(|v| v.to_lowercase().ends_with("/myuserassignedidentity"))
    );
    bob_bindings
        .delete(TUTORIAL_BINDING, &DeleteParams::default())
        .await
        .unwrap();
    gone(&bindings(&stack, NS), TUTORIAL_BINDING, 60).await;
    assert_eq!(user_assigned(&stack.emulator.state(), "myVM"), 0);

    // On a cluster with RBAC aggregation, the default edit role carries the tenant role's rules.
    if aggregation {
        let roles: Api<ClusterRole> = Api::all(admin);
        eventually(30, "edit to aggregate uami-tenant-edit", || async {
            let edit = roles.get("edit").await.ok()?;
            edit.rules
                .unwrap_or_default()
                .iter()
                .any(|r| {
                    r.resources
                        .as_ref()
                        .is_some_and(|x| x.iter().any(|x| x == "rolegrants"))
                })
                .then_some(())
        })
        .await;
    }
    stack.stop().await;
}
