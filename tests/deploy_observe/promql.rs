//! The alerts typed as the Prometheus operator's `PrometheusRule`, and the PromQL of the
//! dashboard and the alerts checked against the metrics and labels known to exist.

use std::collections::{BTreeMap, BTreeSet};

use promql_parser::parser::{self, Expr, LabelModifier};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Rendered;
use crate::ksm;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PrometheusRule {
    pub api_version: String,
    pub kind: String,
    pub metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    pub spec: RuleSpec,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    pub groups: Vec<RuleGroup>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleGroup {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    pub rules: Vec<Rule>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<String>,
    pub expr: String,
    #[serde(default, rename = "for", skip_serializing_if = "Option::is_none")]
    pub for_: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

pub fn typed_rule(doc: &Value) -> PrometheusRule {
    let typed: PrometheusRule = serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("not a PrometheusRule: {e}\n{doc}"));
    assert_eq!(typed.api_version, "monitoring.coreos.com/v1");
    assert_eq!(typed.kind, "PrometheusRule");
    typed
}

/// A Prometheus duration (`5m`, `1h30m`).
pub fn is_duration(s: &str) -> bool {
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
pub fn grafana_expr(expr: &str) -> String {
    expr.replace("$__rate_interval", "5m")
        .replace("$__interval", "1m")
        .replace("$__range", "1h")
}

pub fn parse(expr: &str) -> Expr {
    parser::parse(expr).unwrap_or_else(|e| panic!("PromQL does not parse: {e}\n{expr}"))
}

/// A vector selector: metric name and label matchers (op, name, value).
#[derive(Debug)]
pub struct Selector {
    pub name: String,
    pub matchers: Vec<(String, String, String)>,
}

/// Metric families known to exist, with their label names and the values seen per label.
#[derive(Default)]
pub struct Known {
    pub labels: BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
}

impl Known {
    pub fn add_declared(&mut self, name: &str, label_names: &BTreeSet<String>) {
        let e = self.labels.entry(name.to_string()).or_default();
        for l in label_names {
            e.entry(l.clone()).or_default();
        }
    }
    pub fn add_series(&mut self, s: &ksm::Series) {
        let e = self.labels.entry(s.name.clone()).or_default();
        for (k, v) in &s.labels {
            e.entry(k.clone()).or_default().insert(v.clone());
        }
    }
}

/// Walk `expr`: check its selectors against `known` and return the labels of its result.
pub fn check_expr(expr: &Expr, known: &Known, errors: &mut Vec<String>) -> BTreeSet<String> {
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
                // histogram_quantile(φ, buckets): the buckets' labels but `le`, which it needs.
                "histogram_quantile" => {
                    let buckets = c
                        .args
                        .args
                        .get(1)
                        .map(|a| check_expr(a, known, &mut Vec::new()))
                        .unwrap_or_default();
                    if !buckets.contains("le") {
                        errors.push(format!(
                            "histogram_quantile over series without `le`: {expr}"
                        ));
                    }
                    buckets.into_iter().filter(|l| l != "le").collect()
                }
                _ => out,
            }
        }
        Expr::Extension(_) => {
            errors.push(format!("unexpected extension node: {expr}"));
            BTreeSet::new()
        }
    }
}

pub fn is_scalar(e: &Expr) -> bool {
    match e {
        Expr::NumberLiteral(_) => true,
        Expr::Paren(p) => is_scalar(&p.expr),
        Expr::Call(c) => matches!(c.func.name, "time" | "scalar"),
        _ => false,
    }
}

pub fn check_selector(
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
pub fn template_labels(text: &str, legend: bool) -> BTreeSet<String> {
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
pub fn queries(r: &Rendered) -> Vec<(String, String, BTreeSet<String>)> {
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

pub fn check_all(r: &Rendered, known: &Known) -> Vec<String> {
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
