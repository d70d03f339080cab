//! `IdentityBinding`: assigns an identity to a VM or scale set (tutorial step 2); the agent on the
//! VM reports the token it obtained through IMDS (tutorial step 4, first half). Or binds it to a
//! Kubernetes service account (workload identity): a federated identity credential on the
//! identity trusts the cluster's OIDC issuer for that service account, and the controller proves
//! it by exchanging a service account token for an Entra ID token.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::*;

namespaced_kind! {
    kind = "IdentityBinding",
    status = "IdentityBindingStatus",
    shortname = "idb",
    doc = "Assigns a user-assigned identity to a virtual machine or scale set, or binds it to a service account through a federated identity credential (workload identity), and reports the token obtained with it.",
    columns = [
        r#"{"name":"Identity","type":"string","jsonPath":".spec.identityRef.name"}"#,
        r#"{"name":"VM","type":"string","jsonPath":".spec.target.virtualMachine.name"}"#,
        r#"{"name":"Scale Set","type":"string","jsonPath":".spec.target.virtualMachineScaleSet.name"}"#,
        r#"{"name":"Service Account","type":"string","jsonPath":".spec.target.serviceAccount.name"}"#,
        r#"{"name":"Token Expires","type":"string","priority":1,"jsonPath":".status.token.expiresOn"}"#,
        r#"{"name":"Target","type":"string","priority":1,"jsonPath":".status.targetResourceId"}"#,
    ],
    /// Desired binding of a `UserAssignedIdentity` to a VM or a VM scale set.
    #[serde(rename_all = "camelCase")]
    pub struct IdentityBindingSpec {
        /// The `UserAssignedIdentity` (same namespace) to assign. Immutable.
        #[x_kube(validation = Rule::new("self == oldSelf").message("identityRef is immutable; create a new binding").reason(Reason::FieldValueForbidden))]
        pub identity_ref: IdentityRef,

        /// What receives the identity: exactly one of `virtualMachine`, `virtualMachineScaleSet` and
        /// `serviceAccount`. Immutable, but for `serviceAccount.default`.
        #[x_kube(validation = Rule::new("self == oldSelf || (has(self.serviceAccount) && has(oldSelf.serviceAccount) && self.serviceAccount.name == oldSelf.serviceAccount.name)").message("target is immutable (but for serviceAccount.default); create a new binding").reason(Reason::FieldValueForbidden))]
        pub target: BindingTarget,

        /// What the agent on the VM checks with the identity's token.
        #[serde(default)]
        pub token_check: TokenCheck,

        /// `Delete` (default) removes the identity from the VM when this object is deleted; `Orphan`
        /// leaves it assigned.
        #[serde(default)]
        pub deletion_policy: DeletionPolicy,
    }
}

exactly_one_of! {
    /// Exactly one VM, scale set or service account.
    pub struct BindingTarget {
        /// A single virtual machine.
        "virtualMachine" => pub virtual_machine: ComputeRef,
        /// A virtual machine scale set (every instance gets the identity).
        "virtualMachineScaleSet" => pub virtual_machine_scale_set: ComputeRef,
        /// A service account in the binding's namespace (workload identity): the identity gets a
        /// federated identity credential for the cluster's OIDC issuer and
        /// `system:serviceaccount:<namespace>:<name>`, and the service account the
        /// `azure.workload.identity/client-id` and `azure.workload.identity/tenant-id` annotations.
        "serviceAccount" => pub service_account: ServiceAccountRef,
    }
}

/// A service account in the binding's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccountRef {
    /// Name of the ServiceAccount.
    #[schemars(length(min = 1, max = 253), pattern(K8S_NAME_PATTERN))]
    pub name: String,
    /// Whether this binding's identity is the service account's default: the one its
    /// `azure.workload.identity/client-id` annotation names, when several bindings bind
    /// identities to it (each identity gets its own federated identity credential; pods pick
    /// another one by its client id). Without any binding marked, the oldest binding is the
    /// default; two bindings of different identities marked are both refused
    /// (`DefaultConflict`) and the annotation is left as it was. May be changed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub default: bool,
}

/// Coordinates of a VM or scale set in Azure.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ComputeRef {
    /// Subscription id (a GUID); defaults to the controller's configured subscription.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 36), pattern(GUID_PATTERN))]
    pub subscription_id: Option<String>,
    /// Resource group of the VM or scale set.
    #[schemars(length(min = 1, max = 90), pattern(RESOURCE_GROUP_PATTERN))]
    pub resource_group: String,
    /// Name of the VM or scale set (1-64 characters).
    #[schemars(length(min = 1, max = 64), pattern(VM_NAME_PATTERN))]
    pub name: String,
}

/// The token check: the agent's on a VM, or the controller's token exchange for a service
/// account.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenCheck {
    /// Resource (audience) to request a token for (through IMDS, or at Entra ID for a service
    /// account).
    #[serde(default = "default_token_resource")]
    #[schemars(length(min = 1, max = 512), pattern(r"^(https?|api)://\S+$"))]
    pub resource: String,
}

impl Default for TokenCheck {
    fn default() -> Self {
        Self {
            resource: default_token_resource(),
        }
    }
}

/// The default token audience: Azure Resource Manager.
pub fn default_token_resource() -> String {
    "https://management.azure.com/".to_string()
}

kind_status! {
    /// Observed state of the binding.
    pub struct IdentityBindingStatus {
        /// Conditions: `Assigned` (controller), `TokenAcquired` (the agent, or the controller's token
        /// exchange for a service account), `Ready` (at most 16, keyed by type).
        conditions,
        /// ARM resource id of the VM or scale set; for a service account, of the federated identity
        /// credential.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schemars(length(max = 2048))]
        pub target_resource_id: Option<String>,
        /// Whether the identity is currently assigned to the target in Azure (for a service account:
        /// the federated identity credential exists and the service account is annotated).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub assigned: Option<bool>,
        /// True when the identity was already assigned to the target before this binding assigned
        /// it: the controller then never removes it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub adopted: Option<bool>,
        /// Name of the federated identity credential on the identity (service account targets).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schemars(length(max = 128))]
        pub federated_credential_name: Option<String>,
        /// Metadata of the token the agent obtained through IMDS on a VM, or the controller obtained
        /// by exchanging a service account token (`checkedBy: token-exchange`); never the token.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub token: Option<TokenStatus>,
        /// Per-instance token metadata for a scale set, keyed by instance id (at most 100).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["instanceId"]))]
        #[schemars(length(max = 100))]
        pub instances: Vec<InstanceTokenStatus>,
        /// VM and scale set targets: the client id of the identity as Azure has it, which the agent
        /// on the target asks IMDS for (written by the controller).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schemars(length(max = 64))]
        pub client_id: Option<String>,
        /// VM and scale set targets: the scopes granted to the identity by RoleGrants with
        /// `verifyAccess` that the agent on the target reads with the identity's token (written by
        /// the controller, at most 64; sorted by grant name).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        #[schemars(extend("x-kubernetes-list-type" = "atomic"))]
        #[schemars(length(max = 64))]
        pub access_checks: Vec<AccessCheck>,
        /// The agent's last check that failed for a passing reason (IMDS unavailable or throttled,
        /// an identity IMDS does not know yet): the last verified result stays, and this says why
        /// it was not renewed. Cleared by the next check that succeeds.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub last_check_error: Option<CheckError>,
        /// Service account targets: each scope granted to the identity (by RoleGrants with
        /// `verifyAccess`), read with the exchanged token (at most 100).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        #[schemars(extend("x-kubernetes-list-type" = "atomic"))]
        #[schemars(length(max = 100))]
        pub access: Vec<ScopeAccess>,
    }
}

/// A scope the agent reads with the identity's token, and the grant that granted it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccessCheck {
    /// The RoleGrant (same namespace).
    #[schemars(length(max = 253))]
    pub role_grant: String,
    /// The ARM scope the grant assigned its role at.
    #[schemars(length(max = 2048))]
    pub scope: String,
    /// Where the grant's role acts, so where the agent checks it: `ARM` (a GET of the scope),
    /// `Blob` (listing the blobs of `container` in the storage account of the scope) or
    /// `KeyVault` (listing the secrets of the vault of the scope). Absent means `ARM`.
    #[serde(default, skip_serializing_if = "AccessPlane::is_arm")]
    pub plane: AccessPlane,
    /// `Blob` checks: the container whose blobs are listed (from the scope when it names a
    /// container, else the grant's `verifyAccessOptions.blobContainer`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub container: Option<String>,
}

/// The service an access check reads: Azure Resource Manager, or the data plane a role's data
/// actions are authorized on.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum AccessPlane {
    /// Azure Resource Manager: `GET {scope}`.
    #[default]
    #[serde(rename = "ARM")]
    Arm,
    /// Azure Blob Storage: List Blobs on a container.
    Blob,
    /// Azure Key Vault: Get Secrets (the list) of a vault.
    KeyVault,
}

impl AccessPlane {
    /// Whether this is ARM (the default, left out of status).
    pub fn is_arm(&self) -> bool {
        *self == Self::Arm
    }

    /// The name written in status and messages.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Arm => "ARM",
            Self::Blob => "Blob",
            Self::KeyVault => "KeyVault",
        }
    }
}

/// The result of reading one granted scope with the identity's token.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScopeAccess {
    /// The RoleGrant (same namespace) that granted the scope.
    #[schemars(length(max = 253))]
    pub role_grant: String,
    /// The ARM scope read.
    #[schemars(length(max = 2048))]
    pub scope: String,
    /// Whether the read succeeded (HTTP 200).
    pub verified: bool,
    /// HTTP status of the read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<i32>,
}

/// Token metadata reported by the agent. Never contains the token.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenStatus {
    /// Audience the token was issued for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub resource: Option<String>,
    /// Token type, normally `Bearer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub token_type: Option<String>,
    /// Client id the token was requested with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub client_id: Option<String>,
    /// Tenant (`tid` claim).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub tenant_id: Option<String>,
    /// Object id of the identity (`oid` claim).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub object_id: Option<String>,
    /// Expiry time of the token (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub expires_on: Option<String>,
    /// Start of the token's validity (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub not_before: Option<String>,
    /// The agent (VM or instance) that obtained the token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub checked_by: Option<String>,
}

/// Token metadata of one scale set instance.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstanceTokenStatus {
    /// Scale set instance id.
    #[schemars(length(max = 256))]
    pub instance_id: String,
    /// Whether the instance obtained a token.
    pub acquired: bool,
    /// Why not, when it did not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub reason: Option<String>,
    /// Token metadata (never the token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<TokenStatus>,
}

/// The label the controller puts on every binding to a VM or scale set: the agents on that
/// target list and watch only the bindings that carry their value.
pub const TARGET_LABEL: &str = "uami.dev/target";

/// The value of [`TARGET_LABEL`] for the VM or scale set `target_id` (an ARM id, compared
/// case-insensitively): the first 32 hex digits of the SHA-256 of the lowercased id, within
/// the 63 characters of a label value.
pub fn target_label_value(target_id: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(target_id.to_lowercase().as_bytes());
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod label_tests {
    use super::*;

    #[test]
    fn the_target_label_ignores_case_and_fits_a_label_value() {
        let a = target_label_value(
            "/subscriptions/S/resourceGroups/DevTest/providers/Microsoft.Compute/virtualMachines/myVM",
        );
        let b = target_label_value(
            "/subscriptions/s/resourcegroups/devtest/providers/microsoft.compute/virtualmachines/myvm",
        );
        assert_eq!(a, b);
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(
            a,
            target_label_value(
                "/subscriptions/s/resourcegroups/devtest/providers/microsoft.compute/virtualmachines/myvm2"
            )
        );
    }
}
