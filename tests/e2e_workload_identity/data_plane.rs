//! A data role of a service account's identity, verified on its data plane (blob storage).

use uami_api::grant::VerifyAccessOptions;

use super::*;

/// A data role granted to the identity of a service account: the policy that allows it, and the
/// grant of `Storage Blob Data Reader` on a storage account, listing container `reports`.
fn blob_grant() -> String {
    let policy = r#"
apiVersion: uami.dev/v1alpha1
kind: GrantPolicy
metadata:
  name: workload-reporter-blobs
spec:
  namespaces: ["workload"]
  roleGrants:
    - roles: ["Storage Blob Data Reader"]
      scopes:
        - resourceGroup:
            name: DevTest
"#;
    let grant = fixtures::grant(
        NS,
        "reporter-reads-blobs",
        "reporter-identity",
        "Storage Blob Data Reader",
        fixtures::resource(&format!(
            "/subscriptions/{SUB}/resourceGroups/DevTest/providers/Microsoft.Storage/storageAccounts/reportsdata"
        )),
    )
    .with(|g| {
        g.spec.verify_access = true;
        g.spec.verify_access_options = Some(VerifyAccessOptions {
            blob_container: Some("reports".into()),
        });
    });
    format!("{policy}{}", grant.yaml())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_role_of_a_service_account_is_verified_on_its_data_plane() {
    let stack = stack(3, |opts| {
        let rg = &mut opts.world.subscriptions[0].resource_groups[0];
        assert_eq!(rg.name, "DevTest");
        rg.storage_accounts = vec!["reportsdata".into()];
    })
    .await;
    // The example without its Reader grant on DevTest: the identity holds only the data role,
    // which lets it read nothing through ARM.
    let example: Vec<&str> = EXAMPLE
        .split("\n---\n")
        .filter(|doc| !doc.contains("name: reporter-reads-devtest"))
        .collect();
    assert_eq!(example.len(), EXAMPLE.split("\n---\n").count() - 1);
    stack.apply_yaml(&example.join("\n---\n")).await.unwrap();
    stack.apply_yaml(&blob_grant()).await.unwrap();
    let api = grants(&stack, NS);
    let s = eventually(60, "the blob grant verified on the Blob plane", || async {
        let s = api.get("reporter-reads-blobs").await.ok()?.status?;
        (condition(&s.conditions, "AccessVerified")?.0 == "True").then_some(s)
    })
    .await;
    let access = s.access.clone().unwrap();
    assert_eq!(access.plane, AccessPlane::Blob, "{s:?}");
    assert_eq!(access.http_status, Some(200), "{s:?}");
    assert_eq!(access.checked_by.as_deref(), Some("token-exchange"));
    let message = s
        .conditions
        .iter()
        .find(|c| c.type_ == "AccessVerified")
        .map(|c| c.message.clone())
        .unwrap();
    assert!(message.contains("Blob Storage data plane"), "{message}");
    // Blob Storage listed the container for a token of its own audience, exchanged for the
    // service account's token.
    assert!(stack.emulator.counts().get("Blob_ListBlobs", 200) >= 1);
    assert!(stack.emulator.journal().iter().any(|e| {
        e.operation == "Aad_Token"
            && e.status == 200
            && e.request.as_ref().is_some_and(|r| {
                r["scope"] == "https://storage.azure.com/.default"
                    && r["client_assertion_type"]
                        == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
            })
    }));
    // The binding lists the grant verified.
    eventually(30, "binding access verified", || async {
        let b = bindings(&stack, NS)
            .get("reporter-identity-for-reporter")
            .await
            .ok()?;
        let a = b.status?.access;
        a.iter()
            .any(|a| a.role_grant == "reporter-reads-blobs" && a.verified)
            .then_some(())
    })
    .await;
    stack.stop().await;
}
