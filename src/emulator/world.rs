//! The world file: the tenant, subscriptions, resource groups, VMs and scale sets, the
//! controller's service principal, the role assignments it starts with, and the faults.

use std::net::SocketAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::EmulatorError;
use super::faults::Faults;
use super::knobs::Knobs;

/// The emulated Azure.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct World {
    /// Tenant (directory) id.
    pub tenant_id: String,
    /// ARM and Entra ID listen address (`127.0.0.1:0` picks a free port).
    #[serde(default = "loopback")]
    pub listen: SocketAddr,
    /// Serve ARM and Entra ID over plain HTTP instead of HTTPS, for debugging with tools that
    /// cannot be given a certificate authority. Azure SDKs refuse to send bearer tokens over
    /// plain HTTP, so they cannot use the emulator this way. IMDS is plain HTTP either way.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub plain_http: bool,
    /// Lifetime of issued tokens, in seconds.
    #[serde(default = "default_lifetime")]
    pub token_lifetime_seconds: u64,
    /// Seconds before a new role assignment takes effect.
    #[serde(default)]
    pub rbac_propagation_seconds: f64,
    /// Polls that answer `InProgress` before a long-running operation completes.
    #[serde(default = "one")]
    pub lro_polls: u32,
    /// `Retry-After` (seconds) on long-running operations.
    #[serde(default)]
    pub lro_retry_after_seconds: u64,
    /// Service principals (the controller's, and any other caller).
    #[serde(default)]
    pub service_principals: Vec<ServicePrincipal>,
    /// Subscriptions.
    pub subscriptions: Vec<Subscription>,
    /// Role assignments present at start (effective at once).
    #[serde(default)]
    pub role_assignments: Vec<InitialAssignment>,
    /// Faults at start (changeable at run time).
    #[serde(default)]
    pub faults: Faults,
    /// Behaviour knobs at start (changeable at run time).
    #[serde(default)]
    pub knobs: Knobs,
    /// Certificate authorities (PEM, each entry one or more certificates) that Entra ID trusts,
    /// besides the system's, when it fetches an OIDC issuer's discovery document and keys over
    /// HTTPS: for an issuer served with a private or self-signed certificate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub oidc_issuer_ca_pems: Vec<String>,
}

/// A service principal that signs in with a secret or a federated token.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServicePrincipal {
    /// Display name.
    #[serde(default)]
    pub name: String,
    /// Application (client) id.
    pub client_id: String,
    /// Object (principal) id.
    pub principal_id: String,
    /// Client secret, if it may sign in with one.
    #[serde(default)]
    pub client_secret: Option<String>,
    /// Federated credentials it trusts.
    #[serde(default)]
    pub federated_credentials: Vec<FederatedCredential>,
}

/// A federated identity credential: tokens from `issuer` about `subject` for `audience`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FederatedCredential {
    /// Issuer (the cluster's OIDC issuer URL).
    pub issuer: String,
    /// Subject, such as `system:serviceaccount:uami-system:uami-controller`.
    pub subject: String,
    /// Audience.
    #[serde(default = "exchange_audience")]
    pub audience: String,
}

/// A subscription.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Subscription {
    /// Subscription id.
    pub id: String,
    /// Resource groups.
    #[serde(default)]
    pub resource_groups: Vec<ResourceGroup>,
}

/// A resource group and its compute.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResourceGroup {
    /// Name.
    pub name: String,
    /// Location.
    pub location: String,
    /// Linux VMs.
    #[serde(default)]
    pub virtual_machines: Vec<VirtualMachine>,
    /// VM scale sets.
    #[serde(default)]
    pub virtual_machine_scale_sets: Vec<ScaleSet>,
    /// Names of storage accounts (served for GET).
    #[serde(default)]
    pub storage_accounts: Vec<String>,
    /// Names of key vaults (served for GET).
    #[serde(default)]
    pub key_vaults: Vec<String>,
}

/// A VM.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualMachine {
    /// Name.
    pub name: String,
    /// Whether it has a system-assigned identity.
    #[serde(default)]
    pub system_assigned: bool,
    /// Listen address of its IMDS.
    #[serde(default = "loopback")]
    pub imds_listen: SocketAddr,
}

/// A VM scale set.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScaleSet {
    /// Name.
    pub name: String,
    /// Number of instances (each with its own IMDS on 127.0.0.1:0).
    #[serde(default = "one")]
    pub instances: u32,
    /// Whether it has a system-assigned identity.
    #[serde(default)]
    pub system_assigned: bool,
}

/// A role assignment at start.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InitialAssignment {
    /// Principal (object) id.
    pub principal_id: String,
    /// Role name (`Reader`) or role definition GUID.
    pub role: String,
    /// Scope, such as `/subscriptions/{id}/resourceGroups/DevTest`.
    pub scope: String,
}

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn default_lifetime() -> u64 {
    3600
}

fn one() -> u32 {
    1
}

fn exchange_audience() -> String {
    "api://AzureADTokenExchange".into()
}

/// The tutorial's subscription.
pub const TUTORIAL_SUBSCRIPTION: &str = "6a2bd3a4-59c6-4d4e-9e8b-5c5a2f0a1b2c";
/// The tutorial's tenant.
pub const TUTORIAL_TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
/// The controller's client id in the tutorial world.
pub const TUTORIAL_CONTROLLER_CLIENT_ID: &str = "0f8fad5b-d9cb-469f-a165-70867728950e";
/// The controller's client secret in the tutorial world (a local test value).
pub const TUTORIAL_CONTROLLER_SECRET: &str = "emulator-local-secret";

impl World {
    /// Parse a world file's YAML.
    /// The world may also be wrapped in a ConfigMap, under the key `world.yaml`.
    pub fn from_yaml_str(yaml: &str) -> Result<Self, EmulatorError> {
        let v: serde_json::Value =
            serde_yaml_ng::from_str(yaml).map_err(|e| EmulatorError::World(e.to_string()))?;
        let inner = if v["kind"] == "ConfigMap" {
            let text = v["data"]["world.yaml"].as_str().ok_or_else(|| {
                EmulatorError::World("a ConfigMap world needs data.\"world.yaml\"".into())
            })?;
            serde_yaml_ng::from_str(text)
                .map_err(|e| EmulatorError::World(format!("data.\"world.yaml\": {e}")))?
        } else {
            v
        };
        serde_json::from_value(inner).map_err(|e| EmulatorError::World(e.to_string()))
    }

    /// Read a world file.
    pub fn from_file(path: &Path) -> Result<Self, EmulatorError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| EmulatorError::World(format!("{}: {e}", path.display())))?;
        Self::from_yaml_str(&text)
    }

    /// The tutorial's world: the same as `examples/emulator-world.yaml`.
    pub fn tutorial() -> Result<Self, EmulatorError> {
        Self::from_yaml_str(include_str!("../../examples/emulator-world.yaml"))
    }
}
