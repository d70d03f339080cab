//! The tutorial's world with a storage account and a key vault in DevTest, and principals
//! holding Reader on one scope each.

use secrecy::SecretString;
use uami_emulator::World;
use uami_emulator::world::InitialAssignment;

use crate::SUB;

pub fn rg_scope() -> String {
    format!("/subscriptions/{SUB}/resourceGroups/DevTest")
}

/// Principals with Reader on one scope each, and one with nothing.
pub const ON_SUB: &str = "11111111-0000-0000-0000-000000000001";
pub const ON_RG: &str = "11111111-0000-0000-0000-000000000002";
pub const ON_SA: &str = "11111111-0000-0000-0000-000000000003";
pub const ON_KV: &str = "11111111-0000-0000-0000-000000000004";
pub const NOBODY: &str = "11111111-0000-0000-0000-000000000005";

pub fn storage_id() -> String {
    format!(
        "{}/providers/Microsoft.Storage/storageAccounts/devtestdata",
        rg_scope()
    )
}

pub fn vault_id() -> String {
    format!(
        "{}/providers/Microsoft.KeyVault/vaults/devtest-kv",
        rg_scope()
    )
}

pub fn world_with_resources() -> World {
    let mut world = World::tutorial().unwrap();
    let rg = &mut world.subscriptions[0].resource_groups[0];
    rg.storage_accounts.push("devtestdata".into());
    rg.key_vaults.push("devtest-kv".into());
    for (principal, scope) in [
        (ON_SUB, format!("/subscriptions/{SUB}")),
        (ON_RG, rg_scope()),
        (ON_SA, storage_id()),
        (ON_KV, vault_id()),
    ] {
        world.role_assignments.push(InitialAssignment {
            principal_id: principal.into(),
            role: "Reader".into(),
            scope,
        });
    }
    world
}

pub trait Expose {
    fn expose(&self) -> String;
}

impl Expose for SecretString {
    fn expose(&self) -> String {
        secrecy::ExposeSecret::expose_secret(self).to_string()
    }
}
