//! Azure RBAC as the emulator enforces it: the built-in role definitions with their real actions
//! and notActions, and the check "may this principal perform this action at this scope", from the
//! effective role assignments at the scope or any parent scope.

use serde_json::{Value, json};

/// A built-in role definition.
#[derive(Clone, Debug)]
pub struct Role {
    /// Role definition GUID.
    pub guid: &'static str,
    /// Role name.
    pub name: &'static str,
    /// Description.
    pub description: &'static str,
    /// Allowed actions (wildcards allowed).
    pub actions: &'static [&'static str],
    /// Excluded actions.
    pub not_actions: &'static [&'static str],
}

/// The built-in roles the emulator knows.
pub const BUILT_IN: &[Role] = &[
    Role {
        guid: "acdd72a7-3385-48ef-bd42-f606fba81ae7",
        name: "Reader",
        description: "View all resources, but does not allow you to make any changes.",
        actions: &["*/read"],
        not_actions: &[],
    },
    Role {
        guid: "b24988ac-6180-42a0-ab88-20f7382dd24c",
        name: "Contributor",
        description: "Grants full access to manage all resources, but does not allow you to assign roles in Azure RBAC.",
        actions: &["*"],
        not_actions: &[
            "Microsoft.Authorization/*/Delete",
            "Microsoft.Authorization/*/Write",
            "Microsoft.Authorization/elevateAccess/Action",
        ],
    },
    Role {
        guid: "8e3af657-a8ff-443c-a75c-2fe8c4bcb635",
        name: "Owner",
        description: "Grants full access to manage all resources, including the ability to assign roles in Azure RBAC.",
        actions: &["*"],
        not_actions: &[],
    },
    Role {
        guid: "18d7d88d-d35e-4fb5-a5c3-7773c20a72d9",
        name: "User Access Administrator",
        description: "Lets you manage user access to Azure resources.",
        actions: &["*/read", "Microsoft.Authorization/*", "Microsoft.Support/*"],
        not_actions: &[],
    },
    Role {
        guid: "f58310d9-a9f6-439a-9e8d-f62e7b41a168",
        name: "Role Based Access Control Administrator",
        description: "Manage access to Azure resources by assigning roles using Azure RBAC.",
        actions: &[
            "Microsoft.Authorization/roleAssignments/write",
            "Microsoft.Authorization/roleAssignments/delete",
            "*/read",
            "Microsoft.Support/*",
        ],
        not_actions: &[],
    },
    Role {
        guid: "e40ec5ca-96e0-45a2-b4ff-59039f2c2b59",
        name: "Managed Identity Contributor",
        description: "Create, Read, Update, and Delete User Assigned Identity",
        actions: &[
            "Microsoft.ManagedIdentity/userAssignedIdentities/read",
            "Microsoft.ManagedIdentity/userAssignedIdentities/write",
            "Microsoft.ManagedIdentity/userAssignedIdentities/delete",
            "Microsoft.ManagedIdentity/userAssignedIdentities/federatedIdentityCredentials/*",
            "Microsoft.Authorization/*/read",
            "Microsoft.Insights/alertRules/*",
            "Microsoft.Resources/subscriptions/resourceGroups/read",
            "Microsoft.Resources/deployments/*",
            "Microsoft.Support/*",
        ],
        not_actions: &[],
    },
    Role {
        guid: "f1a07417-d97a-45cb-824c-7a7467783830",
        name: "Managed Identity Operator",
        description: "Read and Assign User Assigned Identity",
        actions: &[
            "Microsoft.ManagedIdentity/userAssignedIdentities/*/read",
            "Microsoft.ManagedIdentity/userAssignedIdentities/*/assign/action",
            "Microsoft.Authorization/*/read",
            "Microsoft.Insights/alertRules/*",
            "Microsoft.Resources/subscriptions/resourceGroups/read",
            "Microsoft.Resources/deployments/*",
            "Microsoft.Support/*",
        ],
        not_actions: &[],
    },
    Role {
        guid: "9980e02c-c2be-4d73-94e8-173b1dc7cf3c",
        name: "Virtual Machine Contributor",
        description: "Create and manage virtual machines, manage disks, install and run software, reset password of the root user of the virtual machine using VM extensions, and connect to Linux virtual machine using SSH public key authentication.",
        actions: &[
            "Microsoft.Authorization/*/read",
            "Microsoft.Compute/virtualMachines/*",
            "Microsoft.Compute/virtualMachineScaleSets/*",
            "Microsoft.Compute/locations/*",
            "Microsoft.Resources/subscriptions/resourceGroups/read",
            "Microsoft.Resources/deployments/*",
            "Microsoft.Support/*",
        ],
        not_actions: &[],
    },
];

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
                "dataActions": [],
                "notDataActions": []
            }]
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
