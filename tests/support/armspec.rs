//! Checks recorded ARM exchanges against the official OpenAPI documents in
//! `../shared/arm-specs/`: the request body against the operation's body parameter, the response
//! body against the schema of its status code (or `default` for errors). Compute is checked
//! against the `VirtualMachineIdentity` definitions quoted in ARM-NOTES.md section 2.4, since its
//! full document is not stored.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use uami_controller::emulator::Exchange;

const SPECS: &[&str] = &[
    "specification/msi/resource-manager/Microsoft.ManagedIdentity/ManagedIdentity/stable/2026-05-31/ManagedIdentity.json",
    "specification/authorization/resource-manager/Microsoft.Authorization/stable/2022-04-01/authorization-RoleAssignmentsCalls.json",
    "specification/authorization/resource-manager/Microsoft.Authorization/stable/2022-04-01/authorization-RoleDefinitionsCalls.json",
    "specification/imds/data-plane/InstanceMetadataService/stable/2023-07-01/imds.json",
];

/// The emulator's names for operations the documents name otherwise.
fn spec_operation(op: &str) -> &str {
    match op {
        "Imds_Token" => "Identity_GetToken",
        other => other,
    }
}

/// The loaded documents and their operations.
pub struct Specs {
    root: PathBuf,
    files: HashMap<PathBuf, Value>,
    ops: HashMap<String, (PathBuf, Value)>,
}

impl Specs {
    /// Load from `../shared/arm-specs` beside the project.
    pub fn load() -> Self {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/arm-specs");
        assert!(
            root.exists(),
            "the ARM specifications are expected at {}",
            root.display()
        );
        let mut s = Specs {
            root: root.clone(),
            files: HashMap::new(),
            ops: HashMap::new(),
        };
        for rel in SPECS {
            let path = root.join(rel);
            let doc = s.file(&path).clone();
            for (_, methods) in doc["paths"].as_object().unwrap() {
                for (m, op) in methods.as_object().unwrap() {
                    if m == "parameters" {
                        continue;
                    }
                    if let Some(id) = op["operationId"].as_str() {
                        s.ops.insert(id.to_string(), (path.clone(), op.clone()));
                    }
                }
            }
        }
        s
    }

    fn file(&mut self, path: &Path) -> &Value {
        let canon = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
        self.files.entry(canon.clone()).or_insert_with(|| {
            serde_json::from_str(&std::fs::read_to_string(&canon).unwrap()).unwrap()
        })
    }

    /// Inline every `$ref` (cycles become `{}`).
    fn resolve(&mut self, base: &Path, v: &Value, stack: &mut Vec<String>) -> Value {
        match v {
            Value::Object(m) => {
                if let Some(r) = m.get("$ref").and_then(|r| r.as_str()) {
                    let (file, pointer) = r.split_once('#').unwrap_or((r, ""));
                    let target_file = if file.is_empty() {
                        base.to_path_buf()
                    } else {
                        base.parent().unwrap().join(file)
                    };
                    let key = format!("{}#{pointer}", target_file.display());
                    if stack.contains(&key) || stack.len() > 40 {
                        return json!({});
                    }
                    let doc = self.file(&target_file).clone();
                    let target = doc.pointer(pointer).cloned().unwrap_or(json!({}));
                    stack.push(key);
                    let canon = target_file.canonicalize().unwrap_or(target_file);
                    let out = self.resolve(&canon, &target, stack);
                    stack.pop();
                    return out;
                }
                Value::Object(
                    m.iter()
                        .filter(|(k, _)| {
                            !k.starts_with("x-") && *k != "discriminator" && *k != "readOnly"
                        })
                        .map(|(k, v)| (k.clone(), self.resolve(base, v, stack)))
                        .collect(),
                )
            }
            Value::Array(a) => {
                Value::Array(a.iter().map(|x| self.resolve(base, x, stack)).collect())
            }
            other => other.clone(),
        }
    }

    fn check(schema: &Value, instance: &Value) -> Vec<String> {
        let validator = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft4)
            .build(schema)
            .unwrap();
        validator
            .iter_errors(instance)
            .map(|e| format!("{}: {e}", e.instance_path()))
            .collect()
    }

    /// Errors of one exchange; `None` when no stored document covers its operation.
    pub fn validate(&mut self, ex: &Exchange) -> Option<Vec<String>> {
        if ex.operation.starts_with("VirtualMachines_")
            || ex.operation.starts_with("VirtualMachineScaleSets_")
        {
            return Some(compute_check(ex));
        }
        let (file, op) = self.ops.get(spec_operation(&ex.operation)).cloned()?;
        let canon = file.canonicalize().unwrap_or(file);
        let mut errors = Vec::new();
        if let Some(body) = &ex.request {
            let params = self.resolve(&canon, &op["parameters"], &mut Vec::new());
            if let Some(p) = params
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["in"] == "body")
            {
                errors.extend(
                    Self::check(&p["schema"], body)
                        .into_iter()
                        .map(|e| format!("request {e}")),
                );
            }
        }
        if let Some(body) = &ex.response {
            let responses = self.resolve(&canon, &op["responses"], &mut Vec::new());
            let status = ex.status.to_string();
            match responses
                .get(&status)
                .or_else(|| (ex.status >= 400).then(|| &responses["default"]))
            {
                Some(r) if r.get("schema").is_some() => errors.extend(
                    Self::check(&r["schema"], body)
                        .into_iter()
                        .map(|e| format!("response {status} {e}")),
                ),
                Some(_) => {}
                None => errors.push(format!(
                    "status {status} is not a documented response of {}",
                    ex.operation
                )),
            }
        }
        Some(errors)
    }
}

/// ARM-NOTES.md section 2.4: `VirtualMachineIdentity` / `VirtualMachineScaleSetIdentity`.
fn identity_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "principalId": {"type": "string"},
            "tenantId": {"type": "string"},
            "type": {"type": "string", "enum": ["SystemAssigned", "UserAssigned", "SystemAssigned, UserAssigned", "None"]},
            "userAssignedIdentities": {"type": "object", "additionalProperties": {
                "anyOf": [{"type": "null"}, {"type": "object", "properties": {"principalId": {"type": "string"}, "clientId": {"type": "string"}}}]
            }}
        }
    })
}

fn compute_check(ex: &Exchange) -> Vec<String> {
    let mut errors = Vec::new();
    let body_schema = json!({"type": "object", "properties": {"identity": identity_schema(), "etag": {"type": "string"}, "id": {"type": "string"}, "name": {"type": "string"}, "location": {"type": "string"}}});
    if let Some(b) = &ex.request {
        errors.extend(
            Specs::check(&body_schema, b)
                .into_iter()
                .map(|e| format!("request {e}")),
        );
        // A PATCH's identity must say its final type and name identities by their ARM ids.
        if let Some(id) = b.get("identity") {
            if id.get("type").is_none() {
                errors.push("request identity.type missing".into());
            }
            for k in id["userAssignedIdentities"]
                .as_object()
                .into_iter()
                .flat_map(|m| m.keys())
            {
                if !k
                    .to_lowercase()
                    .contains("/providers/microsoft.managedidentity/userassignedidentities/")
                {
                    errors.push(format!(
                        "request userAssignedIdentities key {k} is not an identity id"
                    ));
                }
            }
        }
    }
    if let Some(b) = &ex.response
        && ex.status == 200
    {
        errors.extend(
            Specs::check(&body_schema, b)
                .into_iter()
                .map(|e| format!("response {e}")),
        );
    }
    errors
}

/// Validate a journal: (errors, exchanges validated, operations without a stored document).
pub fn validate_journal(journal: &[Exchange]) -> (Vec<String>, usize, Vec<String>) {
    let mut specs = Specs::load();
    let mut errors = Vec::new();
    let mut checked = 0;
    let mut unchecked = Vec::new();
    for ex in journal {
        match specs.validate(ex) {
            Some(es) => {
                checked += 1;
                errors.extend(
                    es.into_iter()
                        .map(|e| format!("{} {} {}: {e}", ex.operation, ex.method, ex.path)),
                );
            }
            None => {
                if !unchecked.contains(&ex.operation) {
                    unchecked.push(ex.operation.clone());
                }
            }
        }
    }
    (errors, checked, unchecked)
}
