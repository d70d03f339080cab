//! The Helm chart: `helm lint` and `helm template` pass, `deploy/manifests/` is the chart rendered
//! with default values (drift check), every rendered object is a valid Kubernetes object of its
//! kind, and the defaults are safe (non-root, read-only root, no privilege escalation, no RBAC
//! wildcards, the agent may patch only status).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::PathBuf;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use support::helm::{CHART, docs, helm_ok, template};

const MANIFESTS: &str = "deploy/manifests/uami-controller.yaml";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Rendered with the one required value, `clusterName`, and the chart's defaults otherwise.
fn render(extra: &[&str]) -> String {
    let mut args = vec!["--include-crds", "--set", "clusterName=my-cluster"];
    args.extend_from_slice(extra);
    template(&args)
}

/// Drop nulls and empty maps so that a typed round trip compares equal to the input.
fn normalise(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), normalise(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(normalise).collect()),
        other => other.clone(),
    }
}

/// Parse `doc` as `T` and write it back: an unknown or misspelled field is lost on the way and
/// a wrongly typed one fails to parse, so the object must come back unchanged.
fn round_trip<T: DeserializeOwned + Serialize>(doc: &Value) -> Result<(), String> {
    let typed: T = serde_json::from_value(doc.clone()).map_err(|e| e.to_string())?;
    let back = serde_json::to_value(&typed).unwrap();
    let (a, b) = (normalise(doc), normalise(&back));
    if a != b {
        return Err(format!(
            "fields lost in a typed round trip:\n  rendered: {a}\n  typed:    {b}"
        ));
    }
    Ok(())
}

fn validate(doc: &Value) -> Result<(), String> {
    use k8s_openapi::api::admissionregistration::v1::{
        ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
    };
    use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
    use k8s_openapi::api::core::v1::{Service, ServiceAccount};
    use k8s_openapi::api::networking::v1::NetworkPolicy;
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let kind = doc["kind"].as_str().unwrap_or_default();
    match kind {
        "Deployment" => round_trip::<Deployment>(doc),
        "DaemonSet" => round_trip::<DaemonSet>(doc),
        "Service" => round_trip::<Service>(doc),
        "ServiceAccount" => round_trip::<ServiceAccount>(doc),
        "NetworkPolicy" => round_trip::<NetworkPolicy>(doc),
        "ClusterRole" => round_trip::<ClusterRole>(doc),
        "ClusterRoleBinding" => round_trip::<ClusterRoleBinding>(doc),
        "Role" => round_trip::<Role>(doc),
        "RoleBinding" => round_trip::<RoleBinding>(doc),
        "CustomResourceDefinition" => round_trip::<CustomResourceDefinition>(doc),
        "GrantPolicy" => round_trip::<uami_api::policy::GrantPolicy>(doc),
        "ValidatingAdmissionPolicy" => round_trip::<ValidatingAdmissionPolicy>(doc),
        "ValidatingAdmissionPolicyBinding" => round_trip::<ValidatingAdmissionPolicyBinding>(doc),
        other => Err(format!("unexpected kind {other}")),
    }
}

#[test]
fn helm_lint_passes() {
    let out = helm_ok(&["lint", CHART, "--strict"]);
    assert!(out.contains("0 chart(s) failed"), "{out}");
}

#[test]
fn committed_manifests_match_the_chart() {
    let rendered = render(&[]);
    let committed = std::fs::read_to_string(root().join(MANIFESTS)).unwrap();
    assert!(
        rendered == committed,
        "{MANIFESTS} is out of date; regenerate it with:\n  .tools/bin/helm template uami-controller {CHART} --namespace uami-system --include-crds --set clusterName=my-cluster > {MANIFESTS}"
    );
}

#[test]
fn every_rendered_object_is_valid_for_its_kind() {
    for values in [
        vec![],
        vec![
            "--set",
            "azure.clientId=11111111-2222-3333-4444-555555555555",
            "--set",
            "metrics.serviceMonitor.enabled=false",
        ],
        vec![
            "--set",
            "controller.credential=client-secret",
            "--set",
            "controller.clientSecretName=uami-sp",
            "--set",
            "agent.enabled=false",
        ],
    ] {
        let objects = docs(&render(&values));
        assert!(
            objects.len() >= 10,
            "{values:?}: only {} objects",
            objects.len()
        );
        let errors: Vec<String> = objects
            .iter()
            .filter_map(|d| {
                validate(d)
                    .err()
                    .map(|e| format!("{} {}: {e}", d["kind"], d["metadata"]["name"]))
            })
            .collect();
        assert!(errors.is_empty(), "{values:?}:\n{}", errors.join("\n"));
    }
}

#[test]
fn a_typed_round_trip_catches_a_misspelled_field() {
    let bad = serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "x"},
        "spec": {"ports": [{"port": 80, "targetPortt": 8080}]}
    });
    assert!(validate(&bad).is_err());
}

fn find<'a>(objects: &'a [Value], kind: &str, name_part: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| {
            o["kind"] == kind
                && o["metadata"]["name"]
                    .as_str()
                    .unwrap_or("")
                    .contains(name_part)
        })
        .unwrap_or_else(|| panic!("no {kind} named like {name_part}"))
}

#[test]
fn defaults_are_safe() {
    let objects = docs(&render(&[]));
    for (kind, name) in [("Deployment", "uami-controller"), ("DaemonSet", "agent")] {
        let w = find(&objects, kind, name);
        let pod = &w["spec"]["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{kind}");
        for c in pod["containers"].as_array().unwrap() {
            let sc = &c["securityContext"];
            assert_eq!(sc["allowPrivilegeEscalation"], false, "{kind}");
            assert_eq!(sc["readOnlyRootFilesystem"], true, "{kind}");
            assert_eq!(
                sc["capabilities"]["drop"],
                serde_json::json!(["ALL"]),
                "{kind}"
            );
            assert!(
                c["resources"]["requests"].is_object() && c["resources"]["limits"].is_object(),
                "{kind}"
            );
            assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz", "{kind}");
            assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz", "{kind}");
        }
    }
    let deploy = find(&objects, "Deployment", "uami-controller");
    assert_eq!(deploy["spec"]["replicas"], 2);
    let args: Vec<&str> = deploy["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    assert!(
        args.iter().any(|a| a.starts_with("--leader-election")),
        "{args:?}"
    );
    let agent = find(&objects, "DaemonSet", "agent");
    assert_eq!(agent["spec"]["template"]["spec"]["hostNetwork"], true);

    for role in objects
        .iter()
        .filter(|o| o["kind"] == "ClusterRole" || o["kind"] == "Role")
    {
        for rule in role["rules"].as_array().unwrap() {
            for field in ["apiGroups", "resources", "verbs"] {
                assert!(
                    !rule[field].as_array().unwrap().iter().any(|v| v == "*"),
                    "wildcard in {}: {rule}",
                    role["metadata"]["name"]
                );
            }
        }
    }
    let agent_role = find(&objects, "ClusterRole", "agent");
    for rule in agent_role["rules"].as_array().unwrap() {
        let writes = rule["verbs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| !matches!(v.as_str(), Some("get" | "list" | "watch")));
        if writes {
            assert!(
                rule["resources"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|r| r.as_str().unwrap().ends_with("/status")),
                "the agent may write only status: {rule}"
            );
        }
    }
    // Policy fails closed: no GrantPolicy unless a value turns the default one on.
    assert!(!objects.iter().any(|o| o["kind"] == "GrantPolicy"));
    let objects = docs(&render(&["--set", "defaultGrantPolicy.enabled=true"]));
    let policy = find(&objects, "GrantPolicy", "default");
    assert_eq!(
        policy["spec"]["roleGrants"][0]["roles"],
        serde_json::json!(["Reader"])
    );
}
