//! The sandbox as kube-rs sees it: the project's CRDs installed from `crds/`; create, list,
//! watch in order and resumed after a forced disconnect; server-side apply of status by two field
//! managers that keep each other's conditions; a finalizer holding deletion; 409 on a stale
//! update; 410 handled by `kube::runtime::watcher` relisting; 422 with a readable message; CRDs
//! whose CEL rules are over kube-apiserver's cost budget refused with the API server's causes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};
use uami_api::{IdentityBinding, UserAssignedIdentity};
use uami_sandbox::{self as sandbox, SandboxOptions};

async fn sandbox() -> sandbox::Sandbox {
    let sb = sandbox::start(SandboxOptions::default()).await.unwrap();
    sb.install_crds_from_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("crds"))
        .await
        .unwrap();
    sb
}

/// A sandbox with the CRDs, and the API of kind `K` in namespace `default`.
async fn sandbox_api<K>() -> (sandbox::Sandbox, Api<K>)
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>,
{
    let sb = sandbox().await;
    let api = Api::namespaced(sb.client(), "default");
    (sb, api)
}

fn identity(name: &str) -> UserAssignedIdentity {
    serde_json::from_value(json!({
        "apiVersion": "uami.dev/v1alpha1", "kind": "UserAssignedIdentity",
        "metadata": {"name": name},
        "spec": {"subscriptionId": "6a2bd3a4-59c6-4d4e-9e8b-5c5a2f0a1b2c", "resourceGroup": "DevTest", "location": "eastus"}
    }))
    .unwrap()
}

/// The API server's refusal in a kube error.
fn api_error(err: kube::Error) -> kube::core::Status {
    match err {
        kube::Error::Api(s) => *s,
        other => panic!("{other:?}"),
    }
}

/// The first event of a watch from `rv` (within 10 s).
async fn first_event_after(
    api: &Api<UserAssignedIdentity>,
    rv: &str,
) -> WatchEvent<UserAssignedIdentity> {
    let mut events = api
        .watch(&WatchParams::default(), rv)
        .await
        .unwrap()
        .boxed();
    tokio::time::timeout(Duration::from_secs(10), events.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
}

/// Create identity `name` in `default`.
async fn create(api: &Api<UserAssignedIdentity>, name: &str) -> UserAssignedIdentity {
    api.create(&PostParams::default(), &identity(name))
        .await
        .unwrap()
}

/// Server-side apply of binding `b`'s status by field manager `manager`, forced.
async fn apply_status_as(
    api: &Api<IdentityBinding>,
    manager: &str,
    patch: &serde_json::Value,
) -> IdentityBinding {
    api.patch_status(
        "b",
        &PatchParams::apply(manager).force(),
        &Patch::Apply(patch),
    )
    .await
    .unwrap()
}

/// The API server refused with `code` and a message containing `needle`.
fn refused_with<T: std::fmt::Debug>(answer: Result<T, kube::Error>, code: u16, needle: &str) {
    let s = api_error(answer.unwrap_err());
    assert_eq!(s.code, code, "{}", s.message);
    assert!(s.message.contains(needle), "{}", s.message);
}

#[tokio::test]
async fn create_list_and_defaults() {
    let (_sb, api) = sandbox_api::<UserAssignedIdentity>().await;
    let created = create(&api, "one").await;
    assert_eq!(created.metadata.generation, Some(1));
    assert!(created.metadata.uid.is_some());
    assert_eq!(
        created.spec.deletion_policy,
        uami_api::DeletionPolicy::Delete,
        "schema default applied"
    );
    create(&api, "two").await;
    let list = api.list(&ListParams::default()).await.unwrap();
    let names: Vec<_> = list
        .items
        .iter()
        .map(|i| i.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(names, vec!["one", "two"]);
    let page = api.list(&ListParams::default().limit(1)).await.unwrap();
    assert_eq!(page.items.len(), 1);
    let token = page.metadata.continue_.clone().unwrap();
    let next = api
        .list(&ListParams::default().limit(1).continue_token(&token))
        .await
        .unwrap();
    assert_eq!(next.items[0].metadata.name.as_deref(), Some("two"));
    let err = api
        .create(&PostParams::default(), &identity("one"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 409 && s.reason == "AlreadyExists"),
        "{err:?}"
    );
}

#[tokio::test]
async fn invalid_objects_get_422_naming_the_field() {
    let (_sb, api) = sandbox_api::<UserAssignedIdentity>().await;
    let mut bad = identity("bad");
    bad.spec.subscription_id = Some("not-a-guid".into());
    let err = api.create(&PostParams::default(), &bad).await.unwrap_err();
    let s = api_error(err);
    assert_eq!(s.code, 422);
    assert_eq!(s.reason, "Invalid");
    assert!(
        s.message
            .contains("UserAssignedIdentity.uami.dev \"bad\" is invalid: spec.subscriptionId"),
        "{}",
        s.message
    );
    // An immutable field, checked by a CEL transition rule.
    let ok = create(&api, "okay").await;
    let mut moved = ok.clone();
    moved.spec.resource_group = "Elsewhere".into();
    let answer = api.replace("okay", &PostParams::default(), &moved).await;
    refused_with(answer, 422, "spec.resourceGroup");
}

#[tokio::test]
async fn stale_update_is_a_conflict() {
    let (_sb, api) = sandbox_api::<UserAssignedIdentity>().await;
    let first = create(&api, "xyz").await;
    // Two writers, both starting from `first`.
    let retagged = |value: &str| {
        let mut o = first.clone();
        o.spec.tags.insert("k".into(), value.into());
        o
    };
    let pp = PostParams::default();
    let updated = api.replace("xyz", &pp, &retagged("1")).await.unwrap();
    assert_eq!(
        updated.metadata.generation,
        Some(2),
        "spec change bumps generation"
    );
    let s = api_error(api.replace("xyz", &pp, &retagged("2")).await.unwrap_err());
    assert_eq!((s.code, s.reason.as_str()), (409, "Conflict"));
    assert!(
        s.message.contains("the object has been modified"),
        "{}",
        s.message
    );
}

#[tokio::test]
async fn two_field_managers_keep_their_own_conditions() {
    let (_sb, api) = sandbox_api::<IdentityBinding>().await;
    let b: IdentityBinding = serde_json::from_value(json!({
        "apiVersion": "uami.dev/v1alpha1", "kind": "IdentityBinding", "metadata": {"name": "b"},
        "spec": {"identityRef": {"name": "i"}, "target": {"virtualMachine": {"resourceGroup": "DevTest", "name": "myVM"}}}
    })).unwrap();
    api.create(&PostParams::default(), &b).await.unwrap();
    let cond = |t: &str, s: &str| json!({"type": t, "status": s, "reason": "R", "message": "m", "lastTransitionTime": "2026-01-01T00:00:00Z"});
    let controller = json!({"apiVersion": "uami.dev/v1alpha1", "kind": "IdentityBinding", "status": {"conditions": [cond("Ready", "False"), cond("Assigned", "True")], "assigned": true}});
    apply_status_as(&api, "uami-controller", &controller).await;
    let agent = json!({"apiVersion": "uami.dev/v1alpha1", "kind": "IdentityBinding", "status": {"conditions": [cond("TokenAcquired", "True")], "token": {"clientId": "c"}}});
    apply_status_as(&api, "uami-agent", &agent).await;
    let controller2 = json!({"apiVersion": "uami.dev/v1alpha1", "kind": "IdentityBinding", "status": {"conditions": [cond("Ready", "True"), cond("Assigned", "True")], "assigned": true}});
    let after = apply_status_as(&api, "uami-controller", &controller2).await;
    let status = after.status.unwrap();
    let types: Vec<_> = status
        .conditions
        .iter()
        .map(|c| (c.type_.clone(), c.status.clone()))
        .collect();
    assert!(
        types.contains(&("Ready".into(), "True".into())),
        "{types:?}"
    );
    assert!(
        types.contains(&("TokenAcquired".into(), "True".into())),
        "{types:?}"
    );
    assert_eq!(status.token.unwrap().client_id.as_deref(), Some("c"));
    let managers: Vec<_> = after
        .metadata
        .managed_fields
        .unwrap()
        .iter()
        .map(|m| m.manager.clone().unwrap())
        .collect();
    assert!(
        managers.contains(&"uami-controller".to_string())
            && managers.contains(&"uami-agent".to_string()),
        "{managers:?}"
    );
    assert_eq!(
        after.metadata.generation,
        Some(1),
        "status writes do not bump generation"
    );
    // Without force, changing a field another manager owns is a conflict.
    let steal = json!({"apiVersion": "uami.dev/v1alpha1", "kind": "IdentityBinding", "status": {"token": {"clientId": "other"}}});
    let answer = api
        .patch_status("b", &PatchParams::apply("intruder"), &Patch::Apply(&steal))
        .await;
    refused_with(answer, 409, "uami-agent");
}

#[tokio::test]
async fn a_finalizer_holds_deletion() {
    let (_sb, api) = sandbox_api::<UserAssignedIdentity>().await;
    let mut i = identity("held");
    i.metadata.finalizers = Some(vec!["uami.dev/identity".into()]);
    api.create(&PostParams::default(), &i).await.unwrap();
    api.delete("held", &DeleteParams::default()).await.unwrap();
    let held = api.get("held").await.unwrap();
    assert!(held.metadata.deletion_timestamp.is_some());
    api.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    let err = api.get("held").await.unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 404),
        "{err:?}"
    );
}

#[tokio::test]
async fn watch_in_order_and_resume_after_disconnect() {
    let (sb, api) = sandbox_api::<UserAssignedIdentity>().await;
    let rv = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut stream = api
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    create(&api, "wat1").await;
    api.patch(
        "wat1",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"tags": {"a": "b"}}})),
    )
    .await
    .unwrap();
    api.delete("wat1", &DeleteParams::default()).await.unwrap();
    let mut seen = Vec::new();
    let mut last_rv = String::new();
    while seen.len() < 3 {
        match tokio::time::timeout(Duration::from_secs(10), stream.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            WatchEvent::Added(o) => {
                last_rv = o.metadata.resource_version.clone().unwrap();
                seen.push("ADDED")
            }
            WatchEvent::Modified(o) => {
                last_rv = o.metadata.resource_version.clone().unwrap();
                seen.push("MODIFIED")
            }
            WatchEvent::Deleted(o) => {
                last_rv = o.metadata.resource_version.clone().unwrap();
                seen.push("DELETED")
            }
            _ => {}
        }
    }
    assert_eq!(seen, vec!["ADDED", "MODIFIED", "DELETED"]);
    sb.disconnect_watches();
    // Resume from the last resourceVersion: only what happened after it arrives.
    create(&api, "wat2").await;
    match first_event_after(&api, &last_rv).await {
        WatchEvent::Added(o) => assert_eq!(o.metadata.name.as_deref(), Some("wat2")),
        other => panic!("{other:?}"),
    }
    // An expired resourceVersion answers 410 Gone.
    sb.compact();
    match first_event_after(&api, &last_rv).await {
        WatchEvent::Error(e) => assert_eq!(e.code, 410),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn the_runtime_watcher_relists_after_410() {
    let (sb, api) = sandbox_api::<UserAssignedIdentity>().await;
    create(&api, "rel1").await;
    let mut objects = watcher(api.clone(), watcher::Config::default())
        .applied_objects()
        .boxed();
    let first = tokio::time::timeout(Duration::from_secs(10), objects.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.metadata.name.as_deref(), Some("rel1"));
    // Expire the history and cut the watch: the watcher must relist and still see new objects.
    sb.compact();
    sb.disconnect_watches();
    create(&api, "rel2").await;
    let mut names = Vec::new();
    let mut saw_410 = false;
    while !names.contains(&"rel2".to_string()) {
        // The watcher reports the 410 as an error item, then relists on the next poll.
        match tokio::time::timeout(Duration::from_secs(20), objects.next())
            .await
            .unwrap()
            .unwrap()
        {
            Ok(o) => names.push(o.metadata.name.unwrap()),
            Err(e) => {
                saw_410 |= format!("{e:?}").contains("code: 410");
            }
        }
    }
    assert!(saw_410, "the watch was told its resourceVersion expired");
    assert!(
        sb.audit()
            .iter()
            .filter(|a| a.verb == "list" && a.resource == "userassignedidentities")
            .count()
            >= 2,
        "relisted"
    );
}

/// A cause of a 422, as `(reason, field, message)`.
type Cause = (String, String, String);

/// The fixtures of `sandbox_kube/cel_cost/` are CRDs near and over kube-apiserver's CEL cost
/// limits, and `expected.yaml` what kube-apiserver 1.36 answered to each: the sandbox accepts the
/// same ones and refuses the others with the same causes (compared regardless of order: the API
/// server walks properties in no fixed order).
#[tokio::test]
async fn crds_over_the_cel_cost_budget_are_refused_as_kube_apiserver_refuses_them() {
    let sb = sandbox::start(SandboxOptions::default()).await.unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(sb.client());
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sandbox_kube/cel_cost");
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
    let expected: BTreeMap<String, Value> =
        serde_yaml_ng::from_str(&read("expected.yaml")).unwrap();
    assert!(expected.len() >= 10, "{expected:?}");
    let mut wrong = Vec::new();
    for (name, verdict) in &expected {
        let crd: CustomResourceDefinition =
            serde_yaml_ng::from_str(&read(&format!("{name}.yaml"))).unwrap();
        let answer = crds.create(&PostParams::default(), &crd).await;
        let mut want: Vec<Cause> = match verdict.as_array() {
            Some(causes) => causes
                .iter()
                .map(|c| {
                    let s = |k: &str| c[k].as_str().unwrap().to_string();
                    (s("reason"), s("field"), s("message"))
                })
                .collect(),
            None => {
                assert_eq!(verdict, "accepted", "{name}");
                Vec::new()
            }
        };
        let mut got: Vec<Cause> = match answer {
            Ok(_) => Vec::new(),
            Err(e) => {
                let status = api_error(e);
                assert_eq!(
                    (status.code, status.reason.as_str()),
                    (422, "Invalid"),
                    "{name}"
                );
                status
                    .details
                    .unwrap()
                    .causes
                    .into_iter()
                    .map(|c| (c.reason, c.field, c.message))
                    .collect()
            }
        };
        want.sort();
        got.sort();
        if got != want {
            wrong.push(format!(
                "{name}:\n  kube-apiserver: {want:#?}\n  sandbox: {got:#?}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    // Installing without HTTP refuses it the same way.
    let before: Value = serde_yaml_ng::from_str(&read("grantpolicies-before-bounds.yaml")).unwrap();
    let refused = sb.install(vec![before]).unwrap_err().to_string();
    assert!(
        refused.contains("estimated rule cost exceeds budget by factor of more than 100x"),
        "{refused}"
    );
    sb.shutdown().await;
}

/// Updating a CRD to one over the budget is refused too; re-applying one that is unchanged is not.
#[tokio::test]
async fn a_crd_updated_over_the_cel_cost_budget_is_refused() {
    let sb = sandbox::start(SandboxOptions::default()).await.unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(sb.client());
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sandbox_kube/cel_cost");
    let read = |name: &str| -> CustomResourceDefinition {
        serde_yaml_ng::from_str(&std::fs::read_to_string(dir.join(name)).unwrap()).unwrap()
    };
    let under = read("rule-just-under-the-limit.yaml");
    let created = crds.create(&PostParams::default(), &under).await.unwrap();
    let mut over = created.clone();
    over.spec.versions[0].schema = read("rule-just-over-the-limit.yaml").spec.versions[0]
        .schema
        .clone();
    let name = created.metadata.name.clone().unwrap();
    refused_with(
        crds.replace(&name, &PostParams::default(), &over).await,
        422,
        "estimated rule cost exceeds budget by factor of 1.001275x",
    );
    let again = crds.get(&name).await.unwrap();
    crds.replace(&name, &PostParams::default(), &again)
        .await
        .unwrap();
    sb.shutdown().await;
}
