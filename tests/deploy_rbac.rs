//! The chart's roles against what the code really calls: the controller (under leader election)
//! and the agent run the tutorial from creation to deletion on the sandbox as the chart's service
//! accounts, with the rendered RBAC objects and admission policies installed and enforced (a
//! call the roles do not allow is answered 403). The audit log records every call by user: every
//! call must have been allowed, and every permission the roles grant must have been used (the
//! only exception is listed and explained below).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use support::*;
use uami::demo::stack::Stack;

type Perm = (String, String, String);

/// What the chart's roles named `uami-controller-<role>` (the release is `uami-controller`)
/// grant.
fn granted(role: &str) -> BTreeSet<Perm> {
    let mut out = BTreeSet::new();
    let name = format!("uami-controller-{role}");
    for v in chart_manifests() {
        if !matches!(v["kind"].as_str(), Some("ClusterRole" | "Role"))
            || v["metadata"]["name"].as_str() != Some(name.as_str())
        {
            continue;
        }
        for rule in v["rules"].as_array().unwrap() {
            for g in rule["apiGroups"].as_array().unwrap() {
                for r in rule["resources"].as_array().unwrap() {
                    for verb in rule["verbs"].as_array().unwrap() {
                        out.insert((
                            g.as_str().unwrap().into(),
                            r.as_str().unwrap().into(),
                            verb.as_str().unwrap().into(),
                        ));
                    }
                }
            }
        }
    }
    out
}

fn used(stack: &Stack, user: &str) -> BTreeSet<Perm> {
    let mut out = BTreeSet::new();
    for r in stack
        .sandbox()
        .unwrap()
        .audit()
        .into_iter()
        .filter(|r| r.user == user)
    {
        let resource = if r.subresource.is_empty() {
            r.resource.clone()
        } else {
            format!("{}/{}", r.resource, r.subresource)
        };
        out.insert((r.group.clone(), resource.clone(), r.verb.clone()));
        // A server-side apply that creates its object needs `create` as well as `patch`.
        if r.verb == "patch" && r.code == 201 {
            out.insert((r.group.clone(), resource, "create".into()));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_grant_exactly_what_the_code_calls() {
    let mut opts = tutorial_options(Duration::from_secs(2), 0.5);
    opts.controller = false;
    opts.agents = true;
    let stack = enforced_stack(opts).await;
    let controller = Controller::start(&stack, Some("rbac"));
    stack.apply_yaml(&tutorial_yaml()).await.unwrap();
    ready(&grants(&stack, "tutorial"), "my-identity-reads-devtest", 60).await;
    ready(&bindings(&stack, "tutorial"), "my-identity-on-myvm", 60).await;
    // The service account path too (workload identity), created and deleted.
    stack
        .apply_yaml(include_str!("../examples/workload-identity.yaml"))
        .await
        .unwrap();
    ready(
        &bindings(&stack, "workload"),
        "reporter-identity-for-reporter",
        60,
    )
    .await;
    ready(&grants(&stack, "workload"), "reporter-reads-devtest", 60).await;
    delete_and_wait(
        &bindings(&stack, "workload"),
        "reporter-identity-for-reporter",
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    delete_tutorial(&stack).await;
    gone(&identities(&stack, TUTORIAL), TUTORIAL_IDENTITY, 60).await;
    controller.stop_cleanly().await;

    for (component, user, role) in [
        (
            "controller",
            "system:serviceaccount:uami-system:uami-controller",
            "controller",
        ),
        (
            "agent",
            "system:serviceaccount:uami-system:uami-agent",
            "agent",
        ),
    ] {
        let refused: Vec<_> = stack
            .sandbox()
            .unwrap()
            .audit()
            .into_iter()
            .filter(|r| r.user == user && r.code == 403)
            .collect();
        assert!(
            refused.is_empty(),
            "{component} was refused by RBAC or admission: {refused:?}"
        );
        let granted_all: BTreeSet<Perm> = if component == "controller" {
            [
                "controller",
                "leader-election",
                "controller-workload-identity",
            ]
            .iter()
            .flat_map(|r| granted(r))
            .collect()
        } else {
            granted(role)
        };
        let used = used(&stack, user);
        let missing: Vec<_> = used.difference(&granted_all).collect();
        assert!(
            missing.is_empty(),
            "{component} calls what its role does not grant: {missing:?}"
        );
        // kube's event recorder patches an Event when the same event repeats (a series); this run
        // has no repeated event.
        let allowed_unused: BTreeSet<Perm> = [(
            "events.k8s.io".to_string(),
            "events".to_string(),
            "patch".to_string(),
        )]
        .into_iter()
        .collect();
        let unused: Vec<_> = granted_all
            .difference(&used)
            .filter(|p| !allowed_unused.contains(*p))
            .collect();
        assert!(
            unused.is_empty(),
            "{component}'s role grants what the code never calls: {unused:?}"
        );
    }
    stack.stop().await;
}
