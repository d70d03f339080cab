//! Service account bindings (workload identity) end to end on the sandbox and the emulator: the
//! federated identity credential and the annotations appear, the token exchange is proven and
//! reported, the steady state writes nothing, drift is repaired, the 21st credential is never
//! attempted, writes on one identity are serialized, a mismatch shows AADSTS70021, deletion goes
//! in order, and no token appears anywhere. The exchange and the policy revocation also run on a
//! real API server: its TokenRequest tokens, signed by kube-apiserver, are verified by the
//! emulator's Entra ID against the issuer's keys, published over HTTPS on loopback (its
//! certificate given to the emulator through the world's `oidcIssuerCaPems`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::events::v1::Event;
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use serde_json::{Value, json};
use support::capture::Capture;
use support::*;
use uami::demo::stack::{Stack, StackOptions, controller_options};
use uami_api::binding::AccessPlane;
use uami_emulator::Faults;
use uami_emulator::world::TUTORIAL_SUBSCRIPTION as SUB;

const EXAMPLE: &str = include_str!("../examples/workload-identity.yaml");
const NS: &str = "workload";
const CLIENT_ID: &str = "azure.workload.identity/client-id";
const TENANT_ID: &str = "azure.workload.identity/tenant-id";

fn options(resync: u64) -> StackOptions {
    let mut opts = StackOptions::tutorial(Duration::from_secs(resync)).unwrap();
    opts.world.rbac_propagation_seconds = 1.0;
    opts.agents = false;
    opts
}

async fn stack(resync: u64, configure: impl FnOnce(&mut StackOptions)) -> Stack {
    let mut opts = options(resync);
    configure(&mut opts);
    Stack::start(opts).await.unwrap()
}

/// `opts` on the real API server of this test binary, its issuer trusted by the emulator's
/// Entra ID; `None` when that layer is off.
async fn on_real(test: &str, opts: &mut StackOptions) -> Option<envtest::Real> {
    let real = on_real_apiserver(test, opts).await?;
    opts.world
        .oidc_issuer_ca_pems
        .push(real.plane.issuer_ca_pem.clone());
    Some(real)
}

fn fics(stack: &Stack) -> Vec<Value> {
    stack.emulator.state()["federatedIdentityCredentials"]
        .as_array()
        .unwrap()
        .clone()
}

fn sa_api(stack: &Stack, ns: &str) -> Api<ServiceAccount> {
    Api::namespaced(stack.client(), ns)
}

async fn arm(stack: &Stack, method: reqwest::Method, path: &str, body: Option<Value>) -> u16 {
    let url = format!(
        "{}subscriptions/{SUB}/resourceGroups/DevTest/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{path}{}api-version=2023-01-31",
        stack.emulator.arm_endpoint(),
        if path.contains('?') { "&" } else { "?" }
    );
    let mut req = emulator_http(&stack.emulator)
        .request(method, url)
        .bearer_auth(stack.emulator.admin_token());
    if let Some(b) = body {
        req = req.json(&b);
    }
    req.send().await.unwrap().status().as_u16()
}

async fn events(stack: &Stack, ns: &str) -> Vec<Event> {
    Api::<Event>::namespaced(stack.client(), ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
}

/// Whether service account `name` carries the client id annotation.
async fn annotated(stack: &Stack, name: &str) -> bool {
    let sa = sa_api(stack, NS).get(name).await.unwrap();
    sa.metadata
        .annotations
        .unwrap_or_default()
        .contains_key(CLIENT_ID)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_account_binding_is_proven_by_the_token_exchange() {
    proven_by_the_token_exchange(options(3), None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_real_api_server_a_service_account_binding_is_proven_by_the_token_exchange() {
    let mut opts = options(3);
    let Some(real) = on_real("e2e_workload_identity", &mut opts).await else {
        return;
    };
    proven_by_the_token_exchange(opts, Some(&real)).await;
}

async fn proven_by_the_token_exchange(opts: StackOptions, real: Option<&envtest::Real>) {
    let capture = Capture::install();
    let stack = Stack::start(opts).await.unwrap();
    stack.apply_yaml(EXAMPLE).await.unwrap();
    let id = ready(&identities(&stack, NS), "reporter-identity", 60).await;
    let id_status = id.status.clone().unwrap();
    let b = ready(&bindings(&stack, NS), "reporter-identity-for-reporter", 60).await;
    let s = b.status.clone().unwrap();
    let name = s.federated_credential_name.clone().unwrap();
    assert!(name.starts_with("k8s-workload-reporter-"), "{name}");
    assert_eq!(s.assigned, Some(true));
    assert_eq!(s.adopted, Some(false));
    assert!(
        s.target_resource_id
            .unwrap()
            .ends_with(&format!("/federatedIdentityCredentials/{name}"))
    );
    for t in ["Assigned", "TokenAcquired", "Ready"] {
        assert_eq!(condition(&s.conditions, t).unwrap().0, "True", "{t}");
    }
    // The token's metadata, from the exchange.
    let token = s.token.unwrap();
    assert_eq!(token.checked_by.as_deref(), Some("token-exchange"));
    assert_eq!(
        token.resource.as_deref(),
        Some("https://management.azure.com/")
    );
    assert_eq!(token.tenant_id, id_status.tenant_id);
    assert_eq!(token.object_id, id_status.principal_id);
    assert_eq!(token.client_id, id_status.client_id);
    assert!(token.expires_on.is_some());
    // The credential in Azure trusts exactly the service account of this cluster.
    let all = fics(&stack);
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0]["name"], name.as_str());
    assert_eq!(
        all[0]["properties"]["issuer"],
        stack.cluster.oidc_issuer().as_str()
    );
    assert_eq!(
        all[0]["properties"]["subject"],
        "system:serviceaccount:workload:reporter"
    );
    assert_eq!(
        all[0]["properties"]["audiences"],
        json!(["api://AzureADTokenExchange"])
    );
    // The service account carries what the workload identity webhook reads.
    let sa = sa_api(&stack, NS).get("reporter").await.unwrap();
    let ann = sa.metadata.annotations.clone().unwrap();
    assert_eq!(ann.get(CLIENT_ID), id_status.client_id.as_ref());
    assert_eq!(ann.get(TENANT_ID), id_status.tenant_id.as_ref());
    // The grant is verified with the exchanged token, on the grant and on the binding.
    let g = ready(&grants(&stack, NS), "reporter-reads-devtest", 60).await;
    let access = g.status.unwrap().access.unwrap();
    assert!(access.verified);
    assert_eq!(access.checked_by.as_deref(), Some("token-exchange"));
    let b = eventually(30, "binding access verified", || async {
        let b = bindings(&stack, NS)
            .get("reporter-identity-for-reporter")
            .await
            .ok()?;
        let a = b.status.clone()?.access;
        (a.len() == 1 && a[0].verified).then_some(b)
    })
    .await;
    let a = &b.status.unwrap().access[0];
    assert_eq!(a.role_grant, "reporter-reads-devtest");
    assert_eq!(a.http_status, Some(200));
    assert!(a.scope.ends_with("/resourceGroups/DevTest"), "{}", a.scope);
    // The token requests were for the exchange audience and the shortest lifetime.
    let journal = stack.emulator.journal();
    assert!(journal.iter().any(|e| {
        e.operation == "Aad_Token"
            && e.status == 200
            && e.request
                .as_ref()
                .is_some_and(|r| r["client_id"] == id_status.client_id.clone().unwrap().as_str())
    }));
    match (real, stack.sandbox()) {
        // The sandbox saw the controller's TokenRequest.
        (None, Some(sb)) => assert!(sb.audit().iter().any(|r| r.resource == "serviceaccounts"
            && r.subresource == "token"
            && r.verb == "create"
            && r.code == 201)),
        // The credential trusts the real API server's issuer, and Entra ID accepted the token
        // kube-apiserver signed for the service account: it verified the signature with the
        // keys it fetched from that issuer over HTTPS.
        (Some(real), _) => {
            assert_eq!(all[0]["properties"]["issuer"], real.plane.issuer.as_str());
            assert!(real.plane.issuer.starts_with("https://"));
            assert!(journal.iter().any(|e| {
                e.operation == "Aad_Token"
                    && e.status == 200
                    && e.request.as_ref().is_some_and(|r| {
                        r["client_id"] == id_status.client_id.clone().unwrap().as_str()
                            && r["client_assertion_type"]
                                == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
                    })
            }));
        }
        (None, None) => unreachable!("a stack runs on the sandbox or on a real API server"),
    }

    // Every federated identity credential request and answer follows the MSI document.
    let (errors, checked, unchecked) = support::armspec::validate_journal(
        &journal
            .iter()
            .filter(|e| e.operation.starts_with("FederatedIdentityCredentials_"))
            .cloned()
            .collect::<Vec<_>>(),
    );
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    assert!(
        checked >= 2 && unchecked.is_empty(),
        "{checked} checked, {unchecked:?} not"
    );
    assert!(
        journal
            .iter()
            .any(|e| e.operation == "FederatedIdentityCredentials_CreateOrUpdate")
    );

    // Steady state: a few resyncs read, never write.
    let reads = steady_state_reads(&stack, 8, "FederatedIdentityCredentials_Get").await;
    assert!(reads >= 1, "resyncs read the credential: {reads}");
    let sa_patches = |stack: &Stack| {
        stack.sandbox().map(|sb| {
            sb.audit()
                .iter()
                .filter(|r| r.resource == "serviceaccounts" && r.verb == "patch")
                .count()
        })
    };
    let sa_patches_before = sa_patches(&stack);

    // Drift: the credential deleted in Azure comes back; a changed annotation is restored.
    assert_eq!(
        arm(
            &stack,
            reqwest::Method::DELETE,
            &format!("reporterIdentity/federatedIdentityCredentials/{name}"),
            None
        )
        .await,
        200
    );
    sa_api(&stack, NS)
        .patch(
            "reporter",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {CLIENT_ID: "00000000-0000-0000-0000-000000000000"}}})),
        )
        .await
        .unwrap();
    eventually(
        30,
        "credential recreated and annotation restored",
        || async {
            let back = fics(&stack).iter().any(|f| f["name"] == name.as_str());
            let sa = sa_api(&stack, NS).get("reporter").await.ok()?;
            let restored = sa.metadata.annotations?.get(CLIENT_ID) == id_status.client_id.as_ref();
            (back && restored).then_some(())
        },
    )
    .await;
    assert!(
        stack
            .emulator
            .counts()
            .get("FederatedIdentityCredentials_CreateOrUpdate", 201)
            >= 1
    );
    // On the sandbox, its audit shows the controller's patch of the service account (the
    // test's own patch and the restoring one).
    if let (Some(before), Some(after)) = (sa_patches_before, sa_patches(&stack)) {
        assert!(after > before + 1, "{before} -> {after}");
    }
    let evs = events(&stack, NS).await;
    assert!(
        evs.iter()
            .any(|e| e.reason.as_deref() == Some("DriftDetected")),
        "{evs:?}"
    );

    // No token, assertion or secret anywhere: status, events, logs.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut haystack = String::new();
    for b in bindings(&stack, NS)
        .list(&ListParams::default())
        .await
        .unwrap()
    {
        haystack.push_str(&serde_json::to_string(&b.status).unwrap());
    }
    for g in grants(&stack, NS)
        .list(&ListParams::default())
        .await
        .unwrap()
    {
        haystack.push_str(&serde_json::to_string(&g.status).unwrap());
    }
    haystack.push_str(&serde_json::to_string(&events(&stack, NS).await).unwrap());
    haystack.push_str(&capture.text());
    for t in stack.emulator.issued_tokens() {
        assert!(!haystack.contains(&t), "an access token leaked");
    }
    // Every JWT (service account tokens included) starts with a base64 `{"`.
    assert!(!haystack.contains("eyJ"), "a JWT leaked");
    stack.stop().await;
}

/// A data role granted to the identity of a service account: the policy that allows it, and the
/// grant of `Storage Blob Data Reader` on a storage account, listing container `reports`.
const BLOB_GRANT: &str = r#"
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
---
apiVersion: uami.dev/v1alpha1
kind: RoleGrant
metadata:
  name: reporter-reads-blobs
  namespace: workload
spec:
  identityRef:
    name: reporter-identity
  role: Storage Blob Data Reader
  scope:
    resourceId: /subscriptions/6a2bd3a4-59c6-4d4e-9e8b-5c5a2f0a1b2c/resourceGroups/DevTest/providers/Microsoft.Storage/storageAccounts/reportsdata
  verifyAccessOptions:
    blobContainer: reports
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_role_of_a_service_account_is_verified_on_its_data_plane() {
    let stack = stack(3, |opts| {
        let rg = &mut opts.world.subscriptions[0].resource_groups[0];
        assert_eq!(rg.name, "DevTest");
        rg.storage_accounts = vec!["reportsdata".into()];
    })
    .await;
    assert!(BLOB_GRANT.contains(SUB));
    // The example without its Reader grant on DevTest: the identity holds only the data role,
    // which lets it read nothing through ARM.
    let example: Vec<&str> = EXAMPLE
        .split("\n---\n")
        .filter(|doc| !doc.contains("name: reporter-reads-devtest"))
        .collect();
    assert_eq!(example.len(), EXAMPLE.split("\n---\n").count() - 1);
    stack.apply_yaml(&example.join("\n---\n")).await.unwrap();
    stack.apply_yaml(BLOB_GRANT).await.unwrap();
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

fn binding_yaml(name: &str, identity: &str, sa: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: {sa}, namespace: {NS}}}\n---\napiVersion: uami.dev/v1alpha1\nkind: IdentityBinding\nmetadata: {{name: {name}, namespace: {NS}}}\nspec: {{identityRef: {{name: {identity}}}, target: {{serviceAccount: {{name: {sa}}}}}}}\n"
    )
}

fn base_yaml(identity_name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {NS}}}\n---\napiVersion: uami.dev/v1alpha1\nkind: GrantPolicy\nmetadata: {{name: wi}}\nspec:\n  namespaces: [{NS}]\n  identityBindings:\n  - serviceAccount: {{resourceGroup: DevTest, identityName: {identity_name}}}\n---\napiVersion: uami.dev/v1alpha1\nkind: UserAssignedIdentity\nmetadata: {{name: shared, namespace: {NS}}}\nspec: {{resourceGroup: DevTest, location: eastus, azureName: {identity_name}}}\n"
    )
}

fn reason(b: &uami_api::IdentityBinding) -> Option<(String, String)> {
    condition(&b.status.as_ref()?.conditions, "Ready")
}

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
    let ready_cond = b
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
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
            "apiVersion: uami.dev/v1alpha1\nkind: UserAssignedIdentity\nmetadata: {{name: other, namespace: {NS}}}\nspec: {{resourceGroup: DevTest, location: eastus, azureName: otherIdentity}}\n{}",
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_that_stops_allowing_takes_the_trust_back() {
    policy_takes_the_trust_back(options(3), None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_real_api_server_a_policy_that_stops_allowing_takes_the_trust_back() {
    let mut opts = options(3);
    let Some(real) = on_real("e2e_workload_identity", &mut opts).await else {
        return;
    };
    policy_takes_the_trust_back(opts, Some(&real)).await;
}

async fn policy_takes_the_trust_back(opts: StackOptions, real: Option<&envtest::Real>) {
    let stack = Stack::start(opts).await.unwrap();
    stack.apply_yaml(EXAMPLE).await.unwrap();
    let b = ready(&bindings(&stack, NS), "reporter-identity-for-reporter", 60).await;
    assert_eq!(fics(&stack).len(), 1);
    // Ready: the service account's token was exchanged; on the real API server, a token that
    // kube-apiserver signed, for the credential that trusts its issuer.
    let token = b.status.unwrap().token.unwrap();
    assert_eq!(token.checked_by.as_deref(), Some("token-exchange"));
    if let Some(real) = real {
        assert_eq!(
            fics(&stack)[0]["properties"]["issuer"],
            real.plane.issuer.as_str()
        );
    }
    Api::<uami_api::GrantPolicy>::all(stack.client())
        .delete("workload-reporter", &DeleteParams::default())
        .await
        .unwrap();
    // Seen at the latest on the next resync.
    let b = eventually(30, "revoked", || async {
        let b = bindings(&stack, NS)
            .get("reporter-identity-for-reporter")
            .await
            .ok()?;
        (reason(&b)?.1 == "DeniedByPolicy" && b.status.as_ref()?.assigned == Some(false))
            .then_some(b)
    })
    .await;
    assert!(b.status.unwrap().token.is_none());
    assert!(fics(&stack).is_empty(), "{:?}", fics(&stack));
    assert!(!annotated(&stack, "reporter").await);
    stack.stop().await;
}

/// Namespace, a policy that lets it bind any identity of DevTest to service account `app`, the
/// service account and three identities (`first`, `second`, `third`).
fn several_identities_yaml() -> String {
    let mut yaml = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {NS}}}\n---\napiVersion: uami.dev/v1alpha1\nkind: GrantPolicy\nmetadata: {{name: wi-several}}\nspec:\n  namespaces: [{NS}]\n  identityBindings:\n  - serviceAccount: {{resourceGroup: DevTest, serviceAccounts: [app]}}\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: app, namespace: {NS}}}\n"
    );
    for name in ["first", "second", "third"] {
        yaml.push_str(&format!(
            "---\napiVersion: uami.dev/v1alpha1\nkind: UserAssignedIdentity\nmetadata: {{name: {name}, namespace: {NS}}}\nspec: {{resourceGroup: DevTest, location: eastus, azureName: {name}Identity}}\n"
        ));
    }
    yaml
}

/// A binding of identity `identity` to service account `app`, marked `default` or not.
fn app_binding(name: &str, identity: &str, default: bool) -> String {
    format!(
        "apiVersion: uami.dev/v1alpha1\nkind: IdentityBinding\nmetadata: {{name: {name}, namespace: {NS}}}\nspec: {{identityRef: {{name: {identity}}}, target: {{serviceAccount: {{name: app, default: {default}}}}}}}\n"
    )
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_identities_share_a_service_account_and_one_is_its_default() {
    several_identities(options(3), None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_real_api_server_several_identities_share_a_service_account() {
    let mut opts = options(3);
    let Some(real) = on_real("e2e_workload_identity", &mut opts).await else {
        return;
    };
    several_identities(opts, Some(&real)).await;
}

async fn several_identities(opts: StackOptions, real: Option<&envtest::Real>) {
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
        let ready = b
            .status
            .unwrap()
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
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
    let tags = admin.identity_tags("reporterIdentity").await.unwrap();
    let (status, _, _) = admin
        .send(
            reqwest::Method::DELETE,
            &support::arm::identity_path("reporterIdentity"),
            None,
            &[],
        )
        .await;
    assert_eq!(status, 200);
    let created = admin.put_identity("reporterIdentity", tags).await;
    let client = created["properties"]["clientId"]
        .as_str()
        .unwrap()
        .to_string();
    let principal = created["properties"]["principalId"]
        .as_str()
        .unwrap()
        .to_string();
    eventually(
        60,
        "credential, annotation and token of the new identity",
        || async {
            let back = fics(&stack).iter().any(|f| f["name"] == name.as_str());
            let sa = sa_api(&stack, NS).get("reporter").await.ok()?;
            let annotated = sa.metadata.annotations?.get(CLIENT_ID) == Some(&client);
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
