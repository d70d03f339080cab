//! ValidatingAdmissionPolicy (`admissionregistration.k8s.io/v1`) as the API server evaluates
//! it, on every create, update (including the status subresource) and delete, after schema
//! validation:
//! each ValidatingAdmissionPolicyBinding selects its policy; the policy's `matchConstraints`
//! (resource rules with operations, resources and subresources, scope, exclusions, namespace
//! and object label selectors) and the binding's `matchResources` pick the requests;
//! `matchConditions`, then `variables` (in order, as `variables.NAME`), then `validations` are
//! evaluated with CEL (the Kubernetes CEL library from `kube-cel`) over `object`, `oldObject`,
//! `request` (its `userInfo` without the fields that are empty, as the API server's), and
//! `namespaceObject`. A failed validation under `validationActions: [Deny]` refuses the request
//! with its `message` or `messageExpression` and `reason` (422 Invalid when it names none), and
//! under `Warn` adds a `Warning` header; an expression that errors (or reads a variable that
//! does) refuses it with 422 Invalid under `failurePolicy: Fail` (the default) and is skipped
//! under `Ignore`. Parameters (`paramKind`) are not supported: a policy that declares them is
//! treated as an error of that policy.

use std::collections::HashMap;
use std::sync::Arc;

use kube_cel::KubeCelExt;
use kube_cel::cel::extractors::This;
use kube_cel::cel::objects::{Key, Map};
use kube_cel::cel::{Context, Program, Value as Cel};
use parking_lot::Mutex;
use serde_json::{Value, json};

mod matching;

use matching::{Request, has, resources_match};

use super::authz::UserInfo;
use super::error::ApiError;
use super::registry::ResourceDef;
use super::store::Store;

const GROUP: &str = "admissionregistration.k8s.io";

/// Who makes a request, as its policies see it (`request.userInfo`, `request.dryRun`), and the
/// warnings of `validationActions: [Warn]` admission gives it.
pub struct Caller {
    /// The user.
    pub user: UserInfo,
    /// Whether the request is a dry run.
    pub dry_run: bool,
    warnings: Mutex<Vec<String>>,
}

impl Caller {
    /// A request of `user`.
    pub fn new(user: UserInfo, dry_run: bool) -> Self {
        Self {
            user,
            dry_run,
            warnings: Mutex::new(Vec::new()),
        }
    }

    /// Add a warning (a `Warning` header of the answer).
    pub fn warn(&self, warning: String) {
        self.warnings.lock().push(warning);
    }

    /// The warnings (`Warning` headers) admission gave so far, taken.
    pub fn take_warnings(&self) -> Vec<String> {
        std::mem::take(&mut *self.warnings.lock())
    }
}

/// JSON to a CEL value (integers stay integers).
pub fn to_cel(v: &Value) -> Cel {
    match v {
        Value::Null => Cel::Null,
        Value::Bool(b) => Cel::Bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Cel::Int(i),
            None => n
                .as_u64()
                .map(Cel::UInt)
                .unwrap_or_else(|| Cel::Float(n.as_f64().unwrap_or_default())),
        },
        Value::String(s) => Cel::String(Arc::new(s.clone())),
        Value::Array(a) => Cel::List(Arc::new(a.iter().map(to_cel).collect())),
        Value::Object(m) => {
            let map: HashMap<Key, Cel> = m
                .iter()
                .map(|(k, v)| (Key::String(Arc::new(k.clone())), to_cel(v)))
                .collect();
            Cel::Map(Map { map: Arc::new(map) })
        }
    }
}

/// `string(x)`, which also takes a bool (`"true"`, `"false"`) as the API server's CEL does.
fn string_of(
    ftx: &kube_cel::cel::FunctionContext,
    This(this): This<Cel>,
) -> Result<Cel, kube_cel::cel::ExecutionError> {
    match this {
        Cel::Bool(b) => Ok(Cel::String(Arc::new(b.to_string()))),
        other => kube_cel::cel::functions::string(ftx, This(other)),
    }
}

/// Why an expression has no value, in the words of the API server's CEL.
fn cel_error(e: &kube_cel::cel::ExecutionError) -> String {
    use kube_cel::cel::ExecutionError as E;
    match e {
        E::NoSuchKey(k) => format!("no such key: {k}"),
        E::NoSuchOverload => "no such overload".into(),
        E::DivisionByZero(_) => "division by zero".into(),
        E::RemainderByZero(_) => "modulus by zero".into(),
        other => other.to_string(),
    }
}

/// Why an expression failed to evaluate.
enum EvalError {
    /// It does not compile.
    Compile(String),
    /// It read the variable `variables.NAME` that failed itself (named in `.0`).
    Variable(String),
    /// Another error, in the API server's words.
    Other(String),
}

/// The value of `expr`; `failed` are the variables that failed to evaluate, which the context's
/// `variables` map leaves out.
fn eval(ctx: &Context, expr: &str, failed: &HashMap<String, String>) -> Result<Cel, EvalError> {
    let program = Program::compile(expr)
        .map_err(|e| EvalError::Compile(format!("compilation failed: {e}")))?;
    program.execute(ctx).map_err(|e| match &e {
        kube_cel::cel::ExecutionError::NoSuchKey(k) if failed.contains_key(k.as_str()) => {
            EvalError::Variable(k.to_string())
        }
        other => EvalError::Other(cel_error(other)),
    })
}

/// The message of an evaluation error: a failed variable is reported as the API server reports
/// a composited variable, with its own error.
fn eval_message(e: EvalError, failed: &HashMap<String, String>) -> String {
    match e {
        EvalError::Compile(m) | EvalError::Other(m) => m,
        EvalError::Variable(name) => format!(
            "composited variable \"{name}\" fails to evaluate: {}",
            failed.get(&name).cloned().unwrap_or_default()
        ),
    }
}

/// A CEL condition: its value, or why it has none.
fn eval_bool(ctx: &Context, expr: &str, failed: &HashMap<String, String>) -> Result<bool, String> {
    match eval(ctx, expr, failed) {
        Ok(Cel::Bool(b)) => Ok(b),
        Ok(other) => Err(format!(
            "expression '{expr}' resulted in error: no such overload: {other:?} is not a bool"
        )),
        Err(e) => Err(format!(
            "expression '{expr}' resulted in error: {}",
            eval_message(e, failed)
        )),
    }
}

/// The refusal of a request: `reason` (of the validation, `Invalid` when it names none) picks the
/// code, and the message is also the one cause, as the API server answers.
fn denial(r: &Request, name: &str, reason: &str, message: String) -> ApiError {
    let (code, reason) = match reason {
        "Unauthorized" => (401, "Unauthorized"),
        "Forbidden" => (403, "Forbidden"),
        "RequestEntityTooLarge" => (413, "RequestEntityTooLarge"),
        _ => (422, "Invalid"),
    };
    let qualified = r.def.qualified();
    let mut e = ApiError::new(
        code,
        reason,
        format!("{qualified} \"{name}\" is forbidden: {message}"),
    );
    let mut details = json!({"name": name, "kind": r.def.plural, "causes": [{"message": message}]});
    if !r.def.group.is_empty() {
        details["group"] = json!(r.def.group);
    }
    e.details = Some(details);
    e
}

/// Evaluate every bound policy for a create (`old` None), update, or delete (`object` None).
pub fn validate(
    store: &Store,
    def: &ResourceDef,
    operation: &str,
    subresource: Option<&str>,
    object: Option<&Value>,
    old: Option<&Value>,
    caller: &Caller,
) -> Result<(), ApiError> {
    if def.group == GROUP {
        return Ok(());
    }
    let Some(bindings) = store
        .objects
        .get(&(
            GROUP.to_string(),
            "validatingadmissionpolicybindings".to_string(),
        ))
        .filter(|b| !b.is_empty())
    else {
        return Ok(());
    };
    let policies = store
        .objects
        .get(&(GROUP.to_string(), "validatingadmissionpolicies".to_string()));
    // The object the selectors and the request's name look at (the old one on DELETE).
    let subject = object.or(old).unwrap_or(&Value::Null);
    let namespace = subject["metadata"]["namespace"]
        .as_str()
        .unwrap_or_default();
    let name = subject["metadata"]["name"].as_str().unwrap_or_default();
    let r = Request {
        def,
        operation,
        subresource: subresource.unwrap_or_default(),
        namespace,
    };
    let ns_object = store
        .objects
        .get(&(String::new(), "namespaces".to_string()))
        .and_then(|o| o.get(&(String::new(), r.namespace.to_string())))
        .map(|o| o.as_ref().clone())
        .unwrap_or(Value::Null);
    let mut ctx: Option<Context> = None;
    for ((_, binding_name), binding) in bindings.iter() {
        let bspec = &binding["spec"];
        let policy_name = bspec["policyName"].as_str().unwrap_or_default();
        let Some(policy) = policies.and_then(|p| p.get(&(String::new(), policy_name.to_string())))
        else {
            continue;
        };
        let spec = &policy["spec"];
        if !resources_match(&spec["matchConstraints"], &r, subject, &ns_object) {
            continue;
        }
        if bspec["matchResources"].is_object()
            && bspec["matchResources"]["resourceRules"].is_array()
            && !resources_match(&bspec["matchResources"], &r, subject, &ns_object)
        {
            continue;
        }
        let deny = has(&bspec["validationActions"], "Deny");
        let warn = has(&bspec["validationActions"], "Warn");
        let fail_closed = spec["failurePolicy"].as_str() != Some("Ignore");
        let prefix = format!(
            "ValidatingAdmissionPolicy '{policy_name}' with binding '{binding_name}' denied request"
        );
        let ctx = ctx.get_or_insert_with(|| {
            let mut c = Context::default();
            c.register_all();
            c.add_function("string", string_of);
            c.add_variable_from_value("object", object.map(to_cel).unwrap_or(Cel::Null));
            c.add_variable_from_value("oldObject", old.map(to_cel).unwrap_or(Cel::Null));
            c.add_variable_from_value("namespaceObject", to_cel(&ns_object));
            let request = json!({
                "kind": {"group": def.group, "version": def.version, "kind": def.kind},
                "resource": {"group": def.group, "version": def.version, "resource": def.plural},
                "requestKind": {"group": def.group, "version": def.version, "kind": def.kind},
                "requestResource": {"group": def.group, "version": def.version, "resource": def.plural},
                "subResource": r.subresource,
                "name": name,
                "namespace": namespace,
                "operation": operation,
                "userInfo": caller.user.to_json(),
                "dryRun": caller.dry_run,
            });
            c.add_variable_from_value("request", to_cel(&request));
            c
        });
        // An error under failurePolicy Fail refuses; under Ignore the policy is skipped.
        let failed = |message: String| -> Result<(), ApiError> {
            if fail_closed && deny {
                Err(denial(&r, name, "Invalid", format!("{prefix}: {message}")))
            } else {
                Ok(())
            }
        };
        if spec["paramKind"].is_object() {
            failed("policies with parameters are not supported".into())?;
            continue;
        }
        let mut applies = true;
        let none = HashMap::new();
        for mc in spec["matchConditions"].as_array().into_iter().flatten() {
            let expr = mc["expression"].as_str().unwrap_or_default();
            match eval_bool(ctx, expr, &none) {
                Ok(true) => {}
                Ok(false) => {
                    applies = false;
                    break;
                }
                Err(message) => {
                    failed(message)?;
                    applies = false;
                    break;
                }
            }
        }
        if !applies {
            continue;
        }
        let mut vars: HashMap<Key, Cel> = HashMap::new();
        // The variables that failed, with their errors: an expression that reads one fails with
        // that error (the API server evaluates variables when they are read).
        let mut failed_vars: HashMap<String, String> = HashMap::new();
        let mut scoped = ctx.new_inner_scope();
        for v in spec["variables"].as_array().into_iter().flatten() {
            let vname = v["name"].as_str().unwrap_or_default().to_string();
            scoped.add_variable_from_value(
                "variables",
                Cel::Map(Map {
                    map: Arc::new(vars.clone()),
                }),
            );
            match eval(
                &scoped,
                v["expression"].as_str().unwrap_or_default(),
                &failed_vars,
            ) {
                Ok(val) => {
                    vars.insert(Key::String(Arc::new(vname)), val);
                }
                Err(EvalError::Variable(inner)) => {
                    let m = failed_vars.get(&inner).cloned().unwrap_or_default();
                    failed_vars.insert(vname, m);
                }
                Err(e) => {
                    let m = eval_message(e, &failed_vars);
                    failed_vars.insert(vname, m);
                }
            }
        }
        scoped.add_variable_from_value(
            "variables",
            Cel::Map(Map {
                map: Arc::new(vars),
            }),
        );
        for val in spec["validations"].as_array().into_iter().flatten() {
            let expr = val["expression"].as_str().unwrap_or_default();
            match eval_bool(&scoped, expr, &failed_vars) {
                Ok(true) => {}
                Ok(false) => {
                    if !deny && !warn {
                        continue;
                    }
                    let message = val["messageExpression"]
                        .as_str()
                        .and_then(|me| match eval(&scoped, me, &failed_vars) {
                            Ok(Cel::String(s)) if !s.trim().is_empty() => Some(s.to_string()),
                            _ => None,
                        })
                        .or_else(|| val["message"].as_str().map(str::to_string))
                        .unwrap_or_else(|| format!("failed expression: {expr}"));
                    if warn {
                        caller.warnings.lock().push(format!(
                            "Validation failed for ValidatingAdmissionPolicy '{policy_name}' with binding '{binding_name}': {message}"
                        ));
                    }
                    if !deny {
                        continue;
                    }
                    return Err(denial(
                        &r,
                        name,
                        // Without a reason, the API server answers Invalid (422).
                        val["reason"].as_str().unwrap_or("Invalid"),
                        format!("{prefix}: {message}"),
                    ));
                }
                Err(message) => failed(message)?,
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::create_object;
    use serde::Deserialize;

    fn served(s: &Store, plural: &str) -> ResourceDef {
        s.resources
            .iter()
            .find(|r| r.plural == plural)
            .cloned()
            .unwrap()
    }

    /// A store holding the chart's rendered admission policies and a binding in `ns`.
    fn store() -> (Store, ResourceDef) {
        let mut s = Store::new(1000);
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../deploy/manifests/uami-controller.yaml"
        ))
        .unwrap();
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let v = Value::deserialize(doc).unwrap();
            if v["apiVersion"] == "admissionregistration.k8s.io/v1"
                || v["kind"] == "CustomResourceDefinition"
            {
                create_object(&mut s, v).unwrap();
            }
        }
        let def = served(&s, "identitybindings");
        (s, def)
    }

    fn binding(vm: &str, status: Value) -> Value {
        json!({"apiVersion": "uami.dev/v1alpha1", "kind": "IdentityBinding",
               "metadata": {"name": "b", "namespace": "ns"},
               "spec": {"identityRef": {"name": "id"}, "target": {"virtualMachine": {"resourceGroup": "rg", "name": vm}}},
               "status": status})
    }

    fn check(
        s: &Store,
        def: &ResourceDef,
        user: &UserInfo,
        old: &Value,
        new: &Value,
    ) -> Result<(), String> {
        let caller = Caller::new(user.clone(), false);
        validate(
            s,
            def,
            "UPDATE",
            Some("status"),
            Some(new),
            Some(old),
            &caller,
        )
        .map_err(|e| e.message)
    }

    #[test]
    fn the_chart_policy_keeps_the_agent_to_its_own_status() {
        let (s, def) = store();
        let agent = UserInfo::service_account("uami-system", "uami-agent", Some("myvm"));
        let old = binding(
            "myVM",
            json!({"assigned": true, "targetResourceId": "/x/myVM",
            "conditions": [{"type": "Assigned", "status": "True", "reason": "Assigned"}]}),
        );
        // Its own writes pass.
        let mut own = old.clone();
        own["status"]["token"] = json!({"resource": "https://management.azure.com/"});
        own["status"]["conditions"] = json!([{"type": "Assigned", "status": "True", "reason": "Assigned"},
                                            {"type": "TokenAcquired", "status": "True", "reason": "TokenAcquired"}]);
        check(&s, &def, &agent, &old, &own).unwrap();
        // Controller-owned fields and conditions do not.
        let mut forged = own.clone();
        forged["status"]["assigned"] = json!(false);
        let e = check(&s, &def, &agent, &old, &forged).unwrap_err();
        assert!(
            e.contains("status.assigned is written by the controller only"),
            "{e}"
        );
        assert!(e.contains("ValidatingAdmissionPolicy 'uami-controller-agent-bindings' with binding 'uami-controller-agent-bindings' denied request"), "{e}");
        let mut forged = own.clone();
        forged["status"]["adopted"] = json!(true);
        assert!(check(&s, &def, &agent, &old, &forged).is_err());
        let mut forged = own.clone();
        forged["status"]["conditions"][0]["status"] = json!("False");
        let e = check(&s, &def, &agent, &old, &forged).unwrap_err();
        assert!(e.contains("Assigned, Ready conditions"), "{e}");
        // Another node's agent may not write this VM's binding.
        let other = UserInfo::service_account("uami-system", "uami-agent", Some("othervm"));
        let e = check(&s, &def, &other, &old, &own).unwrap_err();
        assert!(
            e.contains("the agent on node othervm may write only the bindings of its own VM"),
            "{e}"
        );
        // Nor delete it, whatever RBAC allows.
        let caller = Caller::new(agent.clone(), false);
        let e = validate(&s, &def, "DELETE", None, None, Some(&old), &caller).unwrap_err();
        assert!(
            e.message
                .contains("the agent may not create or delete identitybindings"),
            "{}",
            e.message
        );
        // The controller is not the agent.
        let controller = UserInfo::service_account("uami-system", "uami-controller", None);
        check(&s, &def, &controller, &old, &forged).unwrap();
    }

    fn policy_store(failure_policy: &str) -> (Store, ResourceDef) {
        let mut s = Store::new(100);
        create_object(
            &mut s,
            json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
                   "metadata": {"name": "p"},
                   "spec": {"failurePolicy": failure_policy,
                            "matchConstraints": {"resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["configmaps"]}]},
                            "matchConditions": [{"name": "labelled", "expression": "has(object.metadata.labels)"}],
                            "variables": [{"name": "size", "expression": "size(object.data)"}],
                            "validations": [
                                {"expression": "variables.size <= 1", "messageExpression": "'at most one key, got ' + string(variables.size)", "reason": "Invalid"},
                                {"expression": "object.data.missing == 'x'"}]}}),
        )
        .unwrap();
        create_object(
            &mut s,
            json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
                   "metadata": {"name": "b"}, "spec": {"policyName": "p", "validationActions": ["Deny"]}}),
        )
        .unwrap();
        let def = served(&s, "configmaps");
        (s, def)
    }

    #[test]
    fn conditions_variables_messages_reasons_and_failure_policy() {
        let (s, def) = policy_store("Fail");
        let cm = |data: Value, labels: bool| {
            let mut o = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "default"}, "data": data});
            if labels {
                o["metadata"]["labels"] = json!({"a": "b"});
            }
            o
        };
        let caller = Caller::new(UserInfo::admin("u"), false);
        let run = |s: &Store, o: &Value| validate(s, &def, "CREATE", None, Some(o), None, &caller);
        // matchConditions false: the policy does not apply.
        run(&s, &cm(json!({"a": "1", "b": "2"}), false)).unwrap();
        // A failed validation: its messageExpression over a variable, and its reason.
        let e = run(&s, &cm(json!({"a": "1", "b": "2"}), true)).unwrap_err();
        let message = &e.message;
        assert_eq!(e.code, 422);
        assert!(
            message.ends_with("denied request: at most one key, got 2"),
            "{message}"
        );
        // An expression that errors (no such key) refuses under Fail...
        let e = run(&s, &cm(json!({"a": "1"}), true)).unwrap_err();
        let (code, message) = (e.code, &e.message);
        assert_eq!(code, 422);
        let expected = "expression 'object.data.missing == 'x'' resulted in error";
        assert!(message.contains(expected), "{message}");
        // ...and is skipped under Ignore.
        let (s, _) = policy_store("Ignore");
        run(&s, &cm(json!({"a": "1"}), true)).unwrap();
        // Under Warn alone, a failed validation is a warning, not a refusal.
        let (mut s, _) = policy_store("Fail");
        let key = (
            GROUP.to_string(),
            "validatingadmissionpolicybindings".to_string(),
        );
        let b = s
            .objects
            .get(&key)
            .unwrap()
            .get(&(String::new(), "b".to_string()))
            .unwrap()
            .clone();
        let mut warn_only = b.as_ref().clone();
        warn_only["spec"]["validationActions"] = json!(["Warn"]);
        s.objects
            .get_mut(&key)
            .unwrap()
            .insert((String::new(), "b".to_string()), Arc::new(warn_only));
        let object = cm(json!({"a": "1", "b": "2"}), true);
        let caller = Caller::new(UserInfo::admin("u"), false);
        validate(&s, &def, "CREATE", None, Some(&object), None, &caller).unwrap();
        let warnings = caller.take_warnings();
        assert_eq!(
            warnings,
            vec!["Validation failed for ValidatingAdmissionPolicy 'p' with binding 'b': at most one key, got 2".to_string()]
        );
    }
}
