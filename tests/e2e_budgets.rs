//! Azure's fixed quotas, counted before they run out: in a world whose subscription allows 10
//! role assignments, the grants that take it to 90% and beyond are warned about (a `Budget`
//! condition and a Warning Event), the one past the limit is refused with
//! `RoleAssignmentLimitReached` before anything is sent to ARM, and the counts are exported.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use kube::api::ListParams;
use support::*;
use uami_controller::emulator::world::{InitialAssignment, TUTORIAL_SUBSCRIPTION};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_are_warned_at_ninety_percent_and_refused_at_the_limit_before_arm() {
    let mut opts = tutorial_options(Duration::from_secs(300), 0.0);
    opts.agents = false;
    opts.world.limits.role_assignments_per_subscription = LIMIT;
    // The controller may read the subscription's role assignments: it counts them.
    opts.world.role_assignments.push(InitialAssignment {
        principal_id: CONTROLLER.into(),
        role: "Reader".into(),
        scope: format!("/subscriptions/{TUTORIAL_SUBSCRIPTION}"),
    });
    let prefix = format!("/subscriptions/{TUTORIAL_SUBSCRIPTION}").to_lowercase();
    let initial = opts
        .world
        .role_assignments
        .iter()
        .filter(|a| a.scope.to_lowercase().starts_with(&prefix))
        .count();
    assert!(initial + 3 <= LIMIT, "the world leaves room for the test");
    let stack = uami_controller::demo::stack::Stack::start(opts)
        .await
        .unwrap();
    stack
        .apply_yaml(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {NS}}}\n---\napiVersion: uami.dev/v1alpha1\nkind: GrantPolicy\nmetadata: {{name: budget-reader}}\nspec:\n  namespaces: [{NS}]\n  roleGrants:\n    - roles: [Reader]\n      scopes: [{{resourceGroup: {{name: DevTest}}}}]\n"
        ))
        .await
        .unwrap();
    let api = grants(&stack, NS);
    let metrics = || {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &stack.registry.lock()).unwrap();
        text
    };
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
    let events: kube::Api<k8s_openapi::api::events::v1::Event> =
        kube::Api::namespaced(stack.client(), NS);
    let reasons: Vec<String> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.type_.as_deref() == Some("Warning"))
        .filter_map(|e| e.reason)
        .collect();
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
    let mut opts = tutorial_options(Duration::from_secs(300), 0.0);
    opts.agents = false;
    opts.controller = false;
    let prefix = format!("/subscriptions/{TUTORIAL_SUBSCRIPTION}").to_lowercase();
    let initial = opts
        .world
        .role_assignments
        .iter()
        .filter(|a| a.scope.to_lowercase().starts_with(&prefix))
        .count();
    opts.world.limits.role_assignments_per_subscription = initial;
    let stack = uami_controller::demo::stack::Stack::start(opts)
        .await
        .unwrap();
    let arm = support::arm::Admin::of(&stack.emulator);
    let (status, _, body) = arm
        .send(
            reqwest::Method::PUT,
            &support::arm::new_assignment_path(&format!(
                "/subscriptions/{TUTORIAL_SUBSCRIPTION}/resourceGroups/DevTest"
            )),
            Some(support::arm::reader_assignment(CONTROLLER)),
            &[],
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body["error"]["code"], "RoleAssignmentLimitExceeded",
        "{body}"
    );
    stack.stop().await;
}
