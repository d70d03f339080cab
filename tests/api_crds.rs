//! The committed CRDs in `crds/` are exactly what the code generates, and every kind carries the
//! names, columns and list-map declarations that users and server-side apply rely on.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use uami_api as api;

#[test]
fn committed_crds_match_generated() {
    check_crd_dir("crds");
}

#[test]
fn helm_chart_crds_match_generated() {
    check_crd_dir("deploy/helm/uami-controller/crds");
}

fn check_crd_dir(relative: &str) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    let mut expected_files = Vec::new();
    for crd in api::crds() {
        let name = api::crd_file_name(&crd);
        let committed = std::fs::read_to_string(dir.join(&name)).unwrap_or_else(|e| {
            panic!("crds/{name} is missing ({e}); run `cargo run -- crds --out-dir crds`")
        });
        let generated = api::crd_yaml(&crd).unwrap();
        assert!(
            committed == generated,
            "{relative}/{name} differs from the generated CRD; run `cargo run -- crds --out-dir {relative}` and commit"
        );
        expected_files.push(name);
    }
    let mut present: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    present.sort();
    expected_files.sort();
    assert_eq!(
        present, expected_files,
        "crds/ holds files the code does not generate"
    );
}

#[test]
fn kinds_share_a_category_and_have_printer_columns() {
    for crd in api::crds() {
        let names = &crd.spec.names;
        assert_eq!(
            names.categories.as_deref(),
            Some(&[api::CATEGORY.to_string()][..]),
            "{}",
            names.kind
        );
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, api::VERSION);
        assert!(
            version
                .subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some(),
            "{} has a status subresource",
            names.kind
        );
        let columns: Vec<&str> = version
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert!(columns.contains(&"Age"), "{}: {columns:?}", names.kind);
        if names.kind != "GrantPolicy" {
            assert!(
                columns.contains(&"Ready") && columns.contains(&"Reason"),
                "{}: {columns:?}",
                names.kind
            );
            assert_eq!(crd.spec.scope, "Namespaced");
        } else {
            assert_eq!(crd.spec.scope, "Cluster");
        }
    }
    let short: Vec<String> = api::crds()
        .iter()
        .flat_map(|c| c.spec.names.short_names.clone().unwrap_or_default())
        .collect();
    assert_eq!(short, ["uami", "idb", "grant"]);
}

#[test]
fn conditions_are_list_maps_keyed_by_type_and_every_field_is_described() {
    for crd in api::crds() {
        let schema = schema_of(&crd);
        let conditions = &schema["properties"]["status"]["properties"]["conditions"];
        assert_eq!(
            conditions["x-kubernetes-list-type"], "map",
            "{}",
            crd.spec.names.kind
        );
        assert_eq!(
            conditions["x-kubernetes-list-map-keys"],
            serde_json::json!(["type"])
        );
        let mut undocumented = Vec::new();
        walk_descriptions(&schema["properties"]["spec"], "spec", &mut undocumented);
        walk_descriptions(&schema["properties"]["status"], "status", &mut undocumented);
        assert!(
            undocumented.is_empty(),
            "{}: fields without description: {undocumented:?}",
            crd.spec.names.kind
        );
    }
}

fn walk_descriptions(schema: &serde_json::Value, path: &str, missing: &mut Vec<String>) {
    if schema
        .get("description")
        .and_then(|d| d.as_str())
        .is_none_or(str::is_empty)
    {
        missing.push(path.to_string());
    }
    if let Some(props) = schema.get("properties").and_then(|p| p.as_object()) {
        for (name, sub) in props {
            walk_descriptions(sub, &format!("{path}.{name}"), missing);
        }
    }
    if let Some(props) = schema
        .get("items")
        .and_then(|i| i.get("properties"))
        .and_then(|p| p.as_object())
    {
        for (name, sub) in props {
            walk_descriptions(sub, &format!("{path}[].{name}"), missing);
        }
    }
}

/// Every list, string and map of every schema has a bound (`maxItems`; `maxLength`, an `enum` or a
/// time format; `maxProperties`): kube-apiserver estimates the cost of each CEL rule from these
/// bounds, and takes a value without one to fill a 3 MiB request.
#[test]
fn every_list_string_and_map_is_bounded() {
    let mut unbounded = Vec::new();
    for crd in api::crds() {
        let schema = schema_of(&crd);
        walk_bounds(&schema, &crd.spec.names.kind, &mut unbounded);
    }
    assert!(
        unbounded.is_empty(),
        "without maxItems, maxLength (or enum or format) or maxProperties: {unbounded:#?}"
    );
}

fn walk_bounds(schema: &serde_json::Value, path: &str, out: &mut Vec<String>) {
    let has = |key: &str| schema.get(key).is_some();
    match schema.get("type").and_then(|t| t.as_str()) {
        Some("array") if !has("maxItems") => out.push(format!("{path} (list)")),
        Some("string")
            if !has("maxLength")
                && !has("enum")
                && !matches!(
                    schema.get("format").and_then(|f| f.as_str()),
                    Some("date-time" | "date" | "duration")
                ) =>
        {
            out.push(format!("{path} (string)"))
        }
        Some("object") if has("additionalProperties") && !has("maxProperties") => {
            out.push(format!("{path} (map)"))
        }
        _ => {}
    }
    if let Some(props) = schema.get("properties").and_then(|p| p.as_object()) {
        for (name, sub) in props {
            walk_bounds(sub, &format!("{path}.{name}"), out);
        }
    }
    if let Some(items) = schema.get("items") {
        walk_bounds(items, &format!("{path}[]"), out);
    }
    if let Some(values) = schema.get("additionalProperties").filter(|v| v.is_object()) {
        walk_bounds(values, &format!("{path}{{}}"), out);
    }
}

/// Every CEL rule's cost, estimated as kube-apiserver estimates it when the CRD is applied, stays
/// under a tenth of the per-rule limit, and each CRD's total under a tenth of the per-CRD limit.
/// `cargo test --test api_crds -- --nocapture` prints the table.
#[test]
fn every_rule_costs_under_a_tenth_of_the_api_server_budget() {
    use uami_sandbox::cel_cost::{self, PER_CRD_LIMIT, PER_RULE_LIMIT};
    let percent = |cost: u64, limit: u64| cost as f64 * 100.0 / limit as f64;
    let mut over = Vec::new();
    println!(
        "{:<22} {:>8} {:>6} {:>9} {:>7}  rule",
        "kind", "per eval", "times", "cost", "% limit"
    );
    for crd in api::crds() {
        let kind = crd.spec.names.kind.clone();
        let crd = serde_json::to_value(&crd).unwrap();
        for (schema, costs) in cel_cost::crd_costs(&crd) {
            for c in &costs {
                let times = c.cardinality.map_or("unbounded".into(), |n| n.to_string());
                let field = c.field.trim_start_matches(&schema);
                println!(
                    "{kind:<22} {:>8} {times:>6} {:>9} {:>6.2}%  {field}",
                    c.per_evaluation,
                    c.cost,
                    percent(c.cost, PER_RULE_LIMIT)
                );
                if c.cost * 10 > PER_RULE_LIMIT {
                    over.push(format!("{kind} {field}: {}", c.cost));
                }
            }
            let total = cel_cost::total(&costs);
            println!(
                "{kind:<22} {:>8} {:>6} {total:>9} {:>6.2}%  (total, of the per-CRD limit)",
                "",
                "",
                percent(total, PER_CRD_LIMIT)
            );
            if total * 10 > PER_CRD_LIMIT {
                over.push(format!("{kind} total: {total}"));
            }
        }
    }
    assert!(over.is_empty(), "over a tenth of the budget: {over:#?}");
}

/// The OpenAPI schema of a CRD's first version, as JSON.
fn schema_of(
    crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> serde_json::Value {
    let schema = crd.spec.versions[0].schema.as_ref().unwrap();
    serde_json::to_value(schema.open_api_v3_schema.as_ref().unwrap()).unwrap()
}
