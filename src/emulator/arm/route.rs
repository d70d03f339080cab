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
        ty: &'static str,
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
/// Federated identity credentials arrived with 2022-01-31-preview, the third release.
const FIC_VERSIONS: &[&str] = MI_VERSIONS.split_at(2).1;
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
    let [s, sub, rest @ ..] = segs.as_slice() else {
        return Route::Unknown;
    };
    if !eq(s, "subscriptions") {
        return Route::Unknown;
    }
    let sub = sub.to_string();
    match rest {
        [] => Route::Subscription { sub },
        [p, ns, t] if eq(p, "providers") && managed_identity(ns, t) => {
            Route::IdentityList { sub, rg: None }
        }
        [p, ns, l, _loc, o, id]
            if eq(p, "providers")
                && eq(ns, "Microsoft.Compute")
                && eq(l, "locations")
                && eq(o, "operations") =>
        {
            Route::AsyncOp {
                sub,
                id: id.to_string(),
            }
        }
        [r, rg, tail @ ..] if eq(r, "resourceGroups") => in_group(sub, rg.to_string(), tail),
        _ => Route::Unknown,
    }
}

fn managed_identity(namespace: &str, type_: &str) -> bool {
    eq(namespace, "Microsoft.ManagedIdentity") && eq(type_, "userAssignedIdentities")
}

/// A path below `/subscriptions/{sub}/resourceGroups/{rg}`.
fn in_group(sub: String, rg: String, tail: &[&str]) -> Route {
    let [p, ns, t, rest @ ..] = tail else {
        return if tail.is_empty() {
            Route::ResourceGroup { sub, rg }
        } else {
            Route::Unknown
        };
    };
    if !eq(p, "providers") {
        return Route::Unknown;
    }
    let identity = managed_identity(ns, t);
    let name = rest.first().map(|n| n.to_string()).unwrap_or_default();
    match rest {
        [] if identity => Route::IdentityList { sub, rg: Some(rg) },
        [_] if identity => Route::Identity { sub, rg, name },
        [_, f, fic @ ..] if identity && eq(f, "federatedIdentityCredentials") && fic.len() <= 1 => {
            match fic.first() {
                Some(fic) => Route::Fic {
                    sub,
                    rg,
                    name,
                    fic: fic.to_string(),
                },
                None => Route::FicList { sub, rg, name },
            }
        }
        [_] if eq(ns, "Microsoft.Compute") && eq(t, "virtualMachines") => Route::Compute {
            kind: ComputeKind::Vm,
            sub,
            rg,
            name,
        },
        [_] if eq(ns, "Microsoft.Compute") && eq(t, "virtualMachineScaleSets") => Route::Compute {
            kind: ComputeKind::ScaleSet,
            sub,
            rg,
            name,
        },
        [_] => match resources::served(ns, t) {
            Some((ty, _, _)) => Route::Resource { sub, rg, ty, name },
            None => Route::Unknown,
        },
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

/// The operation `method` on `r` is; `None` when ARM has no such operation.
pub(super) fn describe(method: &Method, r: &Route) -> Option<Described> {
    type Ops = [(&'static str, &'static str, &'static str)];
    let resource_ops;
    // Per route: (method, operationId, verb of the RBAC action), the action's resource type,
    // the scope it is checked at, and the accepted api-versions.
    let (ops, action, scope, versions): (&Ops, Option<String>, String, &'static [&str]) = match r {
        Route::Subscription { sub } => (
            &[("GET", "Subscriptions_Get", "read")],
            Some("Microsoft.Resources/subscriptions".into()),
            format!("/subscriptions/{sub}"),
            SUBSCRIPTION_VERSIONS,
        ),
        Route::ResourceGroup { sub, rg } => (
            &[
                ("GET", "ResourceGroups_Get", "read"),
                ("PUT", "ResourceGroups_CreateOrUpdate", "write"),
            ],
            Some("Microsoft.Resources/subscriptions/resourceGroups".into()),
            format!("/subscriptions/{sub}/resourceGroups/{rg}"),
            RESOURCES_VERSIONS,
        ),
        Route::Resource { ty, .. } => {
            let (_, op, versions) = resources::by_type(ty);
            resource_ops = [("GET", op, "read")];
            (&resource_ops, Some(ty.to_string()), r.scope(), versions)
        }
        Route::Identity { .. } => (
            &[
                ("GET", "UserAssignedIdentities_Get", "read"),
                ("PUT", "UserAssignedIdentities_CreateOrUpdate", "write"),
                ("PATCH", "UserAssignedIdentities_Update", "write"),
                ("DELETE", "UserAssignedIdentities_Delete", "delete"),
            ],
            Some(MI.into()),
            r.scope(),
            MI_VERSIONS,
        ),
        Route::IdentityList { sub, rg: Some(rg) } => (
            &[("GET", "UserAssignedIdentities_ListByResourceGroup", "read")],
            None,
            format!("/subscriptions/{sub}/resourceGroups/{rg}"),
            MI_VERSIONS,
        ),
        Route::IdentityList { sub, rg: None } => (
            &[("GET", "UserAssignedIdentities_ListBySubscription", "read")],
            None,
            format!("/subscriptions/{sub}"),
            MI_VERSIONS,
        ),
        Route::Fic { .. } => (
            &[
                ("GET", "FederatedIdentityCredentials_Get", "read"),
                (
                    "PUT",
                    "FederatedIdentityCredentials_CreateOrUpdate",
                    "write",
                ),
                ("DELETE", "FederatedIdentityCredentials_Delete", "delete"),
            ],
            Some(format!("{MI}/federatedIdentityCredentials")),
            r.scope(),
            FIC_VERSIONS,
        ),
        Route::FicList { .. } => (
            &[("GET", "FederatedIdentityCredentials_List", "read")],
            Some(format!("{MI}/federatedIdentityCredentials")),
            r.scope(),
            FIC_VERSIONS,
        ),
        Route::Compute { kind, .. } => (
            match kind {
                ComputeKind::Vm => &[
                    ("GET", "VirtualMachines_Get", "read"),
                    ("PATCH", "VirtualMachines_Update", "write"),
                ],
                ComputeKind::ScaleSet => &[
                    ("GET", "VirtualMachineScaleSets_Get", "read"),
                    ("PATCH", "VirtualMachineScaleSets_Update", "write"),
                ],
            },
            Some(format!("Microsoft.Compute/{}", kind.type_name())),
            r.scope(),
            COMPUTE_VERSIONS,
        ),
        // The caller that started an operation may poll it.
        Route::AsyncOp { sub, .. } => (
            &[("GET", "AsyncOperation_Get", "read")],
            None,
            format!("/subscriptions/{sub}"),
            COMPUTE_VERSIONS,
        ),
        Route::Assignment { scope, .. } => (
            &[
                ("GET", "RoleAssignments_Get", "read"),
                ("PUT", "RoleAssignments_Create", "write"),
                ("DELETE", "RoleAssignments_Delete", "delete"),
            ],
            Some("Microsoft.Authorization/roleAssignments".into()),
            scope.clone(),
            AUTH_VERSIONS,
        ),
        Route::AssignmentList { scope } => (
            &[("GET", "RoleAssignments_ListForScope", "read")],
            Some("Microsoft.Authorization/roleAssignments".into()),
            scope.clone(),
            AUTH_VERSIONS,
        ),
        // Every principal of the tenant may read role definitions.
        Route::Definition { .. } => (
            &[("GET", "RoleDefinitions_Get", "read")],
            None,
            "/".into(),
            AUTH_VERSIONS,
        ),
        Route::DefinitionList { scope } => (
            &[("GET", "RoleDefinitions_List", "read")],
            None,
            scope.clone(),
            AUTH_VERSIONS,
        ),
        Route::Unknown => return None,
    };
    let (_, op, verb) = ops.iter().find(|(m, _, _)| *m == method.as_str())?;
    Some(Described {
        op,
        action: action.map(|a| format!("{a}/{verb}")),
        scope,
        versions,
    })
}

impl Route {
    /// The scope of the resource a route names: an identity (or its credentials), a VM or scale
    /// set, or another served resource; empty for other routes.
    fn scope(&self) -> String {
        let (sub, rg, ty, name) = match self {
            Route::Identity { sub, rg, name }
            | Route::Fic { sub, rg, name, .. }
            | Route::FicList { sub, rg, name } => (sub, rg, MI.to_string(), name),
            Route::Compute {
                kind,
                sub,
                rg,
                name,
            } => (
                sub,
                rg,
                format!("Microsoft.Compute/{}", kind.type_name()),
                name,
            ),
            Route::Resource { sub, rg, ty, name } => (sub, rg, ty.to_string(), name),
            _ => return String::new(),
        };
        format!("/subscriptions/{sub}/resourceGroups/{rg}/providers/{ty}/{name}")
    }
}

const MI: &str = "Microsoft.ManagedIdentity/userAssignedIdentities";

/// The scope of a user-assigned identity.
pub(super) fn identity_scope(sub: &str, rg: &str, name: &str) -> String {
    format!(
        "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{name}"
    )
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
        let rg = "/subscriptions/s/resourceGroups/rg/providers";
        let cases = [
            (
                "/subscriptions/s/resourcegroups/DevTest".to_string(),
                r#"ResourceGroup { sub: "s", rg: "DevTest" }"#,
            ),
            (
                format!("{rg}/Microsoft.ManagedIdentity/userAssignedIdentities/id1"),
                r#"Identity { sub: "s", rg: "rg", name: "id1" }"#,
            ),
            (
                "/subscriptions/s/providers/Microsoft.ManagedIdentity/userAssignedIdentities"
                    .into(),
                r#"IdentityList { sub: "s", rg: None }"#,
            ),
            (
                format!(
                    "{rg}/Microsoft.ManagedIdentity/userAssignedIdentities/id1/federatedIdentityCredentials/f"
                ),
                r#"Fic { sub: "s", rg: "rg", name: "id1", fic: "f" }"#,
            ),
            (
                format!("{rg}/Microsoft.Compute/virtualMachines/vm"),
                r#"Compute { kind: Vm, sub: "s", rg: "rg", name: "vm" }"#,
            ),
            (
                format!("{rg}/Microsoft.Authorization/roleAssignments/x"),
                r#"Assignment { scope: "/subscriptions/s/resourceGroups/rg", name: "x" }"#,
            ),
            (
                "/providers/Microsoft.Authorization/roleDefinitions/g".into(),
                r#"Definition { guid: "g" }"#,
            ),
            (
                "/subscriptions/s/providers/Microsoft.Authorization/roleDefinitions".into(),
                r#"DefinitionList { scope: "/subscriptions/s" }"#,
            ),
            (
                "/subscriptions/s/providers/Microsoft.Compute/locations/eastus/operations/o".into(),
                r#"AsyncOp { sub: "s", id: "o" }"#,
            ),
            ("/nothing/here".into(), "Unknown"),
        ];
        for (path, want) in cases {
            assert_eq!(format!("{:?}", route(&path)), want, "{path}");
        }
    }
}
