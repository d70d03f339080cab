//! 3. Deletion acts only on what the controller can prove it created.

use kube::ResourceExt;
use kube::api::DeleteParams;
use uami_emulator::world::TUTORIAL_SUBSCRIPTION as SUB;

use super::*;
use crate::support::arm::{Admin, READER_GUID};

/// Delete grant `name` and wait until it is gone; whether role assignment `id` still exists.
async fn exists_after_deleting(api: &Api<RoleGrant>, name: &str, admin: &Admin, id: &str) -> bool {
    delete_and_wait(api, name).await;
    admin.assignment_exists(id).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_grant_status_steers_no_delete() {
    let (stack, admin) =
        apps_with(&[identity("g-id"), identity("g-id2"), identity("bystander")]).await;
    let (_, bystander) = ready_identity(&stack, NS, "bystander").await;
    let rg = format!("/subscriptions/{SUB}/resourceGroups/DevTest");
    let victim = admin.create_assignment(&rg, &bystander).await;
    apply_all(
        &stack,
        &[
            devtest_grant("g-main", "g-id"),
            devtest_grant("g-other", "g-id2"),
        ],
    )
    .await;
    let api = grants(&stack, NS);
    let own = assignment_id(&api, "g-main").await;
    let other = assignment_id(&api, "g-other").await;
    // A forged id pointing at someone else's assignment: deleting the grant deletes its own
    // assignment, never the forged one.
    forge_status(
        &api,
        "g-main",
        json!({"roleAssignmentId": victim, "adopted": false}),
    )
    .await;
    assert!(
        exists_after_deleting(&api, "g-main", &admin, &victim).await,
        "the forged id was deleted"
    );
    assert!(
        !admin.assignment_exists(&own).await,
        "the grant's own assignment was left"
    );
    // A forged `adopted: true` does not keep the controller from deleting what it created.
    forge_status(&api, "g-other", json!({"adopted": true})).await;
    assert!(
        !exists_after_deleting(&api, "g-other", &admin, &other).await,
        "forged adopted kept the assignment"
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_grants_of_one_assignment_keep_it_until_the_last_goes() {
    let (stack, admin) = apps_with(&[
        identity("dup"),
        devtest_grant("by-name", "dup"),
        grant(
            "by-guid",
            "dup",
            READER_GUID,
            fixtures::resource_group("devtest"),
        ),
    ])
    .await;
    let api = grants(&stack, NS);
    let a = assignment_id(&api, "by-name").await;
    let b = assignment_id(&api, "by-guid").await;
    assert!(a.eq_ignore_ascii_case(&b), "{a} {b}");
    // Deleting one grant keeps the other's access; deleting the last revokes it.
    let kept_after_first = exists_after_deleting(&api, "by-name", &admin, &a).await;
    ready(&api, "by-guid", 5).await;
    let kept_after_last = exists_after_deleting(&api, "by-guid", &admin, &a).await;
    assert_eq!(
        (kept_after_first, kept_after_last),
        (true, false),
        "whether the assignment exists after deleting the first grant, then the last"
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bindings_remove_only_identities_the_controller_added() {
    let (stack, admin) = stack_and_admin().await;
    apply_all(
        &stack,
        &[
            namespace(NS),
            namespace("closed"),
            policy(""),
            identity("pre"),
            identity("own"),
            identity_in("closed", "d-id"),
        ],
    )
    .await;
    let (pre, _) = ready_identity(&stack, NS, "pre").await;
    let (own, _) = ready_identity(&stack, NS, "own").await;
    let (denied, _) = ready_identity(&stack, "closed", "d-id").await;
    // Assigned to myVM by someone else before any binding.
    admin.assign_to_vm("myVM", &pre).await;
    admin.assign_to_vm("myVM", &denied).await;
    apply_all(
        &stack,
        &[
            binding_in(NS, "b-pre", "pre"),
            binding_in(NS, "b-own", "own"),
            binding_in("closed", "b-denied", "d-id"),
        ],
    )
    .await;
    let api = bindings(&stack, NS);
    let b_pre = condition_is(&api, "b-pre", "Assigned", "True", Some("Assigned"), 60).await;
    assert_eq!(b_pre.status.unwrap().adopted, Some(true));
    let b_own = condition_is(&api, "b-own", "Assigned", "True", Some("Assigned"), 60).await;
    assert_eq!(b_own.status.as_ref().unwrap().adopted, Some(false));
    assert_eq!(
        b_own.annotations().get("uami.dev/assigned-identity"),
        Some(&own)
    );
    let closed = bindings(&stack, "closed");
    refused(&closed, "b-denied", "DeniedByPolicy").await;

    // Forged status: `adopted: false` on the adopted binding, `adopted: true` on ours.
    forge_status(&api, "b-pre", json!({"adopted": false})).await;
    forge_status(&api, "b-own", json!({"adopted": true})).await;
    // The controller corrects the claim from its record.
    eventually(60, "b-own to show adopted: false again", || async {
        let b = api.get("b-own").await.unwrap();
        (b.status.and_then(|s| s.adopted) == Some(false)).then_some(())
    })
    .await;
    delete_and_wait(&api, "b-pre").await;
    delete_and_wait(&api, "b-own").await;
    delete_and_wait(&closed, "b-denied").await;
    assert!(
        vm_has(&stack, &pre),
        "an identity someone else assigned was removed"
    );
    assert!(
        vm_has(&stack, &denied),
        "a binding refused by policy removed an identity"
    );
    assert!(
        !vm_has(&stack, &own),
        "the identity the controller added was left"
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binding_deleted_before_its_first_reconcile_removes_nothing() {
    let stack = stack(|o| o.controller = false).await;
    let admin = Admin::of(&stack.emulator);
    let first = Controller::start(&stack, None);
    apply_all(&stack, &[namespace(NS), policy(""), identity("early")]).await;
    let (early, _) = ready_identity(&stack, NS, "early").await;
    admin.assign_to_vm("myVM", &early).await;
    first.stop().await;
    // While no controller runs, a binding (finalizer already set) is created and deleted: the
    // controller's first look at it is its cleanup.
    let yaml = fixtures::binding(NS, "early-b", "early", fixtures::vm("myVM"))
        .with(|b| b.metadata.finalizers = Some(vec!["uami.dev/binding".into()]))
        .yaml();
    stack.apply_yaml(&yaml).await.unwrap();
    let api = bindings(&stack, NS);
    api.delete("early-b", &DeleteParams::default())
        .await
        .unwrap();
    let second = Controller::start(&stack, None);
    gone(&api, "early-b", 60).await;
    assert!(
        vm_has(&stack, &early),
        "a binding that never assigned removed the identity"
    );
    assert_eq!(stack.emulator.counts().total("VirtualMachines_Update"), 1);
    second.stop().await;
    stack.stop().await;
}
