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

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use promql_parser::parser::{self, Expr, LabelModifier};
use serde::{Deserialize, Serialize};
use serde_json::Value;

const CHART: &str = "deploy/helm/uami-controller";
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

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn helm(args: &[&str]) -> String {
    let bin = std::env::var_os("UAMI_HELM")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".tools/bin/helm"));
    assert!(
        bin.exists(),
        "helm not found at {}: run scripts/install-tools.sh (or set UAMI_HELM)",
        bin.display()
    );
    let out = Command::new(bin)
        .args(args)
        .current_dir(root())
        .output()
        .expect("run helm");
    assert!(
        out.status.success(),
        "helm {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn render(extra: &[&str]) -> Vec<Value> {
    let mut args = vec![
        "template",
        "uami-controller",
        CHART,
        "--namespace",
        "uami-system",
        "--set",
        "clusterName=my-cluster",
    ];
    args.extend_from_slice(extra);
    serde_yaml_ng::Deserializer::from_str(&helm(&args))
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
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

// ---- PrometheusRule, typed (monitoring.coreos.com/v1) -------------------------------------

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PrometheusRule {
    api_version: String,
    kind: String,
    metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    spec: RuleSpec,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSpec {
    groups: Vec<RuleGroup>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleGroup {
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    interval: Option<String>,
    rules: Vec<Rule>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    alert: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    record: Option<String>,
    expr: String,
    #[serde(default, rename = "for", skip_serializing_if = "Option::is_none")]
    for_: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<String, String>,
}

fn typed_rule(doc: &Value) -> PrometheusRule {
    let typed: PrometheusRule = serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("not a PrometheusRule: {e}\n{doc}"));
    assert_eq!(typed.api_version, "monitoring.coreos.com/v1");
    assert_eq!(typed.kind, "PrometheusRule");
    typed
}

/// A Prometheus duration (`5m`, `1h30m`).
fn is_duration(s: &str) -> bool {
    let mut rest = s;
    if rest.is_empty() {
        return false;
    }
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits == 0 {
            return false;
        }
        rest = &rest[digits..];
        let unit = ["ms", "s", "m", "h", "d", "w", "y"]
            .into_iter()
            .find(|u| rest.starts_with(u));
        match unit {
            Some(u) => rest = &rest[u.len()..],
            None => return false,
        }
    }
    true
}

// ---- PromQL ---------------------------------------------------------------------------------

/// Grafana's variables replaced by what Grafana would put there.
fn grafana_expr(expr: &str) -> String {
    expr.replace("$__rate_interval", "5m")
        .replace("$__interval", "1m")
        .replace("$__range", "1h")
}

fn parse(expr: &str) -> Expr {
    parser::parse(expr).unwrap_or_else(|e| panic!("PromQL does not parse: {e}\n{expr}"))
}

/// A vector selector: metric name and label matchers (op, name, value).
#[derive(Debug)]
struct Selector {
    name: String,
    matchers: Vec<(String, String, String)>,
}

/// Metric families known to exist, with their label names and the values seen per label.
#[derive(Default)]
struct Known {
    labels: BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
}

impl Known {
    fn add_declared(&mut self, name: &str, label_names: &BTreeSet<String>) {
        let e = self.labels.entry(name.to_string()).or_default();
        for l in label_names {
            e.entry(l.clone()).or_default();
        }
    }
    fn add_series(&mut self, s: &ksm::Series) {
        let e = self.labels.entry(s.name.clone()).or_default();
        for (k, v) in &s.labels {
            e.entry(k.clone()).or_default().insert(v.clone());
        }
    }
}

/// Walk `expr`: check its selectors against `known` and return the labels of its result.
fn check_expr(expr: &Expr, known: &Known, errors: &mut Vec<String>) -> BTreeSet<String> {
    let labels_of = |l: &promql_parser::label::Labels| -> BTreeSet<String> {
        l.labels.iter().cloned().collect()
    };
    match expr {
        Expr::VectorSelector(vs) => check_selector(vs, known, errors),
        Expr::MatrixSelector(ms) => check_selector(&ms.vs, known, errors),
        Expr::Paren(p) => check_expr(&p.expr, known, errors),
        Expr::Unary(u) => check_expr(&u.expr, known, errors),
        Expr::Subquery(s) => check_expr(&s.expr, known, errors),
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) => BTreeSet::new(),
        Expr::Aggregate(a) => {
            let inner = check_expr(&a.expr, known, errors);
            if let Some(p) = &a.param {
                check_expr(p, known, errors);
            }
            let keeps =
                ["topk", "bottomk", "limitk", "limit_ratio"].contains(&a.op.to_string().as_str());
            match &a.modifier {
                Some(LabelModifier::Include(l)) => {
                    let by = labels_of(l);
                    for missing in by.difference(&inner) {
                        errors.push(format!("`by ({missing})` but no series has it: {expr}"));
                    }
                    by
                }
                Some(LabelModifier::Exclude(l)) => {
                    inner.difference(&labels_of(l)).cloned().collect()
                }
                None if keeps => inner,
                None => BTreeSet::new(),
            }
        }
        Expr::Binary(b) => {
            let lhs = check_expr(&b.lhs, known, errors);
            let rhs = check_expr(&b.rhs, known, errors);
            let op = b.op.to_string();
            if let Some(matching) = b.modifier.as_ref().and_then(|m| m.matching.as_ref()) {
                let l = labels_of(matching.labels());
                for missing in l.iter().filter(|x| !lhs.contains(*x) || !rhs.contains(*x)) {
                    errors.push(format!("matching on `{missing}` missing on a side: {expr}"));
                }
            }
            match op.as_str() {
                "or" => lhs.union(&rhs).cloned().collect(),
                _ if is_scalar(&b.lhs) => rhs,
                _ => lhs,
            }
        }
        Expr::Call(c) => {
            let mut out = BTreeSet::new();
            for (i, a) in c.args.args.iter().enumerate() {
                let l = check_expr(a, known, errors);
                if i == 0 {
                    out = l;
                }
            }
            match c.func.name {
                "time" | "vector" | "scalar" | "absent" | "absent_over_time" => BTreeSet::new(),
                _ => out,
            }
        }
        Expr::Extension(_) => {
            errors.push(format!("unexpected extension node: {expr}"));
            BTreeSet::new()
        }
    }
}

fn is_scalar(e: &Expr) -> bool {
    match e {
        Expr::NumberLiteral(_) => true,
        Expr::Paren(p) => is_scalar(&p.expr),
        Expr::Call(c) => matches!(c.func.name, "time" | "scalar"),
        _ => false,
    }
}

fn check_selector(
    vs: &promql_parser::parser::VectorSelector,
    known: &Known,
    errors: &mut Vec<String>,
) -> BTreeSet<String> {
    let sel = Selector {
        name: vs.name.clone().unwrap_or_default(),
        matchers: vs
            .matchers
            .matchers
            .iter()
            .filter(|m| m.name != "__name__")
            .map(|m| (m.op.to_string(), m.name.clone(), m.value.clone()))
            .collect(),
    };
    let Some(family) = known.labels.get(&sel.name) else {
        errors.push(format!("metric `{}` does not exist", sel.name));
        return BTreeSet::new();
    };
    for (op, label, value) in &sel.matchers {
        let Some(seen) = family.get(label) else {
            errors.push(format!("metric `{}` has no label `{label}`", sel.name));
            continue;
        };
        // Equality matchers must name a value that occurs (or a condition status).
        let plain = op == "=" || op == "!=";
        let status_enum =
            label == "status" && ["True", "False", "Unknown"].contains(&value.as_str());
        if plain && !seen.is_empty() && !seen.contains(value) && !status_enum {
            errors.push(format!(
                "`{}{{{label}{op}\"{value}\"}}`: `{value}` never occurs (seen: {seen:?})",
                sel.name
            ));
        }
    }
    family.keys().cloned().collect()
}

/// Label names an alert template (`$labels.kind`) or a Grafana legend (`{{kind}}`) uses.
fn template_labels(text: &str, legend: bool) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("$labels.") {
        rest = &rest[i + "$labels.".len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        out.insert(name);
    }
    let mut rest = if legend { text } else { "" };
    while let Some(i) = rest.find("{{") {
        rest = &rest[i + 2..];
        let Some(end) = rest.find("}}") else { break };
        let inner = rest[..end].trim();
        if inner.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') && !inner.is_empty() {
            out.insert(inner.to_string());
        }
        rest = &rest[end..];
    }
    out
}

/// Every query of the dashboard and the rules: (where, PromQL, the labels its legend or
/// annotations use).
fn queries(r: &Rendered) -> Vec<(String, String, BTreeSet<String>)> {
    let mut out = Vec::new();
    for p in r.dashboard["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            out.push((
                format!("panel {:?}", p["title"].as_str().unwrap()),
                grafana_expr(t["expr"].as_str().unwrap()),
                template_labels(t["legendFormat"].as_str().unwrap_or_default(), true),
            ));
        }
    }
    for g in typed_rule(&r.rule).spec.groups {
        for rule in g.rules {
            out.push((
                format!("alert {}", rule.alert.clone().unwrap_or_default()),
                rule.expr.clone(),
                template_labels(
                    &rule
                        .annotations
                        .values()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join("\n"),
                    false,
                ),
            ));
        }
    }
    out
}

fn check_all(r: &Rendered, known: &Known) -> Vec<String> {
    let mut errors = Vec::new();
    for (place, q, used) in queries(r) {
        let mut errs = Vec::new();
        let out = check_expr(&parse(&q), known, &mut errs);
        for l in used {
            if !out.contains(&l) {
                errs.push(format!(
                    "template uses `{l}`, which the result does not carry ({out:?})"
                ));
            }
        }
        errors.extend(errs.into_iter().map(|e| format!("{place}: {e}")));
    }
    errors
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
    let out = helm(&[&["lint", CHART, "--strict"][..], &ALL_ON[..]].concat());
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
    let role = objects
        .iter()
        .find(|o| {
            o["kind"] == "ClusterRole"
                && o["metadata"]["name"] == "uami-controller-kube-state-metrics"
        })
        .unwrap();
    for rule in role["rules"].as_array().unwrap() {
        assert_eq!(
            rule["verbs"],
            serde_json::json!(["list", "watch"]),
            "{rule}"
        );
    }
    let binding = objects
        .iter()
        .find(|o| {
            o["kind"] == "ClusterRoleBinding"
                && o["metadata"]["name"] == "uami-controller-kube-state-metrics"
        })
        .unwrap();
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
            "UamiNoLeader",
            "UamiObjectNotReady",
            "UamiReconcileErrorsRising",
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

// ---- kube-state-metrics config, typed after its Go structs (pkg/customresourcestate) --------
// kube-state-metrics ignores unknown fields, so a misspelt field would silently do nothing.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct KsmConfig {
    kind: String,
    spec: KsmSpec,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct KsmSpec {
    resources: Vec<KsmResource>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
struct KsmResource {
    group_version_kind: BTreeMap<String, String>,
    #[serde(default)]
    metric_name_prefix: Option<String>,
    #[serde(default)]
    resource_plural: Option<String>,
    #[serde(default)]
    common_labels: BTreeMap<String, String>,
    #[serde(default)]
    labels_from_path: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    error_log_v: Option<u8>,
    metrics: Vec<KsmMetric>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
struct KsmMetric {
    name: String,
    help: String,
    each: KsmEach,
    #[serde(default)]
    common_labels: BTreeMap<String, String>,
    #[serde(default)]
    labels_from_path: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    error_log_v: Option<u8>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct KsmEach {
    #[serde(rename = "type")]
    type_: String,
    gauge: KsmGauge,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
struct KsmGauge {
    path: Vec<String>,
    #[serde(default)]
    labels_from_path: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    value_from: Vec<String>,
    #[serde(default)]
    nil_is_zero: bool,
    #[serde(default)]
    label_from_key: Option<String>,
}

/// The CRD schema of a kind, from crds/.
fn crd_schema(group: &str, kind: &str) -> Value {
    for entry in std::fs::read_dir(root().join("crds")).unwrap() {
        let crd: Value =
            serde_yaml_ng::from_str(&std::fs::read_to_string(entry.unwrap().path()).unwrap())
                .unwrap();
        if crd["spec"]["group"] == group && crd["spec"]["names"]["kind"] == kind {
            return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone();
        }
    }
    panic!("no CRD for {group}/{kind}");
}

/// Walk a kube-state-metrics path through a schema; `metadata` is ObjectMeta.
fn schema_at(schema: &Value, path: &[String]) -> Result<Value, String> {
    const META: [&str; 6] = [
        "name",
        "namespace",
        "creationTimestamp",
        "labels",
        "annotations",
        "uid",
    ];
    let mut cur = schema.clone();
    let mut in_meta = false;
    for (i, part) in path.iter().enumerate() {
        if in_meta {
            return if i == path.len() - 1 && META.contains(&part.as_str()) {
                Ok(serde_json::json!({"type": "string"}))
            } else {
                Err(format!("metadata.{part}"))
            };
        }
        if let Some(inner) = part.strip_prefix('[').and_then(|p| p.strip_suffix(']')) {
            let (k, _) = inner.split_once('=').ok_or(format!("bad lookup {part}"))?;
            let items = cur["items"].clone();
            if cur["type"] != "array" || items["properties"][k].is_null() {
                return Err(format!("{part}: not a list of objects with {k}"));
            }
            cur = items;
            continue;
        }
        if part.parse::<usize>().is_ok() && cur["type"] == "array" {
            cur = cur["items"].clone();
            continue;
        }
        if i == 0 && part == "metadata" {
            in_meta = true;
            continue;
        }
        let next = cur["properties"][part.as_str()].clone();
        if next.is_null() {
            return Err(format!("no field {part} in {}", path[..i].join(".")));
        }
        cur = next;
    }
    Ok(cur)
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

// ---- End to end: the tutorial's metrics cover every query ----------------------------------

/// The tutorial's objects as kube-state-metrics would read them.
async fn objects(stack: &uami_controller::demo::stack::Stack) -> Vec<Value> {
    use kube::api::{Api, ListParams};
    use uami_controller::api::{IdentityBinding, RoleGrant, UserAssignedIdentity};
    let mut out = Vec::new();
    let lp = ListParams::default();
    let c = stack.client();
    for o in Api::<UserAssignedIdentity>::all(c.clone())
        .list(&lp)
        .await
        .unwrap()
    {
        out.push(serde_json::to_value(o).unwrap());
    }
    for o in Api::<IdentityBinding>::all(c.clone())
        .list(&lp)
        .await
        .unwrap()
    {
        out.push(serde_json::to_value(o).unwrap());
    }
    for o in Api::<RoleGrant>::all(c).list(&lp).await.unwrap() {
        out.push(serde_json::to_value(o).unwrap());
    }
    out
}

fn controller_metrics(stack: &uami_controller::demo::stack::Stack) -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &stack.registry.lock()).unwrap();
    text
}

/// With `UAMI_OBSERVE_RECORD=<file>`, every second of the run is recorded there in the
/// OpenMetrics text format with timestamps (the controller's metrics and the kube-state-metrics
/// series), for `scripts/observe-screenshot.sh`.
struct Recorder {
    frames: std::sync::Arc<parking_lot::Mutex<Vec<(i64, String)>>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Recorder {
    fn start(stack: std::sync::Arc<uami_controller::demo::stack::Stack>, config: Value) -> Self {
        let frames = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
        let task = std::env::var_os("UAMI_OBSERVE_RECORD").map(|_| {
            let frames = frames.clone();
            tokio::spawn(async move {
                loop {
                    let now = jiff::Timestamp::now().as_millisecond();
                    let mut text = String::new();
                    for s in ksm::parse_exposition(&controller_metrics(&stack)) {
                        text.push_str(&ksm::exposition(&[s], Some(now)));
                    }
                    text.push_str(&ksm::exposition(
                        &ksm::evaluate(&config, &objects(&stack).await),
                        Some(now),
                    ));
                    frames.lock().push((now, text));
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            })
        });
        Self { frames, task }
    }

    async fn finish(self) {
        let Some(task) = self.task else { return };
        task.abort();
        let _ = task.await;
        let path = std::env::var_os("UAMI_OBSERVE_RECORD").unwrap();
        // OpenMetrics wants each family's samples together, in time order.
        let mut by_family: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (_, text) in self.frames.lock().iter() {
            for line in text.lines() {
                let name = line.split(['{', ' ']).next().unwrap().to_string();
                by_family.entry(name).or_default().push(line.to_string());
            }
        }
        let mut out = String::new();
        for (name, lines) in by_family {
            out.push_str(&format!("# TYPE {name} gauge\n"));
            for l in lines {
                // OpenMetrics timestamps are in seconds.
                let (sample, ts) = l.rsplit_once(' ').unwrap();
                let ms: i64 = ts.parse().unwrap();
                out.push_str(&format!("{sample} {}.{:03}\n", ms / 1000, ms % 1000));
            }
        }
        out.push_str("# EOF\n");
        std::fs::write(&path, out).unwrap();
        eprintln!("recorded {}", std::path::Path::new(&path).display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_tutorial_every_metric_and_label_the_queries_use_exists() {
    use support::*;
    use uami_controller::demo::stack::{Stack, StackOptions};
    use uami_controller::emulator::{Faults, faults::Throttling};

    let r = rendered();
    let mut opts = StackOptions::tutorial(Duration::from_secs(2)).unwrap();
    opts.world.rbac_propagation_seconds = 1.0;
    opts.world.lro_retry_after_seconds = 0;
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
    ready(&identities(&stack, "tutorial"), "my-identity", 90).await;
    ready(&bindings(&stack, "tutorial"), "my-identity-on-myvm", 90).await;
    ready(&grants(&stack, "tutorial"), "my-identity-reads-devtest", 90).await;
    eventually(60, "the Owner grant refused", || async {
        let g = grants(&stack, "tutorial")
            .get("my-identity-owns-devtest")
            .await
            .ok()?;
        (condition(&g.status?.conditions, "Ready")?.1 == "DeniedByPolicy").then_some(())
    })
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
    let errors = check_all(&r, &known);
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    // The budget gauge reads ARM's headers: reads were answered with a count.
    assert!(
        controller
            .iter()
            .any(|s| s.name == "uami_arm_ratelimit_remaining"
                && s.labels["kind"] == "reads"
                && s.labels["subscription"]
                    == uami_controller::emulator::world::TUTORIAL_SUBSCRIPTION)
    );

    match std::sync::Arc::try_unwrap(stack) {
        Ok(stack) => stack.stop().await,
        Err(_) => panic!("the stack is still shared"),
    }
}
