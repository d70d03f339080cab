//! Dashboards and alerts in the chart: the kube-state-metrics config, the Grafana dashboard and
//! the PrometheusRule render only when enabled and are valid objects; the dashboard is sane
//! Grafana JSON; every query parses as PromQL; every metric and label the queries use exists,
//! either in the controller's /metrics after the tutorial ran or in the series kube-state-metrics
//! makes from the tutorial's objects with the chart's config, whose paths exist in the CRD
//! schemas.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/ksm.rs"]
mod ksm;
mod support;

#[path = "deploy_observe/ksm_schema.rs"]
mod ksm_schema;
#[path = "deploy_observe/promql.rs"]
mod promql;
#[path = "deploy_observe/record.rs"]
mod record;
#[path = "deploy_observe/tutorial.rs"]
mod tutorial;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use ksm_schema::*;
use promql::*;
use record::*;
use serde_json::Value;
use support::helm::{CHART, docs, helm_ok, template};

const ALL_ON: [&str; 8] = [
    "--set",
    "metrics.kubeStateMetrics.enabled=true",
    "--set",
    "metrics.grafanaDashboard.enabled=true",
    "--set",
    "metrics.prometheusRule.enabled=true",
    "--set",
    "metrics.kubeStateMetrics.serviceAccount.name=kube-state-metrics",
];

fn render(extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["--set", "clusterName=my-cluster"];
    args.extend_from_slice(extra);
    docs(&template(&args))
}

fn observe_objects(objects: &[Value]) -> Vec<&Value> {
    objects
        .iter()
        .filter(|o| o["metadata"]["labels"]["app.kubernetes.io/component"] == "observe")
        .collect()
}

/// What the chart renders with every piece on.
struct Rendered {
    ksm_config: Value,
    dashboard: Value,
    dashboard_cm: Value,
    rule: Value,
}

fn rendered() -> Rendered {
    let objects = render(&ALL_ON);
    let find = |kind: &str, suffix: &str| {
        objects
            .iter()
            .find(|o| {
                o["kind"] == kind && o["metadata"]["name"].as_str().unwrap().ends_with(suffix)
            })
            .unwrap_or_else(|| panic!("no {kind} *{suffix}"))
            .clone()
    };
    let ksm_cm = find("ConfigMap", "-kube-state-metrics");
    let ksm_config: Value =
        serde_yaml_ng::from_str(ksm_cm["data"]["uami-controller.yaml"].as_str().unwrap()).unwrap();
    let dashboard_cm = find("ConfigMap", "-dashboard");
    let dashboard: Value = serde_json::from_str(
        dashboard_cm["data"]["uami-controller.json"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    Rendered {
        ksm_config,
        dashboard,
        dashboard_cm,
        rule: find("PrometheusRule", "-alerts"),
    }
}
// ---- The chart ------------------------------------------------------------------------------

#[test]
fn every_piece_is_off_by_default_and_on_with_one_value() {
    assert!(observe_objects(&render(&[])).is_empty());
    for (value, kinds) in [
        (
            "metrics.kubeStateMetrics.enabled",
            vec!["ClusterRole", "ConfigMap"],
        ),
        ("metrics.grafanaDashboard.enabled", vec!["ConfigMap"]),
        ("metrics.prometheusRule.enabled", vec!["PrometheusRule"]),
    ] {
        let set = format!("{value}=true");
        let objects = render(&["--set", &set]);
        let mut got: Vec<&str> = observe_objects(&objects)
            .iter()
            .map(|o| o["kind"].as_str().unwrap())
            .collect();
        got.sort();
        assert_eq!(got, kinds, "{value}");
    }
    let out = helm_ok(&[&["lint", CHART, "--strict"][..], &ALL_ON[..]].concat());
    assert!(out.contains("0 chart(s) failed"), "{out}");
}

#[test]
fn rendered_pieces_are_valid_objects_of_their_kind() {
    use k8s_openapi::api::core::v1::ConfigMap;
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
    let objects = render(&ALL_ON);
    let mine = observe_objects(&objects);
    assert_eq!(mine.len(), 5, "{mine:#?}");
    for o in mine {
        let back = match o["kind"].as_str().unwrap() {
            "ConfigMap" => {
                serde_json::to_value(serde_json::from_value::<ConfigMap>((*o).clone()).unwrap())
            }
            "ClusterRole" => {
                serde_json::to_value(serde_json::from_value::<ClusterRole>((*o).clone()).unwrap())
            }
            "ClusterRoleBinding" => serde_json::to_value(
                serde_json::from_value::<ClusterRoleBinding>((*o).clone()).unwrap(),
            ),
            "PrometheusRule" => serde_json::to_value(typed_rule(o)),
            other => panic!("unexpected {other}"),
        }
        .unwrap();
        assert_eq!(&back, o, "fields lost in a typed round trip");
    }
    // kube-state-metrics may list and watch the kinds and the CRDs, nothing more.
    let ksm = |kind: &str| {
        objects
            .iter()
            .find(|o| {
                o["kind"] == kind && o["metadata"]["name"] == "uami-controller-kube-state-metrics"
            })
            .unwrap()
    };
    let role = ksm("ClusterRole");
    for rule in role["rules"].as_array().unwrap() {
        assert_eq!(
            rule["verbs"],
            serde_json::json!(["list", "watch"]),
            "{rule}"
        );
    }
    let binding = ksm("ClusterRoleBinding");
    assert_eq!(binding["subjects"][0]["name"], "kube-state-metrics");
    assert_eq!(binding["subjects"][0]["namespace"], "uami-system");

    // The Grafana sidecar label, by default and configured.
    let r = rendered();
    assert_eq!(
        r.dashboard_cm["metadata"]["labels"]["grafana_dashboard"],
        "1"
    );
    let custom = render(&[
        "--set",
        "metrics.grafanaDashboard.enabled=true",
        "--set",
        "metrics.grafanaDashboard.labels.grafana_dashboard=null",
        "--set",
        "metrics.grafanaDashboard.labels.team-dashboards=uami",
        "--set",
        "metrics.grafanaDashboard.namespace=monitoring",
    ]);
    let cm = observe_objects(&custom)[0];
    assert_eq!(cm["metadata"]["labels"]["team-dashboards"], "uami");
    assert!(cm["metadata"]["labels"]["grafana_dashboard"].is_null());
    assert_eq!(cm["metadata"]["namespace"], "monitoring");
}

#[test]
fn dashboard_is_sane_grafana_json_with_the_panels_operators_need() {
    let d = rendered().dashboard;
    assert!(d["title"].is_string() && d["uid"].is_string());
    assert!(d["schemaVersion"].as_u64().unwrap() >= 30);
    let vars = d["templating"]["list"].as_array().unwrap();
    assert!(
        vars.iter().any(|v| v["name"] == "datasource"
            && v["type"] == "datasource"
            && v["query"] == "prometheus"),
        "a Prometheus data source variable"
    );
    let panels = d["panels"].as_array().unwrap();
    let mut ids = BTreeSet::new();
    let mut cells: BTreeMap<(u64, u64), String> = BTreeMap::new();
    let mut all_exprs = String::new();
    for p in panels {
        let title = p["title"].as_str().unwrap();
        assert!(
            ids.insert(p["id"].as_u64().unwrap()),
            "duplicate id: {title}"
        );
        assert!(p["type"].is_string(), "{title}");
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        let g = &p["gridPos"];
        let (x, y, w, h) = (
            g["x"].as_u64().unwrap(),
            g["y"].as_u64().unwrap(),
            g["w"].as_u64().unwrap(),
            g["h"].as_u64().unwrap(),
        );
        assert!(w > 0 && h > 0 && x + w <= 24, "{title}: gridPos {g}");
        for cx in x..x + w {
            for cy in y..y + h {
                if let Some(other) = cells.insert((cx, cy), title.to_string()) {
                    panic!("{title} overlaps {other}");
                }
            }
        }
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}");
        let mut refs = BTreeSet::new();
        for t in targets {
            assert!(
                refs.insert(t["refId"].as_str().unwrap()),
                "{title}: duplicate refId"
            );
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{title}");
            let expr = grafana_expr(t["expr"].as_str().unwrap());
            parse(&expr);
            all_exprs.push_str(&expr);
            all_exprs.push('\n');
        }
    }
    // What an on-call engineer needs on one screen.
    for needle in [
        "uami_userassignedidentity_status_condition",
        "uami_identitybinding_status_condition",
        "uami_rolegrant_status_condition",
        "token_expires_on - time() < 3600",
        "sum by (kind) (rate(uami_reconciles_total",
        "sum by (kind, result) (rate(uami_reconciles_total{result!~\"success|waiting\"}",
        "sum by (operation, code) (rate(uami_arm_requests_total",
        "uami_arm_throttled_total",
        "uami_arm_ratelimit_remaining",
        "sum(uami_leader)",
        "sum by (kind, ready) (uami_objects)",
        "uami_time_to_ready_seconds_count",
        "uami_role_assignments",
        "uami_federated_credentials",
    ] {
        assert!(all_exprs.contains(needle), "no panel queries {needle}");
    }
    let tables: Vec<&Value> = panels.iter().filter(|p| p["type"] == "table").collect();
    assert!(
        tables.iter().any(|t| t["targets"][0]["expr"]
            .as_str()
            .unwrap()
            .contains("status!=\"True\"")),
        "a table of the objects that are not Ready"
    );
}

#[test]
fn rules_are_prometheus_rules_with_runbooks() {
    let rule = typed_rule(&rendered().rule);
    let alerts: Vec<&Rule> = rule.spec.groups.iter().flat_map(|g| &g.rules).collect();
    let names: BTreeSet<&str> = alerts.iter().filter_map(|a| a.alert.as_deref()).collect();
    assert_eq!(
        names,
        BTreeSet::from([
            "UamiArmThrottlingSustained",
            "UamiFederatedCredentialsNearLimit",
            "UamiNoLeader",
            "UamiObjectNotReady",
            "UamiReconcileErrorsRising",
            "UamiRoleAssignmentsNearLimit",
            "UamiTokenNotRenewed",
        ])
    );
    for a in alerts {
        let name = a.alert.as_deref().unwrap();
        parse(&a.expr);
        if let Some(f) = &a.for_ {
            assert!(is_duration(f), "{name}: for {f}");
        }
        assert!(
            ["warning", "critical"].contains(&a.labels["severity"].as_str()),
            "{name}"
        );
        for key in ["summary", "description", "runbook"] {
            assert!(
                a.annotations.get(key).is_some_and(|v| !v.trim().is_empty()),
                "{name}: annotation {key}"
            );
        }
        assert!(
            a.annotations["runbook"].lines().count() >= 3,
            "{name}: a runbook has steps"
        );
    }
    // Not Ready for 15 minutes.
    let not_ready = rule.spec.groups[0]
        .rules
        .iter()
        .find(|r| r.alert.as_deref() == Some("UamiObjectNotReady"))
        .unwrap();
    assert!(not_ready.expr.contains("> 900"), "{}", not_ready.expr);
}

#[test]
fn a_query_naming_a_missing_metric_or_label_is_caught() {
    let mut known = Known::default();
    known.add_declared("m", &BTreeSet::from(["kind".to_string()]));
    let check = |q: &str| {
        let mut e = Vec::new();
        check_expr(&parse(q), &known, &mut e);
        e
    };
    assert!(check("sum by (kind) (rate(m[5m]))").is_empty());
    assert_eq!(check("sum by (kind) (rate(n[5m]))").len(), 2);
    assert_eq!(check("m{knd=\"x\"}").len(), 1);
    assert_eq!(check("sum by (code) (m)").len(), 1);
    assert_eq!(
        template_labels("{{kind}} {{code}}", true),
        BTreeSet::from(["kind".into(), "code".into()])
    );
    assert_eq!(
        template_labels(
            "{{ $labels.name }} {{ $value }}{{ with $labels.reason }}{{ . }}{{ end }}",
            false
        ),
        BTreeSet::from(["name".into(), "reason".into()])
    );
}
#[test]
fn kube_state_metrics_paths_exist_in_the_crd_schemas() {
    let config = rendered().ksm_config;
    let typed: KsmConfig = serde_json::from_value(config.clone())
        .unwrap_or_else(|e| panic!("not a CustomResourceStateMetrics config: {e}"));
    assert_eq!(typed.kind, "CustomResourceStateMetrics");
    assert!(
        typed
            .spec
            .resources
            .iter()
            .all(|r| r.metrics.iter().all(|m| m.each.type_ == "Gauge"))
    );
    let mut misspelt = config.clone();
    misspelt["spec"]["resources"][0]["metrics"][0]["each"]["gauge"]["valuefrom"] =
        serde_json::json!(["x"]);
    assert!(serde_json::from_value::<KsmConfig>(misspelt).is_err());
    let declared = ksm::declared(&config);
    assert!(declared.len() >= 12, "{declared:?}");
    let mut kinds = BTreeSet::new();
    for r in ksm::resources(&config) {
        kinds.insert(r.kind.to_string());
        let schema = crd_schema(r.group, r.kind);
        let check = |base: &Value, p: &Value, what: &str| {
            let path = ksm::path_of(p);
            schema_at(base, &path).unwrap_or_else(|e| panic!("{}: {what} {path:?}: {e}", r.kind))
        };
        for (_, p) in r.raw["labelsFromPath"].as_object().unwrap() {
            check(&schema, p, "labelsFromPath");
        }
        for m in r.raw["metrics"].as_array().unwrap() {
            for (_, p) in m["labelsFromPath"].as_object().into_iter().flatten() {
                check(&schema, p, "labelsFromPath");
            }
            let g = &m["each"]["gauge"];
            let target = check(&schema, &g["path"], "path");
            let element = if target["type"] == "array" {
                target["items"].clone()
            } else {
                target
            };
            for (_, p) in g["labelsFromPath"].as_object().into_iter().flatten() {
                check(&element, p, "each labelsFromPath");
            }
            let value = check(&element, &g["valueFrom"], "valueFrom");
            assert!(
                ["boolean", "integer", "number", "string"]
                    .contains(&value["type"].as_str().unwrap_or("")),
                "{}: {} is not a number, bool or timestamp: {value}",
                r.kind,
                m["name"]
            );
        }
    }
    assert_eq!(
        kinds,
        BTreeSet::from([
            "IdentityBinding".into(),
            "RoleGrant".into(),
            "UserAssignedIdentity".into()
        ])
    );
    // The schema walk refuses a path that does not exist.
    let schema = crd_schema("uami.dev", "RoleGrant");
    assert!(schema_at(&schema, &["status".into(), "acess".into()]).is_err());
    assert!(
        schema_at(
            &schema,
            &["status".into(), "conditions".into(), "[typ=Ready]".into()]
        )
        .is_err()
    );
}
