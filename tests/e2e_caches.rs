//! The controller's caches, on the sandbox and on a real API server: an object the API server
//! accepted and the controller cannot read is reported and left alone while everything else is
//! reconciled; `/readyz` answers 200 only once the caches have synced and leadership is settled.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use kube::api::DeleteParams;
use serde_json::json;
use support::*;
use uami::demo::stack::Stack;

on_sandbox_and_real! {
    binary: "e2e_caches",
    options: tutorial_options(Duration::from_secs(2), 1.0),
    join: on_real_apiserver;
    an_object_the_controller_cannot_read_is_reported_and_the_others_reconcile on_a_real_api_server_an_object_the_controller_cannot_read_is_reported unreadable_object;
    the_controller_is_ready_only_once_its_caches_have_synced on_a_real_api_server_the_controller_is_ready_only_once_its_caches_have_synced readiness_after_sync;
    a_standby_is_ready_once_it_knows_another_replica_leads on_a_real_api_server_a_standby_is_ready_once_it_knows_another_replica_leads standby_readiness;
}

/// A binding that the API server accepts and the controller's types cannot read is there before
/// the controller and the agent start: it gets a Warning Event and is left alone, and the
/// tutorial's objects (which need both the controller's and the agent's caches) reach Ready.
async fn unreadable_object(opts: uami::demo::stack::StackOptions, _real: Option<&envtest::Real>) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
    use uami_api::IdentityBinding;
    use uami_api::binding::{TARGET_LABEL, target_label_value};
    use uami_emulator::world::TUTORIAL_SUBSCRIPTION;
    let mut stack = bare_stack(opts).await;
    stack.apply_yaml(&tutorial_yaml()).await.unwrap();
    // Labelled with myVM's target, so the agent of myVM watches it too.
    let target = format!(
        "/subscriptions/{TUTORIAL_SUBSCRIPTION}/resourceGroups/DevTest/providers/Microsoft.Compute/virtualMachines/myVM"
    );
    let name = "unreadable";
    stack
        .apply_yaml(&format!(
            "apiVersion: uami.dev/v1alpha1\nkind: IdentityBinding\nmetadata: {{name: {name}, namespace: {TUTORIAL}, labels: {{{TARGET_LABEL}: '{}'}}}}\nspec: {{identityRef: {{name: {TUTORIAL_IDENTITY}}}, target: {{virtualMachine: {{resourceGroup: DevTest, name: myVM}}}}}}\n",
            target_label_value(&target)
        ))
        .await
        .unwrap();
    // `httpStatus` is an int32 in the schema as in the type, so the API server refuses a value
    // beyond it...
    let raw: kube::Api<DynamicObject> = kube::Api::namespaced_with(
        stack.client(),
        TUTORIAL,
        &ApiResource::erase::<IdentityBinding>(&()),
    );
    let status = json!({"status": {"access": [{
        "roleGrant": TUTORIAL_GRANT, "scope": "/subscriptions/x", "verified": false,
        "httpStatus": 9_999_999_999_i64,
    }]}});
    let write = || async {
        raw.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await
    };
    match write().await {
        Err(kube::Error::Api(e)) => {
            assert_eq!(e.code, 422, "{e:?}");
            assert!(
                e.message.contains(
                    "Checked value must be of type integer with format int32 in access[0].httpStatus"
                ),
                "{e:?}"
            );
        }
        other => panic!("an int32 beyond its range was taken: {other:?}"),
    }
    // ... but not while the schema says nothing of its format: the object stays as it was
    // written when the format is back (an object written before a schema change).
    let crds: kube::Api<CustomResourceDefinition> = kube::Api::all(stack.client());
    let crd = "identitybindings.uami.dev";
    let format = "/spec/versions/0/schema/openAPIV3Schema/properties/status/properties/access/items/properties/httpStatus/format";
    let crds = &crds;
    let schema_edit = |op: serde_json::Value| async move {
        let patch: json_patch::Patch = serde_json::from_value(json!([op])).unwrap();
        crds.patch(crd, &PatchParams::default(), &Patch::<()>::Json(patch))
            .await
            .unwrap();
    };
    schema_edit(json!({"op": "remove", "path": format})).await;
    // The API server takes the new schema a moment later.
    eventually(30, "the status written without the format", || async {
        write().await.ok()
    })
    .await;
    schema_edit(json!({"op": "add", "path": format, "value": "int32"})).await;
    assert!(
        bindings(&stack, TUTORIAL).get(name).await.is_err(),
        "the typed client cannot read it"
    );

    let controller = Controller::start(&stack, None);
    stack.start_agent("myVM").await.unwrap();
    tutorial_ready(&stack, 90).await;

    let reported = events::event_about(&stack, "InvalidObject", name).await;
    assert_eq!(reported.type_.as_deref(), Some("Warning"));
    let note = reported.note.unwrap_or_default();
    assert!(
        note.contains("IdentityBinding") && note.contains("9999999999"),
        "{note}"
    );
    // Left alone: no finalizer, no status of the controller.
    let left = raw.get(name).await.unwrap();
    assert!(
        left.metadata
            .finalizers
            .clone()
            .unwrap_or_default()
            .is_empty()
    );
    assert!(left.data["status"].get("conditions").is_none(), "{left:?}");

    raw.delete(name, &DeleteParams::default()).await.unwrap();
    controller.stop().await;
    stack.stop().await;
}

/// A controller started with `client` (under leader election as `holder`, when given) whose
/// admin endpoints serve its readiness: their base URL, its stop and its task.
async fn served_controller(
    stack: &Stack,
    client: kube::Client,
    holder: Option<&str>,
) -> (
    String,
    tokio_util::sync::CancellationToken,
    tokio::task::JoinHandle<()>,
) {
    use uami::demo::stack::controller_options;
    use uami_controller::leader::LeaseConfig;
    let mut controller_opts = controller_options(&stack.emulator, Duration::from_secs(30)).unwrap();
    controller_opts.lease = holder.map(|h| {
        LeaseConfig::new(
            "uami-controller-readiness",
            "default",
            h,
            Duration::from_secs(4),
        )
    });
    let stop = tokio_util::sync::CancellationToken::new();
    let (addr, handle) = uami_controller::app::serve(
        client,
        controller_opts,
        "127.0.0.1:0".parse().unwrap(),
        stop.clone(),
    )
    .await
    .unwrap();
    (format!("http://{addr}"), stop, handle)
}

/// The status of `GET {base}{path}`, and its body.
async fn get(base: &str, path: &str) -> (u16, String) {
    let r = reqwest::get(format!("{base}{path}")).await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// A controller whose user may not list anything yet answers 503 on `/readyz`; once RBAC lets
/// it list and its caches sync, 200.
async fn readiness_after_sync(
    opts: uami::demo::stack::StackOptions,
    _real: Option<&envtest::Real>,
) {
    let stack = bare_stack(opts).await;
    let user = "uami-late-controller";
    let client = stack.cluster.client_for_user(user, &[]).unwrap();
    let (base, stop, handle) = served_controller(&stack, client, None).await;
    // The caches cannot sync: every list is forbidden.
    for _ in 0..6 {
        assert_eq!(get(&base, "/readyz").await.0, 503);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stack
        .apply_yaml(&format!(
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {{name: {user}}}\nrules: [{{apiGroups: ['*'], resources: ['*'], verbs: ['*']}}]\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {{name: {user}}}\nroleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: {user}}}\nsubjects: [{{apiGroup: rbac.authorization.k8s.io, kind: User, name: {user}}}]\n"
        ))
        .await
        .unwrap();
    eventually(60, "/readyz answering 200", || async {
        (get(&base, "/readyz").await.0 == 200).then_some(())
    })
    .await;
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(20), handle).await;
    let roles: kube::Api<k8s_openapi::api::rbac::v1::ClusterRole> = kube::Api::all(stack.client());
    let role_bindings: kube::Api<k8s_openapi::api::rbac::v1::ClusterRoleBinding> =
        kube::Api::all(stack.client());
    let _ = role_bindings.delete(user, &DeleteParams::default()).await;
    let _ = roles.delete(user, &DeleteParams::default()).await;
    stack.stop().await;
}

/// Under leader election, the leader is ready once its caches have synced, and a second replica
/// once the Lease tells it the first one leads: it does not lead, and is ready to take over.
async fn standby_readiness(opts: uami::demo::stack::StackOptions, _real: Option<&envtest::Real>) {
    let stack = bare_stack(opts).await;
    // The first replica leads (ready once its caches synced), the second stands by.
    let mut served = Vec::new();
    for (user, holder, role, leading) in [
        ("controller-a", "a", "the leader", "uami_leader 1"),
        ("controller-b", "b", "the standby", "uami_leader 0"),
    ] {
        let client = stack.cluster.client_as(user).unwrap();
        let (base, stop, handle) = served_controller(&stack, client, Some(holder)).await;
        eventually(30, &format!("{role} ready"), || async {
            (get(&base, "/readyz").await.0 == 200).then_some(())
        })
        .await;
        assert!(get(&base, "/metrics").await.1.contains(leading), "{role}");
        served.push((stop, handle));
    }
    for (stop, handle) in served.into_iter().rev() {
        stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(20), handle).await;
    }
    stack.stop().await;
}
