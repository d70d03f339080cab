//! `UserAssignedIdentity`: an Azure user-assigned managed identity (tutorial step 1).

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::common::*;

namespaced_kind! {
    kind = "UserAssignedIdentity",
    status = "UserAssignedIdentityStatus",
    shortname = "uami",
    doc = "An Azure user-assigned managed identity, created (or adopted) and kept in sync by the controller.",
    columns = [
        r#"{"name":"Client ID","type":"string","jsonPath":".status.clientId"}"#,
        r#"{"name":"Resource Group","type":"string","priority":1,"jsonPath":".spec.resourceGroup"}"#,
        r#"{"name":"Principal ID","type":"string","priority":1,"jsonPath":".status.principalId"}"#,
    ],
    validation = [Rule::new("has(self.spec.azureName) || self.metadata.name.matches('^[a-zA-Z0-9][a-zA-Z0-9_-]{2,127}$')").message("metadata.name is not a valid Azure identity name (3-128 letters, digits, '-' or '_'); set spec.azureName").field_path(".spec.azureName").reason(Reason::FieldValueRequired)],
    /// Desired state of an Azure user-assigned managed identity.
    #[x_kube(validation = Rule::new("has(self.subscriptionId) == has(oldSelf.subscriptionId) && (!has(self.subscriptionId) || self.subscriptionId == oldSelf.subscriptionId)").message("subscriptionId is immutable").field_path(".subscriptionId").reason(Reason::FieldValueForbidden))]
    #[x_kube(validation = Rule::new("has(self.azureName) == has(oldSelf.azureName) && (!has(self.azureName) || self.azureName == oldSelf.azureName)").message("azureName is immutable").field_path(".azureName").reason(Reason::FieldValueForbidden))]
    #[serde(rename_all = "camelCase")]
    pub struct UserAssignedIdentitySpec {
        /// Azure subscription id (a GUID) that holds the identity. Defaults to the controller's
        /// configured subscription. Immutable.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schemars(length(max = 36), pattern(GUID_PATTERN))]
        pub subscription_id: Option<String>,

        /// Resource group that holds the identity (1-90 characters). Immutable.
        #[schemars(length(min = 1, max = 90), pattern(RESOURCE_GROUP_PATTERN))]
        #[x_kube(validation = Rule::new("self == oldSelf").message("resourceGroup is immutable").reason(Reason::FieldValueForbidden))]
        pub resource_group: String,

        /// Azure region of the identity, such as `eastus`. Immutable.
        #[schemars(length(min = 2, max = 64), pattern(LOCATION_PATTERN))]
        #[x_kube(validation = Rule::new("self == oldSelf").message("location is immutable").reason(Reason::FieldValueForbidden))]
        pub location: String,

        /// Name of the identity in Azure: 3-128 characters, letters, digits, `-` and `_`, starting
        /// with a letter or digit. Defaults to metadata.name. Immutable.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schemars(length(min = 3, max = 128), pattern(IDENTITY_NAME_PATTERN))]
        pub azure_name: Option<String>,

        /// Azure tags on the identity: at most 47, since the controller adds up to three of its own
        /// (`uami.dev-owner`, `uami.dev-owner-uid`, `uami.dev-adopted`) and Azure allows 50. Names up to 512 characters
        /// without `<`, `>`, `%`, `&`, `\`, `?`, `/` and not starting with `uami.dev-`; values up to
        /// 256 characters.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        #[x_kube(validation = Rule::new("self.all(k, size(k) <= 512 && size(self[k]) <= 256)").message("tag names may have at most 512 characters and values at most 256"))]
        #[x_kube(validation = Rule::new(r"self.all(k, !k.matches('[<>%&\\\\?/]'))").message("tag names may not contain <, >, %, &, \\, ? or /"))]
        #[x_kube(validation = Rule::new(r"self.all(k, !k.matches('^(?i)uami\\.dev-'))").message("tag names starting with uami.dev- are reserved for the controller"))]
        #[schemars(extend("maxProperties" = 47))]
        #[schemars(extend("additionalProperties" = {"type": "string", "maxLength": 256}))]
        pub tags: BTreeMap<String, String>,

        /// Take over an identity that already exists in Azure under this name instead of refusing it.
        #[serde(default)]
        pub adopt_existing: bool,

        /// `Delete` (default) removes the identity from Azure when this object is deleted; `Orphan`
        /// leaves it.
        #[serde(default)]
        pub deletion_policy: DeletionPolicy,

        /// Publish the identity's ids for applications to consume.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub export_to: Option<ExportTo>,
    }
}

/// Where the identity's ids are published.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExportTo {
    /// Name of a ConfigMap in the same namespace that receives `clientId`, `principalId`,
    /// `tenantId` and `resourceId`.
    #[schemars(length(min = 1, max = 253), pattern(K8S_NAME_PATTERN))]
    pub config_map: String,
}

kind_status! {
    /// Observed state of the identity in Azure.
    pub struct UserAssignedIdentityStatus {
        /// Conditions: `Ready` (at most 16, keyed by type).
        conditions,
        /// ARM resource id of the identity.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schemars(length(max = 2048))]
        pub resource_id: Option<String>,
        /// Client (application) id: what IMDS takes as `client_id`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schemars(length(max = 128))]
        pub client_id: Option<String>,
        /// Principal (object) id of the identity's service principal: what role assignments name.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schemars(length(max = 128))]
        pub principal_id: Option<String>,
        /// Tenant id of the identity.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schemars(length(max = 128))]
        pub tenant_id: Option<String>,
    }
}

impl UserAssignedIdentity {
    /// The identity's name in Azure: `spec.azureName`, or the object's name.
    pub fn azure_name(&self) -> String {
        self.spec
            .azure_name
            .clone()
            .unwrap_or_else(|| self.metadata.name.clone().unwrap_or_default())
    }
}
