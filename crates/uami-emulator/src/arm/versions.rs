//! Every api-version the emulator accepts, one table per provider and resource type, and the
//! answer ARM gives for any other.
//!
//! Each table lists the versions of the stored specifications (`shared/arm-specs`) and the
//! defaults of the current official SDKs, besides older stable releases clients still send.
//! Defaults of the newest published Python SDKs (read from their `_configuration.py` and
//! operation builders):
//! - `azure-mgmt-compute` 39.0.0: virtual machines and scale sets `2026-04-01`;
//! - `azure-mgmt-msi` 7.1.0: `2024-11-30` (`DEFAULT_API_VERSION`);
//! - `azure-mgmt-authorization` 4.0.0: role assignments and definitions `2022-04-01`;
//! - `azure-mgmt-resource` 26.0.0: resource groups `2025-04-01`;
//! - `azure-mgmt-resource-subscriptions` 1.0.0: subscriptions `2022-12-01`.
//!
//! ARM refuses an unknown version in two ways. For the types ARM serves itself
//! (`Microsoft.Resources` subscriptions and resource groups) the answer is 400
//! `InvalidApiVersionParameter` with the versions newest first; for a resource provider's type
//! it is 400 `NoRegisteredProviderFound`, naming the type, its versions oldest first and its
//! locations (messages as seen from ARM in Azure/azure-cli#28496, Azure/azure-powershell#3079,
//! MicrosoftDocs/azure-docs#82469).

use axum::http::StatusCode;
use serde_json::Value;

use super::bad_request;

/// Who answers for a type's api-versions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Answered {
    /// ARM itself (`Microsoft.Resources`).
    ByArm,
    /// The type's resource provider, registered in the listed locations (none: every location,
    /// written as ARM writes it for a global type, `''`).
    ByProvider { regional: bool },
}

/// The api-versions one resource type accepts.
#[derive(Debug)]
pub(super) struct ApiVersions {
    /// The type as ARM names it in its answer (`virtualMachines`, `roleAssignments`).
    pub type_name: &'static str,
    /// Accepted versions, oldest first.
    pub versions: &'static [&'static str],
    pub answered: Answered,
}

const COMPUTE: &[&str] = &[
    "2022-03-01",
    "2022-08-01",
    "2022-11-01",
    "2023-03-01",
    "2023-07-01",
    "2023-09-01",
    "2024-03-01",
    "2024-07-01",
    "2024-11-01",
    "2025-02-01",
    "2025-04-01",
    "2025-11-01",
    "2026-04-01",
];

/// `Microsoft.Compute/virtualMachines`: the stored 2024-11-01 documents, the 2025-11-01
/// `ComputeRP.json` (ARM-NOTES S4), `azure-mgmt-compute` 39.0.0's 2026-04-01.
pub(super) const VIRTUAL_MACHINES: ApiVersions = ApiVersions::regional("virtualMachines", COMPUTE);

/// `Microsoft.Compute/virtualMachineScaleSets`: the same releases as virtual machines.
pub(super) const SCALE_SETS: ApiVersions =
    ApiVersions::regional("virtualMachineScaleSets", COMPUTE);

/// `Microsoft.Compute/locations/operations`: the status URLs of Compute's operations.
pub(super) const COMPUTE_OPERATIONS: ApiVersions =
    ApiVersions::regional("locations/operations", COMPUTE);

const MANAGED_IDENTITY: &[&str] = &[
    "2018-11-30",
    "2021-09-30-preview",
    "2022-01-31-preview",
    "2023-01-31",
    "2023-07-31-preview",
    "2024-11-30",
    "2025-01-31-preview",
    "2026-04-30",
    "2026-05-31",
];

/// `Microsoft.ManagedIdentity/userAssignedIdentities`: the stored 2026-05-31 document, the
/// stable releases of ARM-NOTES section 1, `azure-mgmt-msi` 7.1.0's 2024-11-30.
pub(super) const USER_ASSIGNED_IDENTITIES: ApiVersions =
    ApiVersions::regional("userAssignedIdentities", MANAGED_IDENTITY);

/// `.../userAssignedIdentities/federatedIdentityCredentials`: from 2022-01-31-preview, the
/// third release.
pub(super) const FEDERATED_CREDENTIALS: ApiVersions = ApiVersions::regional(
    "userAssignedIdentities/federatedIdentityCredentials",
    MANAGED_IDENTITY.split_at(2).1,
);

const AUTHORIZATION: &[&str] = &[
    "2015-07-01",
    "2018-01-01-preview",
    "2018-09-01-preview",
    "2020-04-01-preview",
    "2020-10-01-preview",
    "2022-04-01",
    "2022-05-01-preview",
];

/// `Microsoft.Authorization/roleAssignments`: the stored 2022-04-01 document,
/// `azure-mgmt-authorization` 4.0.0's 2022-04-01 and its older releases. A global type.
pub(super) const ROLE_ASSIGNMENTS: ApiVersions =
    ApiVersions::global("roleAssignments", AUTHORIZATION);

/// `Microsoft.Authorization/roleDefinitions`: as role assignments.
pub(super) const ROLE_DEFINITIONS: ApiVersions =
    ApiVersions::global("roleDefinitions", AUTHORIZATION);

/// `Microsoft.Resources/subscriptions` (Subscriptions_Get) has releases of its own, up to
/// `azure-mgmt-resource-subscriptions` 1.0.0's 2022-12-01; not checked against a stored
/// specification.
pub(super) const SUBSCRIPTIONS: ApiVersions = ApiVersions::by_arm(
    "subscriptions",
    &[
        "2016-06-01",
        "2019-06-01",
        "2019-11-01",
        "2020-01-01",
        "2021-01-01",
        "2022-12-01",
    ],
);

/// `Microsoft.Resources/resourceGroups`: the stored 2024-03-01 document, the 2025-04-01
/// `resources.json` (ARM-NOTES S6) that `azure-mgmt-resource` 26.0.0 sends.
pub(super) const RESOURCE_GROUPS: ApiVersions = ApiVersions::by_arm(
    "resourceGroups",
    &[
        "2021-04-01",
        "2022-09-01",
        "2022-12-01",
        "2023-07-01",
        "2024-03-01",
        "2024-07-01",
        "2024-11-01",
        "2025-03-01",
        "2025-04-01",
    ],
);

/// `Microsoft.Storage/storageAccounts`: stable releases; no stored specification.
pub(super) const STORAGE_ACCOUNTS: ApiVersions = ApiVersions::regional(
    "storageAccounts",
    &[
        "2021-09-01",
        "2022-09-01",
        "2023-01-01",
        "2023-04-01",
        "2023-05-01",
        "2024-01-01",
    ],
);

/// `Microsoft.KeyVault/vaults`: stable releases; no stored specification.
pub(super) const KEY_VAULTS: ApiVersions = ApiVersions::regional(
    "vaults",
    &[
        "2021-10-01",
        "2022-07-01",
        "2023-02-01",
        "2023-07-01",
        "2024-11-01",
    ],
);

impl ApiVersions {
    /// The versions of a type its provider answers for in each region.
    const fn regional(type_name: &'static str, versions: &'static [&'static str]) -> Self {
        Self {
            type_name,
            versions,
            answered: Answered::ByProvider { regional: true },
        }
    }

    /// The versions of a type ARM itself answers for.
    const fn by_arm(type_name: &'static str, versions: &'static [&'static str]) -> Self {
        Self {
            type_name,
            versions,
            answered: Answered::ByArm,
        }
    }

    /// The versions of a type its provider answers for globally.
    const fn global(type_name: &'static str, versions: &'static [&'static str]) -> Self {
        Self {
            type_name,
            versions,
            answered: Answered::ByProvider { regional: false },
        }
    }

    /// Whether `version` is accepted.
    pub(super) fn accepts(&self, version: &str) -> bool {
        self.versions.contains(&version)
    }

    /// ARM's answer to `version`, which this type does not accept; `location` is where the
    /// request was routed, `locations` those of the world.
    pub(super) fn refusal(
        &self,
        version: &str,
        location: &str,
        locations: &[String],
    ) -> (StatusCode, Value) {
        match self.answered {
            Answered::ByArm => {
                let newest_first: Vec<&str> = self.versions.iter().rev().copied().collect();
                bad_request(
                    "InvalidApiVersionParameter",
                    &format!(
                        "The api-version '{version}' is invalid. The supported versions are '{}'.",
                        newest_first.join(",")
                    ),
                )
            }
            Answered::ByProvider { regional } => {
                let locations = if regional {
                    locations.join(", ")
                } else {
                    String::new()
                };
                bad_request(
                    "NoRegisteredProviderFound",
                    &format!(
                        "No registered resource provider found for location '{location}' and API version '{version}' for type '{}'. The supported api-versions are '{}'. The supported locations are '{locations}'.",
                        self.type_name,
                        self.versions.join(", ")
                    ),
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_sorted_oldest_first_without_repeats() {
        for t in [
            &VIRTUAL_MACHINES,
            &USER_ASSIGNED_IDENTITIES,
            &FEDERATED_CREDENTIALS,
            &ROLE_ASSIGNMENTS,
            &SUBSCRIPTIONS,
            &RESOURCE_GROUPS,
            &STORAGE_ACCOUNTS,
            &KEY_VAULTS,
        ] {
            assert!(
                t.versions.windows(2).all(|w| w[0] < w[1]),
                "{}",
                t.type_name
            );
        }
    }

    #[test]
    fn refusals_follow_arm_and_providers() {
        let (status, v) = RESOURCE_GROUPS.refusal("2099-01-01", "eastus", &[]);
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(v["error"]["code"], "InvalidApiVersionParameter");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .contains("'2025-04-01,2025-03-01,"),
            "{v}"
        );
        let (_, v) = VIRTUAL_MACHINES.refusal("2099-01-01", "eastus", &["eastus".into()]);
        assert_eq!(v["error"]["code"], "NoRegisteredProviderFound");
        let message = v["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.starts_with("No registered resource provider found for location 'eastus' and API version '2099-01-01' for type 'virtualMachines'. The supported api-versions are '2022-03-01, 2022-08-01,"),
            "{message}"
        );
        assert!(
            message.ends_with("The supported locations are 'eastus'."),
            "{message}"
        );
        let (_, v) = ROLE_ASSIGNMENTS.refusal("2099-01-01", "eastus", &["eastus".into()]);
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .ends_with("The supported locations are ''."),
            "{v}"
        );
    }
}
