//! GrantPolicy evaluation: pure functions that decide whether a namespace may grant a role at a
//! scope, or bind an identity to a VM or scale set. No policy, no grant.
//!
//! A scope rule allows its scope and everything below it (a narrower grant is never more
//! powerful). Roles are never matched by wildcard: a policy must name a role (by built-in name or
//! role definition GUID) for it to be allowed.

use uami_api::policy::{BindingRule, GrantPolicy, ScopeRule};
use uami_azure::compute::{ComputeTarget, TargetKind};
use uami_azure::federated::IdentityCoordinates;
use uami_azure::scope::ArmScope;

/// A role as resolved from ARM: its definition GUID and its name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedRole {
    /// Trailing GUID of the role definition id.
    pub guid: String,
    /// `roleName` of the definition, such as `Reader`.
    pub name: String,
}

/// Outcome of a policy check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Allowed by the named policy.
    Allowed(String),
    /// Denied, with a message saying what no policy allows.
    Denied(String),
}

impl Decision {
    /// Whether the request is allowed.
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allowed(_))
    }
}

fn namespace_matches(policy: &GrantPolicy, namespace: &str) -> bool {
    policy
        .spec
        .namespaces
        .iter()
        .any(|n| n == "*" || n == namespace)
}

/// `Allowed` by the first policy for `namespace` that `allows`; None when none does.
fn allowed_by(
    policies: &[GrantPolicy],
    namespace: &str,
    allows: impl Fn(&GrantPolicy) -> bool,
) -> Option<Decision> {
    policies
        .iter()
        .find(|p| namespace_matches(p, namespace) && allows(p))
        .map(|p| Decision::Allowed(p.metadata.name.clone().unwrap_or_default()))
}

fn eq_ci(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// Whether a rule's subscription (the configured default when it names none) is `subscription`.
fn subscription_matches(
    rule: Option<&str>,
    default_subscription: Option<&str>,
    subscription: &str,
) -> bool {
    rule.or(default_subscription)
        .is_some_and(|s| eq_ci(s, subscription))
}

/// A rule's subscription (the default when it names none), resource group and name (`*` for any)
/// against a resource's subscription, resource group and name, case-insensitively.
fn resource_matches(
    subscription: Option<&str>,
    [resource_group, name]: [&String; 2],
    default_subscription: Option<&str>,
    [at_subscription, at_resource_group, at_name]: [&String; 3],
) -> bool {
    subscription_matches(subscription, default_subscription, at_subscription)
        && eq_ci(resource_group, at_resource_group)
        && (name == "*" || eq_ci(name, at_name))
}

/// `scope` is `outer` or below it: both parsed as canonical ARM scopes and compared segment by
/// segment, case-insensitively (`.../DevTest2` is not inside `.../DevTest`). A scope that does
/// not parse is inside nothing.
pub fn scope_within(scope: &str, outer: &str) -> bool {
    match (ArmScope::parse(scope), ArmScope::parse(outer)) {
        (Ok(scope), Ok(outer)) => scope.is_within(&outer),
        _ => false,
    }
}

fn scope_rule_matches(
    rule: &ScopeRule,
    scope: &ArmScope,
    default_subscription: Option<&str>,
) -> bool {
    let within = |outer: &str| ArmScope::parse(outer).is_ok_and(|o| scope.is_within(&o));
    if let Some(rg) = &rule.resource_group {
        let Some(sub) = rg.subscription_id.as_deref().or(default_subscription) else {
            return false;
        };
        if rg.name == "*" {
            return scope.resource_group().is_some() && within(&format!("/subscriptions/{sub}"));
        }
        return within(&format!("/subscriptions/{sub}/resourceGroups/{}", rg.name));
    }
    if let Some(sub) = &rule.subscription {
        return within(&format!("/subscriptions/{}", sub.subscription_id));
    }
    if let Some(prefix) = &rule.resource_id_prefix {
        return within(prefix);
    }
    false
}

fn role_matches(allowed: &str, role: &ResolvedRole) -> bool {
    let allowed = allowed.trim();
    let allowed_guid = allowed.rsplit('/').next().unwrap_or(allowed);
    eq_ci(allowed, &role.name) || eq_ci(allowed_guid, &role.guid)
}

/// May `namespace` grant `role` at `scope` (a canonical ARM scope)?
pub fn check_grant(
    policies: &[GrantPolicy],
    namespace: &str,
    role: &ResolvedRole,
    scope: &ArmScope,
    default_subscription: Option<&str>,
) -> Decision {
    allowed_by(policies, namespace, |policy| {
        policy.spec.role_grants.iter().any(|rule| {
            rule.roles.iter().any(|r| role_matches(r, role))
                && rule
                    .scopes
                    .iter()
                    .any(|s| scope_rule_matches(s, scope, default_subscription))
        })
    })
    .unwrap_or_else(|| {
        Decision::Denied(format!(
            "no GrantPolicy allows namespace {namespace} to grant role {} at {scope}",
            role.name
        ))
    })
}

fn binding_rule_matches(
    rule: &BindingRule,
    target: &ComputeTarget,
    default_subscription: Option<&str>,
) -> bool {
    let pattern = match target.kind {
        TargetKind::VirtualMachine => rule.virtual_machine.as_ref(),
        TargetKind::VirtualMachineScaleSet => rule.virtual_machine_scale_set.as_ref(),
    };
    let at = [&target.subscription, &target.resource_group, &target.name];
    pattern.is_some_and(|p| {
        let rule = [&p.resource_group, &p.name];
        resource_matches(p.subscription_id.as_deref(), rule, default_subscription, at)
    })
}

/// May `namespace` bind identities to `target`?
pub fn check_binding(
    policies: &[GrantPolicy],
    namespace: &str,
    target: &ComputeTarget,
    default_subscription: Option<&str>,
) -> Decision {
    allowed_by(policies, namespace, |policy| {
        policy
            .spec
            .identity_bindings
            .iter()
            .any(|r| binding_rule_matches(r, target, default_subscription))
    })
    .unwrap_or_else(|| {
        let kind = match target.kind {
            TargetKind::VirtualMachine => "virtual machine",
            TargetKind::VirtualMachineScaleSet => "scale set",
        };
        Decision::Denied(format!(
            "no GrantPolicy allows namespace {namespace} to bind identities to {kind} {}/{}",
            target.resource_group, target.name
        ))
    })
}

/// May `namespace` adopt an existing identity in `resource_group` of `subscription`?
pub fn check_adoption(
    policies: &[GrantPolicy],
    namespace: &str,
    subscription: &str,
    resource_group: &str,
    default_subscription: Option<&str>,
) -> Decision {
    allowed_by(policies, namespace, |policy| {
        policy.spec.identity_adoption.iter().any(|rule| {
            subscription_matches(
                rule.subscription_id.as_deref(),
                default_subscription,
                subscription,
            ) && (rule.resource_group == "*" || eq_ci(&rule.resource_group, resource_group))
        })
    })
    .unwrap_or_else(|| {
        Decision::Denied(format!(
            "no GrantPolicy allows namespace {namespace} to adopt identities from resource group {resource_group}"
        ))
    })
}

/// May `namespace` bind `identity` to its service account `service_account` (workload identity)?
pub fn check_service_account_binding(
    policies: &[GrantPolicy],
    namespace: &str,
    identity: &IdentityCoordinates,
    service_account: &str,
    default_subscription: Option<&str>,
) -> Decision {
    let at = [
        &identity.subscription,
        &identity.resource_group,
        &identity.name,
    ];
    allowed_by(policies, namespace, |policy| {
        policy.spec.identity_bindings.iter().any(|r| {
            r.service_account.as_ref().is_some_and(|p| {
                let rule = [&p.resource_group, &p.identity_name];
                resource_matches(p.subscription_id.as_deref(), rule, default_subscription, at)
                    && p.service_accounts.iter().any(|s| s == "*" || s == service_account)
            })
        })
    })
    .unwrap_or_else(|| {
        Decision::Denied(format!(
            "no GrantPolicy allows namespace {namespace} to bind identity {}/{} to service account {service_account}",
            identity.resource_group, identity.name
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use uami_api::policy::GrantPolicySpec;

    const SUB: &str = "6a2bd3a4-59c6-4d4e-9e8b-5c5a2f0a1b2c";

    fn policy(spec: serde_json::Value) -> GrantPolicy {
        let spec: GrantPolicySpec = serde_json::from_value(spec).unwrap();
        GrantPolicy::new("p", spec)
    }

    fn reader() -> ResolvedRole {
        ResolvedRole {
            guid: "acdd72a7-3385-48ef-bd42-f606fba81ae7".into(),
            name: "Reader".into(),
        }
    }

    fn owner() -> ResolvedRole {
        ResolvedRole {
            guid: "8e3af657-a8ff-443c-a75c-2fe8c4bcb635".into(),
            name: "Owner".into(),
        }
    }

    fn sc(s: &str) -> ArmScope {
        ArmScope::parse(s).unwrap()
    }

    fn rg_scope(rg: &str) -> ArmScope {
        sc(&format!("/subscriptions/{SUB}/resourceGroups/{rg}"))
    }

    #[test]
    fn no_policy_no_grant() {
        let d = check_grant(&[], "team-a", &reader(), &rg_scope("DevTest"), Some(SUB));
        assert!(matches!(d, Decision::Denied(m) if m.contains("team-a") && m.contains("Reader")));
    }

    #[test]
    fn reader_on_one_group_does_not_allow_owner_or_the_subscription() {
        let p = policy(serde_json::json!({"namespaces": ["team-a"], "roleGrants": [
            {"roles": ["Reader"], "scopes": [{"resourceGroup": {"name": "DevTest"}}]}]}));
        let ps = [p];
        assert!(
            check_grant(&ps, "team-a", &reader(), &rg_scope("devtest"), Some(SUB)).is_allowed()
        );
        assert!(
            check_grant(
                &ps,
                "team-a",
                &reader(),
                &sc(&format!(
                    "{}/providers/Microsoft.Storage/storageAccounts/x",
                    rg_scope("DevTest")
                )),
                Some(SUB)
            )
            .is_allowed()
        );
        assert!(
            !check_grant(&ps, "team-a", &owner(), &rg_scope("DevTest"), Some(SUB)).is_allowed()
        );
        assert!(
            !check_grant(
                &ps,
                "team-a",
                &reader(),
                &sc(&format!("/subscriptions/{SUB}")),
                Some(SUB)
            )
            .is_allowed()
        );
        assert!(
            !check_grant(&ps, "team-a", &reader(), &rg_scope("DevTest2"), Some(SUB)).is_allowed()
        );
        assert!(
            !check_grant(&ps, "team-b", &reader(), &rg_scope("DevTest"), Some(SUB)).is_allowed()
        );
        // Without a default subscription a rule without subscriptionId matches nothing.
        assert!(!check_grant(&ps, "team-a", &reader(), &rg_scope("DevTest"), None).is_allowed());
    }

    #[test]
    fn roles_match_by_name_or_guid_and_groups_by_wildcard() {
        let p = policy(serde_json::json!({"namespaces": ["*"], "roleGrants": [
            {"roles": ["acdd72a7-3385-48ef-bd42-f606fba81ae7"],
             "scopes": [{"resourceGroup": {"subscriptionId": SUB, "name": "*"}}]}]}));
        let ps = [p];
        assert!(check_grant(&ps, "any", &reader(), &rg_scope("Prod"), None).is_allowed());
        assert!(
            !check_grant(
                &ps,
                "any",
                &reader(),
                &sc(&format!("/subscriptions/{SUB}")),
                None
            )
            .is_allowed()
        );
    }

    #[test]
    fn bindings_match_kind_group_and_name() {
        let p = policy(
            serde_json::json!({"namespaces": ["team-a"], "identityBindings": [
            {"virtualMachine": {"resourceGroup": "DevTest", "name": "myVM"}},
            {"virtualMachineScaleSet": {"resourceGroup": "Pool"}}]}),
        );
        let ps = [p];
        let vm = |name: &str| ComputeTarget {
            kind: TargetKind::VirtualMachine,
            subscription: SUB.into(),
            resource_group: "DevTest".into(),
            name: name.into(),
        };
        assert!(check_binding(&ps, "team-a", &vm("myvm"), Some(SUB)).is_allowed());
        assert!(!check_binding(&ps, "team-a", &vm("otherVM"), Some(SUB)).is_allowed());
        let vmss = ComputeTarget {
            kind: TargetKind::VirtualMachineScaleSet,
            subscription: SUB.into(),
            resource_group: "Pool".into(),
            name: "any".into(),
        };
        assert!(check_binding(&ps, "team-a", &vmss, Some(SUB)).is_allowed());
        let vm_in_pool = ComputeTarget {
            kind: TargetKind::VirtualMachine,
            ..vmss
        };
        assert!(!check_binding(&ps, "team-a", &vm_in_pool, Some(SUB)).is_allowed());
    }

    #[test]
    fn service_account_bindings_match_namespace_identity_and_name() {
        let p = policy(
            serde_json::json!({"namespaces": ["team-a"], "identityBindings": [
            {"serviceAccount": {"resourceGroup": "DevTest", "identityName": "app-id", "serviceAccounts": ["app"]}},
            {"serviceAccount": {"resourceGroup": "Shared"}},
            {"virtualMachine": {"resourceGroup": "DevTest"}}]}),
        );
        let ps = [p];
        let id = |rg: &str, name: &str| IdentityCoordinates::new(SUB, rg, name);
        let allowed = |ns: &str, i: &IdentityCoordinates, sa: &str| {
            check_service_account_binding(&ps, ns, i, sa, Some(SUB)).is_allowed()
        };
        assert!(allowed("team-a", &id("devtest", "APP-ID"), "app"));
        assert!(!allowed("team-a", &id("DevTest", "app-id"), "other"));
        assert!(!allowed("team-a", &id("DevTest", "admin-id"), "app"));
        assert!(!allowed("team-b", &id("DevTest", "app-id"), "app"));
        assert!(allowed("team-a", &id("Shared", "anything"), "anyone"));
        // Another subscription, or no default: nothing matches.
        let elsewhere = IdentityCoordinates {
            subscription: "00000000-0000-0000-0000-000000000001".into(),
            ..id("Shared", "x")
        };
        assert!(!allowed("team-a", &elsewhere, "app"));
        assert!(
            !check_service_account_binding(&ps, "team-a", &id("Shared", "x"), "app", None)
                .is_allowed()
        );
        // A VM rule does not allow service accounts, and the refusal names what was asked.
        let vm_only = [policy(
            serde_json::json!({"namespaces": ["*"], "identityBindings": [
            {"virtualMachine": {"resourceGroup": "DevTest"}}]}),
        )];
        let d = check_service_account_binding(
            &vm_only,
            "team-a",
            &id("DevTest", "app-id"),
            "app",
            Some(SUB),
        );
        assert!(
            matches!(d, Decision::Denied(m) if m.contains("service account app") && m.contains("DevTest/app-id"))
        );
    }

    #[test]
    fn scope_within_respects_segments() {
        let s = |x: &str| format!("/subscriptions/{SUB}{x}");
        assert!(scope_within(
            &s("/resourceGroups/rg"),
            &format!("/SUBSCRIPTIONS/{}", SUB.to_uppercase())
        ));
        assert!(!scope_within(
            &s("/resourceGroups/DevTest2"),
            &s("/resourceGroups/DevTest")
        ));
        assert!(scope_within(
            &s("/resourceGroups/devtest/x"),
            &s("/resourceGroups/DevTest")
        ));
        // Not canonical: inside nothing.
        assert!(!scope_within(&s("/"), &s("")));
        assert!(!scope_within(
            &s("/resourceGroups/DevTest/../.."),
            &s("/resourceGroups/DevTest")
        ));
        // A non-ASCII character straddling the end of the policy's prefix: no panic, no match.
        assert!(!scope_within(
            &s("/resourceGroups/DevTeé"),
            &s("/resourceGroups/DevTest")
        ));
    }

    #[test]
    fn a_resource_id_prefix_matches_whole_segments() {
        let p = policy(serde_json::json!({"namespaces": ["*"], "roleGrants": [
            {"roles": ["Reader"], "scopes": [{"resourceIdPrefix": format!("/subscriptions/{SUB}/resourceGroups/DevTest")}]}]}));
        let ps = [p];
        assert!(check_grant(&ps, "a", &reader(), &rg_scope("DEVTEST"), None).is_allowed());
        assert!(!check_grant(&ps, "a", &reader(), &rg_scope("DevTest2"), None).is_allowed());
    }

    #[test]
    fn adoption_needs_a_rule() {
        let p = policy(serde_json::json!({"namespaces": ["team-a"],
            "identityAdoption": [{"resourceGroup": "Shared"}]}));
        let ps = [p];
        assert!(check_adoption(&ps, "team-a", SUB, "shared", Some(SUB)).is_allowed());
        assert!(!check_adoption(&ps, "team-a", SUB, "DevTest", Some(SUB)).is_allowed());
        assert!(!check_adoption(&ps, "team-b", SUB, "Shared", Some(SUB)).is_allowed());
        assert!(!check_adoption(&[], "team-a", SUB, "Shared", Some(SUB)).is_allowed());
    }
}
