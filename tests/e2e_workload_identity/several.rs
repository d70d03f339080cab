//! Several identities bound to one service account (one of them its default), and a bound
//! identity deleted and created again out of band.

use super::*;

/// Namespace, a policy that lets it bind any identity of DevTest to service account `app`, the
/// service account and three identities (`first`, `second`, `third`).
fn several_identities_yaml() -> String {
    let mut yaml = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {NS}}}\n---\napiVersion: uami.dev/v1alpha1\nkind: GrantPolicy\nmetadata: {{name: wi-several}}\nspec:\n  namespaces: [{NS}]\n  identityBindings:\n  - serviceAccount: {{resourceGroup: DevTest, serviceAccounts: [app]}}\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: app, namespace: {NS}}}\n"
    );
    for name in ["first", "second", "third"] {
        yaml.push_str(&named_identity(name, &format!("{name}Identity")));
    }
    yaml
}

/// A binding of identity `identity` to service account `app`, marked `default` or not.
fn app_binding(name: &str, identity: &str, default: bool) -> String {
    let mut target = fixtures::service_account("app");
    if let Some(sa) = target.service_account.as_mut() {
        sa.default = default;
    }
    fixtures::binding(NS, name, identity, target).yaml()
}

async fn client_id_of(stack: &Stack, identity: &str) -> String {
    identities(stack, NS)
        .get(identity)
        .await
        .unwrap()
        .status
        .unwrap()
        .client_id
        .unwrap()
}

async fn app_annotation(stack: &Stack) -> Option<String> {
    let sa = sa_api(stack, NS).get("app").await.unwrap();
    sa.metadata.annotations?.get(CLIENT_ID).cloned()
}

pub(super) async fn several_identities(opts: StackOptions, real: Option<&envtest::Real>) {
    let stack = Stack::start(opts).await.unwrap();
    stack.apply_yaml(&several_identities_yaml()).await.unwrap();
    for name in ["first", "second", "third"] {
        ready(&identities(&stack, NS), name, 60).await;
    }
    let (first, second, third) = (
        client_id_of(&stack, "first").await,
        client_id_of(&stack, "second").await,
        client_id_of(&stack, "third").await,
    );
    // Two identities on one service account, the second marked default: both Ready, each
    // through its own federated identity credential, each proven by its own exchange.
    stack
        .apply_yaml(&app_binding("app-first", "first", false))
        .await
        .unwrap();
    ready(&bindings(&stack, NS), "app-first", 60).await;
    stack
        .apply_yaml(&app_binding("app-second", "second", true))
        .await
        .unwrap();
    for (name, client) in [("app-first", &first), ("app-second", &second)] {
        let s = ready(&bindings(&stack, NS), name, 60).await.status.unwrap();
        assert_eq!(s.assigned, Some(true));
        assert_eq!(s.token.unwrap().client_id.as_ref(), Some(client));
    }
    let all = fics(&stack);
    assert_eq!(all.len(), 2, "{all:?}");
    for azure_name in ["firstIdentity", "secondIdentity"] {
        let of_identity: Vec<&Value> = all
            .iter()
            .filter(|f| {
                f["id"]
                    .as_str()
                    .unwrap()
                    .to_lowercase()
                    .contains(&format!("/{}/", azure_name.to_lowercase()))
            })
            .collect();
        assert_eq!(of_identity.len(), 1, "{azure_name}: {all:?}");
        assert_eq!(
            of_identity[0]["properties"]["subject"],
            "system:serviceaccount:workload:app"
        );
        if let Some(real) = real {
            assert_eq!(
                of_identity[0]["properties"]["issuer"],
                real.plane.issuer.as_str()
            );
        }
    }
    // The annotation names the default.
    eventually(30, "the annotation names the default", || async {
        (app_annotation(&stack).await.as_ref() == Some(&second)).then_some(())
    })
    .await;

    // A second binding marked default, for another identity: both refused, the annotation
    // left as it was, the credentials kept.
    stack
        .apply_yaml(&app_binding("app-third", "third", true))
        .await
        .unwrap();
    for name in ["app-second", "app-third"] {
        let b = refused(&bindings(&stack, NS), name, "DefaultConflict").await;
        let ready = ready_condition(&b.status.unwrap().conditions);
        assert_eq!(ready.status, "False");
        assert!(
            ready.message.contains("app-second") && ready.message.contains("app-third"),
            "{}",
            ready.message
        );
    }
    assert_eq!(app_annotation(&stack).await.as_ref(), Some(&second));
    assert_eq!(fics(&stack).len(), 2);
    let evs = events(&stack, NS).await;
    assert!(
        evs.iter()
            .any(|e| e.reason.as_deref() == Some("DefaultConflict")),
        "{evs:?}"
    );
    // The first binding, not marked, is untouched by the conflict.
    ready(&bindings(&stack, NS), "app-first", 10).await;

    // The third says false: the conflict ends, all three Ready, the second stays the default.
    stack
        .apply_yaml(&app_binding("app-third", "third", false))
        .await
        .unwrap();
    for name in ["app-first", "app-second", "app-third"] {
        ready(&bindings(&stack, NS), name, 60).await;
    }
    assert_eq!(fics(&stack).len(), 3);
    assert_eq!(app_annotation(&stack).await.as_ref(), Some(&second));

    // The default binding deleted: its credential goes, and the annotation moves to the oldest
    // remaining binding (none is marked).
    delete_and_wait(&bindings(&stack, NS), "app-second").await;
    eventually(30, "the annotation moves to the oldest binding", || async {
        (app_annotation(&stack).await.as_ref() == Some(&first)).then_some(())
    })
    .await;
    let left = fics(&stack);
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(!left.iter().any(|f| {
        f["id"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("/secondidentity/")
    }));
    // Marking the third moves it there.
    stack
        .apply_yaml(&app_binding("app-third", "third", true))
        .await
        .unwrap();
    eventually(30, "the annotation follows the marked binding", || async {
        (app_annotation(&stack).await.as_ref() == Some(&third)).then_some(())
    })
    .await;
    ready(&bindings(&stack, NS), "app-first", 30).await;
    stack.stop().await;
}

/// The bound identity deleted and created again out of band: its federated identity credential
/// went with it; the controller writes it again on the new identity, annotates the service
/// account with the new client id, and the exchange works again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_identity_gets_its_credential_and_annotation_again() {
    let stack = Stack::start(options(3)).await.unwrap();
    stack.apply_yaml(EXAMPLE).await.unwrap();
    let b = ready(&bindings(&stack, NS), "reporter-identity-for-reporter", 60).await;
    let name = b.status.unwrap().federated_credential_name.unwrap();
    let admin = support::arm::Admin::of(&stack.emulator);
    let created = admin.recreate_identity("reporterIdentity").await;
    let (client, principal) = client_and_principal(&created);
    eventually(
        60,
        "credential, annotation and token of the new identity",
        || async {
            let (back, annotation) = reporter_credential(&stack, &name).await?;
            let annotated = annotation.as_ref() == Some(&client);
            let b = bindings(&stack, NS)
                .get("reporter-identity-for-reporter")
                .await
                .ok()?;
            let s = b.status?;
            let token = s.token?;
            (back
                && annotated
                && token.object_id.as_deref() == Some(principal.as_str())
                && condition(&s.conditions, "Ready")?.0 == "True")
                .then_some(())
        },
    )
    .await;
    let evs = events(&stack, NS).await;
    assert!(
        evs.iter()
            .any(|e| e.reason.as_deref() == Some("IdentityRecreated")),
        "{evs:?}"
    );
    stack.stop().await;
}
