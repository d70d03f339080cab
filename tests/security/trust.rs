//! 4. What Azure says an identity is, not its status: a tenant with status rights edits its own
//!    identity's `resourceId`, `principalId` and `clientId` to name an identity the cluster never
//!    managed, or a binding's `federatedCredentialName` to name an administrator's credential.
//!    Nothing is assigned, granted, trusted or deleted by those names, and the identity's status
//!    is put back within a reconcile.

use crate::support::arm::identity_path;
use reqwest::Method;

use super::*;

/// The subject of service account `app` in `apps`.
const SUBJECT: &str = "system:serviceaccount:apps:app";

/// Forge the status of identity `name` to show `outside` (an identity as ARM returns it).
async fn forge_identity_status(stack: &Stack, name: &str, outside: &Value) {
    let p = &outside["properties"];
    forge_status(
        &identities(stack, NS),
        name,
        json!({"resourceId": outside["id"], "principalId": p["principalId"],
               "clientId": p["clientId"]}),
    )
    .await;
}

fn assignments_of(stack: &Stack, principal: &str) -> usize {
    stack.emulator.state()["roleAssignments"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["properties"]["principalId"].as_str() == Some(principal))
        .count()
}

/// The federated credentials in Azure: (identity id, name, subject).
fn credentials(stack: &Stack) -> Vec<(String, String, String)> {
    stack.emulator.state()["federatedIdentityCredentials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let id = c["id"].as_str().unwrap();
            let (identity, name) = id.rsplit_once("/federatedIdentityCredentials/").unwrap();
            let subject = c["properties"]["subject"].as_str().unwrap();
            (
                identity.to_lowercase(),
                name.to_string(),
                subject.to_string(),
            )
        })
        .collect()
}

/// A stack with identity `mine` Ready and an identity the cluster never managed (another
/// team's, or a pipeline's), `outside`; `mine`'s status forged to show `outside`. `extra` is
/// added to the GrantPolicy's `identityBindings`.
struct Forged {
    stack: Stack,
    mine_id: String,
    mine_principal: String,
    outside: Value,
}

impl Forged {
    async fn start(extra: &str) -> Self {
        let (stack, admin) = stack_and_admin().await;
        apply_all(&stack, &[namespace(NS), policy(extra), identity("mine")]).await;
        let (mine_id, mine_principal) = ready_identity(&stack, NS, "mine").await;
        let outside = admin.put_identity("outside", json!({})).await;
        forge_identity_status(&stack, "mine", &outside).await;
        Self {
            stack,
            mine_id,
            mine_principal,
            outside,
        }
    }

    fn outside_id(&self) -> String {
        self.outside["id"].as_str().unwrap().to_string()
    }

    fn outside_principal(&self) -> String {
        self.outside["properties"]["principalId"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_identity_status_puts_no_other_identity_on_the_vm() {
    let f = Forged::start("").await;
    let (stack, outside_id) = (&f.stack, f.outside_id());
    apply_all(stack, &[binding_in(NS, "b", "mine")]).await;
    eventually(60, "an identity on myVM", || async {
        (vm_has(stack, &f.mine_id) || vm_has(stack, &outside_id)).then_some(())
    })
    .await;
    assert!(
        !vm_has(stack, &outside_id),
        "the forged identity is on myVM"
    );
    assert!(vm_has(stack, &f.mine_id));
    // Deleting the binding takes back exactly what it assigned.
    delete_and_wait(&bindings(stack, NS), "b").await;
    assert!(!vm_has(stack, &f.mine_id));
    assert!(!vm_has(stack, &outside_id));
    f.stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_identity_status_grants_no_other_principal() {
    let f = Forged::start("").await;
    let (stack, outside_principal) = (&f.stack, f.outside_principal());
    apply_all(stack, &[devtest_grant("g", "mine")]).await;
    let g = ready(&grants(stack, NS), "g", 60).await;
    assert_eq!(
        g.status.unwrap().principal_id.as_deref(),
        Some(f.mine_principal.as_str())
    );
    assert_eq!(assignments_of(stack, &outside_principal), 0);
    assert_eq!(assignments_of(stack, &f.mine_principal), 1);
    delete_and_wait(&grants(stack, NS), "g").await;
    assert_eq!(assignments_of(stack, &f.mine_principal), 0);
    assert_eq!(assignments_of(stack, &outside_principal), 0);
    f.stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_identity_status_is_put_back_within_a_reconcile() {
    let f = Forged::start("").await;
    // Not at the resync (120 s here): the pass the forged status causes writes it back.
    let repaired = || async {
        let s = identities(&f.stack, NS).get("mine").await.ok()?.status?;
        (s.resource_id.as_deref() == Some(f.mine_id.as_str())
            && s.principal_id.as_deref() == Some(f.mine_principal.as_str()))
        .then_some(())
    };
    eventually(15, "the identity's status to show its identity", repaired).await;
    forge_identity_status(&f.stack, "mine", &f.outside).await;
    eventually(15, "the identity's status to show it again", repaired).await;
    f.stack.stop().await;
}

/// Any identity of DevTest may be bound to the namespace's service accounts.
const SA_RULE: &str = "  - serviceAccount: {resourceGroup: DevTest}\n";

fn sa_binding() -> String {
    format!(
        "---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: app, namespace: {NS}}}\n{}",
        fixtures::binding(NS, "sab", "mine", fixtures::service_account("app")).yaml()
    )
}

/// Wait for the service account's credential; (identity id, name) in lower case.
async fn sa_credential(stack: &Stack) -> (String, String) {
    let (id, name, _) = eventually(60, "the service account's credential", || async {
        credentials(stack)
            .into_iter()
            .find(|(_, _, subject)| subject == SUBJECT)
    })
    .await;
    (id, name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_identity_status_makes_no_other_identity_trust_a_service_account() {
    let f = Forged::start(SA_RULE).await;
    let stack = &f.stack;
    apply_all(stack, &[sa_binding()]).await;
    let (on, _) = sa_credential(stack).await;
    assert_eq!(
        on,
        f.mine_id.to_lowercase(),
        "the credential is on another identity"
    );
    let outside_id = f.outside_id().to_lowercase();
    assert!(
        credentials(stack)
            .iter()
            .all(|(id, _, _)| *id != outside_id),
        "a credential was written on the outside identity"
    );
    f.stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_credential_name_deletes_only_the_bindings_own_credential() {
    let (stack, admin) = stack_and_admin().await;
    apply_all(
        &stack,
        &[
            namespace(NS),
            policy(SA_RULE),
            identity("mine"),
            sa_binding(),
        ],
    )
    .await;
    let (mine_id, _) = ready_identity(&stack, NS, "mine").await;
    let mine_id = mine_id.to_lowercase();
    sa_credential(&stack).await;
    eventually(60, "the binding to be assigned", || async {
        let s = bindings(&stack, NS).get("sab").await.ok()?.status?;
        (s.assigned == Some(true)).then_some(())
    })
    .await;
    // An administrator's credential on the same identity, named in the binding's status.
    let ci = format!(
        "{}/federatedIdentityCredentials/ci-pipeline?api-version=2023-01-31",
        identity_path("mine").split('?').next().unwrap()
    );
    let body = json!({"properties": {"issuer": "https://ci.example/", "subject": "repo:infra",
                                     "audiences": ["api://AzureADTokenExchange"]}});
    let (s, _, v) = admin.send(Method::PUT, &ci, Some(body), &[]).await;
    assert!(s == 200 || s == 201, "{s} {v}");
    forge_status(
        &bindings(&stack, NS),
        "sab",
        json!({"federatedCredentialName": "ci-pipeline", "adopted": false}),
    )
    .await;
    delete_and_wait(&bindings(&stack, NS), "sab").await;
    let left = credentials(&stack);
    assert!(
        left.iter()
            .any(|(id, name, _)| *id == mine_id && name == "ci-pipeline"),
        "the administrator's credential was deleted: {left:?}"
    );
    assert!(
        left.iter().all(|(_, _, subject)| subject != SUBJECT),
        "the service account is still trusted: {left:?}"
    );
    stack.stop().await;
}
