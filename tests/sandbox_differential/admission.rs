//! ValidatingAdmissionPolicy: a variable that reads `request.userInfo.extra[...]` without has()
//! fails to evaluate for a user without extra fields (the static user `legacy-agent`, and the
//! administrator), which refuses the request under failurePolicy Fail and lets it through under
//! Ignore; with a has() guard it is allowed. The default reason of a failed validation, an
//! explicit one, a messageExpression, a matchCondition that errors, and `Warn`.

use serde_json::{Value, json};

use crate::harness::*;

const VAP: &str = "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies";
const VAPB: &str = "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicybindings";
const NODE: &str = "authentication.kubernetes.io/node-name";

/// A policy on the creation of ConfigMaps labelled `policy: <kind>` in the case's namespace, whose
/// first validation refuses a ConfigMap with the key `probe` (how a step knows the real server
/// has loaded the policy).
fn policy(kind: &str, failure: &str, extra: Value) -> Value {
    let mut spec = json!({
        "failurePolicy": failure,
        "matchConstraints": {
            "resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["configmaps"]}],
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "{ns}"}},
            "objectSelector": {"matchLabels": {"policy": kind}},
        },
        "validations": [{"expression": "!has(object.data) || !('probe' in object.data)", "message": "probe"}],
    });
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            if k == "validations" {
                let more = v.as_array().cloned().unwrap_or_default();
                s["validations"].as_array_mut().unwrap().extend(more);
            } else {
                s.insert(k.clone(), v.clone());
            }
        }
    }
    json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
           "metadata": {"name": format!("{{ns}}-{kind}")}, "spec": spec})
}

fn binding(kind: &str, actions: &[&str]) -> Value {
    json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
           "metadata": {"name": format!("{{ns}}-{kind}")},
           "spec": {"policyName": format!("{{ns}}-{kind}"), "validationActions": actions}})
}

fn configmap(name: &str, kind: &str, data: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": name, "labels": {"policy": kind}}, "data": data})
}

const CONFIGMAPS: &str = "/api/v1/namespaces/{ns}/configmaps";
const DRY_RUN: &str = "/api/v1/namespaces/{ns}/configmaps?dryRun=All";

fn refused(a: &Answer) -> bool {
    a.code != 201
}

fn warned(a: &Answer) -> bool {
    !a.warnings.is_empty()
}

/// Until the policy of `kind` is loaded: a dry-run create with the probe key is refused.
fn loaded(kind: &str) -> Step {
    post(DRY_RUN, configmap("probe", kind, json!({"probe": "1"})))
        .what(format!(
            "the policy {kind} refuses the probe (default reason)"
        ))
        .until(refused, 30)
        .user(User::Legacy)
        .status_error(422)
}

/// The variable of the node name, read without has().
fn unguarded() -> Value {
    json!({"variables": [{"name": "node", "expression": format!("request.userInfo.extra['{NODE}'][0]")}],
           "validations": [{"expression": "variables.node == 'myvm'", "message": "the agent of another node"}]})
}

pub fn cases() -> Vec<Case> {
    let kinds = [
        "unguarded",
        "guarded",
        "ignore",
        "reasons",
        "matchcond",
        "warn",
    ];
    let mut setup = vec![
        post(
            "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles",
            json!({"metadata": {"name": "configmaps"},
                   "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["*"]}]}),
        )
        .what("a Role on ConfigMaps")
        .expect(201),
        post(
            "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings",
            json!({"metadata": {"name": "legacy-agent"},
                   "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "configmaps"},
                   "subjects": [{"kind": "User", "name": "system:serviceaccount:uami-system:uami-agent"}]}),
        )
        .what("bound to legacy-agent")
        .expect(201),
    ];
    let policies = [
        policy("unguarded", "Fail", unguarded()),
        policy(
            "guarded",
            "Fail",
            json!({"variables": [{"name": "node", "expression": format!("has(request.userInfo.extra) && '{NODE}' in request.userInfo.extra ? request.userInfo.extra['{NODE}'][0] : ''")}],
                   "validations": [{"expression": "variables.node == '' || variables.node == 'myvm'", "message": "the agent of another node"}]}),
        ),
        policy("ignore", "Ignore", unguarded()),
        policy(
            "reasons",
            "Fail",
            json!({"validations": [
                {"expression": "!('forbidden' in object.data)", "message": "forbidden key", "reason": "Forbidden"},
                {"expression": "!('named' in object.data)", "messageExpression": "'no key named ' + object.data.named"},
                {"expression": "!('user' in object.data)", "messageExpression": "'user ' + request.userInfo.username + ' groups ' + string(size(request.userInfo.groups)) + ' has uid ' + string(has(request.userInfo.uid)) + ' has extra ' + string(has(request.userInfo.extra))"},
            ]}),
        ),
        policy(
            "matchcond",
            "Fail",
            json!({"matchConditions": [{"name": "reads-missing-key", "expression": "object.data.missing == 'x'"}]}),
        ),
        policy("warn", "Fail", json!({})),
    ];
    for (kind, p) in kinds.iter().zip(policies) {
        setup.push(post(VAP, p).what(format!("policy {kind}")).expect(201));
        let actions: &[&str] = if *kind == "warn" {
            &["Warn"]
        } else {
            &["Deny"]
        };
        setup.push(
            post(VAPB, binding(kind, actions))
                .what(format!("binding {kind}"))
                .expect(201),
        );
    }
    let mut steps = setup;
    for kind in ["unguarded", "guarded", "ignore", "reasons"] {
        steps.push(loaded(kind));
    }
    // As the legacy agent (a user without extra fields), ConfigMap `name` under policy `kind`.
    let as_agent = |name: &str, kind: &str, data: Value, what: &str| {
        post(CONFIGMAPS, configmap(name, kind, data))
            .what(what)
            .user(User::Legacy)
    };
    steps.extend([
        as_agent(
            "a",
            "unguarded",
            json!({}),
            "extra read without has(), by a user without extra fields: refused under Fail",
        )
        .status_error(422),
        post(CONFIGMAPS, configmap("b", "unguarded", json!({})))
            .what("the same for the administrator (no extra fields either)")
            .status_error(422),
        as_agent(
            "c",
            "guarded",
            json!({}),
            "extra read behind has(): allowed",
        )
        .expect(201)
        .fields(&["/metadata/name", "/metadata/labels"]),
        as_agent(
            "d",
            "ignore",
            json!({}),
            "extra read without has() under failurePolicy Ignore: allowed",
        )
        .expect(201),
        as_agent(
            "e",
            "reasons",
            json!({"forbidden": "1"}),
            "a validation with reason Forbidden",
        )
        .status_error(403),
        as_agent("f", "reasons", json!({"named": "x"}), "a messageExpression").status_error(422),
        as_agent(
            "g",
            "reasons",
            json!({"user": "x"}),
            "request.userInfo of a user without extra fields",
        )
        .expect(422)
        .cmp(Cmp::Message),
        post(DRY_RUN, configmap("h", "matchcond", json!({})))
            .what("a matchCondition that errors refuses under Fail")
            .until(refused, 30)
            .user(User::Legacy)
            .status_error(422),
        post(DRY_RUN, configmap("i", "warn", json!({"probe": "1"})))
            .what("a failed validation under Warn: allowed, with a warning")
            .until(warned, 30)
            .user(User::Legacy)
            .expect(201)
            .cmp(Cmp::Warnings),
    ]);
    let cleanup = kinds
        .iter()
        .flat_map(|k| {
            [
                delete(format!("{VAPB}/{{ns}}-{k}")),
                delete(format!("{VAP}/{{ns}}-{k}")),
            ]
        })
        .collect();
    vec![
        Case::new(
            "ValidatingAdmissionPolicy: userInfo.extra without has(), reasons, matchConditions, Warn",
            steps,
        )
        .cleanup(cleanup),
    ]
}
