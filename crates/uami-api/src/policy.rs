//! `GrantPolicy` (cluster-scoped): which namespaces may grant which roles at which scopes, and bind
//! identities to which VMs, scale sets and service accounts. No policy, no grant.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::*;

/// Allows namespaces to use roles at scopes, and to bind identities to VMs and scale sets.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "uami.dev",
    version = "v1alpha1",
    kind = "GrantPolicy",
    status = "GrantPolicyStatus",
    category = "azureidentity",
    doc = "Cluster-wide policy: which namespaces may grant which Azure roles at which scopes, and bind identities to which VMs and scale sets. A RoleGrant or IdentityBinding that no policy allows is refused.",
    printcolumn = r#"{"name":"Namespaces","type":"string","jsonPath":".spec.namespaces"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct GrantPolicySpec {
    /// Namespaces this policy applies to (at most 256); `*` means every namespace.
    #[schemars(length(min = 1, max = 256))]
    #[schemars(inner(length(max = 63), pattern(r"^(\*|[a-z0-9]([-a-z0-9]*[a-z0-9])?)$")))]
    pub namespaces: Vec<String>,

    /// Role grants allowed: each rule pairs roles with scopes. At most 8 rules of at most 16
    /// scopes each; a platform that needs more writes another GrantPolicy (what any policy allows
    /// is allowed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub role_grants: Vec<RoleGrantRule>,

    /// Identity bindings allowed: VMs and scale sets the namespaces may bind identities to, and
    /// identities they may bind to their service accounts (at most 1024 rules).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1024))]
    pub identity_bindings: Vec<BindingRule>,

    /// Resource groups from which the namespaces may adopt existing identities
    /// (`adoptExisting: true`), at most 256. Without a rule, adoption is refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub identity_adoption: Vec<AdoptionRule>,
}

/// Resource groups whose existing identities may be adopted.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AdoptionRule {
    /// Subscription id (a GUID); defaults to the controller's configured subscription.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 36), pattern(GUID_PATTERN))]
    pub subscription_id: Option<String>,
    /// Resource group name, or `*` for every group of the subscription.
    #[schemars(length(min = 1, max = 90), pattern(r"^(\*|[-\w.()]*[-\w()])$"))]
    pub resource_group: String,
}

/// Roles allowed at scopes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RoleGrantRule {
    /// Allowed roles (at most 64): built-in role names (`Reader`) or role definition GUIDs. No
    /// wildcard: a powerful role must be named to be allowed.
    #[schemars(length(min = 1, max = 64))]
    #[schemars(inner(length(min = 1, max = 512)))]
    pub roles: Vec<String>,
    /// Scopes at which those roles may be granted (at most 16).
    #[schemars(length(min = 1, max = 16))]
    pub scopes: Vec<ScopeRule>,
}

exactly_one_of! {
    /// A scope pattern: exactly one of `resourceGroup`, `subscription`, `resourceIdPrefix`.
    pub struct ScopeRule {
        /// Resource groups: grants at the group and below it, not at the subscription.
        "resourceGroup" => pub resource_group: ResourceGroupPattern,
        /// A subscription: grants at the subscription and anywhere below it.
        "subscription" => pub subscription: SubscriptionPattern,
        /// This resource id and everything below it, compared segment by segment and
        /// case-insensitively (`.../DevTest` does not cover `.../DevTest2`). Canonical form only, at
        /// most 400 characters.
        #[schemars(length(max = 400))]
        #[x_kube(validation = Rule::new(r"self.matches('^/subscriptions/[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}(/[A-Za-z0-9_.()~!$*+,;=:@-]*[A-Za-z0-9_()~!$*+,;=:@-][A-Za-z0-9_.()~!$*+,;=:@-]*)*$')").message("must be a canonical ARM resource id /subscriptions/{guid}/...: no '.' or '..' segments, no empty segments or trailing '/', no percent-encoding, '?', '#', whitespace, backslash or non-ASCII characters"))]
        "resourceIdPrefix" => pub resource_id_prefix: String,
    }
}

/// Resource groups in a subscription.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceGroupPattern {
    /// Subscription id (a GUID); defaults to the controller's configured subscription.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 36), pattern(GUID_PATTERN))]
    pub subscription_id: Option<String>,
    /// Resource group name, or `*` for every group of the subscription.
    #[schemars(length(min = 1, max = 90), pattern(r"^(\*|[-\w.()]*[-\w()])$"))]
    pub name: String,
}

/// A subscription.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionPattern {
    /// Subscription id (a GUID).
    #[schemars(length(max = 36), pattern(GUID_PATTERN))]
    pub subscription_id: String,
}

exactly_one_of! {
    /// What identities may be bound to: exactly one of VMs, scale sets, or service accounts.
    pub struct BindingRule {
        /// Virtual machines.
        "virtualMachine" => pub virtual_machine: ComputePattern,
        /// Virtual machine scale sets.
        "virtualMachineScaleSet" => pub virtual_machine_scale_set: ComputePattern,
        /// Service accounts (workload identity): which Azure identities may be bound to which
        /// service accounts of the policy's namespaces.
        "serviceAccount" => pub service_account: ServiceAccountPattern,
    }
}

/// Identities, by their Azure coordinates, that may be bound to service accounts.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccountPattern {
    /// Subscription id of the identities (a GUID); defaults to the controller's configured
    /// subscription.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 36), pattern(GUID_PATTERN))]
    pub subscription_id: Option<String>,
    /// Resource group of the identities.
    #[schemars(length(min = 1, max = 90), pattern(RESOURCE_GROUP_PATTERN))]
    pub resource_group: String,
    /// Azure name of the identity, or `*` (the default) for every identity in the group.
    #[serde(default = "star")]
    #[schemars(
        length(min = 1, max = 128),
        pattern(r"^(\*|[a-zA-Z0-9][a-zA-Z0-9_-]{2,127})$")
    )]
    pub identity_name: String,
    /// Service account names (at most 64), or `*` (the default) for every service account of the
    /// namespace.
    #[serde(default = "stars")]
    #[schemars(length(min = 1, max = 64))]
    #[schemars(inner(
        length(min = 1, max = 253),
        pattern(r"^(\*|[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*)$")
    ))]
    pub service_accounts: Vec<String>,
}

fn stars() -> Vec<String> {
    vec![star()]
}

/// VMs or scale sets by resource group and name.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ComputePattern {
    /// Subscription id (a GUID); defaults to the controller's configured subscription.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 36), pattern(GUID_PATTERN))]
    pub subscription_id: Option<String>,
    /// Resource group name.
    #[schemars(length(min = 1, max = 90), pattern(RESOURCE_GROUP_PATTERN))]
    pub resource_group: String,
    /// VM or scale set name, or `*` (the default) for all of them in the group.
    #[serde(default = "star")]
    #[schemars(
        length(min = 1, max = 64),
        pattern(r"^(\*|[a-zA-Z0-9]([a-zA-Z0-9_.-]{0,62}[a-zA-Z0-9_])?)$")
    )]
    pub name: String,
}

fn star() -> String {
    "*".to_string()
}

/// Observed state of the policy.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GrantPolicyStatus {
    /// The generation of the spec that this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Conditions (at most 16, keyed by type).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Conditions,
}
