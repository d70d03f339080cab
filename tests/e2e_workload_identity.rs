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

#[path = "e2e_workload_identity/data_plane.rs"]
mod data_plane;
#[path = "e2e_workload_identity/several.rs"]
mod several;
#[path = "e2e_workload_identity/writes.rs"]
mod writes;

use std::time::Duration;

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::events::v1::Event;
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use serde_json::{Value, json};
use support::capture::Capture;
use support::fixtures::{self, Fixture};
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

/// Whether Azure holds credential `name`, and the client id annotated on service account
/// `reporter` (`None` while the account or its annotations cannot be read).
async fn reporter_credential(stack: &Stack, name: &str) -> Option<(bool, Option<String>)> {
    let back = fics(stack).iter().any(|f| f["name"] == name);
    let sa = sa_api(stack, NS).get("reporter").await.ok()?;
    Some((back, sa.metadata.annotations?.get(CLIENT_ID).cloned()))
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

on_sandbox_and_real! {
    binary: "e2e_workload_identity",
    options: options(3),
    join: on_real;
    a_service_account_binding_is_proven_by_the_token_exchange on_a_real_api_server_a_service_account_binding_is_proven_by_the_token_exchange proven_by_the_token_exchange;
    a_policy_that_stops_allowing_takes_the_trust_back on_a_real_api_server_a_policy_that_stops_allowing_takes_the_trust_back policy_takes_the_trust_back;
    several_identities_share_a_service_account_and_one_is_its_default on_a_real_api_server_several_identities_share_a_service_account several::several_identities;
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
            let (back, annotated) = reporter_credential(&stack, &name).await?;
            let restored = annotated == id_status.client_id;
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

/// Service account `sa` and a binding `name` of identity `identity` to it.
fn binding_yaml(name: &str, identity: &str, sa: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: {sa}, namespace: {NS}}}\n{}",
        fixtures::binding(NS, name, identity, fixtures::service_account(sa)).yaml()
    )
}

/// Identity `name`, named `azure_name` in Azure.
fn named_identity(name: &str, azure_name: &str) -> String {
    fixtures::identity(NS, name)
        .with(|i| i.spec.azure_name = Some(azure_name.into()))
        .yaml()
}

fn base_yaml(identity_name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {NS}}}\n---\napiVersion: uami.dev/v1alpha1\nkind: GrantPolicy\nmetadata: {{name: wi}}\nspec:\n  namespaces: [{NS}]\n  identityBindings:\n  - serviceAccount: {{resourceGroup: DevTest, identityName: {identity_name}}}\n\n{}",
        named_identity("shared", identity_name)
    )
}

fn reason(b: &uami_api::IdentityBinding) -> Option<(String, String)> {
    condition(&b.status.as_ref()?.conditions, "Ready")
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
