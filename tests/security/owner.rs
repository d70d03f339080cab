//! 2. An identity has exactly one owner.

use crate::support::arm::{Admin, identity_path};
use uami_azure::federated::IdentityCoordinates;
use uami_azure::{ArmClient, ArmClientOptions, IdentityApi};
use uami_emulator::world::TUTORIAL_SUBSCRIPTION as SUB;
use uami_emulator::{self as emulator, World};

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_tag_names_the_cluster() {
    let (stack, admin) = stack_and_admin().await;
    // Another cluster with the same namespace and names got there first: once under the
    // namespace/name tag, once under its own cluster name.
    let twin = json!({"uami.dev-owner": "apps/twin"});
    let cousin = json!({"uami.dev-owner": "east/apps/cousin"});
    admin.put_identity("twin", twin.clone()).await;
    admin.put_identity("cousin", cousin.clone()).await;
    apply_all(
        &stack,
        &[
            namespace(NS),
            identity("mine"),
            identity("twin"),
            adopting("cousin"),
        ],
    )
    .await;
    ready_identity(&stack, NS, "mine").await;
    assert_eq!(
        admin.identity_tags("mine").await.unwrap()["uami.dev-owner"],
        "sandbox/apps/mine"
    );
    for name in ["twin", "cousin"] {
        refused(&identities(&stack, NS), name, "AlreadyExists").await;
    }
    // Deleting our objects never deletes the other cluster's identities.
    for name in ["twin", "cousin"] {
        delete_and_wait(&identities(&stack, NS), name).await;
    }
    assert_eq!(admin.identity_tags("twin").await, Some(twin));
    assert_eq!(admin.identity_tags("cousin").await, Some(cousin));
    let counts = stack.emulator.counts();
    assert_eq!(counts.total("UserAssignedIdentities_Delete"), 0);
    stack.stop().await;
}

#[test]
fn the_controller_refuses_to_run_without_a_cluster_name() {
    let (ok, _, stderr) = run_uami(
        &["run", "--credential", "client-secret"],
        &["UAMI_CLUSTER_NAME"],
    );
    assert!(!ok);
    assert!(stderr.contains("--cluster-name"), "{stderr}");
    let (ok, _, stderr) = run_uami(&["run", "--cluster-name", "a/b"], &[]);
    assert!(!ok);
    assert!(stderr.contains("is not a cluster name"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adoption_needs_a_policy_rule_and_keeps_existing_tags() {
    let (stack, admin) = stack_and_admin().await;
    let foreign = json!({"uami.dev-owner": "east/apps/foreign"});
    admin
        .put_identity("legacy", json!({"cost-center": "42"}))
        .await;
    admin.put_identity("foreign", foreign.clone()).await;
    apply_all(
        &stack,
        &[
            namespace(NS),
            policy(""),
            adopting("legacy"),
            adopting("foreign"),
        ],
    )
    .await;
    refused(&identities(&stack, NS), "legacy", "DeniedByPolicy").await;
    refused(&identities(&stack, NS), "foreign", "AlreadyExists").await;
    assert_eq!(
        admin.identity_tags("legacy").await,
        Some(json!({"cost-center": "42"}))
    );
    let counts = stack.emulator.counts();
    assert_eq!(counts.total("UserAssignedIdentities_Update"), 0);
    // A rule allows adopting identities from DevTest: the identity is adopted, keeps its tags.
    stack
        .apply_yaml(&policy("  identityAdoption:\n  - resourceGroup: DevTest\n"))
        .await
        .unwrap();
    ready_identity(&stack, NS, "legacy").await;
    let uid = uid_of(&stack, NS, "legacy").await;
    assert_eq!(
        admin.identity_tags("legacy").await,
        Some(
            json!({"cost-center": "42", "uami.dev-owner": "sandbox/apps/legacy", "uami.dev-owner-uid": uid, "uami.dev-adopted": "true"})
        )
    );
    // Never an identity tagged for another owner, even with the rule.
    tokio::time::sleep(Duration::from_secs(1)).await;
    refused(&identities(&stack, NS), "foreign", "AlreadyExists").await;
    assert_eq!(admin.identity_tags("foreign").await, Some(foreign));
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creating_an_identity_never_overwrites_one_that_appeared() {
    let world = World::tutorial().unwrap();
    let emulator = emulator::start(world.clone()).await.unwrap();
    let admin = Admin::of(&emulator);
    let raced = json!({"uami.dev-owner": "east/apps/raced"});
    admin.put_identity("raced", raced.clone()).await;
    // The emulator answers If-None-Match: * on an existing identity as ARM does.
    let (s, _, v) = admin
        .send(
            reqwest::Method::PUT,
            &identity_path("raced"),
            Some(json!({"location": "eastus", "tags": {"x": "y"}})),
            &[("If-None-Match", "*")],
        )
        .await;
    assert_eq!(s, 412, "{v}");
    assert_eq!(v["error"]["code"], "PreconditionFailed");
    // The controller's create sends it: the identity that appeared between its read and its
    // create is not overwritten.
    let opts = uami::demo::stack::controller_options(&emulator, Duration::from_secs(60)).unwrap();
    let http = uami_azure::http::http_client(&opts.azure_ca);
    let credential =
        uami_azure::auth::build_credential(opts.credential, http.clone(), Duration::from_secs(60));
    let arm = ArmClient::new(
        http,
        ArmClientOptions::new(emulator.arm_endpoint()),
        credential,
        None,
    );
    let tags = [(
        "uami.dev-owner".to_string(),
        "sandbox/apps/raced".to_string(),
    )]
    .into_iter()
    .collect();
    let create = |name: &'static str| {
        let at = IdentityCoordinates::new(SUB, "DevTest", name);
        let (arm, tags) = (&arm, &tags);
        async move { arm.create_identity(&at, "eastus", tags).await }
    };
    let err = create("raced").await.unwrap_err();
    assert_eq!(err.code, "PreconditionFailed");
    assert_eq!(admin.identity_tags("raced").await, Some(raced));
    let created = create("fresh").await.unwrap();
    assert_eq!(created.tags, tags);
    emulator.shutdown().await;
}

/// An identity left in Azure by `deletionPolicy: Orphan` is not taken by the next object of the
/// same namespace and name (the namespace deleted and given to another team, say): the owner tag
/// carries the object's uid, and another uid is another owner, so taking the identity over is
/// adoption, which needs `adoptExisting` and a GrantPolicy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orphaned_identity_is_not_taken_by_the_next_object_of_its_name() {
    let (stack, admin) = apps_with(&[
        fixtures::identity(NS, "app-id")
            .with(|i| i.spec.deletion_policy = DeletionPolicy::Orphan)
            .yaml(),
        fixtures::grant(
            NS,
            "reads",
            "app-id",
            "Reader",
            fixtures::resource_group("DevTest"),
        )
        .with(|g| g.spec.deletion_policy = DeletionPolicy::Orphan)
        .yaml(),
    ])
    .await;
    let (_, principal) = ready_identity(&stack, NS, "app-id").await;
    ready(&grants(&stack, NS), "reads", 60).await;
    let first_uid = uid_of(&stack, NS, "app-id").await;
    assert_eq!(
        admin.identity_tags("app-id").await.unwrap()["uami.dev-owner-uid"],
        first_uid.as_str()
    );
    // The team leaves: its objects go, Azure keeps the identity and its Reader assignment.
    delete_and_wait(&grants(&stack, NS), "reads").await;
    delete_and_wait(&identities(&stack, NS), "app-id").await;
    let policies: Api<uami_api::GrantPolicy> = Api::all(stack.client());
    policies.delete("apps", &Default::default()).await.unwrap();
    assert_eq!(assignments_of(&stack.emulator.state(), &principal).len(), 1);

    // Another team's object of the same name is refused, and the identity is left as it was.
    apply_all(&stack, &[identity("app-id")]).await;
    let refused_identity = refused(&identities(&stack, NS), "app-id", "AlreadyExists").await;
    let status = refused_identity.status.unwrap();
    let message = &status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap()
        .message;
    assert!(message.contains("earlier object"), "{message}");
    assert_ne!(status.principal_id.as_deref(), Some(principal.as_str()));
    assert_eq!(
        admin.identity_tags("app-id").await.unwrap()["uami.dev-owner-uid"],
        first_uid.as_str()
    );
    // Adopting it needs adoptExisting and a GrantPolicy's identityAdoption.
    apply_all(&stack, &[adopting("app-id")]).await;
    refused(&identities(&stack, NS), "app-id", "DeniedByPolicy").await;
    stack.stop().await;
}
