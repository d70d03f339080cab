//! The kube-state-metrics config typed after its Go structs (`pkg/customresourcestate`), and
//! the CRD schemas its paths must exist in. kube-state-metrics ignores unknown fields, so a
//! misspelt field would silently do nothing.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct KsmConfig {
    pub kind: String,
    pub spec: KsmSpec,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct KsmSpec {
    pub resources: Vec<KsmResource>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
pub struct KsmResource {
    pub group_version_kind: BTreeMap<String, String>,
    #[serde(default)]
    pub metric_name_prefix: Option<String>,
    #[serde(default)]
    pub resource_plural: Option<String>,
    #[serde(default)]
    pub common_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub labels_from_path: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub error_log_v: Option<u8>,
    pub metrics: Vec<KsmMetric>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
pub struct KsmMetric {
    pub name: String,
    pub help: String,
    pub each: KsmEach,
    #[serde(default)]
    pub error_log_v: Option<u8>,
    #[serde(default)]
    pub labels_from_path: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub common_labels: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct KsmEach {
    #[serde(rename = "type")]
    pub type_: String,
    pub gauge: KsmGauge,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
pub struct KsmGauge {
    pub path: Vec<String>,
    #[serde(default)]
    pub labels_from_path: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub value_from: Vec<String>,
    #[serde(default)]
    pub nil_is_zero: bool,
    #[serde(default)]
    pub label_from_key: Option<String>,
}

/// The CRD schema of a kind, from crds/.
pub fn crd_schema(group: &str, kind: &str) -> Value {
    for entry in
        std::fs::read_dir(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crds")).unwrap()
    {
        let crd: Value =
            serde_yaml_ng::from_str(&std::fs::read_to_string(entry.unwrap().path()).unwrap())
                .unwrap();
        if crd["spec"]["group"] == group && crd["spec"]["names"]["kind"] == kind {
            return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone();
        }
    }
    panic!("no CRD for {group}/{kind}");
}

/// Walk a kube-state-metrics path through a schema; `metadata` is ObjectMeta.
pub fn schema_at(schema: &Value, path: &[String]) -> Result<Value, String> {
    const META: [&str; 6] = [
        "name",
        "namespace",
        "creationTimestamp",
        "labels",
        "annotations",
        "uid",
    ];
    let mut cur = schema.clone();
    let mut in_meta = false;
    for (i, part) in path.iter().enumerate() {
        if in_meta {
            return if i == path.len() - 1 && META.contains(&part.as_str()) {
                Ok(serde_json::json!({"type": "string"}))
            } else {
                Err(format!("metadata.{part}"))
            };
        }
        if let Some(inner) = part.strip_prefix('[').and_then(|p| p.strip_suffix(']')) {
            let (k, _) = inner.split_once('=').ok_or(format!("bad lookup {part}"))?;
            let items = cur["items"].clone();
            if cur["type"] != "array" || items["properties"][k].is_null() {
                return Err(format!("{part}: not a list of objects with {k}"));
            }
            cur = items;
            continue;
        }
        if part.parse::<usize>().is_ok() && cur["type"] == "array" {
            cur = cur["items"].clone();
            continue;
        }
        if i == 0 && part == "metadata" {
            in_meta = true;
            continue;
        }
        let next = cur["properties"][part.as_str()].clone();
        if next.is_null() {
            return Err(format!("no field {part} in {}", path[..i].join(".")));
        }
        cur = next;
    }
    Ok(cur)
}
