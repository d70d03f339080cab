//! Typed builders of the project's objects for the tests, on the api types: an identity, a
//! binding to a VM or a service account and a role grant, with the values the tests share
//! (resource group `DevTest` in `eastus`, no access check on a grant). [`Fixture::with`] changes
//! one and [`Fixture::yaml`] renders it as one YAML document for `apply_all` or
//! `Stack::apply_yaml`. The scale bench builds its objects with them too.
// Each test binary and the bench use part of them.
#![allow(dead_code)]

use serde::Serialize;
use uami_api::binding::{BindingTarget, ComputeRef, ServiceAccountRef, TokenCheck};
use uami_api::grant::{GrantScope, ResourceGroupScope, SubscriptionScope};
use uami_api::{
    DeletionPolicy, IdentityBinding, IdentityBindingSpec, IdentityRef, RoleGrant, RoleGrantSpec,
    UserAssignedIdentity, UserAssignedIdentitySpec,
};

/// The resource group of the tutorial's world.
pub const RG: &str = "DevTest";

/// A test object: changed in place, rendered as YAML.
pub trait Fixture: Serialize + Sized {
    /// The object after `edit`.
    fn with(mut self, edit: impl FnOnce(&mut Self)) -> Self {
        edit(&mut self);
        self
    }

    /// One YAML document (`---` first), to be joined with others.
    fn yaml(&self) -> String {
        format!("---\n{}", serde_yaml_ng::to_string(self).unwrap())
    }
}

impl<T: Serialize> Fixture for T {}

/// Identity `ns/name` in resource group DevTest, in `eastus`.
pub fn identity(ns: &str, name: &str) -> UserAssignedIdentity {
    let mut identity = UserAssignedIdentity::new(
        name,
        UserAssignedIdentitySpec {
            subscription_id: None,
            resource_group: RG.into(),
            location: "eastus".into(),
            azure_name: None,
            tags: Default::default(),
            adopt_existing: false,
            deletion_policy: DeletionPolicy::Delete,
            export_to: None,
        },
    );
    identity.metadata.namespace = Some(ns.into());
    identity
}

/// Binding `ns/name` of identity `identity` (same namespace) to `target`.
pub fn binding(ns: &str, name: &str, identity: &str, target: BindingTarget) -> IdentityBinding {
    let mut binding = IdentityBinding::new(
        name,
        IdentityBindingSpec {
            identity_ref: IdentityRef {
                name: identity.into(),
            },
            target,
            token_check: TokenCheck::default(),
            deletion_policy: DeletionPolicy::Delete,
        },
    );
    binding.metadata.namespace = Some(ns.into());
    binding
}

/// VM `name` of resource group DevTest.
pub fn vm(name: &str) -> BindingTarget {
    BindingTarget {
        virtual_machine: Some(ComputeRef {
            subscription_id: None,
            resource_group: RG.into(),
            name: name.into(),
        }),
        virtual_machine_scale_set: None,
        service_account: None,
    }
}

/// Service account `name` of the binding's namespace, not marked as its default.
pub fn service_account(name: &str) -> BindingTarget {
    BindingTarget {
        virtual_machine: None,
        virtual_machine_scale_set: None,
        service_account: Some(ServiceAccountRef {
            name: name.into(),
            default: false,
        }),
    }
}

/// Grant `ns/name` of `role` to identity `identity` at `scope`, without the access check.
pub fn grant(ns: &str, name: &str, identity: &str, role: &str, scope: GrantScope) -> RoleGrant {
    let mut grant = RoleGrant::new(
        name,
        RoleGrantSpec {
            identity_ref: IdentityRef {
                name: identity.into(),
            },
            role: role.into(),
            scope,
            verify_access: false,
            verify_access_options: None,
            deletion_policy: DeletionPolicy::Delete,
        },
    );
    grant.metadata.namespace = Some(ns.into());
    grant
}

/// Resource group `name` of the default subscription.
pub fn resource_group(name: &str) -> GrantScope {
    GrantScope {
        resource_group: Some(ResourceGroupScope {
            subscription_id: None,
            name: name.into(),
        }),
        subscription: None,
        resource_id: None,
    }
}

/// Subscription `id`.
pub fn subscription(id: &str) -> GrantScope {
    GrantScope {
        resource_group: None,
        subscription: Some(SubscriptionScope {
            subscription_id: id.into(),
        }),
        resource_id: None,
    }
}

/// The resource with ARM id `id`.
pub fn resource(id: &str) -> GrantScope {
    GrantScope {
        resource_group: None,
        subscription: None,
        resource_id: Some(id.into()),
    }
}
