//! Azure RBAC as the emulator enforces it: the built-in role definitions with their real actions,
//! notActions, dataActions and notDataActions, and the check "may this principal perform this
//! action (on ARM) or data action (on a data plane) at this scope", from the effective role
//! assignments at the scope or any parent scope.

use std::sync::LazyLock;

use serde_json::{Value, json};

/// A built-in role definition.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Role {
    /// Role definition GUID.
    pub guid: String,
    /// Role name.
    pub name: String,
    /// Description.
    pub description: String,
    /// Allowed actions (wildcards allowed).
    pub actions: Vec<String>,
    /// Excluded actions.
    pub not_actions: Vec<String>,
    /// Allowed data actions: what the role may do on data planes (Blob Storage, Key Vault),
    /// which ARM never authorizes.
    #[serde(default)]
    pub data_actions: Vec<String>,
    /// Excluded data actions.
    #[serde(default)]
    pub not_data_actions: Vec<String>,
}

/// The built-in roles the emulator knows, with the actions Azure gives them
/// (`builtin-roles.json`).
pub static BUILT_IN: LazyLock<Vec<Role>> =
    LazyLock::new(|| serde_json::from_str(include_str!("builtin-roles.json")).unwrap_or_default());

/// The built-in role with this name or GUID (case-insensitive).
pub fn find(name_or_guid: &str) -> Option<&'static Role> {
    let key = name_or_guid.rsplit('/').next().unwrap_or(name_or_guid);
    BUILT_IN
        .iter()
        .find(|r| r.guid.eq_ignore_ascii_case(key) || r.name.eq_ignore_ascii_case(name_or_guid))
}

/// Match `action` against a pattern: `*` inside a segment matches any characters, a `*` segment
/// matches zero or more whole segments; case-insensitive.
pub fn action_matches(pattern: &str, action: &str) -> bool {
    let p: Vec<String> = pattern
        .to_lowercase()
        .split('/')
        .map(str::to_string)
        .collect();
    let a: Vec<String> = action
        .to_lowercase()
        .split('/')
        .map(str::to_string)
        .collect();
    segments_match(&p, &a)
}

fn segments_match(p: &[String], a: &[String]) -> bool {
    match p.split_first() {
        None => a.is_empty(),
        Some((first, rest)) if first == "*" => {
            if rest.is_empty() {
                return !a.is_empty();
            }
            (0..=a.len()).any(|skip| segments_match(rest, &a[skip..]))
        }
        Some((first, rest)) => match a.split_first() {
            Some((head, tail)) => glob(first, head) && segments_match(rest, tail),
            None => false,
        },
    }
}

fn glob(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == text,
        Some((pre, post)) => {
            text.len() >= pre.len() + post.len()
                && text.starts_with(pre)
                && (0..=text.len() - pre.len()).any(|i| {
                    text.is_char_boundary(pre.len() + i) && glob(post, &text[pre.len() + i..])
                })
        }
    }
}

/// Whether `role` allows `action`.
pub fn allows(role: &Role, action: &str) -> bool {
    role.actions.iter().any(|p| action_matches(p, action))
        && !role.not_actions.iter().any(|p| action_matches(p, action))
}

/// Whether `role` allows the data action `action`.
pub fn allows_data(role: &Role, action: &str) -> bool {
    role.data_actions.iter().any(|p| action_matches(p, action))
        && !role
            .not_data_actions
            .iter()
            .any(|p| action_matches(p, action))
}

/// `scope` is `parent` or below it (case-insensitive, whole segments).
pub fn within(scope: &str, parent: &str) -> bool {
    let s = scope.trim_end_matches('/').to_lowercase();
    let p = parent.trim_end_matches('/').to_lowercase();
    p.is_empty() || s == p || s.starts_with(&format!("{p}/"))
}

/// The role definition resource as ARM returns it.
pub fn definition_json(role: &Role, subscription: Option<&str>) -> Value {
    let id = match subscription {
        Some(s) => format!(
            "/subscriptions/{s}/providers/Microsoft.Authorization/roleDefinitions/{}",
            role.guid
        ),
        None => format!(
            "/providers/Microsoft.Authorization/roleDefinitions/{}",
            role.guid
        ),
    };
    json!({
        "id": id,
        "type": "Microsoft.Authorization/roleDefinitions",
        "name": role.guid,
        "properties": {
            "roleName": role.name,
            "type": "BuiltInRole",
            "description": role.description,
            "assignableScopes": ["/"],
            "permissions": [{
                "actions": role.actions,
                "notActions": role.not_actions,
                "dataActions": role.data_actions,
                "notDataActions": role.not_data_actions
            }]
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_roles_load() {
        let names: Vec<&str> = BUILT_IN.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "Reader",
                "Contributor",
                "Owner",
                "User Access Administrator",
                "Role Based Access Control Administrator",
                "Managed Identity Contributor",
                "Managed Identity Operator",
                "Virtual Machine Contributor",
                "Storage Blob Data Reader",
                "Key Vault Secrets User"
            ]
        );
    }

    #[test]
    fn built_in_roles_mean_what_azure_says() {
        let role = |n: &str| find(n).unwrap();
        assert!(allows(
            role("Reader"),
            "Microsoft.Resources/subscriptions/resourceGroups/read"
        ));
        assert!(!allows(
            role("Reader"),
            "Microsoft.Compute/virtualMachines/write"
        ));
        assert!(allows(
            role("Contributor"),
            "Microsoft.Compute/virtualMachines/write"
        ));
        assert!(!allows(
            role("Contributor"),
            "Microsoft.Authorization/roleAssignments/write"
        ));
        assert!(allows(
            role("User Access Administrator"),
            "Microsoft.Authorization/roleAssignments/write"
        ));
        assert!(allows(
            role("Role Based Access Control Administrator"),
            "Microsoft.Authorization/roleAssignments/delete"
        ));
        assert!(!allows(
            role("Role Based Access Control Administrator"),
            "Microsoft.Compute/virtualMachines/write"
        ));
        assert!(allows(
            role("Managed Identity Operator"),
            "Microsoft.ManagedIdentity/userAssignedIdentities/assign/action"
        ));
        assert!(!allows(
            role("Managed Identity Operator"),
            "Microsoft.ManagedIdentity/userAssignedIdentities/write"
        ));
        assert!(allows(
            role("Managed Identity Contributor"),
            "Microsoft.ManagedIdentity/userAssignedIdentities/write"
        ));
        assert!(!allows(
            role("Managed Identity Contributor"),
            "Microsoft.ManagedIdentity/userAssignedIdentities/assign/action"
        ));
        assert!(allows(
            role("Virtual Machine Contributor"),
            "Microsoft.Compute/virtualMachines/write"
        ));
        assert!(allows(
            role("Owner"),
            "Microsoft.Authorization/roleAssignments/write"
        ));
        assert_eq!(
            find("acdd72a7-3385-48ef-bd42-f606fba81ae7").unwrap().name,
            "Reader"
        );
        // Data actions are a role's own: `*/read` reads no blob and no secret.
        let blobs = "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/read";
        let secrets = "Microsoft.KeyVault/vaults/secrets/readMetadata/action";
        assert!(allows_data(role("Storage Blob Data Reader"), blobs));
        assert!(!allows_data(role("Storage Blob Data Reader"), secrets));
        assert!(allows_data(role("Key Vault Secrets User"), secrets));
        assert!(!allows_data(role("Key Vault Secrets User"), blobs));
        for arm_role in ["Reader", "Contributor", "Owner"] {
            assert!(!allows_data(role(arm_role), blobs), "{arm_role}");
            assert!(!allows_data(role(arm_role), secrets), "{arm_role}");
        }
        assert!(!allows(
            role("Storage Blob Data Reader"),
            "Microsoft.Storage/storageAccounts/read"
        ));
    }

    #[test]
    fn scopes_nest_on_whole_segments() {
        assert!(within(
            "/subscriptions/s/resourceGroups/DevTest",
            "/subscriptions/s"
        ));
        assert!(within(
            "/subscriptions/s/resourcegroups/devtest/x",
            "/subscriptions/s/resourceGroups/DevTest"
        ));
        assert!(!within(
            "/subscriptions/s/resourceGroups/DevTest2",
            "/subscriptions/s/resourceGroups/DevTest"
        ));
        assert!(within("/subscriptions/s", "/"));
    }
}
