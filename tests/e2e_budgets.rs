//! Azure's fixed quotas, counted before they run out: in a world whose subscription allows 10
//! role assignments, the grants that take it to 90% and beyond are warned about (a `Budget`
//! condition and a Warning Event), the one past the limit is refused with
//! `RoleAssignmentLimitReached` before anything is sent to ARM, and the counts are exported.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use kube::api::ListParams;
use support::*;
use uami_emulator::world::{InitialAssignment, TUTORIAL_SUBSCRIPTION};

const NS: &str = "budget";
const LIMIT: usize = 10;
/// The controller's principal in the tutorial world.
const CONTROLLER: &str = "7c9e6679-7425-40de-944b-e07fc1f90ae7";

fn objects(i: usize) -> String {
    format!(
        "apiVersion: uami.dev/v1alpha1\nkind: UserAssignedIdentity\nmetadata: {{name: id-{i}, namespace: {NS}}}\nspec: {{resourceGroup: DevTest, location: eastus}}\n---\napiVersion: uami.dev/v1alpha1\nkind: RoleGrant\nmetadata: {{name: g-{i}, namespace: {NS}}}\nspec:\n  identityRef: {{name: id-{i}}}\n  role: Reader\n  scope: {{resourceGroup: {{name: DevTest}}}}\n  verifyAccess: false\n"
    )
}

fn metric(text: &str, name: &str, label: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The controller's metrics, as `/metrics` would serve them.
fn scrape(stack: &uami::demo::stack::Stack) -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &stack.registry.lock()).unwrap();
    text
}

/// The reasons of the Warning Events in `ns`.
async fn warning_reasons(stack: &uami::demo::stack::Stack, ns: &str) -> Vec<String> {
    let events: kube::Api<k8s_openapi::api::events::v1::Event> =
        kube::Api::namespaced(stack.client(), ns);
    events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.type_.as_deref() == Some("Warning"))
        .filter_map(|e| e.reason)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_are_warned_at_ninety_percent_and_refused_at_the_limit_before_arm() {
    let mut initial = 0;
    let stack = agentless_stack(300, 0.0, |opts| {
        opts.world.limits.role_assignments_per_subscription = LIMIT;
        // The controller may read the subscription's role assignments: it counts them.
        opts.world.role_assignments.push(InitialAssignment {
            principal_id: CONTROLLER.into(),
            role: "Reader".into(),
            scope: format!("/subscriptions/{TUTORIAL_SUBSCRIPTION}"),
        });
        initial = subscription_assignments(&opts.world);
    })
    .await;
    assert!(initial + 3 <= LIMIT, "the world leaves room for the test");
    stack
        .apply_yaml(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {NS}}}\n---\napiVersion: uami.dev/v1alpha1\nkind: GrantPolicy\nmetadata: {{name: budget-reader}}\nspec:\n  namespaces: [{NS}]\n  roleGrants:\n    - roles: [Reader]\n      scopes: [{{resourceGroup: {{name: DevTest}}}}]\n"
        ))
        .await
        .unwrap();
    let api = grants(&stack, NS);
    let metrics = || scrape(&stack);
    let sub_label = format!("subscription=\"{TUTORIAL_SUBSCRIPTION}\"");
    // The count at start, before any grant.
    eventually(30, "the subscription counted", || async {
        (metric(&metrics(), "uami_role_assignments", &sub_label) == Some(initial as f64))
            .then_some(())
    })
    .await;

    // Grants up to the limit: from 9 of 10 on, each is granted with a warning.
    let to_fill = LIMIT - initial;
    for i in 0..to_fill {
        stack.apply_yaml(&objects(i)).await.unwrap();
        let g = ready(&api, &format!("g-{i}"), 60).await;
        let after = initial + i + 1;
        let budget = condition(&g.status.unwrap().conditions, "Budget");
        if after * 100 >= LIMIT * 90 {
            assert_eq!(
                budget,
                Some(("False".into(), "RoleAssignmentsNearLimit".into())),
                "grant {i} takes the subscription to {after} of {LIMIT}"
            );
        } else {
            assert_eq!(budget, None, "grant {i}: {after} of {LIMIT}");
        }
    }
    assert_eq!(
        metric(&metrics(), "uami_role_assignments", &sub_label),
        Some(LIMIT as f64)
    );
    assert!(metrics().contains(&format!("uami_role_assignments_limit {LIMIT}")));

    // One more: refused before ARM is asked.
    let creates = stack.emulator.counts().total("RoleAssignments_Create");
    stack.apply_yaml(&objects(to_fill)).await.unwrap();
    let g = refused(&api, &format!("g-{to_fill}"), "RoleAssignmentLimitReached").await;
    assert_eq!(
        condition(&g.status.unwrap().conditions, "Budget"),
        Some(("False".into(), "RoleAssignmentLimitReached".into()))
    );
    let counts = stack.emulator.counts();
    assert_eq!(
        counts.total("RoleAssignments_Create"),
        creates,
        "no write ARM would refuse: {counts:?}"
    );

    // The Events: a warning for each grant at 90% or more, and the refusal.
    let reasons = warning_reasons(&stack, NS).await;
    let near = (0..to_fill)
        .filter(|i| (initial + i + 1) * 100 >= LIMIT * 90)
        .count();
    assert_eq!(
        reasons
            .iter()
            .filter(|r| *r == "RoleAssignmentsNearLimit")
            .count(),
        near,
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r == "RoleAssignmentLimitReached"),
        "{reasons:?}"
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_emulator_refuses_a_role_assignment_past_the_worlds_limit_as_azure_does() {
    let stack = agentless_stack(300, 0.0, |opts| {
        opts.controller = false;
        opts.world.limits.role_assignments_per_subscription = subscription_assignments(&opts.world);
    })
    .await;
    let arm = support::arm::Admin::of(&stack.emulator);
    let rg = format!("/subscriptions/{TUTORIAL_SUBSCRIPTION}/resourceGroups/DevTest");
    let (status, _, body) = arm
        .put(
            &support::arm::new_assignment_path(&rg),
            support::arm::reader_assignment(CONTROLLER),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body["error"]["code"], "RoleAssignmentLimitExceeded",
        "{body}"
    );
    stack.stop().await;
}

/// The same for federated identity credentials: an identity bound to service accounts holds
/// credentials someone else made too. The binding whose credential takes the identity to 90% of
/// Azure's 20 or beyond is warned about (`Budget` False, `FederatedCredentialsNearLimit`, a
/// Warning Event), the count is exported per identity, and with 20 on the identity the next
/// binding is refused with `FederatedCredentialLimitReached` without a credential written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_account_bindings_are_warned_near_the_credential_limit_and_refused_at_it() {
    use uami_emulator::world::TUTORIAL_TENANT;
    let stack = agentless_stack(300, 0.0, |_| {}).await;
    stack
        .apply_yaml(include_str!("../examples/workload-identity.yaml"))
        .await
        .unwrap();
    let b_api = bindings(&stack, "workload");
    let first = ready(&b_api, "reporter-identity-for-reporter", 90).await;
    assert_eq!(condition(&first.status.unwrap().conditions, "Budget"), None);
    // Someone else's credentials on the same identity: 17 more, 18 of 20 in all.
    let identity = format!(
        "/subscriptions/{TUTORIAL_SUBSCRIPTION}/resourceGroups/DevTest/providers/Microsoft.ManagedIdentity/userAssignedIdentities/reporterIdentity"
    );
    let admin = arm::Admin::of(&stack.emulator);
    let put = |i: usize| {
        let (admin, identity) = (&admin, identity.clone());
        async move {
            let (status, _, body) = admin
                .send(
                    reqwest::Method::PUT,
                    &format!(
                        "{identity}/federatedIdentityCredentials/other-{i}?api-version=2023-01-31"
                    ),
                    Some(serde_json::json!({"properties": {
                        "issuer": format!("https://issuer-{i}.example.com/{TUTORIAL_TENANT}/"),
                        "subject": format!("system:serviceaccount:elsewhere:sa-{i}"),
                        "audiences": ["api://AzureADTokenExchange"]}})),
                    &[],
                )
                .await;
            assert!(status == 200 || status == 201, "{status} {body}");
        }
    };
    for i in 0..17 {
        put(i).await;
    }
    // Two more service accounts of the namespace may use the identity.
    let more = |sa: &str| {
        format!(
            "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: {sa}, namespace: workload}}\n---\napiVersion: uami.dev/v1alpha1\nkind: IdentityBinding\nmetadata: {{name: reporter-identity-for-{sa}, namespace: workload}}\nspec:\n  identityRef: {{name: reporter-identity}}\n  target: {{serviceAccount: {{name: {sa}}}}}\n"
        )
    };
    stack
        .apply_yaml("apiVersion: uami.dev/v1alpha1\nkind: GrantPolicy\nmetadata: {name: workload-more}\nspec:\n  namespaces: [workload]\n  identityBindings:\n    - serviceAccount: {resourceGroup: DevTest, identityName: reporterIdentity, serviceAccounts: [second, third]}\n")
        .await
        .unwrap();
    // The 19th credential: written, with a warning.
    stack.apply_yaml(&more("second")).await.unwrap();
    let second = eventually(90, "the second binding warned", || async {
        let s = b_api
            .get("reporter-identity-for-second")
            .await
            .ok()?
            .status?;
        (condition(&s.conditions, "Budget")
            == Some(("False".into(), "FederatedCredentialsNearLimit".into())))
        .then_some(s)
    })
    .await;
    assert!(second.federated_credential_name.is_some(), "{second:?}");
    let metrics = || scrape(&stack);
    let id_label = format!("identity=\"{}\"", identity.to_lowercase());
    eventually(30, "19 credentials counted", || async {
        (metric(&metrics(), "uami_federated_credentials", &id_label) == Some(19.0)).then_some(())
    })
    .await;
    // Fill the identity to 20; the next binding is refused before ARM is asked.
    put(17).await;
    let writes = stack
        .emulator
        .counts()
        .total("FederatedIdentityCredentials_CreateOrUpdate");
    stack.apply_yaml(&more("third")).await.unwrap();
    refused(
        &b_api,
        "reporter-identity-for-third",
        "FederatedCredentialLimitReached",
    )
    .await;
    assert_eq!(
        stack
            .emulator
            .counts()
            .total("FederatedIdentityCredentials_CreateOrUpdate"),
        writes,
        "no credential write ARM would refuse"
    );
    let reasons = warning_reasons(&stack, "workload").await;
    assert!(
        reasons.iter().any(|r| r == "FederatedCredentialsNearLimit"),
        "{reasons:?}"
    );
    stack.stop().await;
}

/// The role assignments the world starts with in the tutorial's subscription.
fn subscription_assignments(world: &uami_emulator::World) -> usize {
    let prefix = format!("/subscriptions/{TUTORIAL_SUBSCRIPTION}").to_lowercase();
    world
        .role_assignments
        .iter()
        .filter(|a| a.scope.to_lowercase().starts_with(&prefix))
        .count()
}
