//! The world file: the tenant, subscriptions, resource groups, VMs and scale sets, the
//! controller's service principal, the role assignments it starts with, and the faults.

use std::collections::BTreeMap;
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
    /// Azure's fixed quotas, lowerable so that a test can reach them.
    #[serde(default)]
    pub limits: Limits,
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

/// Declares a VM or a scale set with the model fields both share (size, administrator user,
/// image, tags, zones) written once, between the fields of its own, and `defaults(name)` with
/// every field but the name at its default. (`#[serde(flatten)]` would share them as a struct,
/// but it cannot be combined with `deny_unknown_fields`.)
macro_rules! compute_with_model {
    (
        $(#[$attr:meta])*
        pub struct $kind:ident {
            $(#[$name_attr:meta])*
            pub name: String,
            $($(#[$before_attr:meta])* pub $before:ident: $before_ty:ty = $before_default:expr,)*
            ..model,
            $($(#[$after_attr:meta])* pub $after:ident: $after_ty:ty = $after_default:expr,)*
        }
    ) => {
        $(#[$attr])*
        #[derive(Clone, Debug, Serialize, Deserialize)]
        #[serde(rename_all = "camelCase", deny_unknown_fields)]
        pub struct $kind {
            $(#[$name_attr])*
            pub name: String,
            $($(#[$before_attr])* pub $before: $before_ty,)*
            /// Size (`hardwareProfile.vmSize`, or a scale set's `sku.name`); `Standard_D2s_v3`.
            #[serde(default = "default_vm_size")]
            pub vm_size: String,
            /// Administrator user name (`osProfile.adminUsername`); `azureuser`. The emulator
            /// keeps no password.
            #[serde(default = "default_admin_username")]
            pub admin_username: String,
            /// Marketplace image (`storageProfile.imageReference`); Ubuntu 24.04 LTS.
            #[serde(default)]
            pub image: ImageReference,
            /// Tags.
            #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
            pub tags: BTreeMap<String, String>,
            /// Availability zones.
            #[serde(default, skip_serializing_if = "Vec::is_empty")]
            pub zones: Vec<String>,
            $($(#[$after_attr])* pub $after: $after_ty,)*
        }

        impl $kind {
            /// `name` with every other field at its default.
            fn defaults(name: &str) -> Self {
                Self {
                    name: name.into(),
                    $($before: $before_default,)*
                    vm_size: default_vm_size(),
                    admin_username: default_admin_username(),
                    image: ImageReference::default(),
                    tags: BTreeMap::new(),
                    zones: Vec::new(),
                    $($after: $after_default,)*
                }
            }
        }
    };
}

compute_with_model! {
    /// A VM.
    pub struct VirtualMachine {
        /// Name.
        pub name: String,
        /// Whether it has a system-assigned identity.
        #[serde(default)]
        pub system_assigned: bool = false,
        /// Listen address of its IMDS.
        #[serde(default = "loopback")]
        pub imds_listen: SocketAddr = loopback(),
        ..model,
        /// Network interface ids (`networkProfile`); one named `{name}-nic` in its resource
        /// group when empty.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub network_interfaces: Vec<String> = Vec::new(),
    }
}

compute_with_model! {
    /// A VM scale set.
    pub struct ScaleSet {
        /// Name.
        pub name: String,
        /// Number of instances (each with its own IMDS on 127.0.0.1:0).
        #[serde(default = "one")]
        pub instances: u32 = one(),
        /// Whether it has a system-assigned identity.
        #[serde(default)]
        pub system_assigned: bool = false,
        ..model,
        /// The subnet of its instances' network interfaces; `{name}-vnet/subnets/default` in
        /// its resource group when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub subnet: Option<String> = None,
    }
}

fn default_vm_size() -> String {
    "Standard_D2s_v3".into()
}

fn default_admin_username() -> String {
    "azureuser".into()
}

/// A marketplace image.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct ImageReference {
    pub publisher: String,
    pub offer: String,
    pub sku: String,
    pub version: String,
}

impl Default for ImageReference {
    fn default() -> Self {
        Self {
            publisher: "Canonical".into(),
            offer: "ubuntu-24_04-lts".into(),
            sku: "server".into(),
            version: "latest".into(),
        }
    }
}

/// The `osProfile` of a Linux VM (`computer` is `computerName`) or of a scale set's instances
/// (`computerNamePrefix`).
fn os_profile(computer: &str, name: &str, admin_username: &str) -> serde_json::Value {
    serde_json::json!({
        computer: name,
        "adminUsername": admin_username,
        "linuxConfiguration": {"disablePasswordAuthentication": true, "provisionVMAgent": true},
        "secrets": [],
        "allowExtensionOperations": true,
    })
}

/// The top-level fields ARM shows besides `properties`: `tags` and `zones`.
fn top_level(
    tags: &BTreeMap<String, String>,
    zones: &[String],
) -> serde_json::Map<String, serde_json::Value> {
    let mut top = serde_json::Map::new();
    if !tags.is_empty() {
        top.insert("tags".into(), serde_json::json!(tags));
    }
    if !zones.is_empty() {
        top.insert("zones".into(), serde_json::json!(zones));
    }
    top
}

impl VirtualMachine {
    /// VM `name` with the defaults: no system-assigned identity, IMDS on a free loopback port.
    pub fn named(name: &str) -> Self {
        Self::defaults(name)
    }

    /// Its model as ARM shows it: the top-level fields and `properties` (no read-only values).
    pub fn arm_model(
        &self,
        sub: &str,
        rg: &str,
    ) -> (
        serde_json::Map<String, serde_json::Value>,
        serde_json::Value,
    ) {
        let nics: Vec<String> = if self.network_interfaces.is_empty() {
            vec![format!(
                "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Network/networkInterfaces/{}-nic",
                self.name
            )]
        } else {
            self.network_interfaces.clone()
        };
        let nics: Vec<serde_json::Value> = nics
            .iter()
            .enumerate()
            .map(|(i, id)| serde_json::json!({"id": id, "properties": {"primary": i == 0}}))
            .collect();
        let m = self;
        let properties = serde_json::json!({
            "hardwareProfile": {"vmSize": m.vm_size},
            "storageProfile": {
                "imageReference": m.image,
                "osDisk": {
                    "osType": "Linux",
                    "name": format!("{}_OsDisk_1", self.name),
                    "createOption": "FromImage",
                    "caching": "ReadWrite",
                    "managedDisk": {
                        "storageAccountType": "Premium_LRS",
                        "id": format!("/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Compute/disks/{}_OsDisk_1", self.name),
                    },
                    "deleteOption": "Delete",
                    "diskSizeGB": 30,
                },
                "dataDisks": [],
            },
            "osProfile": os_profile("computerName", &self.name, &m.admin_username),
            "networkProfile": {"networkInterfaces": nics},
        });
        (top_level(&self.tags, &self.zones), properties)
    }
}

impl ScaleSet {
    /// Scale set `name` of `instances` instances with the defaults: no system-assigned
    /// identity.
    pub fn named(name: &str, instances: u32) -> Self {
        Self {
            instances,
            ..Self::defaults(name)
        }
    }

    /// Its model as ARM shows it: the top-level fields (`sku` among them) and `properties`.
    pub fn arm_model(
        &self,
        sub: &str,
        rg: &str,
    ) -> (
        serde_json::Map<String, serde_json::Value>,
        serde_json::Value,
    ) {
        let m = self;
        let subnet = self.subnet.clone().unwrap_or_else(|| {
            format!(
                "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Network/virtualNetworks/{}-vnet/subnets/default",
                self.name
            )
        });
        let mut top = top_level(&self.tags, &self.zones);
        top.insert(
            "sku".into(),
            serde_json::json!({"name": m.vm_size, "tier": "Standard", "capacity": self.instances}),
        );
        let properties = serde_json::json!({
            "upgradePolicy": {"mode": "Manual"},
            "overprovision": false,
            "singlePlacementGroup": false,
            "virtualMachineProfile": {
                "storageProfile": {
                    "imageReference": m.image,
                    "osDisk": {
                        "osType": "Linux",
                        "createOption": "FromImage",
                        "caching": "ReadWrite",
                        "managedDisk": {"storageAccountType": "Premium_LRS"},
                        "diskSizeGB": 30,
                    },
                    "dataDisks": [],
                },
                "osProfile": os_profile("computerNamePrefix", &self.name, &m.admin_username),
                "networkProfile": {"networkInterfaceConfigurations": [{
                    "name": format!("{}-nic", self.name),
                    "properties": {
                        "primary": true,
                        "ipConfigurations": [{
                            "name": "ipconfig1",
                            "properties": {"primary": true, "subnet": {"id": subnet}},
                        }],
                    },
                }]},
            },
        });
        (top, properties)
    }
}

/// Azure's fixed quotas that the emulator enforces, as Azure does. Azure's values are the
/// defaults (<https://learn.microsoft.com/azure/azure-resource-manager/management/azure-subscription-service-limits>);
/// a world may lower them so that a test reaches them with a few objects.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Limits {
    /// Role assignments per subscription, counting those at the subscription, its resource
    /// groups and its resources (not at management groups or the root). Azure: 4000, fixed
    /// (<https://learn.microsoft.com/azure/role-based-access-control/troubleshoot-limits>).
    #[serde(default = "role_assignments_per_subscription")]
    pub role_assignments_per_subscription: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            role_assignments_per_subscription: role_assignments_per_subscription(),
        }
    }
}

fn role_assignments_per_subscription() -> usize {
    4000
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
        let world: Self =
            serde_json::from_value(inner).map_err(|e| EmulatorError::World(e.to_string()))?;
        world.knobs.check().map_err(EmulatorError::World)?;
        Ok(world)
    }

    /// Read a world file.
    pub fn from_file(path: &Path) -> Result<Self, EmulatorError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| EmulatorError::World(format!("{}: {e}", path.display())))?;
        Self::from_yaml_str(&text)
    }

    /// The tutorial's world: the same as `examples/emulator-world.yaml`.
    pub fn tutorial() -> Result<Self, EmulatorError> {
        Self::from_yaml_str(include_str!("../../../examples/emulator-world.yaml"))
    }
}
