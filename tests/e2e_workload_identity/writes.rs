//! Writes on one identity are serialized and the 21st credential is refused without a write; a
//! policy mismatch shows AADSTS70021, and deletion goes in order.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_on_one_identity_are_serialized_and_the_21st_is_refused_without_a_write() {
    let stack = stack(30, |o| {
        // Every credential write takes a while: concurrent ones would be refused by Azure.
        o.world.faults = Faults {
            fic_write_ms: 300,
            ..Faults::default()
        };
    })
    .await;
    stack
        .apply_yaml(&base_yaml("sharedIdentity"))
        .await
        .unwrap();
    ready(&identities(&stack, NS), "shared", 60).await;
    // 15 credentials exist already (someone else's).
    stack.emulator.set_faults(Faults::default());
    for i in 0..15 {
        let s = arm(&stack, reqwest::Method::PUT, &format!("sharedIdentity/federatedIdentityCredentials/other-{i}"), Some(json!({"properties": {"issuer": "https://elsewhere.example/", "subject": format!("ci:{i}"), "audiences": ["api://AzureADTokenExchange"]}}))).await;
        assert_eq!(s, 201);
    }
    stack.emulator.set_faults(Faults {
        fic_write_ms: 300,
        ..Faults::default()
    });
    stack.emulator.reset_counts();
    // Five bindings at once: five writes, one after the other, none refused.
    let mut yaml = String::new();
    for i in 0..5 {
        yaml.push_str(&binding_yaml(&format!("b{i}"), "shared", &format!("sa{i}")));
    }
    stack.apply_yaml(&yaml).await.unwrap();
    for i in 0..5 {
        ready(&bindings(&stack, NS), &format!("b{i}"), 90).await;
    }
    let c = stack.emulator.counts();
    assert_eq!(
        c.get("FederatedIdentityCredentials_CreateOrUpdate", 201),
        5,
        "{c:?}"
    );
    assert_eq!(
        c.get("FederatedIdentityCredentials_CreateOrUpdate", 409),
        0,
        "{c:?}"
    );
    assert_eq!(fics(&stack).len(), 20);
    // The 21st: refused with a clear reason, and never sent to Azure.
    stack.emulator.reset_counts();
    stack
        .apply_yaml(&binding_yaml("b21", "shared", "sa21"))
        .await
        .unwrap();
    let b = refused(
        &bindings(&stack, NS),
        "b21",
        "FederatedCredentialLimitReached",
    )
    .await;
    let ready_cond = ready_condition(&b.status.unwrap().conditions);
    assert_eq!(ready_cond.status, "False");
    assert!(ready_cond.message.contains("20"), "{}", ready_cond.message);
    assert_eq!(
        stack
            .emulator
            .counts()
            .total("FederatedIdentityCredentials_CreateOrUpdate"),
        0
    );
    assert_eq!(fics(&stack).len(), 20);
    // Deleting one binding frees a place: its credential goes, its annotation goes, and the
    // 21st gets its credential.
    delete_and_wait(&bindings(&stack, NS), "b0").await;
    assert!(!annotated(&stack, "sa0").await);
    assert!(
        !fics(&stack)
            .iter()
            .any(|f| f["properties"]["subject"] == "system:serviceaccount:workload:sa0")
    );
    ready(&bindings(&stack, NS), "b21", 90).await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_mismatch_and_deletion_order() {
    // The controller is told an issuer that is not the one its cluster's tokens carry.
    let stack = stack(30, |o| o.controller = false).await;
    let mut opts = controller_options(&stack.emulator, Duration::from_secs(30)).unwrap();
    opts.oidc_issuer = Some(format!("{}/", stack.cluster.oidc_issuer()));
    let stop = tokio_util::sync::CancellationToken::new();
    let mut registry = prometheus_client::registry::Registry::default();
    let controller = uami_controller::app::start(
        stack.sandbox().unwrap().client_as("controller").unwrap(),
        opts,
        &mut registry,
        stop.clone(),
        |_| {},
    );
    stack
        .apply_yaml(&base_yaml("mismatchIdentity"))
        .await
        .unwrap();
    ready(&identities(&stack, NS), "shared", 60).await;
    // No policy for this identity: refused before any write.
    stack.emulator.reset_counts();
    stack
        .apply_yaml(&format!(
            "{}{}",
            named_identity("other", "otherIdentity"),
            binding_yaml("denied", "other", "app2")
        ))
        .await
        .unwrap();
    ready(&identities(&stack, NS), "other", 60).await;
    let denied = refused(&bindings(&stack, NS), "denied", "DeniedByPolicy").await;
    assert!(
        denied
            .status
            .unwrap()
            .conditions
            .iter()
            .any(|c| c.message.contains("service account app2"))
    );
    assert_eq!(
        stack
            .emulator
            .counts()
            .total("FederatedIdentityCredentials_CreateOrUpdate"),
        0
    );
    // The exchange is refused with AADSTS70021, shown as the reason.
    stack
        .apply_yaml(&binding_yaml("mismatch", "shared", "app"))
        .await
        .unwrap();
    let b = eventually(60, "AADSTS70021", || async {
        let b = bindings(&stack, NS).get("mismatch").await.ok()?;
        (condition(&b.status.as_ref()?.conditions, "TokenAcquired")?.1 == "AADSTS70021")
            .then_some(b)
    })
    .await;
    let s = b.status.unwrap();
    assert_eq!(
        reason(&bindings(&stack, NS).get("mismatch").await.unwrap()).unwrap(),
        ("False".into(), "AADSTS70021".into())
    );
    assert_eq!(condition(&s.conditions, "Assigned").unwrap().0, "True");
    assert!(s.token.is_none());
    // Deletion order: the identity waits for its binding; the credential goes before the
    // identity.
    delete(&identities(&stack, NS), "shared").await;
    delete(&bindings(&stack, NS), "mismatch").await;
    gone(&identities(&stack, NS), "shared", 60).await;
    let journal = stack.emulator.journal();
    let pos = |op: &str| {
        journal
            .iter()
            .position(|e| e.operation == op && e.status < 300)
    };
    let fic_delete = pos("FederatedIdentityCredentials_Delete").expect("credential deleted");
    let id_delete = pos("UserAssignedIdentities_Delete").expect("identity deleted");
    assert!(fic_delete < id_delete, "the credential goes first");
    assert!(!annotated(&stack, "app").await);
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), controller).await;
    stack.stop().await;
}
