//! The expected costs below were read off kube-apiserver 1.36: each rule was put under a list
//! whose `maxItems` made the total just exceed the per-rule limit, and the API server's "by
//! factor of 1.00xxxx" gives the cost of one evaluation.

use serde_json::{Value, json};

use super::decl::{decl_of, escape};
use super::estimate::estimate;
use super::*;

/// The estimated cost of one evaluation of `rule` on a value of `schema`.
fn per_evaluation(schema: Value, rule: &str) -> u64 {
    let decl = decl_of(&schema, false).unwrap();
    estimate(rule, &decl).unwrap().max
}

const RESOURCE_ID_RULE: &str = r"self.matches('^/subscriptions/[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}(/[A-Za-z0-9_.()~!$*+,;=:@-]*[A-Za-z0-9_()~!$*+,;=:@-][A-Za-z0-9_.()~!$*+,;=:@-]*)*$')";

const EXACTLY_ONE: &str = "(has(self.resourceGroup) ? 1 : 0) + (has(self.subscription) ? 1 : 0) + (has(self.resourceIdPrefix) ? 1 : 0) == 1";

fn scope_schema() -> Value {
    json!({"type": "object", "properties": {
        "resourceGroup": {"type": "object", "properties": {"name": {"type": "string", "maxLength": 90}}},
        "subscription": {"type": "object", "properties": {"subscriptionId": {"type": "string", "maxLength": 36}}},
        "resourceIdPrefix": {"type": "string", "maxLength": 512}}})
}

fn tags_schema() -> Value {
    json!({"type": "object", "maxProperties": 48,
           "additionalProperties": {"type": "string", "maxLength": 256}})
}

#[test]
fn costs_agree_with_the_api_server() {
    let cases: Vec<(&str, Value, &str, u64)> = vec![
        (
            "matches on a string of at most 1024 characters",
            json!({"type": "string", "maxLength": 1024}),
            RESOURCE_ID_RULE,
            18041,
        ),
        (
            "exactly one of three fields",
            scope_schema(),
            EXACTLY_ONE,
            6,
        ),
        (
            "matches on every key of a map",
            tags_schema(),
            r"self.all(k, !k.matches('^(?i)uami\\.dev-'))",
            434,
        ),
        (
            "sizes of keys and values",
            tags_schema(),
            "self.all(k, size(k) <= 512 && size(self[k]) <= 256)",
            530,
        ),
    ];
    for (name, schema, rule, expected) in cases {
        assert_eq!(per_evaluation(schema, rule), expected, "{name}: {rule}");
    }
}

#[test]
fn operations_cost_what_cel_charges() {
    let s = |max: u64| json!({"type": "string", "maxLength": max});
    let list = |max: u64, item: Value| json!({"type": "array", "maxItems": max, "items": item});
    let cases: Vec<(Value, &str, u64)> = vec![
        // An identifier costs 1, a constant nothing, a constant-time call 1.
        (s(10), "true", 0),
        (s(10), "size(self) > 0", 3),
        // A string comparison costs a tenth of the shorter string: 40 bytes -> 4, plus 2 idents.
        (s(10), "self == oldSelf", 6),
        // Against a literal: the literal's 3 characters -> 1.
        (s(10), "self == 'abc'", 2),
        // startsWith costs a tenth of the prefix.
        (s(10), "self.startsWith('abcdefghijk')", 3),
        // contains: a tenth of the string times a tenth of the substring.
        (s(100), "self.contains('ab')", 41),
        // Concatenation costs a tenth of the result: 40 + 2 bytes -> 5.
        (s(10), "self + 'ab' == 'x'", 7),
        // A list of 5 strings of 10 characters: all() runs its step 5 times.
        (list(5, s(10)), "self.all(x, x.startsWith('a'))", 27),
        (list(5, s(10)), "self.exists(x, x == 'a')", 32),
        (list(5, s(10)), "self.exists_one(x, x == 'a')", 23),
        (list(5, s(10)), "self.map(x, x + 'a').all(y, y == 'b')", 128),
        (list(5, s(10)), "self.filter(x, x == 'a').size() == 0", 89),
        // `in` on a list costs its size.
        (list(5, s(10)), "'a' in self", 6),
        // Objects compare at the cost of their identifiers.
        (scope_schema(), "self == oldSelf", 2),
        // has() only costs its operand.
        (scope_schema(), "has(self.subscription)", 1),
        (
            scope_schema(),
            "has(self.subscription) ? self.subscription.subscriptionId.size() == 36 : true",
            6,
        ),
    ];
    for (schema, rule, expected) in cases {
        assert_eq!(per_evaluation(schema, rule), expected, "{rule}");
    }
}

#[test]
fn kubernetes_library_functions_cost_what_the_api_server_charges() {
    let s = |max: u64| json!({"type": "string", "maxLength": max});
    let list = json!({"type": "array", "maxItems": 5, "items": s(10)});
    let map = json!({"type": "object", "maxProperties": 5, "additionalProperties": s(10)});
    let cases: Vec<(Value, &str, u64)> = vec![
        (s(10), "self.lowerAscii() == 'a'", 6),
        (s(10), "self.split(',').all(p, p == 'a')", 210),
        (list.clone(), "self.join(',') == 'a'", 23),
        (s(10), "self.indexOf('a') > 0", 6),
        (list, "self.indexOf('a') > 0", 27),
        (s(10), "self.replace('a', 'bb') == 'c'", 10),
        (s(10), "self.substring(1) == 'a'", 6),
        (s(10), "self.find('[a-z]+') == 'a'", 12),
        (s(10), "isURL(self)", 2),
        (s(10), "self.trim().size() > 0", 7),
        (map.clone(), "self.exists(k, self[k] == 'a')", 42),
        (map, "'a' in self", 2),
        (json!({"type": "integer"}), "self > 5 && self < 10", 4),
        (
            json!({"type": "string", "format": "date-time"}),
            "self == oldSelf",
            6,
        ),
    ];
    for (schema, rule, expected) in cases {
        assert_eq!(per_evaluation(schema, rule), expected, "{rule}");
    }
}

#[test]
fn unbounded_strings_and_lists_take_the_request_size() {
    // A string without maxLength may be 3 MiB - 2 characters long.
    let unbounded = per_evaluation(json!({"type": "string"}), "self.matches('^a$')");
    assert_eq!(unbounded, 314_574);
    // An enum bounds a string by its longest value.
    let with_enum = per_evaluation(
        json!({"type": "string", "enum": ["True", "False", "Unknown"]}),
        "self == oldSelf",
    );
    assert_eq!(with_enum, 3);
    // A list of strings without maxItems holds (3 MiB - 2) / 3 of them.
    let list = json!({"type": "array", "items": {"type": "string", "maxLength": 1}});
    assert_eq!(per_evaluation(list, "self.all(x, true)"), 3 * 1_048_575 + 2);
}

#[test]
fn an_unbounded_list_above_a_rule_makes_it_run_as_often_as_its_values_fit_a_request() {
    let schema = |max_items: Option<u64>| {
        let mut scopes = json!({"type": "array", "items": {"type": "string", "maxLength": 1024,
            "x-kubernetes-validations": [{"rule": RESOURCE_ID_RULE, "message": "m"}]}});
        if let Some(n) = max_items {
            scopes["maxItems"] = json!(n);
        }
        json!({"type": "object", "properties": {"spec": {"type": "object", "properties": {"scopes": scopes}}}})
    };
    let bounded = schema_costs(&schema(Some(8)), "s");
    assert_eq!(bounded.len(), 1);
    assert_eq!(
        bounded[0].field,
        "s.properties[spec].properties[scopes].items.x-kubernetes-validations[0].rule"
    );
    assert_eq!(bounded[0].cardinality, Some(8));
    assert_eq!(bounded[0].cost, 8 * 18041);
    let unbounded = schema_costs(&schema(None), "s");
    assert_eq!(unbounded[0].cardinality, None);
    // A string serializes to at least `""`: 3 MiB / 3.
    assert_eq!(unbounded[0].cost, 1_048_576 * 18041);
}

#[test]
fn the_resource_root_sees_metadata_name_unbounded_unless_it_declares_it() {
    let rule = "has(self.spec.azureName) || self.metadata.name.matches('^[a-zA-Z0-9][a-zA-Z0-9_-]{2,127}$')";
    let mut root = json!({"type": "object", "properties": {"spec": {"type": "object",
        "properties": {"azureName": {"type": "string", "maxLength": 128}}}},
        "x-kubernetes-validations": [{"rule": rule, "message": "m"}]});
    assert_eq!(schema_costs(&root, "s")[0].cost, 2_831_162);
    // Declaring metadata.name alone is not enough: apiVersion, kind and generateName too.
    root["properties"]["metadata"] = json!({"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 253}}});
    assert_eq!(schema_costs(&root, "s")[0].cost, 2_831_162);
    root["properties"]["metadata"]["properties"]["generateName"] =
        json!({"type": "string", "maxLength": 253});
    root["properties"]["apiVersion"] = json!({"type": "string"});
    root["properties"]["kind"] = json!({"type": "string"});
    assert_eq!(schema_costs(&root, "s")[0].cost, 923);
}

#[test]
fn factors_are_written_as_the_api_server_writes_them() {
    let f = |cost| over_budget("estimated rule cost", cost, PER_RULE_LIMIT);
    assert!(f(10_012_750).contains("by factor of 1.001275x (try simplifying"));
    assert!(f(15_728_653).contains("by factor of 1.6x"));
    assert!(f(1_000_000_001).contains("by factor of more than 100x"));
}

fn crd(schema: Value) -> Value {
    json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
           "metadata": {"name": "things.example.dev"},
           "spec": {"group": "example.dev", "scope": "Namespaced",
                    "names": {"kind": "Thing", "plural": "things"},
                    "versions": [{"name": "v1", "served": true, "storage": true,
                                  "schema": {"openAPIV3Schema": schema}}]}})
}

fn items_with_rule(max_items: u64, rule: &str) -> Value {
    json!({"type": "object", "properties": {"spec": {"type": "object", "properties": {
        "xs": {"type": "array", "maxItems": max_items,
               "items": {"type": "string", "maxLength": 1024,
                         "x-kubernetes-validations": [{"rule": rule}]}}}}}})
}

#[test]
fn a_rule_over_the_limit_is_refused_with_its_path_and_factor() {
    assert!(check_crd(&crd(items_with_rule(554, RESOURCE_ID_RULE)), None).is_empty());
    let causes = check_crd(&crd(items_with_rule(555, RESOURCE_ID_RULE)), None);
    assert_eq!(causes.len(), 1, "{causes:?}");
    assert_eq!(causes[0].reason, "FieldValueForbidden");
    assert_eq!(
        causes[0].field,
        "spec.validation.openAPIV3Schema.properties[spec].properties[xs].items.x-kubernetes-validations[0].rule"
    );
    assert_eq!(
        causes[0].message,
        "Forbidden: estimated rule cost exceeds budget by factor of 1.001275x (try simplifying the rule, or adding maxItems, maxProperties, and maxLength where arrays, maps, and strings are declared)"
    );
}

#[test]
fn rules_under_the_limit_can_still_exceed_the_total() {
    // Twelve rules of 9,020,500 each: none over 10M, together over 100M.
    let rules: Vec<Value> = (0..12).map(|_| json!({"rule": RESOURCE_ID_RULE})).collect();
    let mut schema = items_with_rule(500, RESOURCE_ID_RULE);
    schema["properties"]["spec"]["properties"]["xs"]["items"]["x-kubernetes-validations"] =
        Value::Array(rules);
    let causes = check_crd(&crd(schema), None);
    let fields: Vec<&str> = causes.iter().map(|c| c.field.as_str()).collect();
    assert_eq!(causes.len(), 5, "{fields:?}");
    for c in &causes[..4] {
        assert_eq!(
            c.message,
            "Forbidden: contributed to estimated rule cost total exceeding cost limit for entire OpenAPIv3 schema"
        );
    }
    assert_eq!(causes[4].field, "spec.validation.openAPIV3Schema");
    assert!(causes[4].message.contains(
        "x-kubernetes-validations estimated rule cost total for entire OpenAPIv3 schema exceeds budget by factor of"
    ));
}

#[test]
fn an_update_that_keeps_the_schema_is_held_only_to_the_total() {
    let over = crd(items_with_rule(600, RESOURCE_ID_RULE));
    assert_eq!(check_crd(&over, None).len(), 1);
    assert!(check_crd(&over, Some(&over)).is_empty());
    let before = crd(items_with_rule(500, RESOURCE_ID_RULE));
    assert_eq!(check_crd(&over, Some(&before)).len(), 1);
}

#[test]
fn versions_with_different_schemas_are_checked_one_by_one() {
    let mut c = crd(items_with_rule(600, RESOURCE_ID_RULE));
    let mut v2 = c["spec"]["versions"][0].clone();
    v2["name"] = json!("v2");
    v2["schema"]["openAPIV3Schema"] = items_with_rule(1, RESOURCE_ID_RULE);
    c["spec"]["versions"].as_array_mut().unwrap().push(v2);
    let causes = check_crd(&c, None);
    assert_eq!(causes.len(), 1);
    assert!(
        causes[0]
            .field
            .starts_with("spec.versions[0].schema.openAPIV3Schema.properties[spec]")
    );
}

#[test]
fn property_names_are_escaped_as_cel_sees_them() {
    assert_eq!(escape("name").as_deref(), Some("name"));
    assert_eq!(escape("namespace").as_deref(), Some("__namespace__"));
    assert_eq!(
        escape("a-b.c/d").as_deref(),
        Some("a__dash__b__dot__c__slash__d")
    );
    assert_eq!(escape("a__b").as_deref(), Some("a__underscores__b"));
    assert_eq!(escape("1a"), None);
    assert_eq!(escape("a b"), None);
}
