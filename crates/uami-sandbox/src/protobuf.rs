//! Protobuf bodies from typed clients. kubectl's typed commands (`kubectl create namespace`,
//! `create configmap`, `create serviceaccount`, `create role`, ...) send
//! `application/vnd.kubernetes.protobuf`: the 4-byte magic `k8s\0` followed by a
//! `runtime.Unknown` whose `raw` is the object's own message. The sandbox decodes the built-in
//! kinds those commands create into the JSON shape the rest of the server works on, and
//! answers 415 for the others, as the API server does for a media type a kind does not support.
//! Answers are JSON, which every such client also accepts.

use std::collections::BTreeMap;

use k8s_pb::api::authorization::v1 as authorization;
use k8s_pb::api::core::v1 as core;
use k8s_pb::api::rbac::v1 as rbac;
use k8s_pb::apimachinery::pkg::apis::meta::v1 as meta;
use k8s_pb::apimachinery::pkg::runtime::Unknown;
use prost::Message;
use serde_json::{Map, Value, json};

/// The protobuf media type of Kubernetes.
pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";
const MAGIC: &[u8] = b"k8s\0";

/// Whether a `Content-Type` is Kubernetes protobuf.
pub fn is_protobuf(content_type: &str) -> bool {
    content_type.starts_with(MEDIA_TYPE)
}

/// Why a body could not be decoded: malformed (400) or a kind without protobuf here (415).
#[derive(Debug)]
pub enum DecodeError {
    /// Not a Kubernetes protobuf envelope or not the message it claims.
    Malformed(String),
    /// A kind this server accepts only as JSON or YAML.
    Unsupported(String),
}

/// Decode a protobuf body into the object's JSON form (with `apiVersion` and `kind`).
pub fn decode(body: &[u8]) -> Result<Value, DecodeError> {
    let rest = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| DecodeError::Malformed("missing the protobuf prefix \"k8s\\x00\"".into()))?;
    let unknown = Unknown::decode(rest)
        .map_err(|e| DecodeError::Malformed(format!("runtime.Unknown: {e}")))?;
    let tm = unknown.type_meta.unwrap_or_default();
    let api_version = tm.api_version.unwrap_or_default();
    let kind = tm.kind.unwrap_or_default();
    let raw = unknown.raw.unwrap_or_default();
    let bad = |e: prost::DecodeError| DecodeError::Malformed(format!("{api_version} {kind}: {e}"));
    let mut obj = match (api_version.as_str(), kind.as_str()) {
        ("v1", "Namespace") => {
            let ns = core::Namespace::decode(raw.as_slice()).map_err(bad)?;
            let mut o = object(ns.metadata);
            if let Some(spec) = ns.spec
                && !spec.finalizers.is_empty()
            {
                o.insert("spec".into(), json!({"finalizers": spec.finalizers}));
            }
            o
        }
        ("v1", "ConfigMap") => {
            let cm = core::ConfigMap::decode(raw.as_slice()).map_err(bad)?;
            let mut o = object(cm.metadata);
            if !cm.data.is_empty() {
                o.insert("data".into(), json!(cm.data));
            }
            if !cm.binary_data.is_empty() {
                o.insert("binaryData".into(), json!(base64_values(cm.binary_data)));
            }
            if let Some(i) = cm.immutable {
                o.insert("immutable".into(), json!(i));
            }
            o
        }
        ("v1", "Secret") => {
            let secret = core::Secret::decode(raw.as_slice()).map_err(bad)?;
            let mut o = object(secret.metadata);
            if !secret.data.is_empty() {
                o.insert("data".into(), json!(base64_values(secret.data)));
            }
            if !secret.string_data.is_empty() {
                o.insert("stringData".into(), json!(secret.string_data));
            }
            put(&mut o, "type", secret.r#type);
            if let Some(i) = secret.immutable {
                o.insert("immutable".into(), json!(i));
            }
            o
        }
        ("v1", "ServiceAccount") => {
            let sa = core::ServiceAccount::decode(raw.as_slice()).map_err(bad)?;
            let mut o = object(sa.metadata);
            if let Some(a) = sa.automount_service_account_token {
                o.insert("automountServiceAccountToken".into(), json!(a));
            }
            o
        }
        ("rbac.authorization.k8s.io/v1", "Role") => {
            let r = rbac::Role::decode(raw.as_slice()).map_err(bad)?;
            let mut o = object(r.metadata);
            o.insert("rules".into(), rules(r.rules));
            o
        }
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => {
            let r = rbac::ClusterRole::decode(raw.as_slice()).map_err(bad)?;
            let mut o = object(r.metadata);
            o.insert("rules".into(), rules(r.rules));
            o
        }
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => {
            let b = rbac::RoleBinding::decode(raw.as_slice()).map_err(bad)?;
            let mut o = object(b.metadata);
            o.insert("subjects".into(), subjects(b.subjects));
            o.insert("roleRef".into(), role_ref(b.role_ref));
            o
        }
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
            let b = rbac::ClusterRoleBinding::decode(raw.as_slice()).map_err(bad)?;
            let mut o = object(b.metadata);
            o.insert("subjects".into(), subjects(b.subjects));
            o.insert("roleRef".into(), role_ref(b.role_ref));
            o
        }
        ("authentication.k8s.io/v1", "SelfSubjectReview") => {
            let r = k8s_pb::api::authentication::v1::SelfSubjectReview::decode(raw.as_slice())
                .map_err(bad)?;
            object(r.metadata)
        }
        ("authorization.k8s.io/v1", "SelfSubjectAccessReview") => {
            let r = authorization::SelfSubjectAccessReview::decode(raw.as_slice()).map_err(bad)?;
            let mut o = object(r.metadata);
            let spec = r.spec.unwrap_or_default();
            let mut s = Map::new();
            if let Some(a) = spec.resource_attributes {
                let m = strings([
                    ("namespace", a.namespace),
                    ("verb", a.verb),
                    ("group", a.group),
                    ("version", a.version),
                    ("resource", a.resource),
                    ("subresource", a.subresource),
                    ("name", a.name),
                ]);
                s.insert("resourceAttributes".into(), Value::Object(m));
            }
            if let Some(a) = spec.non_resource_attributes {
                let m = strings([("path", a.path), ("verb", a.verb)]);
                s.insert("nonResourceAttributes".into(), Value::Object(m));
            }
            o.insert("spec".into(), Value::Object(s));
            o
        }
        _ => {
            return Err(DecodeError::Unsupported(format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml ({api_version} {kind} is not accepted as {MEDIA_TYPE})"
            )));
        }
    };
    obj.insert("apiVersion".into(), json!(api_version));
    obj.insert("kind".into(), json!(kind));
    Ok(Value::Object(obj))
}

fn base64_values(m: BTreeMap<String, Vec<u8>>) -> BTreeMap<String, String> {
    m.into_iter()
        .map(|(k, v)| {
            (
                k,
                base64::Engine::encode(&base64::engine::general_purpose::STANDARD, v),
            )
        })
        .collect()
}

fn put(m: &mut Map<String, Value>, key: &str, v: Option<String>) {
    if let Some(v) = v.filter(|v| !v.is_empty()) {
        m.insert(key.into(), json!(v));
    }
}

/// An object of the string fields that are set and not empty.
fn strings<const N: usize>(fields: [(&str, Option<String>); N]) -> Map<String, Value> {
    let mut m = Map::new();
    for (key, v) in fields {
        put(&mut m, key, v);
    }
    m
}

fn object(md: Option<meta::ObjectMeta>) -> Map<String, Value> {
    let md = md.unwrap_or_default();
    let mut m = strings([
        ("name", md.name),
        ("generateName", md.generate_name),
        ("namespace", md.namespace),
        ("resourceVersion", md.resource_version),
        ("uid", md.uid),
    ]);
    if !md.labels.is_empty() {
        m.insert("labels".into(), json!(md.labels));
    }
    if !md.annotations.is_empty() {
        m.insert("annotations".into(), json!(md.annotations));
    }
    if !md.finalizers.is_empty() {
        m.insert("finalizers".into(), json!(md.finalizers));
    }
    if !md.owner_references.is_empty() {
        let refs: Vec<Value> = md
            .owner_references
            .into_iter()
            .map(|r| {
                let mut o = strings([
                    ("apiVersion", r.api_version),
                    ("kind", r.kind),
                    ("name", r.name),
                    ("uid", r.uid),
                ]);
                if let Some(c) = r.controller {
                    o.insert("controller".into(), json!(c));
                }
                if let Some(b) = r.block_owner_deletion {
                    o.insert("blockOwnerDeletion".into(), json!(b));
                }
                Value::Object(o)
            })
            .collect();
        m.insert("ownerReferences".into(), json!(refs));
    }
    let mut out = Map::new();
    out.insert("metadata".into(), Value::Object(m));
    out
}

fn rules(rules: Vec<rbac::PolicyRule>) -> Value {
    let list: Vec<Value> = rules
        .into_iter()
        .map(|r| {
            let mut o = Map::new();
            o.insert("verbs".into(), json!(r.verbs));
            for (k, v) in [
                ("apiGroups", r.api_groups),
                ("resources", r.resources),
                ("resourceNames", r.resource_names),
                ("nonResourceURLs", r.non_resource_ur_ls),
            ] {
                if !v.is_empty() {
                    o.insert(k.into(), json!(v));
                }
            }
            Value::Object(o)
        })
        .collect();
    json!(list)
}

fn subjects(subjects: Vec<rbac::Subject>) -> Value {
    let list: Vec<Value> = subjects
        .into_iter()
        .map(|s| {
            Value::Object(strings([
                ("kind", s.kind),
                ("apiGroup", s.api_group),
                ("name", s.name),
                ("namespace", s.namespace),
            ]))
        })
        .collect();
    json!(list)
}

fn role_ref(r: Option<rbac::RoleRef>) -> Value {
    let r = r.unwrap_or_default();
    Value::Object(strings([
        ("apiGroup", r.api_group),
        ("kind", r.kind),
        ("name", r.name),
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(api_version: &str, kind: &str, raw: Vec<u8>) -> Vec<u8> {
        let u = Unknown {
            type_meta: Some(k8s_pb::apimachinery::pkg::runtime::TypeMeta {
                api_version: Some(api_version.into()),
                kind: Some(kind.into()),
            }),
            raw: Some(raw),
            content_encoding: Some(String::new()),
            content_type: Some(String::new()),
        };
        let mut out = MAGIC.to_vec();
        out.extend(u.encode_to_vec());
        out
    }

    #[test]
    fn decodes_a_configmap_as_kubectl_sends_it() {
        let cm = core::ConfigMap {
            metadata: Some(meta::ObjectMeta {
                name: Some("settings".into()),
                generate_name: Some(String::new()),
                creation_timestamp: Some(meta::Time::default()),
                ..Default::default()
            }),
            data: BTreeMap::from([("a".to_string(), "b".to_string())]),
            binary_data: BTreeMap::from([("bin".to_string(), vec![0u8, 1, 2])]),
            immutable: None,
        };
        let v = decode(&envelope("v1", "ConfigMap", cm.encode_to_vec())).unwrap();
        assert_eq!(
            v,
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"}, "data": {"a": "b"}, "binaryData": {"bin": "AAEC"}})
        );
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        assert!(matches!(decode(b"{}"), Err(DecodeError::Malformed(_))));
        assert!(matches!(
            decode(&envelope("apps/v1", "Deployment", Vec::new())),
            Err(DecodeError::Unsupported(_))
        ));
    }
}
