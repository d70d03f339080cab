//! Types and validation patterns shared by the kinds.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::core::Rule;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A GUID such as a subscription id, tenant id, client id or principal id.
pub const GUID_PATTERN: &str =
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$";
/// Resource group names: 1-90 characters, letters, digits, `-`, `_`, `.`, `(`, `)`, not ending in `.`.
pub const RESOURCE_GROUP_PATTERN: &str = r"^[-\w.()]*[-\w()]$";
/// User-assigned identity names: 3-128 characters, letters, digits, `-` and `_`, starting with a letter or digit.
pub const IDENTITY_NAME_PATTERN: &str = r"^[a-zA-Z0-9][a-zA-Z0-9_-]{2,127}$";
/// Linux VM and scale set names: 1-64 characters, letters, digits, `_`, `.`, `-`; start with a
/// letter or digit, end with a letter, digit or `_`.
pub const VM_NAME_PATTERN: &str = r"^[a-zA-Z0-9]([a-zA-Z0-9_.-]{0,62}[a-zA-Z0-9_])?$";
/// Kubernetes object names (DNS-1123 subdomain).
pub const K8S_NAME_PATTERN: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
/// Azure location names such as `eastus` or `West Europe`.
pub const LOCATION_PATTERN: &str = r"^[a-zA-Z0-9][a-zA-Z0-9 ]{1,63}$";
/// A canonical ARM resource id below a subscription: `/subscriptions/{guid}` and non-empty
/// segments of ASCII letters, digits and `_.()~!$*+,;=:@-`, none of them `.` or `..`. No
/// percent-encoding, empty segment, trailing `/`, `?`, `#`, whitespace, backslash or non-ASCII
/// character: a URL builder or ARM would turn those into another id than the one a policy
/// approved. Kept equal to `uami_azure::scope::canonical_id_pattern` by a test.
pub const RESOURCE_ID_PATTERN: &str = r"^/subscriptions/[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}(/[A-Za-z0-9_.()~!$*+,;=:@-]*[A-Za-z0-9_()~!$*+,;=:@-][A-Za-z0-9_.()~!$*+,;=:@-]*)*$";

/// The message of the CRD rule that refuses a non-canonical resource id.
pub const RESOURCE_ID_MESSAGE: &str = "must be a canonical ARM resource id /subscriptions/{guid}/...: no '.' or '..' segments, no empty segments or trailing '/', no percent-encoding, '?', '#', whitespace, backslash or non-ASCII characters";

/// Tag names the controller writes itself start with this; users may not set them.
pub const RESERVED_TAG_PREFIX: &str = "uami.dev-";

/// Tags the controller may add to an identity (owner and adopted): with at most
/// `50 - CONTROLLER_TAGS` user tags an identity stays within Azure's 50.
pub const CONTROLLER_TAGS: usize = 3;

/// Declares the spec of a namespaced kind with the `CustomResource` attributes all of them share:
/// group, version, category, the `Ready` and `Reason` columns first and `Age` last. The kind's
/// own columns go between them, its own root rules after.
macro_rules! namespaced_kind {
    (
        kind = $kind:tt,
        status = $status:tt,
        shortname = $shortname:tt,
        doc = $doc:tt,
        columns = [$($column:tt),* $(,)?],
        $(validation = [$($validation:tt)*],)?
        $(#[$attr:meta])*
        pub struct $spec:ident $body:tt
    ) => {
        #[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
        #[kube(
            group = "uami.dev",
            version = "v1alpha1",
            kind = $kind,
            namespaced,
            status = $status,
            shortname = $shortname,
            category = "azureidentity",
            doc = $doc,
            printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
            printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
            $(printcolumn = $column,)*
            printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
            $(, validation = $($validation)*)?
        )]
        $(#[$attr])*
        pub struct $spec $body
    };
}
pub(crate) use namespaced_kind;

/// Declares a struct of which exactly one field is set: each field optional and left out when
/// unset, and the CRD rule ([`exactly_one_rule`]) that refuses none or several, naming the
/// fields by their JSON names.
macro_rules! exactly_one_of {
    (
        $(#[$attr:meta])*
        pub struct $name:ident {
            $($(#[$field_attr:meta])* $json:literal => pub $field:ident: $ty:ty,)+
        }
    ) => {
        $(#[$attr])*
        #[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
        #[serde(rename_all = "camelCase")]
        #[x_kube(validation = exactly_one_rule(&[$($json),+]))]
        pub struct $name {
            $(
                $(#[$field_attr])*
                #[serde(default, skip_serializing_if = "Option::is_none")]
                pub $field: Option<$ty>,
            )+
        }
    };
}
pub(crate) use exactly_one_of;

/// The CEL rule that exactly one of `fields` (JSON names) is set, and its message.
pub fn exactly_one_rule(fields: &[&str]) -> Rule {
    let count: Vec<String> = fields
        .iter()
        .map(|f| format!("(has(self.{f}) ? 1 : 0)"))
        .collect();
    let named = match fields.split_last() {
        Some((last, [])) => last.to_string(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    };
    Rule::new(format!("{} == 1", count.join(" + ")))
        .message(format!("exactly one of {named} must be set").as_str())
}

/// Declares the status of a kind: `observedGeneration` and the conditions first (documented at
/// the placeholder `conditions,`), then the kind's own fields.
macro_rules! kind_status {
    (
        $(#[$attr:meta])*
        pub struct $name:ident {
            $(#[$conditions_doc:meta])*
            conditions,
            $($fields:tt)*
        }
    ) => {
        $(#[$attr])*
        #[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
        #[serde(rename_all = "camelCase")]
        pub struct $name {
            /// The generation of the spec that this status describes.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub observed_generation: Option<i64>,
            $(#[$conditions_doc])*
            #[serde(default, skip_serializing_if = "Vec::is_empty")]
            #[schemars(schema_with = "conditions_schema")]
            pub conditions: Conditions,
            $($fields)*
        }
    };
}
pub(crate) use kind_status;

/// What happens in Azure when the Kubernetes object is deleted.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeletionPolicy {
    /// Undo in Azure what this object did (delete the identity, remove the binding, delete the role
    /// assignment). Adopted role assignments are never deleted.
    #[default]
    Delete,
    /// Leave Azure untouched; only the Kubernetes object goes away.
    Orphan,
}

/// A reference to a `UserAssignedIdentity` in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct IdentityRef {
    /// Name of the `UserAssignedIdentity` in the same namespace.
    #[schemars(length(min = 1, max = 253), pattern(K8S_NAME_PATTERN))]
    pub name: String,
}

/// Conditions in the Kubernetes `metav1.Condition` shape, a list-map keyed by `type` so that the
/// controller and the agent can each own their own conditions under server-side apply.
pub type Conditions = Vec<Condition>;

/// The most conditions an object's status holds (each kind uses at most three types).
pub const MAX_CONDITIONS: usize = 16;
/// The longest condition message, as `metav1.Condition` bounds it; longer ones are cut.
pub const MAX_CONDITION_MESSAGE: usize = 32768;

/// Schema hook for `conditions` fields: a list-map keyed by `type`, at most [`MAX_CONDITIONS`]
/// long, with the bounds `metav1.Condition` documents (type up to 316 characters, reason up to
/// 1024, message up to 32768, status `True`, `False` or `Unknown`).
pub fn conditions_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut schema = generator.subschema_for::<Vec<Condition>>();
    schema.insert("x-kubernetes-list-type".into(), "map".into());
    schema.insert(
        "x-kubernetes-list-map-keys".into(),
        serde_json::json!(["type"]),
    );
    schema.insert("maxItems".into(), MAX_CONDITIONS.into());
    schema.insert(
        "description".into(),
        "Conditions in the metav1.Condition shape, keyed by type. Ready summarises the object."
            .into(),
    );
    if let Some(props) = schema
        .get_mut("items")
        .and_then(|i| i.get_mut("properties"))
        .and_then(serde_json::Value::as_object_mut)
    {
        let mut bound = |field: &str, key: &str, value: serde_json::Value| {
            if let Some(f) = props.get_mut(field).and_then(|f| f.as_object_mut()) {
                f.insert(key.into(), value);
            }
        };
        bound("type", "maxLength", 316.into());
        bound("reason", "maxLength", 1024.into());
        bound("message", "maxLength", MAX_CONDITION_MESSAGE.into());
        bound(
            "status",
            "enum",
            serde_json::json!(["True", "False", "Unknown"]),
        );
    }
    schema
}

pub(crate) fn default_true() -> bool {
    true
}

/// A check that failed for a passing reason, reported beside the last definitive result.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckError {
    /// Why, in CamelCase (`ImdsUnavailable`, `ImdsThrottled`, `IdentityNotAssigned`,
    /// `CheckFailed`).
    #[schemars(length(max = 128))]
    pub reason: String,
    /// What failed (never a token).
    #[schemars(length(max = 1024))]
    pub message: String,
    /// When the failure was first seen (RFC 3339); unchanged while the same reason repeats.
    #[schemars(length(max = 64))]
    pub since: String,
    /// The agent (VM or instance) that saw it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub checked_by: Option<String>,
}
