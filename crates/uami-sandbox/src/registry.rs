//! The resources the sandbox serves: built-in kinds, and every kind a CustomResourceDefinition
//! declares, with what discovery, validation and the Table printer need.

use serde_json::{Value, json};

/// One served resource.
#[derive(Clone, Debug)]
pub struct ResourceDef {
    /// API group ("" for core).
    pub group: String,
    /// Version.
    pub version: String,
    /// Plural name (the URL segment).
    pub plural: String,
    /// Singular name.
    pub singular: String,
    /// Kind.
    pub kind: String,
    /// Namespaced or cluster-scoped.
    pub namespaced: bool,
    /// Short names.
    pub short_names: Vec<String>,
    /// Categories.
    pub categories: Vec<String>,
    /// Whether `/status` is a subresource.
    pub status_subresource: bool,
    /// `openAPIV3Schema` of a custom resource.
    pub schema: Option<Value>,
    /// The schema, compiled once for validation.
    pub compiled: Option<std::sync::Arc<super::validate::Compiled>>,
    /// `additionalPrinterColumns` of a custom resource.
    pub printer_columns: Vec<Value>,
    /// The CRD that defines it.
    pub crd: Option<String>,
}

impl ResourceDef {
    /// `group/version`, or `version` for core.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// Where its objects are stored: (group, plural), except that both Event APIs share one
    /// store.
    pub fn key(&self) -> (String, String) {
        if super::events::is_event(self) {
            (super::events::STORAGE_GROUP.into(), self.plural.clone())
        } else {
            (self.group.clone(), self.plural.clone())
        }
    }

    /// `plural.group` (as in error messages).
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// Discovery entries (the resource and its status subresource).
    pub fn discovery(&self) -> Vec<Value> {
        let mut out = vec![json!({
            "name": self.plural,
            "singularName": self.singular,
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
            "shortNames": self.short_names,
            "categories": self.categories,
            "storageVersionHash": "",
        })];
        if self.plural == "serviceaccounts" && self.group.is_empty() {
            out.push(json!({
                "name": "serviceaccounts/token",
                "singularName": "",
                "namespaced": true,
                "group": "authentication.k8s.io",
                "version": "v1",
                "kind": "TokenRequest",
                "verbs": ["create"],
            }));
        }
        if self.status_subresource {
            out.push(json!({
                "name": format!("{}/status", self.plural),
                "singularName": "",
                "namespaced": self.namespaced,
                "kind": self.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
        out
    }
}

fn builtin(
    group: &str,
    version: &str,
    plural: &str,
    kind: &str,
    namespaced: bool,
    short: &[&str],
) -> ResourceDef {
    ResourceDef {
        group: group.into(),
        version: version.into(),
        plural: plural.into(),
        singular: kind.to_lowercase(),
        kind: kind.into(),
        namespaced,
        short_names: short.iter().map(|s| s.to_string()).collect(),
        categories: Vec::new(),
        status_subresource: false,
        schema: None,
        compiled: None,
        printer_columns: Vec::new(),
        crd: None,
    }
}

const RBAC: &str = "rbac.authorization.k8s.io";
const ADMISSION: &str = "admissionregistration.k8s.io";

fn with_status(mut def: ResourceDef) -> ResourceDef {
    def.status_subresource = true;
    def
}

/// In the `all` category (`kubectl get all`).
fn in_all(mut def: ResourceDef) -> ResourceDef {
    def.categories = vec!["all".into()];
    def
}

/// The built-in resources: those the controller and agent use, every kind the chart installs,
/// and Pods and Nodes for tokens bound to a pod (stored and served; nothing runs Deployments,
/// DaemonSets or Pods).
pub fn builtins() -> Vec<ResourceDef> {
    let mut ns = builtin("", "v1", "namespaces", "Namespace", false, &["ns"]);
    ns.status_subresource = true;
    vec![
        ns,
        builtin("", "v1", "configmaps", "ConfigMap", true, &["cm"]),
        builtin("", "v1", "events", "Event", true, &["ev"]),
        builtin("events.k8s.io", "v1", "events", "Event", true, &[]),
        builtin("coordination.k8s.io", "v1", "leases", "Lease", true, &[]),
        builtin("", "v1", "serviceaccounts", "ServiceAccount", true, &["sa"]),
        builtin("", "v1", "secrets", "Secret", true, &[]),
        in_all(with_status(builtin("", "v1", "pods", "Pod", true, &["po"]))),
        with_status(builtin("", "v1", "nodes", "Node", false, &["no"])),
        in_all(with_status(builtin(
            "",
            "v1",
            "services",
            "Service",
            true,
            &["svc"],
        ))),
        in_all(with_status(builtin(
            "apps",
            "v1",
            "deployments",
            "Deployment",
            true,
            &["deploy"],
        ))),
        in_all(with_status(builtin(
            "apps",
            "v1",
            "daemonsets",
            "DaemonSet",
            true,
            &["ds"],
        ))),
        builtin(
            "networking.k8s.io",
            "v1",
            "networkpolicies",
            "NetworkPolicy",
            true,
            &["netpol"],
        ),
        builtin(RBAC, "v1", "roles", "Role", true, &[]),
        builtin(RBAC, "v1", "rolebindings", "RoleBinding", true, &[]),
        builtin(RBAC, "v1", "clusterroles", "ClusterRole", false, &[]),
        builtin(
            RBAC,
            "v1",
            "clusterrolebindings",
            "ClusterRoleBinding",
            false,
            &[],
        ),
        with_status(builtin(
            ADMISSION,
            "v1",
            "validatingadmissionpolicies",
            "ValidatingAdmissionPolicy",
            false,
            &[],
        )),
        builtin(
            ADMISSION,
            "v1",
            "validatingadmissionpolicybindings",
            "ValidatingAdmissionPolicyBinding",
            false,
            &[],
        ),
        builtin(
            "authentication.k8s.io",
            "v1",
            "selfsubjectreviews",
            "SelfSubjectReview",
            false,
            &[],
        ),
        builtin(
            "authorization.k8s.io",
            "v1",
            "selfsubjectaccessreviews",
            "SelfSubjectAccessReview",
            false,
            &[],
        ),
        {
            let mut crd = builtin(
                "apiextensions.k8s.io",
                "v1",
                "customresourcedefinitions",
                "CustomResourceDefinition",
                false,
                &["crd", "crds"],
            );
            crd.status_subresource = true;
            crd
        },
    ]
}

/// The fields of an object's `metadata` (ObjectMeta).
pub const OBJECT_META_FIELDS: &[&str] = &[
    "name",
    "generateName",
    "namespace",
    "selfLink",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
    "managedFields",
];

/// The top-level fields (besides `apiVersion`, `kind` and `metadata`) of a built-in kind whose
/// fields the sandbox checks (`None`: any field is kept).
pub fn builtin_fields(def: &ResourceDef) -> Option<&'static [&'static str]> {
    if def.crd.is_some() {
        return None;
    }
    let fields: &'static [&'static str] = match (def.group.as_str(), def.kind.as_str()) {
        ("", "ConfigMap") => &["data", "binaryData", "immutable"],
        ("", "Secret") => &["data", "stringData", "type", "immutable"],
        ("", "ServiceAccount") => &[
            "secrets",
            "imagePullSecrets",
            "automountServiceAccountToken",
        ],
        ("", "Namespace" | "Node" | "Pod" | "Service") | ("apps", _) => &["spec", "status"],
        ("coordination.k8s.io", "Lease") | ("networking.k8s.io", "NetworkPolicy") => &["spec"],
        (RBAC, "Role") => &["rules"],
        (RBAC, "ClusterRole") => &["rules", "aggregationRule"],
        (RBAC, "RoleBinding" | "ClusterRoleBinding") => &["subjects", "roleRef"],
        (ADMISSION, "ValidatingAdmissionPolicy") => &["spec", "status"],
        (ADMISSION, "ValidatingAdmissionPolicyBinding") => &["spec"],
        _ => return None,
    };
    Some(fields)
}

/// Whether objects of the kind carry `metadata.generation` (custom resources and the built-in
/// kinds whose spec a controller observes; not ConfigMaps, Secrets, Namespaces, ...).
pub fn has_generation(def: &ResourceDef) -> bool {
    def.crd.is_some()
        || matches!(
            (def.group.as_str(), def.plural.as_str()),
            ("apiextensions.k8s.io", _)
                | ("apps", _)
                | (ADMISSION, _)
                | ("networking.k8s.io", "networkpolicies")
                | ("", "pods")
        )
}

/// The top-level fields of a built-in kind that the API server leaves out when empty.
pub fn builtin_empty_omitted(def: &ResourceDef) -> Option<&'static [&'static str]> {
    match (def.crd.is_none(), def.group.as_str(), def.kind.as_str()) {
        (true, "", "ConfigMap") => Some(&["data", "binaryData"]),
        (true, "", "Secret") => Some(&["data", "stringData"]),
        (true, "", "ServiceAccount") => Some(&["secrets", "imagePullSecrets"]),
        _ => None,
    }
}

/// What the API server does to a Secret on every write: `stringData` merged into `data`
/// (base64), `type` defaulted to `Opaque`.
pub fn normalize_secret(obj: &mut Value) {
    if let Some(Value::Object(string_data)) =
        obj.as_object_mut().and_then(|o| o.remove("stringData"))
    {
        for (k, v) in string_data {
            let text = v.as_str().unwrap_or_default().to_string();
            obj["data"][k] = json!(base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                text
            ));
        }
    }
    if obj["type"].as_str().is_none_or(|t| t.is_empty()) {
        obj["type"] = json!("Opaque");
    }
}

/// What the API server fills in on a CustomResourceDefinition: the singular name and list kind
/// from the kind, and the conversion strategy `None`.
pub fn default_crd(crd: &mut Value) {
    let kind = crd["spec"]["names"]["kind"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if !kind.is_empty() && crd["spec"]["names"].is_object() {
        let names = &mut crd["spec"]["names"];
        if names["singular"].as_str().is_none_or(str::is_empty) {
            names["singular"] = json!(kind.to_lowercase());
        }
        if names["listKind"].as_str().is_none_or(str::is_empty) {
            names["listKind"] = json!(format!("{kind}List"));
        }
    }
    if crd["spec"].is_object() && crd["spec"]["conversion"].is_null() {
        crd["spec"]["conversion"] = json!({"strategy": "None"});
    }
}

/// The resources a CRD declares (its served versions), or an error message.
pub fn from_crd(crd: &Value) -> Result<Vec<ResourceDef>, String> {
    let spec = &crd["spec"];
    let group = spec["group"].as_str().ok_or("spec.group: Required value")?;
    let names = &spec["names"];
    let plural = names["plural"]
        .as_str()
        .ok_or("spec.names.plural: Required value")?;
    let kind = names["kind"]
        .as_str()
        .ok_or("spec.names.kind: Required value")?;
    let expected = format!("{plural}.{group}");
    if crd["metadata"]["name"].as_str() != Some(expected.as_str()) {
        return Err(format!(
            "metadata.name: Invalid value: {:?}: must be spec.names.plural+\".\"+spec.group",
            crd["metadata"]["name"].as_str().unwrap_or_default()
        ));
    }
    let namespaced = match spec["scope"].as_str() {
        Some("Namespaced") => true,
        Some("Cluster") => false,
        _ => {
            return Err(
                "spec.scope: Unsupported value: supported values: \"Cluster\", \"Namespaced\""
                    .into(),
            );
        }
    };
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let versions = spec["versions"]
        .as_array()
        .ok_or("spec.versions: Required value")?;
    let mut out = Vec::new();
    for v in versions
        .iter()
        .filter(|v| v["served"].as_bool() == Some(true))
    {
        out.push(ResourceDef {
            group: group.into(),
            version: v["name"].as_str().unwrap_or_default().into(),
            plural: plural.into(),
            singular: names["singular"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| kind.to_lowercase()),
            kind: kind.into(),
            namespaced,
            short_names: strings(&names["shortNames"]),
            categories: strings(&names["categories"]),
            status_subresource: v["subresources"]["status"].is_object(),
            schema: v["schema"]["openAPIV3Schema"]
                .as_object()
                .map(|_| v["schema"]["openAPIV3Schema"].clone()),
            compiled: v["schema"]["openAPIV3Schema"].as_object().map(|_| {
                std::sync::Arc::new(super::validate::compile(&v["schema"]["openAPIV3Schema"]))
            }),
            printer_columns: v["additionalPrinterColumns"]
                .as_array()
                .cloned()
                .unwrap_or_default(),
            crd: Some(expected.clone()),
        });
    }
    if out.is_empty() {
        return Err(
            "spec.versions: Invalid value: must have exactly one version marked as served".into(),
        );
    }
    Ok(out)
}
