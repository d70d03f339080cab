//! The chart as a user installs it, on the sandbox and on a real API server: `helm install` with
//! only `clusterName` set, then the controller and the agent authenticated as the chart's
//! service accounts (on the real server with TokenRequest tokens, the agent's bound to a pod on
//! its VM's node), held to the chart's RBAC and admission policies, run the tutorial to Ready;
//! `helm upgrade` to a changed value; and after `helm uninstall`, deleting the namespace and the
//! CRDs leaves nothing stuck.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::api::{DeleteParams, ListParams};
use support::helm::{CHART, helm_ok};
use support::*;
use uami::demo::stack::{Stack, StackOptions};

const NS: &str = "uami-system";

fn helm_on(kubeconfig: &Path, args: &[&str]) -> String {
    let mut all = args.to_vec();
    all.extend_from_slice(&["--kubeconfig", kubeconfig.to_str().unwrap()]);
    helm_ok(&all)
}

on_sandbox_and_real! {
    binary: "deploy_helm",
    options: tutorial_options(Duration::from_secs(30), 0.5),
    join: on_real_apiserver;
    on_the_sandbox_helm_install_runs_the_tutorial_as_the_charts_service_accounts on_a_real_api_server_helm_install_runs_the_tutorial_as_the_charts_service_accounts install_run_upgrade_uninstall;
}

/// The stack without a controller or agents: the chart is installed first.
async fn start(mut opts: StackOptions) -> Stack {
    opts.cluster_name = "c1".into();
    opts.controller = false;
    opts.agents = false;
    Stack::start(opts).await.unwrap()
}

async fn install_run_upgrade_uninstall(opts: StackOptions, _real: Option<&envtest::Real>) {
    let mut stack = start(opts).await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = &admin_kubeconfig(&stack, dir.path());
    // Install as a user does: only the cluster name is set.
    let out = helm_on(
        kubeconfig,
        &[
            "install",
            "uami",
            CHART,
            "-n",
            NS,
            "--create-namespace",
            "--set",
            "clusterName=c1",
        ],
    );
    assert!(out.contains("STATUS: deployed"), "{out}");

    // The controller and the agent authenticate as the chart's service accounts.
    stack.run_as_service_accounts(NS).await.unwrap();
    let controller = stack.controller_client().unwrap();
    let secrets: Api<Secret> = Api::all(controller);
    match secrets.list(&ListParams::default()).await {
        Err(kube::Error::Api(e)) => {
            assert_eq!(e.code, 403, "{e:?}");
            assert!(
                e.message
                    .contains("User \"system:serviceaccount:uami-system:uami-controller\""),
                "{}",
                e.message
            );
        }
        other => panic!("the controller's account may not list secrets: {other:?}"),
    }
    for vm in stack.emulator.imds_names() {
        stack.start_agent(&vm).await.unwrap();
    }
    stack.spawn_controller(Some("main")).unwrap();
    stack.apply_yaml(&tutorial_yaml()).await.unwrap();
    tutorial_ready(&stack, 90).await;
    let binding = condition_is(
        &bindings(&stack, TUTORIAL),
        TUTORIAL_BINDING,
        "TokenAcquired",
        "True",
        None,
        60,
    )
    .await;
    assert!(binding.status.unwrap().token.unwrap().expires_on.is_some());
    condition_is(
        &grants(&stack, TUTORIAL),
        TUTORIAL_GRANT,
        "AccessVerified",
        "True",
        None,
        60,
    )
    .await;
    let state = stack.emulator.state();
    assert_eq!(user_assigned(&state, "myVM"), 1);
    let owner = state["identities"][0]["tags"]["uami.dev-owner"].clone();
    assert_eq!(owner, "c1/tutorial/my-identity", "{state}");

    // Upgrade to a changed value: a new revision, the Deployment carries it.
    let out = helm_on(
        kubeconfig,
        &[
            "upgrade",
            "uami",
            CHART,
            "-n",
            NS,
            "--set",
            "clusterName=c1",
            "--set",
            "controller.resyncPeriod=7m",
        ],
    );
    assert!(out.contains("REVISION: 2"), "{out}");
    let deployments: Api<Deployment> = Api::namespaced(stack.client(), NS);
    let args = deployments
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .flat_map(|d| d.spec.unwrap().template.spec.unwrap().containers)
        .flat_map(|c| c.args.unwrap_or_default())
        .collect::<Vec<_>>();
    assert!(
        args.iter().any(|a| a == "--resync-period=7m"),
        "the upgraded Deployment's arguments: {args:?}"
    );

    // Take the tutorial down while the controller runs, then uninstall.
    delete_tutorial(&stack).await;
    gone(&identities(&stack, TUTORIAL), TUTORIAL_IDENTITY, 120).await;
    gone(&bindings(&stack, TUTORIAL), TUTORIAL_BINDING, 120).await;
    gone(&grants(&stack, TUTORIAL), TUTORIAL_GRANT, 120).await;
    let state = stack.emulator.state();
    assert_eq!(user_assigned(&state, "myVM"), 0, "{state}");
    assert_eq!(state["identities"].as_array().unwrap().len(), 0, "{state}");
    let out = helm_on(kubeconfig, &["uninstall", "uami", "-n", NS]);
    assert!(out.contains("release \"uami\" uninstalled"), "{out}");
    let sas: Api<ServiceAccount> = Api::namespaced(stack.client(), NS);
    eventually(30, "the chart's service accounts to go", || async {
        let left = sas.list(&ListParams::default()).await.ok()?.items;
        (!left.iter().any(|s| {
            s.metadata.labels.as_ref().is_some_and(|l| {
                l.get("app.kubernetes.io/instance").map(String::as_str) == Some("uami")
            })
        }))
        .then_some(())
    })
    .await;

    // Nothing is stuck: the namespace and the CRDs go when deleted. (The agents' pods, which
    // only carry their tokens' binding, have no kubelet to finish their graceful deletion: they
    // are removed at once, as a kubelet would after stopping them.)
    let client = stack.client();
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), NS);
    let now = DeleteParams {
        grace_period_seconds: Some(0),
        ..DeleteParams::default()
    };
    for pod in pods.list(&ListParams::default()).await.unwrap().items {
        pods.delete(pod.metadata.name.as_deref().unwrap(), &now)
            .await
            .unwrap();
    }
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .delete(NS, &DeleteParams::default())
        .await
        .unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in uami_api::crds() {
        crds.delete(
            crd.metadata.name.as_deref().unwrap(),
            &DeleteParams::default(),
        )
        .await
        .unwrap();
    }
    gone(&namespaces, NS, 90).await;
    for crd in uami_api::crds() {
        gone(&crds, crd.metadata.name.as_deref().unwrap(), 60).await;
    }
    let tutorial_ns = namespaces.get_opt(TUTORIAL).await.unwrap();
    assert!(
        tutorial_ns
            .and_then(|n| n.spec)
            .and_then(|s| s.finalizers)
            .unwrap_or_default()
            .iter()
            .all(|f| f == "kubernetes"),
        "no finalizer of ours on the tutorial's namespace"
    );
    stack.stop().await;
}
