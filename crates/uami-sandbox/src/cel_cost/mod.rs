//! The CEL cost budget of a CustomResourceDefinition, checked as kube-apiserver checks it when a
//! CRD is created or updated.
//!
//! Each `x-kubernetes-validations` rule gets an estimated worst-case cost per evaluation
//! ([`estimate`]), multiplied by how many times it can run in one object: the product of the
//! `maxItems` / `maxProperties` of the lists and maps above it. When one of them is unbounded,
//! the rule is instead assumed to run as many times as its smallest value fits in a 3 MiB
//! request. A rule over [`PER_RULE_LIMIT`], or all rules of a schema together over
//! [`PER_CRD_LIMIT`], refuse the CRD with the API server's causes and wording; a message
//! expression counts towards the total once, whatever the cardinality. On an update, a version
//! whose schema did not change is held only to the total.

mod decl;
mod estimate;
#[cfg(test)]
mod tests;

use serde_json::Value;

use crate::validate::Cause;

use decl::MAX_REQUEST_BYTES;

/// The largest estimated cost of one rule (times its cardinality).
pub const PER_RULE_LIMIT: u64 = 10_000_000;
/// The largest estimated cost of all the rules of one schema.
pub const PER_CRD_LIMIT: u64 = 100_000_000;

/// A rule (or message expression) that costs at least this much is named when the total is over
/// [`PER_CRD_LIMIT`]: one percent of it.
const NOTABLE: u64 = PER_CRD_LIMIT / 100;
/// How many of the most expensive rules are named.
const NAMED: usize = 4;

/// The estimate of one rule or message expression.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleCost {
    /// Its field path, as in the API server's errors:
    /// `spec.validation.openAPIV3Schema.properties[spec]...x-kubernetes-validations[0].rule`.
    pub field: String,
    /// The expression.
    pub expression: String,
    /// Whether this is a `messageExpression` (its cost is not multiplied by the cardinality).
    pub message_expression: bool,
    /// The estimated worst-case cost of one evaluation.
    pub per_evaluation: u64,
    /// How many times it can run in one object, from the bounds of the lists and maps above it;
    /// `None` when one of them is unbounded.
    pub cardinality: Option<u64>,
    /// What counts against the limits: `per_evaluation` times the cardinality (for an unbounded
    /// one, times the number of its smallest values that fit in a request).
    pub cost: u64,
}

/// The estimates of every rule of one `openAPIV3Schema`; `field` names the schema
/// (`spec.validation.openAPIV3Schema` for a schema all versions share).
pub fn schema_costs(schema: &Value, field: &str) -> Vec<RuleCost> {
    let mut out = Vec::new();
    walk(schema, field.to_string(), Some(1), true, &mut out);
    out
}

/// The estimates of every rule of `crd`, schema by schema, with the field path of each schema.
pub fn crd_costs(crd: &Value) -> Vec<(String, Vec<RuleCost>)> {
    schemas(crd)
        .into_iter()
        .map(|(field, _, schema)| {
            let costs = schema_costs(schema, &field);
            (field, costs)
        })
        .collect()
}

/// The sum of `costs`, saturating.
pub fn total(costs: &[RuleCost]) -> u64 {
    costs.iter().fold(0u64, |t, c| t.saturating_add(c.cost))
}

/// The schemas of `crd` with their field paths and version names: one at `spec.validation` when
/// every version has the same schema (as the API server validates it), else one per version.
fn schemas(crd: &Value) -> Vec<(String, String, &Value)> {
    let Some(versions) = crd["spec"]["versions"].as_array() else {
        return Vec::new();
    };
    let name = |v: &Value| v["name"].as_str().unwrap_or_default().to_string();
    let Some(first) = versions.first() else {
        return Vec::new();
    };
    if versions.iter().all(|v| v["schema"] == first["schema"]) {
        return match first["schema"].get("openAPIV3Schema") {
            Some(s) => vec![(
                "spec.validation.openAPIV3Schema".to_string(),
                name(first),
                s,
            )],
            None => Vec::new(),
        };
    }
    versions
        .iter()
        .enumerate()
        .filter_map(|(i, v)| {
            let s = v["schema"].get("openAPIV3Schema")?;
            Some((
                format!("spec.versions[{i}].schema.openAPIV3Schema"),
                name(v),
                s,
            ))
        })
        .collect()
}

/// The schema `old` has for version `version`, if any.
fn old_schema<'a>(old: &'a Value, version: &str) -> Option<&'a Value> {
    old["spec"]["versions"]
        .as_array()?
        .iter()
        .find(|v| v["name"].as_str() == Some(version))?
        .get("schema")?
        .get("openAPIV3Schema")
}

/// Why `crd` (replacing `old` on an update) exceeds the CEL cost budget: the API server's causes,
/// or nothing when it fits.
pub(crate) fn check_crd(crd: &Value, old: Option<&Value>) -> Vec<Cause> {
    let mut causes = Vec::new();
    for (field, version, schema) in schemas(crd) {
        let unchanged = old.and_then(|o| old_schema(o, &version)) == Some(schema);
        let costs = schema_costs(schema, &field);
        causes.extend(budget_causes(&field, &costs, unchanged));
    }
    causes
}

fn forbidden(field: &str, message: String) -> Cause {
    Cause {
        reason: "FieldValueForbidden".into(),
        field: field.to_string(),
        message: format!("Forbidden: {message}"),
    }
}

/// The causes for one schema's estimates; `unchanged` spares the rules (not the total) of a
/// schema an update left as it was.
fn budget_causes(field: &str, costs: &[RuleCost], unchanged: bool) -> Vec<Cause> {
    let mut causes = Vec::new();
    if !unchanged {
        for c in costs.iter().filter(|c| c.cost > PER_RULE_LIMIT) {
            let what = if c.message_expression {
                "estimated messageExpression cost"
            } else {
                "estimated rule cost"
            };
            causes.push(forbidden(
                &c.field,
                over_budget(what, c.cost, PER_RULE_LIMIT),
            ));
        }
    }
    let total = total(costs);
    if total > PER_CRD_LIMIT {
        let mut notable: Vec<&RuleCost> = costs.iter().filter(|c| c.cost >= NOTABLE).collect();
        notable.sort_by_key(|c| std::cmp::Reverse(c.cost));
        for c in notable.into_iter().take(NAMED) {
            causes.push(forbidden(
                &c.field,
                "contributed to estimated rule cost total exceeding cost limit for entire OpenAPIv3 schema".into(),
            ));
        }
        causes.push(forbidden(
            field,
            over_budget(
                "x-kubernetes-validations estimated rule cost total for entire OpenAPIv3 schema",
                total,
                PER_CRD_LIMIT,
            ),
        ));
    }
    causes
}

/// `{what} exceeds budget by factor of {factor} (try ...)`, the factor written as the API server
/// writes it.
fn over_budget(what: &str, cost: u64, limit: u64) -> String {
    let factor = cost as f64 / limit as f64;
    let factor = if factor > 100.0 {
        "more than 100x".to_string()
    } else if factor < 1.5 {
        format!("{factor:.6}x")
    } else {
        format!("{factor:.1}x")
    };
    format!(
        "{what} exceeds budget by factor of {factor} (try simplifying the rule, or adding maxItems, maxProperties, and maxLength where arrays, maps, and strings are declared)"
    )
}

/// By how much a node multiplies the number of its children: a list's `maxItems`, a map's
/// `maxProperties` (`None` when absent), 1 for anything else.
fn fan_out(schema: &Value) -> Option<u64> {
    let bound = |key: &str| {
        schema
            .get(key)
            .and_then(Value::as_i64)
            .map(|n| u64::try_from(n).unwrap_or(0))
    };
    match schema.get("type").and_then(Value::as_str) {
        Some("object") if schema.get("additionalProperties").is_some() => bound("maxProperties"),
        Some("array") => bound("maxItems"),
        _ => Some(1),
    }
}

/// `base * n`, saturating; 0 stays 0.
fn times(base: u64, n: u64) -> u64 {
    base.saturating_mul(n)
}

fn walk(
    schema: &Value,
    field: String,
    cardinality: Option<u64>,
    root: bool,
    out: &mut Vec<RuleCost>,
) {
    if !schema.is_object() {
        return;
    }
    rules(schema, &field, cardinality, root, out);
    let child = cardinality.and_then(|c| fan_out(schema).map(|f| times(c, f)));
    if let Some(values) = schema.get("additionalProperties").filter(|a| a.is_object()) {
        walk(
            values,
            format!("{field}.additionalProperties"),
            child,
            false,
            out,
        );
    }
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (name, prop) in props {
            walk(
                prop,
                format!("{field}.properties[{name}]"),
                child,
                false,
                out,
            );
        }
    }
    if let Some(items) = schema.get("items").filter(|i| i.is_object()) {
        walk(items, format!("{field}.items"), child, false, out);
    }
}

/// The estimates of the rules declared on one node.
fn rules(
    schema: &Value,
    field: &str,
    cardinality: Option<u64>,
    root: bool,
    out: &mut Vec<RuleCost>,
) {
    let Some(rules) = schema
        .get("x-kubernetes-validations")
        .and_then(Value::as_array)
        .filter(|r| !r.is_empty())
    else {
        return;
    };
    let embedded = schema.get("x-kubernetes-embedded-resource") == Some(&Value::Bool(true));
    let Some(decl) = decl::decl_of(schema, root || embedded) else {
        return;
    };
    // Under an unbounded list or map, a rule runs at most as often as its smallest value fits
    // into a request.
    let fallback = (MAX_REQUEST_BYTES / (decl.min_size + 1)) as u64;
    for (i, rule) in rules.iter().enumerate() {
        let base = format!("{field}.x-kubernetes-validations[{i}]");
        let expression = rule["rule"].as_str().unwrap_or_default();
        if expression.trim().is_empty() {
            continue;
        }
        let per_evaluation = estimate::estimate(expression, &decl)
            .map(|r| r.max)
            .unwrap_or(0);
        out.push(RuleCost {
            field: format!("{base}.rule"),
            expression: expression.to_string(),
            message_expression: false,
            per_evaluation,
            cardinality,
            cost: times(per_evaluation, cardinality.unwrap_or(fallback)),
        });
        if let Some(message) = rule["messageExpression"]
            .as_str()
            .filter(|m| !m.trim().is_empty())
            && let Ok(cost) = estimate::estimate(message, &decl)
        {
            out.push(RuleCost {
                field: format!("{base}.messageExpression"),
                expression: message.to_string(),
                message_expression: true,
                per_evaluation: cost.max,
                cardinality,
                cost: cost.max,
            });
        }
    }
}
