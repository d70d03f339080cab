//! 5. Policy fails closed; 6. ConfigMaps the controller did not create, and tags.

use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use kube::api::{DeleteParams, ListParams};

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_that_stops_allowing_revokes_in_azure() {
    let (stack, admin) = apps_with(&[
        identity("rev"),
        devtest_grant("rev-g", "rev"),
        binding_in(NS, "rev-b", "rev"),
    ])
    .await;
    let (rev, _) = ready_identity(&stack, NS, "rev").await;
    let assignment = assignment_id(&grants(&stack, NS), "rev-g").await;
    let binding_api = bindings(&stack, NS);
    let assigned_again = || {
        condition_is(
            &binding_api,
            "rev-b",
            "Assigned",
            "True",
            Some("Assigned"),
            60,
        )
    };
    assigned_again().await;
    assert!(vm_has(&stack, &rev));

    let policies: Api<uami_api::GrantPolicy> = Api::all(stack.client());
    policies
        .delete("apps", &DeleteParams::default())
        .await
        .unwrap();
    let g = refused(&grants(&stack, NS), "rev-g", "DeniedByPolicy").await;
    assert!(g.status.unwrap().role_assignment_id.is_none());
    refused(&bindings(&stack, NS), "rev-b", "DeniedByPolicy").await;
    assert!(
        !admin.assignment_exists(&assignment).await,
        "the assignment survived the policy"
    );
    eventually(60, "identity removed from myVM", || async {
        (!vm_has(&stack, &rev)).then_some(())
    })
    .await;
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(stack.client(), NS);
    eventually(30, "revocation events", || async {
        let notes: Vec<String> = events
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some("DeniedByPolicy"))
            .filter_map(|e| e.note)
            .collect();
        let grant = notes.iter().any(|n| n.contains("deleted role assignment"));
        let binding = notes.iter().any(|n| n.contains("removed the identity"));
        (grant && binding).then_some(())
    })
    .await;
    // Allowed again: granted and assigned again.
    stack.apply_yaml(&policy("")).await.unwrap();
    ready(&grants(&stack, NS), "rev-g", 60).await;
    assigned_again().await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_config_map_is_never_taken_over() {
    let stack = stack(|_| {}).await;
    stack
        .apply_yaml(&format!(
            "{}---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: app-settings, namespace: {NS}}}\ndata: {{foo: bar}}\n{}{}",
            namespace(NS),
            fixtures::identity(NS, "exp")
                .with(|i| i.spec.export_to = Some(ExportTo { config_map: "app-settings".into() }))
                .yaml(),
            fixtures::identity(NS, "exp2")
                .with(|i| i.spec.export_to = Some(ExportTo { config_map: "exp2-ids".into() }))
                .yaml(),
        ))
        .await
        .unwrap();
    refused(&identities(&stack, NS), "exp", "ConfigMapConflict").await;
    let exp2 = ready(&identities(&stack, NS), "exp2", 60).await;
    let cms: Api<ConfigMap> = Api::namespaced(stack.client(), NS);
    let foreign = cms.get("app-settings").await.unwrap();
    assert_eq!(
        foreign.data.unwrap(),
        [("foo".to_string(), "bar".to_string())]
            .into_iter()
            .collect()
    );
    assert!(
        foreign
            .metadata
            .owner_references
            .unwrap_or_default()
            .is_empty(),
        "the identity became an owner: Kubernetes would garbage-collect the ConfigMap with it"
    );
    let ours = cms.get("exp2-ids").await.unwrap();
    let refs = ours.metadata.owner_references.unwrap();
    assert!(
        refs.iter()
            .any(|r| r.controller == Some(true) && Some(&r.uid) == exp2.uid().as_ref())
    );
    assert_eq!(
        ours.data.unwrap()["clientId"],
        exp2.status.unwrap().client_id.unwrap()
    );
    delete_and_wait(&identities(&stack, NS), "exp").await;
    assert!(cms.get_opt("app-settings").await.unwrap().is_some());
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_are_bounded_by_the_schema() {
    let stack = stack(|o| o.controller = false).await;
    stack.apply_yaml(&namespace(NS)).await.unwrap();
    let with_tags = |name: &str, tags: Value| {
        json!({"apiVersion": "uami.dev/v1alpha1", "kind": "UserAssignedIdentity",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"resourceGroup": "DevTest", "location": "eastus", "tags": tags}})
        .to_string()
    };
    let many = |n: usize| -> Value {
        (0..n)
            .map(|i| (format!("t{i}"), json!("v")))
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    stack
        .apply_yaml(&with_tags("fits", many(50 - uami_api::CONTROLLER_TAGS)))
        .await
        .unwrap();
    let too_many = many(51 - uami_api::CONTROLLER_TAGS);
    let message = refused_at_apply(&stack, &with_tags("too-many", too_many)).await;
    assert!(message.contains("spec.tags"), "{message}");
    for bad in ["a<b", "a>b", "100%", "a&b", "a\\b", "a?b", "a/b"] {
        let message = refused_at_apply(&stack, &with_tags("bad-name", json!({bad: "v"}))).await;
        assert!(
            message.contains("spec.tags") && message.contains("may not contain"),
            "{message}"
        );
    }
    let reserved = with_tags("reserved", json!({"uami.dev-adopted": "true"}));
    let message = refused_at_apply(&stack, &reserved).await;
    assert!(message.contains("reserved"), "{message}");
    stack.stop().await;
}
