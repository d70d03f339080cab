//! The trust boundary, tried as a hostile tenant would: every attack below is a test.
//!
//! 1. Scopes are canonical before anything compares them (`scopes`): non-canonical
//!    `resourceId`s are refused at apply time, and again by the controller (`InvalidScope`, zero
//!    ARM requests), an object that would have crashed the policy check does not stop the
//!    controller, and ARM receives exactly the scope the policy approved.
//! 2. An identity has exactly one owner (`owner`): the owner tag names the cluster, adoption
//!    needs a GrantPolicy rule and keeps the identity's tags, creation never overwrites
//!    (`If-None-Match`).
//! 3. Deletion acts only on what the controller can prove it created (`deletion`): forged status
//!    fields steer no delete, a binding refused by policy removes nothing, two grants of one
//!    assignment keep it until the last goes.
//! 4. What an identity is comes from its spec and Azure, never its status (`trust`): a forged
//!    `resourceId`, `principalId` or `clientId` steers no assignment, grant or federated
//!    credential and is put back within a reconcile; a forged `federatedCredentialName` deletes
//!    nothing but the binding's own credential.
//! 5. Policy fails closed (`policy`, `chart`): the chart installs no GrantPolicy by default, and
//!    a policy that stops allowing a grant or binding revokes it in Azure.
//! 6. ConfigMaps the controller did not create are never written or adopted; the chart lets the
//!    managed-identity credential reach IMDS; tags are bounded by the schema (`policy`, `chart`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

#[path = "security/chart.rs"]
mod chart;
#[path = "security/deletion.rs"]
mod deletion;
#[path = "security/owner.rs"]
mod owner;
#[path = "security/policy.rs"]
mod policy;
#[path = "security/scopes.rs"]
mod scopes;
#[path = "security/trust.rs"]
mod trust;

use std::time::Duration;

use kube::Resource;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};
use support::fixtures::{self, Fixture};
use support::*;
use uami::demo::stack::{Stack, StackOptions};
use uami_api::grant::GrantScope;
use uami_api::identity::ExportTo;
use uami_api::{DeletionPolicy, RoleGrant};

const NS: &str = "apps";

fn namespace(ns: &str) -> String {
    format!("---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n")
}

/// A GrantPolicy for `apps`: Reader on DevTest, binding to myVM, plus `extra` spec lines.
fn policy(extra: &str) -> String {
    format!(
        "---\napiVersion: uami.dev/v1alpha1\nkind: GrantPolicy\nmetadata: {{name: apps}}\nspec:\n  namespaces: [{NS}]\n  roleGrants:\n  - roles: [Reader]\n    scopes: [{{resourceGroup: {{name: DevTest}}}}]\n  identityBindings:\n  - virtualMachine: {{resourceGroup: DevTest, name: myVM}}\n{extra}"
    )
}

fn identity_in(ns: &str, name: &str) -> String {
    fixtures::identity(ns, name).yaml()
}

fn identity(name: &str) -> String {
    identity_in(NS, name)
}

/// Identity `name` that takes over the Azure identity of its name (`adoptExisting`).
fn adopting(name: &str) -> String {
    fixtures::identity(NS, name)
        .with(|i| i.spec.adopt_existing = true)
        .yaml()
}

fn binding_in(ns: &str, name: &str, identity: &str) -> String {
    fixtures::binding(ns, name, identity, fixtures::vm("myVM")).yaml()
}

fn grant(name: &str, identity: &str, role: &str, scope: GrantScope) -> String {
    fixtures::grant(NS, name, identity, role, scope).yaml()
}

/// A Reader grant of `identity` on resource group DevTest.
fn devtest_grant(name: &str, identity: &str) -> String {
    grant(
        name,
        identity,
        "Reader",
        fixtures::resource_group("DevTest"),
    )
}

fn grant_json(name: &str, identity: &str, resource_id: &str) -> String {
    json!({"apiVersion": "uami.dev/v1alpha1", "kind": "RoleGrant",
           "metadata": {"name": name, "namespace": NS},
           "spec": {"identityRef": {"name": identity}, "role": "Reader",
                    "scope": {"resourceId": resource_id}, "verifyAccess": false}})
    .to_string()
}

/// A stack without agents, as `configure` adjusts it.
async fn stack(configure: impl FnOnce(&mut StackOptions)) -> Stack {
    agentless_stack(120, 0.5, configure).await
}

/// A stack (controller, no agents) and ARM as its administrator.
async fn stack_and_admin() -> (Stack, support::arm::Admin) {
    let stack = stack(|_| {}).await;
    let admin = support::arm::Admin::of(&stack.emulator);
    (stack, admin)
}

/// A stack with namespace `apps`, its GrantPolicy and the objects of `parts`, and ARM as its
/// administrator.
async fn apps_with(parts: &[String]) -> (Stack, support::arm::Admin) {
    let (stack, admin) = stack_and_admin().await;
    apply_all(&stack, &[&[namespace(NS), policy("")], parts].concat()).await;
    (stack, admin)
}

/// Status fields written by someone other than the controller (a compromised agent, a user with
/// status rights): server-side apply with another field manager, forced.
async fn forge_status<K>(api: &Api<K>, name: &str, status: Value)
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let patch = json!({"apiVersion": K::api_version(&()), "kind": K::kind(&()), "status": status});
    api.patch_status(
        name,
        &PatchParams::apply("forger").force(),
        &Patch::Apply(&patch),
    )
    .await
    .unwrap();
}

fn vm_has(stack: &Stack, identity_id: &str) -> bool {
    let vm = compute(&stack.emulator.state(), "myVM");
    vm["identity"]["userAssignedIdentities"]
        .as_object()
        .is_some_and(|m| m.keys().any(|k| k.eq_ignore_ascii_case(identity_id)))
}

/// Wait until the identity is Ready; its resource id and principal id.
async fn ready_identity(stack: &Stack, ns: &str, name: &str) -> (String, String) {
    let s = ready(&identities(stack, ns), name, 60)
        .await
        .status
        .unwrap();
    (s.resource_id.unwrap(), s.principal_id.unwrap())
}

/// The uid of identity `name` in `ns`.
async fn uid_of(stack: &Stack, ns: &str, name: &str) -> String {
    let identity = identities(stack, ns).get(name).await.unwrap();
    identity.metadata.uid.unwrap()
}

/// Wait until the grant is Ready; its role assignment id.
async fn assignment_id(api: &Api<RoleGrant>, name: &str) -> String {
    let s = ready(api, name, 60).await.status.unwrap();
    s.role_assignment_id.unwrap()
}

fn api_error(e: uami::demo::stack::StackError) -> String {
    match e {
        uami::demo::stack::StackError::Kube(kube::Error::Api(r)) => {
            assert_eq!(r.code, 422, "{r:?}");
            r.message
        }
        other => panic!("expected a 422, got {other}"),
    }
}

/// The message of the 422 that refused `yaml`.
async fn refused_at_apply(stack: &Stack, yaml: &str) -> String {
    api_error(
        stack
            .apply_yaml(yaml)
            .await
            .err()
            .unwrap_or_else(|| panic!("accepted: {yaml}")),
    )
}
