//! The Azure Resource Manager client: typed resources, small traits per resource family (what
//! the reconcilers depend on), and [`ArmClient`], their implementation over one pooled reqwest
//! client with a cached bearer token, client-side pacing per subscription, `Retry-After`
//! handling and metrics per operation and status code.

pub mod auth;
pub mod cli;
pub mod client;
pub mod error;
pub mod federated;
pub mod http;
pub mod scope;
pub mod throttle;

use async_trait::async_trait;
use std::collections::BTreeMap;

pub use client::{
    ACCESS_CHECK_PROVIDERS, ArmClient, ArmClientOptions, ArmMetrics, DataPlanes, DataRead,
    DataRequest, KEY_VAULT_AUDIENCE, STORAGE_AUDIENCE, access_check_api_version, blob_read,
    data_read, probe_access, probe_data_plane, secrets_read,
};
pub use error::ArmError;

/// API versions used for each resource family.
pub mod api_versions {
    pub const MANAGED_IDENTITY: &str = "2023-01-31"; // Microsoft.ManagedIdentity
    pub const AUTHORIZATION: &str = "2022-04-01"; // role assignments and definitions
    pub const COMPUTE: &str = "2024-11-01"; // Microsoft.Compute VMs and scale sets
    pub const RESOURCES: &str = "2024-03-01"; // Microsoft.Resources resource groups
    pub const SUBSCRIPTIONS: &str = "2022-12-01"; // Microsoft.Resources Subscriptions_Get
    pub const STORAGE: &str = "2023-05-01"; // Microsoft.Storage storage accounts
    pub const KEY_VAULT: &str = "2023-07-01"; // Microsoft.KeyVault vaults
}

pub mod identity {
    use std::collections::BTreeMap;
    #[derive(Clone, Debug, Default, PartialEq)]
    pub struct Identity {
        pub id: String,
        pub name: String,
        pub location: String,
        pub tags: BTreeMap<String, String>,
        pub client_id: String,
        pub principal_id: String,
        pub tenant_id: String,
    }
}

pub mod roles {
    #[derive(Clone, Debug, Default, PartialEq)]
    pub struct RoleDefinition {
        pub id: String,
        pub name: String,
        pub role_name: String,
        /// The data actions of all its permissions, less none: what it allows on data planes
        /// (Blob Storage, Key Vault), which ARM does not serve.
        pub data_actions: Vec<String>,
    }
    #[derive(Clone, Debug, Default, PartialEq)]
    pub struct RoleAssignment {
        pub id: String,
        pub name: String,
        pub scope: String,
        pub role_definition_id: String,
        pub principal_id: String,
    }
    /// A role assignment to create: `name` at `scope`, granting `role_definition_id` to the
    /// service principal `principal_id`.
    #[derive(Clone, Copy, Debug)]
    pub struct NewRoleAssignment<'a> {
        pub scope: &'a str,
        pub name: &'a str,
        pub role_definition_id: &'a str,
        pub principal_id: &'a str,
    }
    /// The namespace of role assignment names (a fixed UUID of this project).
    pub const ASSIGNMENT_NAMESPACE: uuid::Uuid =
        uuid::Uuid::from_u128(0x5f1c_2a9e_7d3b_4c61_9a0e_b2d4_6e8f_1a37);

    /// The role assignment name: UUIDv5 over `lower(scope)|lower(principalId)|lower(roleGuid)`.
    /// The same triple always gives the same name, so a restart never creates a duplicate.
    pub fn assignment_name(
        scope: &str,
        principal_id: &str,
        role_definition_guid: &str,
    ) -> uuid::Uuid {
        let s = format!(
            "{}|{}|{}",
            scope.trim_end_matches('/').to_lowercase(),
            principal_id.to_lowercase(),
            role_definition_guid.to_lowercase()
        );
        uuid::Uuid::new_v5(&ASSIGNMENT_NAMESPACE, s.as_bytes())
    }
    /// The GUID of a role definition given as a GUID or as either id form.
    pub fn role_definition_guid(id_or_guid: &str) -> Option<String> {
        let g = id_or_guid.rsplit('/').next()?;
        uuid::Uuid::parse_str(g).ok().map(|u| u.to_string())
    }
}

pub mod compute {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::ArmError;

    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
    pub enum TargetKind {
        VirtualMachine,
        VirtualMachineScaleSet,
    }
    #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
    pub struct ComputeTarget {
        pub kind: TargetKind,
        pub subscription: String,
        pub resource_group: String,
        pub name: String,
    }
    impl ComputeTarget {
        pub fn id(&self) -> String {
            let t = match self.kind {
                TargetKind::VirtualMachine => "virtualMachines",
                TargetKind::VirtualMachineScaleSet => "virtualMachineScaleSets",
            };
            format!(
                "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Compute/{t}/{}",
                self.subscription, self.resource_group, self.name
            )
        }
        pub fn key(&self) -> String {
            self.id().to_lowercase()
        }
    }
    #[derive(Clone, Debug, Default, PartialEq)]
    pub struct UserAssignedInfo {
        pub principal_id: Option<String>,
        pub client_id: Option<String>,
    }
    #[derive(Clone, Debug, Default, PartialEq)]
    pub struct ComputeIdentity {
        pub type_: String,
        pub principal_id: Option<String>,
        pub user_assigned: BTreeMap<String, UserAssignedInfo>,
    }
    impl ComputeIdentity {
        pub fn has_user_assigned(&self, id: &str) -> bool {
            self.user_assigned
                .keys()
                .any(|k| k.eq_ignore_ascii_case(id))
        }
        pub fn has_system_assigned(&self) -> bool {
            self.type_.contains("SystemAssigned")
        }
    }
    #[derive(Clone, Debug, Default, PartialEq)]
    pub struct ComputeResource {
        pub id: String,
        pub etag: Option<String>,
        pub identity: ComputeIdentity,
        pub provisioning_state: Option<String>,
    }
    pub fn build_identity_patch(
        current: &ComputeIdentity,
        add: &[String],
        remove: &[String],
    ) -> Option<serde_json::Value> {
        let mut changes = serde_json::Map::new();
        let mut remaining: Vec<String> = current.user_assigned.keys().cloned().collect();
        for id in add {
            if !current.has_user_assigned(id) {
                changes.insert(id.clone(), serde_json::json!({}));
                remaining.push(id.clone());
            }
        }
        for id in remove {
            if current.has_user_assigned(id) {
                changes.insert(id.clone(), serde_json::Value::Null);
                remaining.retain(|r| !r.eq_ignore_ascii_case(id));
            }
        }
        if changes.is_empty() {
            return None;
        }
        // ARM-NOTES §2.4 (D2): removing the last user-assigned identity sends the type alone,
        // `SystemAssigned` when the VM keeps its system identity and `None` otherwise, with no
        // `userAssignedIdentities` map (Compute refuses null entries next to those types).
        let type_ = match (current.has_system_assigned(), remaining.is_empty()) {
            (true, false) => "SystemAssigned, UserAssigned",
            (true, true) => {
                return Some(serde_json::json!({"identity": {"type": "SystemAssigned"}}));
            }
            (false, false) => "UserAssigned",
            (false, true) => return Some(serde_json::json!({"identity": {"type": "None"}})),
        };
        Some(serde_json::json!({"identity": {"type": type_, "userAssignedIdentities": changes}}))
    }
    /// How ARM reports a long-running operation (ARM-NOTES §2.4, D3).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum LroKind {
        /// `Azure-AsyncOperation`: the URL answers 200 with `{"status": ...}`.
        AsyncOperation,
        /// `Location`: the URL answers 202 while running and 200/204 when done.
        Location,
    }
    /// Where and how to poll a long-running operation.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct LroPoll {
        /// The URL, on the ARM endpoint's origin.
        pub url: url::Url,
        /// Its form.
        pub kind: LroKind,
    }
    pub enum PatchOutcome {
        Done(ComputeResource),
        InProgress {
            poll: LroPoll,
            retry_after: Option<Duration>,
        },
    }
    pub enum OperationStatus {
        InProgress { retry_after: Option<Duration> },
        Succeeded,
        Failed(ArmError),
    }
}

use compute::{ComputeResource, ComputeTarget, LroPoll, OperationStatus, PatchOutcome};
use federated::IdentityCoordinates;
use identity::Identity;
use roles::{NewRoleAssignment, RoleAssignment, RoleDefinition};

#[async_trait]
pub trait IdentityApi: Send + Sync {
    async fn get_identity(&self, at: &IdentityCoordinates) -> Result<Option<Identity>, ArmError>;
    /// Create the identity; never overwrites one that exists (`If-None-Match: *`, ARM answers
    /// 412 `PreconditionFailed`).
    async fn create_identity(
        &self,
        at: &IdentityCoordinates,
        location: &str,
        tags: &BTreeMap<String, String>,
    ) -> Result<Identity, ArmError>;
    async fn update_identity_tags(
        &self,
        at: &IdentityCoordinates,
        tags: &BTreeMap<String, String>,
    ) -> Result<Identity, ArmError>;
    async fn delete_identity(&self, at: &IdentityCoordinates) -> Result<(), ArmError>;
}

#[async_trait]
pub trait RoleApi: Send + Sync {
    async fn get_role_definition(
        &self,
        scope: &str,
        guid: &str,
    ) -> Result<Option<RoleDefinition>, ArmError>;
    async fn find_role_definition(
        &self,
        scope: &str,
        role_name: &str,
    ) -> Result<Option<RoleDefinition>, ArmError>;
    async fn get_role_assignment(
        &self,
        scope: &str,
        name: &str,
    ) -> Result<Option<RoleAssignment>, ArmError>;
    async fn create_role_assignment(
        &self,
        new: NewRoleAssignment<'_>,
    ) -> Result<RoleAssignment, ArmError>;
    async fn delete_role_assignment(&self, scope: &str, name: &str) -> Result<(), ArmError>;
    async fn list_role_assignments_for_principal(
        &self,
        scope: &str,
        principal_id: &str,
    ) -> Result<Vec<RoleAssignment>, ArmError>;
    /// Every role assignment at, above and below `scope`, all pages.
    async fn list_role_assignments(&self, scope: &str) -> Result<Vec<RoleAssignment>, ArmError>;
}

#[async_trait]
pub trait ComputeApi: Send + Sync {
    async fn get_compute(
        &self,
        target: &ComputeTarget,
    ) -> Result<Option<ComputeResource>, ArmError>;
    async fn patch_identity(
        &self,
        target: &ComputeTarget,
        body: &serde_json::Value,
        if_match: Option<&str>,
    ) -> Result<PatchOutcome, ArmError>;
    async fn poll_operation(&self, poll: &LroPoll) -> Result<OperationStatus, ArmError>;
}

#[cfg(test)]
mod tests {
    use super::compute::{ComputeIdentity, UserAssignedInfo, build_identity_patch};
    use serde_json::json;

    const ID1: &str = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id1";
    const ID2: &str = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id2";

    fn vm(system: bool, ids: &[&str]) -> ComputeIdentity {
        ComputeIdentity {
            type_: match (system, ids.is_empty()) {
                (true, true) => "SystemAssigned",
                (true, false) => "SystemAssigned, UserAssigned",
                (false, false) => "UserAssigned",
                (false, true) => "None",
            }
            .into(),
            principal_id: system.then(|| "sys".to_string()),
            user_assigned: ids
                .iter()
                .map(|i| (i.to_string(), UserAssignedInfo::default()))
                .collect(),
        }
    }

    #[test]
    fn removing_the_last_user_identity_sends_the_type_alone() {
        assert_eq!(
            build_identity_patch(&vm(false, &[ID1]), &[], &[ID1.into()]),
            Some(json!({"identity": {"type": "None"}}))
        );
        assert_eq!(
            build_identity_patch(&vm(true, &[ID1]), &[], &[ID1.into()]),
            Some(json!({"identity": {"type": "SystemAssigned"}}))
        );
    }

    #[test]
    fn removing_one_of_two_names_it_with_null_and_adding_uses_an_empty_object() {
        assert_eq!(
            build_identity_patch(&vm(true, &[ID1, ID2]), &[], &[ID1.into()]),
            Some(
                json!({"identity": {"type": "SystemAssigned, UserAssigned", "userAssignedIdentities": {ID1: null}}})
            )
        );
        assert_eq!(
            build_identity_patch(&vm(false, &[]), &[ID2.into()], &[]),
            Some(
                json!({"identity": {"type": "UserAssigned", "userAssignedIdentities": {ID2: {}}}})
            )
        );
        assert_eq!(
            build_identity_patch(&vm(false, &[ID1]), &[ID1.into()], &[]),
            None
        );
    }
}
