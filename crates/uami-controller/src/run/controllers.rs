//! The controller of each kind: what it watches besides its own kind, and its reconciler run
//! through [`pass::run`] with [`error_policy`].

use std::sync::Arc;

use futures::{Stream, StreamExt};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use serde::de::DeserializeOwned;

use super::super::context::{Context, Stores};
use super::super::error::ReconcileError;
use super::super::pass::{self, error_policy};
use super::super::{binding, grant, identity};
use super::triggers::{bindings_of_grant, deleting_identity, dependents};
use uami_api::{IdentityBinding, RoleGrant, UserAssignedIdentity};

/// The shared watch stream of another kind that wakes a controller.
pub(super) trait Objects<K>: Stream<Item = Arc<K>> + Send + 'static {}
impl<K, S: Stream<Item = Arc<K>> + Send + 'static> Objects<K> for S {}

/// A stream of signals that wakes every object of a controller (a policy change).
pub(super) trait Signal: Stream<Item = ()> + Send + Sync + 'static {}
impl<S: Stream<Item = ()> + Send + Sync + 'static> Signal for S {}

/// A stream of the objects of a controller to reconcile again (one at a time).
pub(super) trait Refs<K: kube::Resource>:
    Stream<Item = ObjectRef<K>> + Send + 'static
{
}
impl<K: kube::Resource, S: Stream<Item = ObjectRef<K>> + Send + 'static> Refs<K> for S {}

/// Bindings: woken by their identity's changes and its grants' (a grant changes what the
/// identity's bindings check: the scopes the agent on a VM reads, and the token check of a
/// service account), all of them by a policy change, one by its target writer's answer.
pub(super) async fn bindings(
    controller: Controller<IdentityBinding>,
    stores: Stores,
    (identities, grants): (impl Objects<UserAssignedIdentity>, impl Objects<RoleGrant>),
    (policy_changed, written): (impl Signal, impl Refs<IdentityBinding>),
    stop: impl Future<Output = ()> + Send + Sync + 'static,
    ctx: Arc<Context>,
) {
    let (of_identity, of_grant) = (stores.bindings.clone(), stores.bindings.clone());
    let controller = controller
        .watches_shared_stream(identities, move |id| {
            dependents(&of_identity, &id, |b: &IdentityBinding| {
                &b.spec.identity_ref.name
            })
        })
        .watches_shared_stream(grants, move |g| bindings_of_grant(&of_grant, &g))
        .reconcile_all_on(policy_changed)
        .reconcile_on(written)
        .graceful_shutdown_on(stop);
    drive(controller, binding::reconcile, ctx).await
}

/// Grants: woken by their identity's changes, all of them by a policy change.
pub(super) async fn grants(
    controller: Controller<RoleGrant>,
    stores: Stores,
    identities: impl Objects<UserAssignedIdentity>,
    policy_changed: impl Signal,
    stop: impl Future<Output = ()> + Send + Sync + 'static,
    ctx: Arc<Context>,
) {
    let of_identity = stores.grants.clone();
    let controller = controller
        .watches_shared_stream(identities, move |id| {
            dependents(&of_identity, &id, |g: &RoleGrant| &g.spec.identity_ref.name)
        })
        .reconcile_all_on(policy_changed)
        .graceful_shutdown_on(stop);
    drive(controller, grant::reconcile, ctx).await
}

/// Identities: one whose deletion waits for its dependents wakes when one of them changes or
/// goes; one whose adoption a policy refused, when a policy changes.
pub(super) async fn identities(
    controller: Controller<UserAssignedIdentity>,
    stores: Stores,
    (bindings, grants): (impl Objects<IdentityBinding>, impl Objects<RoleGrant>),
    denied: impl Refs<UserAssignedIdentity>,
    stop: impl Future<Output = ()> + Send + Sync + 'static,
    ctx: Arc<Context>,
) {
    let (of_binding, of_grant) = (stores.identities.clone(), stores.identities.clone());
    let controller = controller
        .watches_shared_stream(bindings, move |b: Arc<IdentityBinding>| {
            deleting_identity(&of_binding, &*b, &b.spec.identity_ref.name)
        })
        .watches_shared_stream(grants, move |g: Arc<RoleGrant>| {
            deleting_identity(&of_grant, &*g, &g.spec.identity_ref.name)
        })
        .reconcile_on(denied)
        .graceful_shutdown_on(stop);
    drive(controller, identity::reconcile, ctx).await
}

/// Run `controller` until its shutdown signal, each pass of `reconcile` through [`pass::run`].
async fn drive<K, R, Fut>(controller: Controller<K>, reconcile: R, ctx: Arc<Context>)
where
    K: pass::Kind + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::Status: Send + Sync,
    R: Fn(Arc<K>, Arc<Context>) -> Fut + Copy + Send + Sync + 'static,
    Fut: Future<Output = Result<Action, ReconcileError>> + Send + 'static,
{
    controller
        .run(
            move |obj, ctx| pass::run(obj, ctx, reconcile),
            error_policy,
            ctx,
        )
        .for_each(|_| futures::future::ready(()))
        .await
}
