//! Checks recorded ARM exchanges against the official OpenAPI documents in
//! `shared/arm-specs/` (found by walking up from the project, or at `UAMI_ARM_SPECS`): the
//! request's api-version against the document the operation matched, the request body against
//! the operation's body parameter, the response body against the schema of its status code (or
//! `default` for errors). Compute is checked against the official Compute 2024-11-01 documents
//! (`virtualMachine.json`, `virtualMachineScaleSet.json`).
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use uami_emulator::Exchange;

const SPECS: &[&str] = &[
    "specification/msi/resource-manager/Microsoft.ManagedIdentity/ManagedIdentity/stable/2026-05-31/ManagedIdentity.json",
    "specification/authorization/resource-manager/Microsoft.Authorization/stable/2022-04-01/authorization-RoleAssignmentsCalls.json",
    "specification/authorization/resource-manager/Microsoft.Authorization/stable/2022-04-01/authorization-RoleDefinitionsCalls.json",
    "specification/imds/data-plane/InstanceMetadataService/stable/2023-07-01/imds.json",
    "specification/compute/resource-manager/Microsoft.Compute/ComputeRP/stable/2024-11-01/virtualMachine.json",
    "specification/compute/resource-manager/Microsoft.Compute/ComputeRP/stable/2024-11-01/virtualMachineScaleSet.json",
];

/// Where the specifications are: `UAMI_ARM_SPECS`, or the first `shared/arm-specs` found walking
/// up from the project directory (the project may sit in a worktree below the shared folder).
pub fn specs_root() -> PathBuf {
    if let Ok(dir) = std::env::var("UAMI_ARM_SPECS") {
        return PathBuf::from(dir);
    }
    let start = Path::new(env!("CARGO_MANIFEST_DIR"));
    start
        .ancestors()
        .map(|a| a.join("shared/arm-specs"))
        .find(|p| p.join("specification").is_dir())
        .unwrap_or_else(|| start.join("../shared/arm-specs"))
}

/// The api-versions a request may carry when it matched `doc` (a document of `info.version`).
/// A request must use the document's version, except where a stored source says an older
/// version has the same shape:
/// - the MSI document is 2026-05-31 and the controller sends 2023-01-31; ARM-NOTES section 1:
///   "Identity shape is the same" (2026-05-31 only adds optional `assignmentRestrictions`,
///   2024-11-30 `isolationScope`, neither sent);
/// - the IMDS data-plane document is 2023-07-01; D1: the token endpoint takes
///   `api-version=2018-02-01` or later.
fn version_accepted(doc_version: &str, file: &Path, requested: &str) -> bool {
    let file = file.to_string_lossy();
    if requested == doc_version {
        return true;
    }
    if file.contains("/msi/") {
        return requested == "2023-01-31";
    }
    if file.contains("/imds/") {
        return requested >= "2018-02-01" && requested <= doc_version;
    }
    false
}

/// D2 (ARM-NOTES section 2.4): a PATCH removes one user-assigned identity by setting its key to
/// `null`. The official `UserAssignedIdentities` schema types every value as an object, so the
/// null entries are taken out before the body is validated (and checked to name identity ids).
fn without_null_identity_entries(body: &Value) -> (Value, Vec<String>) {
    let mut body = body.clone();
    let mut errors = Vec::new();
    if let Some(map) = body
        .pointer_mut("/identity/userAssignedIdentities")
        .and_then(Value::as_object_mut)
    {
        for k in map.keys() {
            if !k
                .to_lowercase()
                .contains("/providers/microsoft.managedidentity/userassignedidentities/")
            {
                errors.push(format!(
                    "request userAssignedIdentities key {k} is not an identity id"
                ));
            }
        }
        map.retain(|_, v| !v.is_null());
    }
    (body, errors)
}

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
    /// operationId -> (document, document version, operation).
    ops: HashMap<String, (PathBuf, String, Value)>,
}

impl Specs {
    /// Load from `../shared/arm-specs` beside the project.
    pub fn load() -> Self {
        let root = specs_root();
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
            let version = doc["info"]["version"].as_str().unwrap().to_string();
            for (_, methods) in doc["paths"].as_object().unwrap() {
                for (m, op) in methods.as_object().unwrap() {
                    if m == "parameters" {
                        continue;
                    }
                    if let Some(id) = op["operationId"].as_str() {
                        s.ops
                            .insert(id.to_string(), (path.clone(), version.clone(), op.clone()));
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
        let (file, doc_version, op) = self.ops.get(spec_operation(&ex.operation)).cloned()?;
        let canon = file.canonicalize().unwrap_or(file);
        let mut errors = Vec::new();
        let query: HashMap<String, String> =
            serde_urlencoded::from_str(&ex.query).unwrap_or_default();
        match query.get("api-version") {
            Some(v) if version_accepted(&doc_version, &canon, v) => {}
            Some(v) => errors.push(format!(
                "api-version {v} is not the version of the document it matched ({doc_version}, {})",
                canon.file_name().unwrap().to_string_lossy()
            )),
            None => errors.push("no api-version".into()),
        }
        let request = ex.request.as_ref().map(without_null_identity_entries);
        if let Some((_, key_errors)) = &request {
            errors.extend(key_errors.iter().cloned());
        }
        if let Some((body, _)) = &request {
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
        // D3: a long-running operation may first answer 201 or 202 (202 with a `Location` and
        // no body); the document lists the final answer.
        let lro = op["x-ms-long-running-operation"] == json!(true);
        if lro && ex.status == 202 && ex.response.is_none() {
            return Some(errors);
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

/// Validate a journal and assert that it has no violations: (exchanges validated, operations
/// without a stored document).
pub fn assert_valid(journal: &[Exchange]) -> (usize, Vec<String>) {
    let (errors, checked, unchecked) = validate_journal(journal);
    assert!(
        errors.is_empty(),
        "{} violations:\n{}",
        errors.len(),
        errors.join("\n")
    );
    (checked, unchecked)
}
