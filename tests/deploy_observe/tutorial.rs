//! After the tutorial, every metric and label the dashboard's and the alerts' queries use
//! exists: in the controller's /metrics or in the series kube-state-metrics makes from the
//! tutorial's objects.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_tutorial_every_metric_and_label_the_queries_use_exists() {
    use support::*;
    use uami::demo::stack::Stack;
    use uami_emulator::{Faults, faults::Throttling};

    let r = rendered();
    let opts = tutorial_options(Duration::from_secs(2), 1.0);
    let stack = std::sync::Arc::new(Stack::start(opts).await.unwrap());
    let recorder = Recorder::start(stack.clone(), r.ksm_config.clone());
    stack.apply_yaml(&tutorial_yaml()).await.unwrap();
    // And one grant no policy allows: an object that is not Ready, with a reason.
    stack
        .apply_yaml(
            "apiVersion: uami.dev/v1alpha1\nkind: RoleGrant\nmetadata: {name: my-identity-owns-devtest, namespace: tutorial}\nspec:\n  identityRef: {name: my-identity}\n  role: Owner\n  scope: {resourceGroup: {name: DevTest}}\n",
        )
        .await
        .unwrap();
    tutorial_ready(&stack, 90).await;
    refused(
        &grants(&stack, TUTORIAL),
        "my-identity-owns-devtest",
        "DeniedByPolicy",
    )
    .await;
    // ARM throttles for a while: the 429 counter gets its series.
    stack.emulator.set_faults(Faults {
        throttling: Some(Throttling { scale: 0.004 }),
        ..Faults::default()
    });
    eventually(90, "a 429 in the controller's metrics", || async {
        controller_metrics(&stack)
            .contains("uami_arm_throttled_total{")
            .then_some(())
    })
    .await;
    if recorder.task.is_some() {
        // A recording shows a spell of throttling, then the quiet steady state.
        tokio::time::sleep(Duration::from_secs(15)).await;
    }
    stack.emulator.set_faults(Faults::default());
    // The agent may have checked access while ARM throttled it (a 429 in status): once the
    // throttling ends its next check reads the scope again.
    eventually(90, "access verified again after the throttling", || async {
        let g = grants(&stack, "tutorial")
            .get("my-identity-reads-devtest")
            .await
            .ok()?;
        g.status?.access?.verified.then_some(())
    })
    .await;
    if recorder.task.is_some() {
        tokio::time::sleep(Duration::from_secs(30)).await;
    }

    let controller = ksm::parse_exposition(&controller_metrics(&stack));
    let objs = objects(&stack).await;
    let state = ksm::evaluate(&r.ksm_config, &objs);
    recorder.finish().await;

    // The config turns the tutorial's status into the series the queries expect.
    let find = |name: &str, labels: &[(&str, &str)]| {
        state.iter().find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    };
    for (kind, name) in [
        ("userassignedidentity", "my-identity"),
        ("identitybinding", "my-identity-on-myvm"),
        ("rolegrant", "my-identity-reads-devtest"),
    ] {
        let metric = format!("kube_customresource_uami_{kind}_status_condition");
        let ready = find(
            &metric,
            &[("name", name), ("namespace", "tutorial"), ("type", "Ready")],
        )
        .unwrap_or_else(|| panic!("no Ready series for {name}: {state:#?}"));
        assert_eq!(
            (ready.value, ready.labels["status"].as_str()),
            (1.0, "True"),
            "{ready:?}"
        );
        assert!(
            find(
                &format!("kube_customresource_uami_{kind}_created"),
                &[("name", name)]
            )
            .is_some()
        );
        let since = find(
            &format!("{metric}_last_transition_time"),
            &[("name", name), ("type", "Ready")],
        )
        .unwrap();
        assert!(
            since.value > 1.7e9 && since.value <= jiff::Timestamp::now().as_second() as f64,
            "{since:?}"
        );
    }
    let denied = find(
        "kube_customresource_uami_rolegrant_status_condition",
        &[("name", "my-identity-owns-devtest"), ("type", "Ready")],
    )
    .unwrap();
    assert_eq!(
        (
            denied.value,
            denied.labels["status"].as_str(),
            denied.labels["reason"].as_str()
        ),
        (0.0, "False", "DeniedByPolicy")
    );
    let now = jiff::Timestamp::now().as_second() as f64;
    let expiry = find(
        "kube_customresource_uami_identitybinding_token_expires_on",
        &[("name", "my-identity-on-myvm")],
    )
    .unwrap();
    assert!(
        expiry.value > now && expiry.value < now + 3700.0,
        "the tutorial's 1 h token: {expiry:?}"
    );
    assert_eq!(expiry.labels["resource"], "https://management.azure.com/");
    let verified = find(
        "kube_customresource_uami_rolegrant_access_verified",
        &[("name", "my-identity-reads-devtest")],
    )
    .unwrap();
    assert_eq!(
        (verified.value, verified.labels["http_status"].as_str()),
        (1.0, "200")
    );

    // Every metric and label of the dashboard and the alerts exists.
    let mut known = Known::default();
    for (name, labels) in ksm::declared(&r.ksm_config) {
        known.add_declared(&name, &labels);
    }
    for s in state.iter().chain(&controller) {
        known.add_series(s);
    }
    for family in [
        "uami_reconciles_total",
        "uami_arm_requests_total",
        "uami_arm_throttled_total",
        "uami_arm_ratelimit_remaining",
        "uami_leader",
    ] {
        assert!(
            controller.iter().any(|s| s.name == family),
            "no {family} in /metrics"
        );
    }
    // The quota gauges: the tutorial's controller may not read the subscription's role
    // assignments and binds no service account, so they have no series here
    // (tests/e2e_budgets.rs has them); their labels are declared.
    for (name, label) in [
        ("uami_role_assignments", Some("subscription")),
        ("uami_role_assignments_limit", None),
        ("uami_federated_credentials", Some("identity")),
        ("uami_federated_credentials_limit", None),
    ] {
        known.add_declared(name, &label.into_iter().map(str::to_string).collect());
    }
    // Object state from the controller's caches matches the objects.
    let objects_series = |kind: &str, ready: &str, reason: &str| {
        controller
            .iter()
            .find(|s| {
                s.name == "uami_objects"
                    && s.labels["kind"] == kind
                    && s.labels["namespace"] == "tutorial"
                    && s.labels["ready"] == ready
                    && s.labels["reason"] == reason
            })
            .map(|s| s.value)
    };
    assert_eq!(
        objects_series("UserAssignedIdentity", "True", "Ready"),
        Some(1.0)
    );
    assert_eq!(
        objects_series("IdentityBinding", "True", "Ready"),
        Some(1.0)
    );
    assert_eq!(objects_series("RoleGrant", "True", "Ready"), Some(1.0));
    assert_eq!(
        objects_series("RoleGrant", "False", "DeniedByPolicy"),
        Some(1.0)
    );
    // One time-to-Ready observation per kind (each object's first generation).
    for kind in ["UserAssignedIdentity", "IdentityBinding", "RoleGrant"] {
        let count = controller
            .iter()
            .find(|s| s.name == "uami_time_to_ready_seconds_count" && s.labels["kind"] == kind)
            .unwrap_or_else(|| panic!("no time to Ready of {kind}"));
        assert_eq!(count.value, 1.0, "{kind}");
        let sum = controller
            .iter()
            .find(|s| s.name == "uami_time_to_ready_seconds_sum" && s.labels["kind"] == kind)
            .unwrap();
        assert!(sum.value >= 0.0 && sum.value < 120.0, "{kind}: {sum:?}");
    }
    let errors = check_all(&r, &known);
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    // The budget gauge reads ARM's headers: reads were answered with a count.
    assert!(
        controller
            .iter()
            .any(|s| s.name == "uami_arm_ratelimit_remaining"
                && s.labels["kind"] == "reads"
                && s.labels["subscription"] == uami_emulator::world::TUTORIAL_SUBSCRIPTION)
    );

    match std::sync::Arc::try_unwrap(stack) {
        Ok(stack) => stack.stop().await,
        Err(_) => panic!("the stack is still shared"),
    }
}
