//! ARM's URL shapes: which resource a path names, and for each (method, resource) the spec's
//! operationId, the RBAC action and scope it needs, and the api-versions it accepts.

use axum::http::Method;

use super::eq;
use super::resources;
use crate::emulator::state::ComputeKind;

/// The resource a request path names.
#[derive(Debug)]
pub(super) enum Route {
    Subscription {
        sub: String,
    },
    ResourceGroup {
        sub: String,
        rg: String,
    },
    Identity {
        sub: String,
        rg: String,
        name: String,
    },
    IdentityList {
        sub: String,
        rg: Option<String>,
    },
    Fic {
        sub: String,
        rg: String,
        name: String,
        fic: String,
    },
    FicList {
        sub: String,
        rg: String,
        name: String,
    },
    Compute {
        kind: ComputeKind,
        sub: String,
        rg: String,
        name: String,
    },
    AsyncOp {
        sub: String,
        id: String,
    },
    /// A storage account or key vault (`resources.rs`).
    Resource {
        sub: String,
        rg: String,
        type_: &'static str,
        name: String,
    },
    Assignment {
        scope: String,
        name: String,
    },
    AssignmentList {
        scope: String,
    },
    Definition {
        guid: String,
    },
    DefinitionList {
        scope: String,
    },
    Unknown,
}

const MI_VERSIONS: &[&str] = &[
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
/// Federated identity credentials arrived with 2022-01-31-preview.
const FIC_VERSIONS: &[&str] = &[
    "2022-01-31-preview",
    "2023-01-31",
    "2023-07-31-preview",
    "2024-11-30",
    "2025-01-31-preview",
    "2026-04-30",
    "2026-05-31",
];
const AUTH_VERSIONS: &[&str] = &[
    "2015-07-01",
    "2018-01-01-preview",
    "2018-09-01-preview",
    "2020-04-01-preview",
    "2020-10-01-preview",
    "2022-04-01",
    "2022-05-01-preview",
];
const COMPUTE_VERSIONS: &[&str] = &[
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
];
/// `Microsoft.Resources/subscriptions` (Subscriptions_Get) has releases of its own; not checked
/// against a stored specification.
const SUBSCRIPTION_VERSIONS: &[&str] = &[
    "2016-06-01",
    "2019-06-01",
    "2019-11-01",
    "2020-01-01",
    "2021-01-01",
    "2022-12-01",
];
const RESOURCES_VERSIONS: &[&str] = &[
    "2021-04-01",
    "2022-09-01",
    "2022-12-01",
    "2023-07-01",
    "2024-03-01",
    "2024-07-01",
    "2024-11-01",
    "2025-03-01",
    "2025-04-01",
];

/// The resource `path` names.
pub(super) fn route(path: &str) -> Route {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    // {scope}/providers/Microsoft.Authorization/...
    if let Some(i) = segs.iter().rposition(|s| eq(s, "Microsoft.Authorization"))
        && i >= 1
        && eq(segs[i - 1], "providers")
    {
        let scope = format!("/{}", segs[..i - 1].join("/"));
        let rest = &segs[i + 1..];
        return match rest {
            [t] if eq(t, "roleAssignments") => Route::AssignmentList { scope },
            [t, name] if eq(t, "roleAssignments") => Route::Assignment {
                scope,
                name: name.to_string(),
            },
            [t] if eq(t, "roleDefinitions") => Route::DefinitionList { scope },
            [t, guid] if eq(t, "roleDefinitions") => Route::Definition {
                guid: guid.to_string(),
            },
            _ => Route::Unknown,
        };
    }
    match segs.as_slice() {
        [s, sub] if eq(s, "subscriptions") => Route::Subscription {
            sub: sub.to_string(),
        },
        [s, sub, r, rg] if eq(s, "subscriptions") && eq(r, "resourceGroups") => {
            Route::ResourceGroup {
                sub: sub.to_string(),
                rg: rg.to_string(),
            }
        }
        [s, sub, p, ns, t]
            if eq(s, "subscriptions")
                && eq(p, "providers")
                && eq(ns, "Microsoft.ManagedIdentity")
                && eq(t, "userAssignedIdentities") =>
        {
            Route::IdentityList {
                sub: sub.to_string(),
                rg: None,
            }
        }
        [s, sub, r, rg, p, ns, t]
            if eq(s, "subscriptions")
                && eq(r, "resourceGroups")
                && eq(p, "providers")
                && eq(ns, "Microsoft.ManagedIdentity")
                && eq(t, "userAssignedIdentities") =>
        {
            Route::IdentityList {
                sub: sub.to_string(),
                rg: Some(rg.to_string()),
            }
        }
        [s, sub, r, rg, p, ns, t, name]
            if eq(s, "subscriptions")
                && eq(r, "resourceGroups")
                && eq(p, "providers")
                && eq(ns, "Microsoft.ManagedIdentity")
                && eq(t, "userAssignedIdentities") =>
        {
            Route::Identity {
                sub: sub.to_string(),
                rg: rg.to_string(),
                name: name.to_string(),
            }
        }
        [s, sub, r, rg, p, ns, t, name, f, rest @ ..]
            if eq(s, "subscriptions")
                && eq(r, "resourceGroups")
                && eq(p, "providers")
                && eq(ns, "Microsoft.ManagedIdentity")
                && eq(t, "userAssignedIdentities")
                && eq(f, "federatedIdentityCredentials")
                && rest.len() <= 1 =>
        {
            let (sub, rg, name) = (sub.to_string(), rg.to_string(), name.to_string());
            match rest.first() {
                Some(fic) => Route::Fic {
                    sub,
                    rg,
                    name,
                    fic: fic.to_string(),
                },
                None => Route::FicList { sub, rg, name },
            }
        }
        [s, sub, r, rg, p, ns, t, name]
            if eq(s, "subscriptions")
                && eq(r, "resourceGroups")
                && eq(p, "providers")
                && eq(ns, "Microsoft.Compute")
                && (eq(t, "virtualMachines") || eq(t, "virtualMachineScaleSets")) =>
        {
            Route::Compute {
                kind: if eq(t, "virtualMachines") {
                    ComputeKind::Vm
                } else {
                    ComputeKind::ScaleSet
                },
                sub: sub.to_string(),
                rg: rg.to_string(),
                name: name.to_string(),
            }
        }
        [s, sub, r, rg, p, ns, t, name]
            if eq(s, "subscriptions")
                && eq(r, "resourceGroups")
                && eq(p, "providers")
                && resources::served(ns, t).is_some() =>
        {
            Route::Resource {
                sub: sub.to_string(),
                rg: rg.to_string(),
                type_: resources::served(ns, t).map(|x| x.0).unwrap_or_default(),
                name: name.to_string(),
            }
        }
        [s, sub, p, ns, l, _loc, o, id]
            if eq(s, "subscriptions")
                && eq(p, "providers")
                && eq(ns, "Microsoft.Compute")
                && eq(l, "locations")
                && eq(o, "operations") =>
        {
            Route::AsyncOp {
                sub: sub.to_string(),
                id: id.to_string(),
            }
        }
        _ => Route::Unknown,
    }
}

/// What ARM needs to know about an operation before it runs.
pub(super) struct Described {
    /// The spec's operationId.
    pub op: &'static str,
    /// The RBAC action it needs, if any.
    pub action: Option<String>,
    /// The scope the action is checked at.
    pub scope: String,
    /// Accepted api-versions.
    pub versions: &'static [&'static str],
}

fn op(
    op: &'static str,
    action: Option<String>,
    scope: String,
    versions: &'static [&'static str],
) -> Described {
    Described {
        op,
        action,
        scope,
        versions,
    }
}

/// The operation `method` on `r` is; `None` when ARM has no such operation.
pub(super) fn describe(method: &Method, r: &Route) -> Option<Described> {
    const MI: &str = "Microsoft.ManagedIdentity/userAssignedIdentities";
    const RA: &str = "Microsoft.Authorization/roleAssignments";
    let m = method.as_str();
    Some(match (m, r) {
        ("GET", Route::Subscription { sub }) => op(
            "Subscriptions_Get",
            Some("Microsoft.Resources/subscriptions/read".into()),
            format!("/subscriptions/{sub}"),
            SUBSCRIPTION_VERSIONS,
        ),
        (
            "GET",
            Route::Resource {
                sub,
                rg,
                type_,
                name,
            },
        ) => {
            let (_, id, versions) = resources::by_type(type_);
            op(
                id,
                Some(format!("{type_}/read")),
                format!("/subscriptions/{sub}/resourceGroups/{rg}/providers/{type_}/{name}"),
                versions,
            )
        }
        ("GET" | "PUT", Route::ResourceGroup { sub, rg }) => {
            let (id, verb) = if m == "GET" {
                ("ResourceGroups_Get", "read")
            } else {
                ("ResourceGroups_CreateOrUpdate", "write")
            };
            op(
                id,
                Some(format!(
                    "Microsoft.Resources/subscriptions/resourceGroups/{verb}"
                )),
                format!("/subscriptions/{sub}/resourceGroups/{rg}"),
                RESOURCES_VERSIONS,
            )
        }
        ("GET" | "PUT" | "PATCH" | "DELETE", Route::Identity { sub, rg, name }) => {
            let (id, verb) = match m {
                "GET" => ("UserAssignedIdentities_Get", "read"),
                "PUT" => ("UserAssignedIdentities_CreateOrUpdate", "write"),
                "PATCH" => ("UserAssignedIdentities_Update", "write"),
                _ => ("UserAssignedIdentities_Delete", "delete"),
            };
            op(
                id,
                Some(format!("{MI}/{verb}")),
                identity_scope(sub, rg, name),
                MI_VERSIONS,
            )
        }
        ("GET", Route::IdentityList { sub, rg: Some(rg) }) => op(
            "UserAssignedIdentities_ListByResourceGroup",
            None,
            format!("/subscriptions/{sub}/resourceGroups/{rg}"),
            MI_VERSIONS,
        ),
        ("GET", Route::IdentityList { sub, rg: None }) => op(
            "UserAssignedIdentities_ListBySubscription",
            None,
            format!("/subscriptions/{sub}"),
            MI_VERSIONS,
        ),
        ("GET" | "PUT" | "DELETE", Route::Fic { sub, rg, name, .. })
        | ("GET", Route::FicList { sub, rg, name }) => {
            let (id, verb) = match (m, r) {
                ("GET", Route::FicList { .. }) => ("FederatedIdentityCredentials_List", "read"),
                ("GET", _) => ("FederatedIdentityCredentials_Get", "read"),
                ("PUT", _) => ("FederatedIdentityCredentials_CreateOrUpdate", "write"),
                _ => ("FederatedIdentityCredentials_Delete", "delete"),
            };
            op(
                id,
                Some(format!("{MI}/federatedIdentityCredentials/{verb}")),
                identity_scope(sub, rg, name),
                FIC_VERSIONS,
            )
        }
        ("GET" | "PATCH", Route::Compute { kind, .. }) => {
            let (id, verb) = match (m, kind) {
                ("GET", ComputeKind::Vm) => ("VirtualMachines_Get", "read"),
                ("GET", ComputeKind::ScaleSet) => ("VirtualMachineScaleSets_Get", "read"),
                (_, ComputeKind::Vm) => ("VirtualMachines_Update", "write"),
                (_, ComputeKind::ScaleSet) => ("VirtualMachineScaleSets_Update", "write"),
            };
            op(
                id,
                Some(format!("Microsoft.Compute/{}/{verb}", compute_type(*kind))),
                compute_scope(r),
                COMPUTE_VERSIONS,
            )
        }
        // The caller that started an operation may poll it.
        ("GET", Route::AsyncOp { sub, .. }) => op(
            "AsyncOperation_Get",
            None,
            format!("/subscriptions/{sub}"),
            COMPUTE_VERSIONS,
        ),
        ("GET" | "PUT" | "DELETE", Route::Assignment { scope, .. })
        | ("GET", Route::AssignmentList { scope }) => {
            let (id, verb) = match (m, r) {
                ("GET", Route::AssignmentList { .. }) => ("RoleAssignments_ListForScope", "read"),
                ("GET", _) => ("RoleAssignments_Get", "read"),
                ("PUT", _) => ("RoleAssignments_Create", "write"),
                _ => ("RoleAssignments_Delete", "delete"),
            };
            op(
                id,
                Some(format!("{RA}/{verb}")),
                scope.clone(),
                AUTH_VERSIONS,
            )
        }
        // Every principal of the tenant may read role definitions.
        ("GET", Route::Definition { .. }) => {
            op("RoleDefinitions_Get", None, "/".into(), AUTH_VERSIONS)
        }
        ("GET", Route::DefinitionList { scope }) => {
            op("RoleDefinitions_List", None, scope.clone(), AUTH_VERSIONS)
        }
        _ => return None,
    })
}

/// The scope of a user-assigned identity.
pub(super) fn identity_scope(sub: &str, rg: &str, name: &str) -> String {
    format!(
        "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{name}"
    )
}

/// The resource type segment of a VM or scale set.
pub(super) fn compute_type(kind: ComputeKind) -> &'static str {
    match kind {
        ComputeKind::Vm => "virtualMachines",
        ComputeKind::ScaleSet => "virtualMachineScaleSets",
    }
}

fn compute_scope(r: &Route) -> String {
    match r {
        Route::Compute {
            kind,
            sub,
            rg,
            name,
        } => format!(
            "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Compute/{}/{name}",
            compute_type(*kind)
        ),
        _ => String::new(),
    }
}

/// The subscription (lower-case) a scope lies in, or `tenant`.
pub(super) fn subscription_of(scope: &str) -> String {
    let segs: Vec<&str> = scope.split('/').filter(|s| !s.is_empty()).collect();
    match segs.as_slice() {
        [s, sub, ..] if eq(s, "subscriptions") => sub.to_lowercase(),
        _ => "tenant".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_follow_arm_url_shapes() {
        assert!(matches!(
            route("/subscriptions/s/resourcegroups/DevTest"),
            Route::ResourceGroup { .. }
        ));
        assert!(matches!(
            route(
                "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id1"
            ),
            Route::Identity { .. }
        ));
        assert!(matches!(
            route("/subscriptions/s/providers/Microsoft.ManagedIdentity/userAssignedIdentities"),
            Route::IdentityList { rg: None, .. }
        ));
        assert!(matches!(
            route(
                "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm"
            ),
            Route::Compute {
                kind: ComputeKind::Vm,
                ..
            }
        ));
        assert!(matches!(
            route(
                "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Authorization/roleAssignments/x"
            ),
            Route::Assignment { .. }
        ));
        assert!(matches!(
            route("/providers/Microsoft.Authorization/roleDefinitions/g"),
            Route::Definition { .. }
        ));
        assert!(matches!(
            route("/subscriptions/s/providers/Microsoft.Authorization/roleDefinitions"),
            Route::DefinitionList { .. }
        ));
        assert!(matches!(
            route("/subscriptions/s/providers/Microsoft.Compute/locations/eastus/operations/o"),
            Route::AsyncOp { .. }
        ));
        assert!(matches!(route("/nothing/here"), Route::Unknown));
    }
}
