//! What a reconcile pass does besides writing status: the Event it publishes and when it looks at
//! the object again. Plans (pure) return these; the short execution after a plan carries them out.

use std::sync::Arc;
use std::time::Duration;

use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::{Resource, ResourceExt};
use serde::Serialize;

use super::context::Context;
use super::error::ReconcileError;
use uami_kube::status::{self, Reported, ready_reason_is};

/// When to look at the object again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Only when something it watches changes.
    AwaitChange,
    /// At the next (jittered) drift check.
    Resync,
    /// After this long.
    After(Duration),
}

impl Next {
    /// The controller action.
    pub fn action(self, ctx: &Context) -> Action {
        match self {
            Next::AwaitChange => Action::await_change(),
            Next::Resync => Action::requeue(ctx.settings.jittered_resync()),
            Next::After(d) => Action::requeue(d),
        }
    }
}

/// The end of a pass: the status to write (the controller's fields; `None`: nothing to write),
/// the Event to publish, and when to look again.
#[derive(Clone, Debug, PartialEq)]
pub struct Report<S> {
    /// The status.
    pub status: Option<S>,
    /// The Event.
    pub note: Option<Note>,
    /// When to look again.
    pub next: Next,
}

impl<S> Report<S> {
    /// Write `status`, publish `note`, look again `next`.
    pub fn new(status: S, note: Option<Note>, next: Next) -> Self {
        Self {
            status: Some(status),
            note,
            next,
        }
    }

    /// Write nothing, publish nothing: something this object watches wakes it, the resync
    /// covers a missed event.
    pub fn quiet() -> Self {
        Self {
            status: None,
            note: None,
            next: Next::Resync,
        }
    }
}

/// An Event to publish about the object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    /// Warning (else Normal).
    pub warning: bool,
    /// CamelCase reason.
    pub reason: String,
    /// The action (step) the Event is about.
    pub action: &'static str,
    /// The message.
    pub message: String,
}

impl Note {
    /// A Warning Event.
    pub fn warning(reason: &str, action: &'static str, message: impl Into<String>) -> Self {
        Self {
            warning: true,
            reason: reason.to_string(),
            action,
            message: message.into(),
        }
    }

    /// A Normal Event.
    pub fn normal(reason: &str, action: &'static str, message: impl Into<String>) -> Self {
        Self {
            warning: false,
            ..Self::warning(reason, action, message)
        }
    }

    /// Publish it about `obj`.
    pub async fn publish<K: Resource<DynamicType = ()>>(self, ctx: &Context, obj: &K) {
        ctx.event(obj, self.warning, &self.reason, self.action, self.message)
            .await;
    }
}

/// Publish a Warning Event about `obj` unless `obj`'s `Ready` condition already has `reason`:
/// a condition that persists is reported once.
pub async fn warn_once<K: Reported>(
    ctx: &Context,
    obj: &K,
    reason: &str,
    action: &'static str,
    message: &str,
) {
    if !ready_reason_is(obj, reason) {
        ctx.event(obj, true, reason, action, message.to_string())
            .await;
    }
}

/// The end of a planned pass: publish the Event, write the status (the controller's `owned`
/// fields, only when they change) and say when to look again.
pub async fn conclude<K: Reported>(
    ctx: &Context,
    obj: &K,
    report: Report<K::Status>,
    owned: &[&str],
) -> Result<Action, ReconcileError> {
    if let Some(note) = report.note {
        note.publish(ctx, obj).await;
    }
    if let Some(status) = &report.status {
        write_owned(ctx, obj, status, owned).await?;
    }
    Ok(report.next.action(ctx))
}

/// Run a pass under the kind's finalizer `name`: `apply` while the object lives, `cleanup` once
/// it is being deleted (the finalizer comes off after it succeeds); the error of the step that
/// failed comes out as itself.
pub async fn finalized<K>(
    ctx: &Context,
    name: &str,
    obj: Arc<K>,
    apply: impl AsyncFnOnce(Arc<K>, &Context) -> Result<Action, ReconcileError>,
    cleanup: impl AsyncFnOnce(Arc<K>, &Context) -> Result<Action, ReconcileError>,
) -> Result<Action, ReconcileError>
where
    K: Reported + Serialize,
{
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
    finalizer(&api, name, obj, |event| async move {
        match event {
            FinalizerEvent::Apply(obj) => apply(obj, ctx).await,
            FinalizerEvent::Cleanup(obj) => cleanup(obj, ctx).await,
        }
    })
    .await
    .map_err(ReconcileError::from_finalizer)
}

/// Write `status` (the controller's `owned` fields) of `obj`, unless `obj` already holds it.
pub async fn write_owned<K: Reported>(
    ctx: &Context,
    obj: &K,
    status: &K::Status,
    owned: &[&str],
) -> Result<(), ReconcileError> {
    status::write(&ctx.client, obj, status, owned)
        .await
        .map_err(ReconcileError::kube("PatchStatus"))
}
