//! A model of kube-state-metrics' custom resource state feature, for the parts the chart's
//! config uses: it turns objects (as JSON) into the series kube-state-metrics would expose, so
//! tests can check the dashboard's and alerts' queries against them. It follows
//! kube-state-metrics' `pkg/customresourcestate`: metric name `<metricNamePrefix>_<name>`
//! (prefix `kube_customresource` when unset), labels `customresource_group`,
//! `customresource_version`, `customresource_kind`, resource- and metric-level `labelsFromPath`
//! resolved on the object, `each.gauge.labelsFromPath` and `valueFrom` resolved on each element
//! of a list path, values converted as its `toFloat64` does (bool, number, "true"/"yes",
//! "false"/"no"/"unknown", RFC 3339 time, number string). A path that resolves to nothing yields
//! no series. Paths that resolve to a map are not modelled (the config does not use them).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

/// One series.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A resource entry of the config.
pub struct Resource<'a> {
    pub group: &'a str,
    pub version: &'a str,
    pub kind: &'a str,
    pub raw: &'a Value,
}

pub fn resources(config: &Value) -> Vec<Resource<'_>> {
    assert_eq!(config["kind"], "CustomResourceStateMetrics");
    config["spec"]["resources"]
        .as_array()
        .expect("spec.resources")
        .iter()
        .map(|r| Resource {
            group: r["groupVersionKind"]["group"].as_str().unwrap(),
            version: r["groupVersionKind"]["version"].as_str().unwrap(),
            kind: r["groupVersionKind"]["kind"].as_str().unwrap(),
            raw: r,
        })
        .collect()
}

pub fn path_of(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

fn labels_from_path(v: &Value) -> BTreeMap<String, Vec<String>> {
    v.as_object()
        .map(|m| m.iter().map(|(k, p)| (k.clone(), path_of(p))).collect())
        .unwrap_or_default()
}

/// The full metric name of a metric entry of a resource.
pub fn metric_name(resource: &Value, metric: &Value) -> String {
    let prefix = resource["metricNamePrefix"]
        .as_str()
        .unwrap_or("kube_customresource");
    let name = metric["name"].as_str().unwrap();
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}_{name}")
    }
}

/// Every metric the config declares, with the label names its series carry.
pub fn declared(config: &Value) -> BTreeMap<String, BTreeSet<String>> {
    let mut out = BTreeMap::new();
    for r in resources(config) {
        for m in r.raw["metrics"].as_array().unwrap() {
            let mut names: BTreeSet<String> = [
                "customresource_group",
                "customresource_version",
                "customresource_kind",
            ]
            .into_iter()
            .map(String::from)
            .collect();
            for src in [
                &r.raw["labelsFromPath"],
                &m["labelsFromPath"],
                &m["each"]["gauge"]["labelsFromPath"],
                &r.raw["commonLabels"],
                &m["commonLabels"],
            ] {
                if let Some(o) = src.as_object() {
                    names.extend(o.keys().cloned());
                }
            }
            let previous = out.insert(metric_name(r.raw, m), names);
            assert!(
                previous.is_none(),
                "metric {} declared twice: kube-state-metrics would repeat its HELP/TYPE lines",
                metric_name(r.raw, m)
            );
        }
    }
    out
}

/// Resolve a kube-state-metrics path (`[status, conditions, "[type=Ready]", reason]`).
pub fn get<'a>(obj: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut cur = obj;
    for part in path {
        if let Some(inner) = part.strip_prefix('[').and_then(|p| p.strip_suffix(']')) {
            let (k, v) = inner.split_once('=')?;
            cur = cur.as_array()?.iter().find(|e| match &e[k] {
                Value::String(s) => s == v,
                Value::Number(n) => v.parse::<f64>().ok() == n.as_f64(),
                Value::Bool(b) => v.parse::<bool>().ok() == Some(*b),
                _ => false,
            })?;
        } else if let Some(a) = cur.as_array() {
            cur = a.get(part.parse::<usize>().ok()?)?;
        } else {
            cur = cur.as_object()?.get(part)?;
        }
        if cur.is_null() {
            return None;
        }
    }
    Some(cur)
}

/// kube-state-metrics' `toFloat64` (nilIsZero false).
pub fn to_float(v: &Value) -> Option<f64> {
    match v {
        Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
        Value::Number(n) => n.as_f64(),
        Value::String(s) => {
            let l = s.to_lowercase();
            match l.as_str() {
                "true" | "yes" => Some(1.0),
                "false" | "no" | "unknown" => Some(0.0),
                _ => s
                    .parse::<jiff::Timestamp>()
                    .map(|t| t.as_millisecond() as f64 / 1000.0)
                    .ok()
                    .or_else(|| s.parse::<f64>().ok()),
            }
        }
        _ => None,
    }
}

/// How Go's `%v` prints a JSON value (label values).
fn label_value(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn add_labels(
    obj: &Value,
    paths: &BTreeMap<String, Vec<String>>,
    out: &mut BTreeMap<String, String>,
) {
    for (k, p) in paths {
        if let Some(v) = get(obj, p) {
            out.insert(k.clone(), label_value(v));
        }
    }
}

/// The series kube-state-metrics exposes for `objects` (each a full object with apiVersion and
/// kind) under `config`.
pub fn evaluate(config: &Value, objects: &[Value]) -> Vec<Series> {
    let mut out = Vec::new();
    for r in resources(config) {
        let api_version = format!("{}/{}", r.group, r.version);
        for obj in objects
            .iter()
            .filter(|o| o["apiVersion"] == api_version.as_str() && o["kind"] == r.kind)
        {
            for m in r.raw["metrics"].as_array().unwrap() {
                assert_eq!(
                    m["each"]["type"].as_str().map(str::to_lowercase).as_deref(),
                    Some("gauge"),
                    "only Gauge metrics are modelled"
                );
                let gauge = &m["each"]["gauge"];
                let mut base = BTreeMap::new();
                base.insert("customresource_group".to_string(), r.group.to_string());
                base.insert("customresource_version".to_string(), r.version.to_string());
                base.insert("customresource_kind".to_string(), r.kind.to_string());
                add_labels(obj, &labels_from_path(&r.raw["labelsFromPath"]), &mut base);
                add_labels(obj, &labels_from_path(&m["labelsFromPath"]), &mut base);
                let each_labels = labels_from_path(&gauge["labelsFromPath"]);
                let value_from = path_of(&gauge["valueFrom"]);
                let Some(target) = get(obj, &path_of(&gauge["path"])) else {
                    continue;
                };
                let elements: Vec<&Value> = match target {
                    Value::Array(a) => a.iter().collect(),
                    Value::Object(_) => panic!(
                        "{}: a path resolving to a map is not modelled",
                        metric_name(r.raw, m)
                    ),
                    scalar => vec![scalar],
                };
                for e in elements {
                    let Some(value) = get(e, &value_from).and_then(to_float) else {
                        continue;
                    };
                    let mut labels = base.clone();
                    add_labels(e, &each_labels, &mut labels);
                    out.push(Series {
                        name: metric_name(r.raw, m),
                        labels,
                        value,
                    });
                }
            }
        }
    }
    out
}

/// Prometheus text exposition of `series` (with a timestamp in milliseconds when given).
pub fn exposition(series: &[Series], timestamp_ms: Option<i64>) -> String {
    let mut s = String::new();
    for x in series {
        let labels: Vec<String> = x
            .labels
            .iter()
            .map(|(k, v)| {
                format!(
                    "{k}=\"{}\"",
                    v.replace('\\', "\\\\")
                        .replace('"', "\\\"")
                        .replace('\n', "\\n")
                )
            })
            .collect();
        s.push_str(&format!("{}{{{}}} {}", x.name, labels.join(","), x.value));
        if let Some(t) = timestamp_ms {
            s.push_str(&format!(" {t}"));
        }
        s.push('\n');
    }
    s
}

/// Parse the samples of a Prometheus text exposition.
pub fn parse_exposition(text: &str) -> Vec<Series> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, rest) = match line.find(['{', ' ']) {
            Some(i) => line.split_at(i),
            None => continue,
        };
        let mut labels = BTreeMap::new();
        let mut rest = rest;
        if let Some(body) = rest.strip_prefix('{') {
            let mut chars = body.char_indices().peekable();
            let mut key = String::new();
            let mut end = body.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '}' => {
                        end = i + 1;
                        break;
                    }
                    ',' | ' ' => {}
                    '=' => {
                        assert_eq!(chars.next().map(|x| x.1), Some('"'), "{line}");
                        let mut val = String::new();
                        while let Some((_, c)) = chars.next() {
                            match c {
                                '\\' => match chars.next().map(|x| x.1) {
                                    Some('n') => val.push('\n'),
                                    Some(o) => val.push(o),
                                    None => {}
                                },
                                '"' => break,
                                o => val.push(o),
                            }
                        }
                        labels.insert(std::mem::take(&mut key), val);
                    }
                    o => key.push(o),
                }
            }
            rest = &body[end..];
        }
        let value = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN);
        out.push(Series {
            name: name.to_string(),
            labels,
            value,
        });
    }
    out
}
