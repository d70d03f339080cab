//! `RoleGrant`: an Azure role assignment for an identity (tutorial step 3); the agent reports
//! whether the identity's token really reads the scope (tutorial step 4, second half).

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::binding::AccessPlane;
use super::common::*;

namespaced_kind! {
    kind = "RoleGrant",
    status = "RoleGrantStatus",
    shortname = "grant",
    doc = "Grants an Azure role to a user-assigned identity at a scope, and reports whether the identity's token really has access.",
    columns = [
        r#"{"name":"Identity","type":"string","jsonPath":".spec.identityRef.name"}"#,
        r#"{"name":"Role","type":"string","jsonPath":".spec.role"}"#,
        r#"{"name":"Scope","type":"string","jsonPath":".status.scope"}"#,
        r#"{"name":"Access","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"AccessVerified\")].status"}"#,
        r#"{"name":"Assignment","type":"string","priority":1,"jsonPath":".status.roleAssignmentId"}"#,
    ],
    /// Desired role assignment of a `UserAssignedIdentity` at an Azure scope.
    #[serde(rename_all = "camelCase")]
    pub struct RoleGrantSpec {
        /// The `UserAssignedIdentity` (same namespace) that receives the role. Immutable.
        #[x_kube(validation = Rule::new("self == oldSelf").message("identityRef is immutable; create a new grant").reason(Reason::FieldValueForbidden))]
        pub identity_ref: IdentityRef,

        /// The role: a built-in role name such as `Reader`, a role definition GUID, or a full role
        /// definition id (`/subscriptions/{sub}/providers/Microsoft.Authorization/roleDefinitions/{guid}`
        /// or `/providers/Microsoft.Authorization/roleDefinitions/{guid}`). Immutable.
        #[schemars(length(min = 1, max = 512))]
        #[x_kube(validation = Rule::new("self == oldSelf").message("role is immutable; create a new grant").reason(Reason::FieldValueForbidden))]
        #[x_kube(validation = Rule::new(r"!self.startsWith('/') || self.matches('^(/subscriptions/[0-9a-fA-F-]{36})?/providers/Microsoft.Authorization/roleDefinitions/[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$')").message("a role given as an id must be /subscriptions/{guid}/providers/Microsoft.Authorization/roleDefinitions/{guid} or /providers/Microsoft.Authorization/roleDefinitions/{guid}"))]
        pub role: String,

        /// Where the role applies: exactly one of `resourceGroup`, `subscription` and `resourceId`.
        /// Immutable.
        #[x_kube(validation = Rule::new("self == oldSelf").message("scope is immutable; create a new grant").reason(Reason::FieldValueForbidden))]
        pub scope: GrantScope,

        /// Have the agent on the bound VMs read the scope with the identity's token and report the
        /// result in `AccessVerified`.
        #[serde(default = "default_true")]
        pub verify_access: bool,

        /// What the access check needs for a role that acts on a data plane (see the README,
        /// "The agent").
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub verify_access_options: Option<VerifyAccessOptions>,

        /// `Delete` (default) deletes the role assignment when this object is deleted (never an
        /// adopted one); `Orphan` leaves it.
        #[serde(default)]
        pub deletion_policy: DeletionPolicy,
    }
}

/// What the access check of a data-plane role reads.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VerifyAccessOptions {
    /// For a Blob Storage data role granted on a storage account: the container whose blobs
    /// the check lists (a scope that names a container,
    /// `.../blobServices/default/containers/<name>`, needs none). Container names are 3-63
    /// lowercase letters, digits and single hyphens, starting and ending with a letter or digit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 3, max = 63), pattern(r"^[a-z0-9]([a-z0-9]|-[a-z0-9])+$"))]
    pub blob_container: Option<String>,
}

exactly_one_of! {
    /// Exactly one Azure scope.
    pub struct GrantScope {
        /// A resource group.
        "resourceGroup" => pub resource_group: ResourceGroupScope,
        /// A whole subscription.
        "subscription" => pub subscription: SubscriptionScope,
        /// Any ARM resource id below a subscription, such as a storage account, in canonical form:
        /// no `.` or `..` segments, empty segments, trailing `/`, percent-encoding, `?`, `#`,
        /// whitespace, backslash or non-ASCII characters.
        #[schemars(length(max = 1024))]
        #[x_kube(validation = Rule::new(r"self.matches('^/subscriptions/[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}(/[A-Za-z0-9_.()~!$*+,;=:@-]*[A-Za-z0-9_()~!$*+,;=:@-][A-Za-z0-9_.()~!$*+,;=:@-]*)*$')").message("must be a canonical ARM resource id /subscriptions/{guid}/...: no '.' or '..' segments, no empty segments or trailing '/', no percent-encoding, '?', '#', whitespace, backslash or non-ASCII characters"))]
        "resourceId" => pub resource_id: String,
    }
}

/// A resource group scope.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceGroupScope {
    /// Subscription id (a GUID); defaults to the controller's configured subscription.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 36), pattern(GUID_PATTERN))]
    pub subscription_id: Option<String>,
    /// Resource group name.
    #[schemars(length(min = 1, max = 90), pattern(RESOURCE_GROUP_PATTERN))]
    pub name: String,
}

/// A subscription scope.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionScope {
    /// Subscription id (a GUID).
    #[schemars(length(max = 36), pattern(GUID_PATTERN))]
    pub subscription_id: String,
}

kind_status! {
    /// Observed state of the role assignment.
    pub struct RoleGrantStatus {
        /// Conditions: `Granted` (controller), `AccessVerified` (agent), `Ready` (at most 16, keyed by
        /// type).
        conditions,
        /// The ARM scope the role is assigned at.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schemars(length(max = 2048))]
        pub scope: Option<String>,
        /// ARM id of the role assignment.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schemars(length(max = 2048))]
        pub role_assignment_id: Option<String>,
        /// ARM id of the resolved role definition.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schemars(length(max = 2048))]
        pub role_definition_id: Option<String>,
        /// Principal id the role is assigned to.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schemars(length(max = 128))]
        pub principal_id: Option<String>,
        /// True when the assignment already existed under another name and was adopted: the
        /// controller never deletes it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub adopted: Option<bool>,
        /// Result of the agent's access check (never the token).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub access: Option<AccessStatus>,
        /// The agent's last access check that failed for a passing reason (a server error, a
        /// dropped connection, throttling): `AccessVerified` keeps the last definitive result, and
        /// this says why it was not renewed. Cleared by the next check that gets an answer.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub last_check_error: Option<CheckError>,
    }
}

/// Result of reading the granted scope with the identity's token.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccessStatus {
    /// Whether the read succeeded.
    pub verified: bool,
    /// HTTP status of the read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<i32>,
    /// The agent (VM or instance) that checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub checked_by: Option<String>,
    /// Where the check read: `ARM`, `Blob` or `KeyVault` (absent: ARM).
    #[serde(default, skip_serializing_if = "AccessPlane::is_arm")]
    pub plane: AccessPlane,
}
