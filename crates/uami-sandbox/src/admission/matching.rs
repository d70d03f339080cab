//! Which requests a ValidatingAdmissionPolicy applies to: the resource rules of its
//! `matchConstraints` (and a binding's `matchResources`) with operations, resources and
//! subresources, scope and exclusions, and the namespace and object label selectors.

use serde_json::Value;

use crate::registry::ResourceDef;

pub(super) fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str())
        .collect()
}

/// Whether the list `v` holds `want` or `*`.
pub(super) fn has(v: &Value, want: &str) -> bool {
    strings(v).iter().any(|s| *s == want || *s == "*")
}

/// The request as the rules see it.
pub(super) struct Request<'a> {
    pub def: &'a ResourceDef,
    pub operation: &'a str,
    pub subresource: &'a str,
    pub namespace: &'a str,
}

fn rule_matches(rule: &Value, r: &Request) -> bool {
    if !has(&rule["apiGroups"], &r.def.group)
        || !has(&rule["apiVersions"], &r.def.version)
        || !has(&rule["operations"], r.operation)
    {
        return false;
    }
    let resource_ok = strings(&rule["resources"]).iter().any(|res| {
        let (rr, rs) = res.split_once('/').unwrap_or((res, ""));
        (rr == "*" || rr == r.def.plural)
            && ((rs.is_empty() && r.subresource.is_empty())
                || rs == "*"
                || (!rs.is_empty() && rs == r.subresource))
    });
    let scope_ok = match rule["scope"].as_str().unwrap_or("*") {
        "Cluster" => !r.def.namespaced,
        "Namespaced" => r.def.namespaced,
        _ => true,
    };
    resource_ok && scope_ok
}

fn selector_matches(selector: &Value, labels: &Value) -> bool {
    if !selector.is_object() {
        return true;
    }
    let get = |k: &str| labels.get(k).and_then(|v| v.as_str());
    let labels_ok = selector["matchLabels"]
        .as_object()
        .is_none_or(|m| m.iter().all(|(k, v)| get(k) == v.as_str()));
    let exprs_ok = selector["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
        .all(|e| {
            let key = e["key"].as_str().unwrap_or_default();
            let values = strings(&e["values"]);
            match e["operator"].as_str() {
                Some("In") => get(key).is_some_and(|v| values.contains(&v)),
                Some("NotIn") => get(key).is_none_or(|v| !values.contains(&v)),
                Some("Exists") => get(key).is_some(),
                Some("DoesNotExist") => get(key).is_none(),
                _ => false,
            }
        });
    labels_ok && exprs_ok
}

/// Whether the rules and selectors `m` pick the request `r` on `object` in `ns_object`.
pub(super) fn resources_match(m: &Value, r: &Request, object: &Value, ns_object: &Value) -> bool {
    let rules = m["resourceRules"].as_array();
    if !rules.is_some_and(|rules| rules.iter().any(|rule| rule_matches(rule, r))) {
        return false;
    }
    if m["excludeResourceRules"]
        .as_array()
        .is_some_and(|rules| rules.iter().any(|rule| rule_matches(rule, r)))
    {
        return false;
    }
    let ns_ok = !r.def.namespaced
        || selector_matches(&m["namespaceSelector"], &ns_object["metadata"]["labels"]);
    ns_ok && selector_matches(&m["objectSelector"], &object["metadata"]["labels"])
}
