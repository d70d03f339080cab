//! ARM's URL shapes: which resource a path names, and for each (method, resource) the spec's
//! operationId, the RBAC action and scope it needs, and the api-versions it accepts.

use axum::http::Method;

use super::eq;
use super::resources;
use super::versions::{self, ApiVersions};
use crate::state::ComputeKind;

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
    /// `POST .../{name}/restart` of a VM or scale set.
    ComputeRestart {
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

fn compute_kind(type_: &str) -> Option<ComputeKind> {
    if eq(type_, "virtualMachines") {
        Some(ComputeKind::Vm)
    } else if eq(type_, "virtualMachineScaleSets") {
        Some(ComputeKind::ScaleSet)
    } else {
        None
    }
}

fn compute_versions(kind: ComputeKind) -> &'static ApiVersions {
    match kind {
        ComputeKind::Vm => &versions::VIRTUAL_MACHINES,
        ComputeKind::ScaleSet => &versions::SCALE_SETS,
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
        [_, a] if eq(ns, "Microsoft.Compute") && eq(a, "restart") => match compute_kind(t) {
            Some(kind) => Route::ComputeRestart {
                kind,
                sub,
                rg,
                name,
            },
            None => Route::Unknown,
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
    pub versions: &'static ApiVersions,
}

/// The operation `method` on `r` is; `None` when ARM has no such operation.
pub(super) fn describe(method: &Method, r: &Route) -> Option<Described> {
    type Ops = [(&'static str, &'static str, &'static str)];
    let resource_ops;
    // Per route: (method, operationId, verb of the RBAC action), the action's resource type,
    // the scope it is checked at, and the accepted api-versions.
    let (ops, action, scope, versions): (&Ops, Option<String>, String, &'static ApiVersions) =
        match r {
            Route::Subscription { sub } => (
                &[("GET", "Subscriptions_Get", "read")],
                Some("Microsoft.Resources/subscriptions".into()),
                format!("/subscriptions/{sub}"),
                &versions::SUBSCRIPTIONS,
            ),
            Route::ResourceGroup { sub, rg } => (
                &[
                    ("GET", "ResourceGroups_Get", "read"),
                    ("PUT", "ResourceGroups_CreateOrUpdate", "write"),
                ],
                Some("Microsoft.Resources/subscriptions/resourceGroups".into()),
                format!("/subscriptions/{sub}/resourceGroups/{rg}"),
                &versions::RESOURCE_GROUPS,
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
                &versions::USER_ASSIGNED_IDENTITIES,
            ),
            Route::IdentityList { sub, rg: Some(rg) } => (
                &[("GET", "UserAssignedIdentities_ListByResourceGroup", "read")],
                None,
                format!("/subscriptions/{sub}/resourceGroups/{rg}"),
                &versions::USER_ASSIGNED_IDENTITIES,
            ),
            Route::IdentityList { sub, rg: None } => (
                &[("GET", "UserAssignedIdentities_ListBySubscription", "read")],
                None,
                format!("/subscriptions/{sub}"),
                &versions::USER_ASSIGNED_IDENTITIES,
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
                &versions::FEDERATED_CREDENTIALS,
            ),
            Route::FicList { .. } => (
                &[("GET", "FederatedIdentityCredentials_List", "read")],
                Some(format!("{MI}/federatedIdentityCredentials")),
                r.scope(),
                &versions::FEDERATED_CREDENTIALS,
            ),
            Route::Compute { kind, .. } => (
                match kind {
                    ComputeKind::Vm => &[
                        ("GET", "VirtualMachines_Get", "read"),
                        ("PUT", "VirtualMachines_CreateOrUpdate", "write"),
                        ("PATCH", "VirtualMachines_Update", "write"),
                    ],
                    ComputeKind::ScaleSet => &[
                        ("GET", "VirtualMachineScaleSets_Get", "read"),
                        ("PUT", "VirtualMachineScaleSets_CreateOrUpdate", "write"),
                        ("PATCH", "VirtualMachineScaleSets_Update", "write"),
                    ],
                },
                Some(format!("Microsoft.Compute/{}", kind.type_name())),
                r.scope(),
                compute_versions(*kind),
            ),
            Route::ComputeRestart { kind, .. } => (
                match kind {
                    ComputeKind::Vm => &[("POST", "VirtualMachines_Restart", "restart/action")],
                    ComputeKind::ScaleSet => {
                        &[("POST", "VirtualMachineScaleSets_Restart", "restart/action")]
                    }
                },
                Some(format!("Microsoft.Compute/{}", kind.type_name())),
                r.scope(),
                compute_versions(*kind),
            ),
            // The caller that started an operation may poll it.
            Route::AsyncOp { sub, .. } => (
                &[("GET", "AsyncOperation_Get", "read")],
                None,
                format!("/subscriptions/{sub}"),
                &versions::COMPUTE_OPERATIONS,
            ),
            Route::Assignment { scope, .. } => (
                &[
                    ("GET", "RoleAssignments_Get", "read"),
                    ("PUT", "RoleAssignments_Create", "write"),
                    ("DELETE", "RoleAssignments_Delete", "delete"),
                ],
                Some("Microsoft.Authorization/roleAssignments".into()),
                scope.clone(),
                &versions::ROLE_ASSIGNMENTS,
            ),
            Route::AssignmentList { scope } => (
                &[("GET", "RoleAssignments_ListForScope", "read")],
                Some("Microsoft.Authorization/roleAssignments".into()),
                scope.clone(),
                &versions::ROLE_ASSIGNMENTS,
            ),
            // Every principal of the tenant may read role definitions.
            Route::Definition { .. } => (
                &[("GET", "RoleDefinitions_Get", "read")],
                None,
                "/".into(),
                &versions::ROLE_DEFINITIONS,
            ),
            Route::DefinitionList { scope } => (
                &[("GET", "RoleDefinitions_List", "read")],
                None,
                scope.clone(),
                &versions::ROLE_DEFINITIONS,
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
    /// The subscription and resource group a route lies in, if any.
    pub(super) fn group(&self) -> Option<(&str, &str)> {
        match self {
            Route::ResourceGroup { sub, rg }
            | Route::Identity { sub, rg, .. }
            | Route::IdentityList {
                sub, rg: Some(rg), ..
            }
            | Route::Fic { sub, rg, .. }
            | Route::FicList { sub, rg, .. }
            | Route::Compute { sub, rg, .. }
            | Route::ComputeRestart { sub, rg, .. }
            | Route::Resource { sub, rg, .. } => Some((sub, rg)),
            _ => None,
        }
    }

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
            }
            | Route::ComputeRestart {
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
