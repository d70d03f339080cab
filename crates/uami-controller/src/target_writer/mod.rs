//! One writer per VM / scale set. Bindings do not PATCH compute resources themselves: they submit
//! what they want (identity present or absent) and the writer of that target merges every pending
//! change into one `identity` PATCH with `If-Match` on the etag, polls the long-running operation
//! in its own task (no reconcile worker waits on it), and then asks the bindings involved to
//! reconcile again. Five bindings to one VM cost one PATCH, not five racing ones.
//!
//! Bindings applied together with their identities become ready one by one, as ARM's write
//! budget lets the identities be created. So that they still share one PATCH, the writer holds
//! a target's additions while other bindings of that target wait for an identity that is being
//! created ([`WaitingSiblings`]): until none waits, until no new change has arrived for
//! [`WriterConfig::hold_idle`], or for [`WriterConfig::hold_max`] at most. A stuck identity
//! therefore delays its siblings by `hold_idle` once, never for good. Removals are not held.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use kube::runtime::reflector::ObjectRef;
use parking_lot::Mutex;
use tokio::sync::mpsc;

use uami_api::IdentityBinding;
use uami_azure::ArmError;
use uami_azure::ComputeApi;
use uami_azure::compute::{
    ComputeTarget, LroPoll, OperationStatus, PatchOutcome, build_identity_patch,
};

/// What a binding wants for its identity on its target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    /// The identity is assigned.
    Present,
    /// The identity is not assigned.
    Absent,
}

/// The result of the last write that carried a binding's change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Submitted, not written yet.
    Pending,
    /// Written (or already in the wanted state).
    Done,
    /// The write failed: ARM code and message, whether retrying may help.
    Failed {
        /// ARM error code, or a short label.
        code: String,
        /// Message for the condition.
        message: String,
        /// Whether a later attempt may succeed.
        retryable: bool,
        /// `Retry-After` when ARM gave one.
        retry_after: Option<Duration>,
    },
}

/// One change queued for a target.
struct Change {
    /// The identity's ARM id as the binding gave it.
    identity_id: String,
    /// Present or absent.
    want: Want,
    /// The bindings reconciled when the write that carries the change finishes.
    requesters: Vec<ObjectRef<IdentityBinding>>,
}

/// The changes of one target, by identity id (lowercase).
type Batch = BTreeMap<String, Change>;

/// One identity on one target, as the outcomes are kept (both lowercase).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct OnTarget {
    target: String,
    identity: String,
}

impl OnTarget {
    fn new(target: &ComputeTarget, identity_id: &str) -> Self {
        Self {
            target: target.key(),
            identity: identity_id.to_lowercase(),
        }
    }
}

#[derive(Default)]
struct TargetState {
    pending: Batch,
    running: bool,
}

/// The changes a target will soon be asked for: one entry per binding of the target that waits
/// for its identity to be created, or whose identity is ready and that has not submitted yet.
/// An entry is the identity's ARM id (lowercase) when known, else any key that names no ARM id.
/// The writer holds the target's additions while an entry is not among them.
pub type WaitingSiblings = Arc<dyn Fn(&ComputeTarget) -> Vec<String> + Send + Sync>;

/// Tuning of the writer.
#[derive(Clone, Debug)]
pub struct WriterConfig {
    /// How long the writer waits for more changes before it writes; while changes keep coming
    /// it waits another window, ten at most.
    pub batch_window: Duration,
    /// Attempts on `412 Precondition Failed` before the batch fails.
    pub max_precondition_retries: u32,
    /// Poll interval when ARM gives no `Retry-After`.
    pub default_poll: Duration,
    /// Upper bound on a poll interval.
    pub max_poll: Duration,
    /// While other bindings of the target wait for their identities, the writer holds the
    /// additions until no new change has arrived for this long...
    pub hold_idle: Duration,
    /// ... and for this long at most.
    pub hold_max: Duration,
}

impl Default for WriterConfig {
    fn default() -> Self {
        Self {
            batch_window: Duration::from_millis(200),
            max_precondition_retries: 5,
            default_poll: Duration::from_secs(2),
            max_poll: Duration::from_secs(30),
            hold_idle: Duration::from_secs(30),
            hold_max: Duration::from_secs(180),
        }
    }
}

/// The per-target writers.
pub struct TargetWriter {
    compute: Arc<dyn ComputeApi>,
    config: WriterConfig,
    targets: Mutex<HashMap<String, TargetState>>,
    outcomes: Mutex<HashMap<OnTarget, Outcome>>,
    notify: mpsc::UnboundedSender<ObjectRef<IdentityBinding>>,
    stop: tokio_util::sync::CancellationToken,
    waiting: OnceLock<WaitingSiblings>,
}

impl TargetWriter {
    /// A writer over `compute`; finished bindings are sent on the returned receiver (feed it to
    /// the binding controller's `reconcile_on`).
    pub fn new(
        compute: Arc<dyn ComputeApi>,
        config: WriterConfig,
    ) -> (
        Arc<Self>,
        mpsc::UnboundedReceiver<ObjectRef<IdentityBinding>>,
    ) {
        let (notify, rx) = mpsc::unbounded_channel();
        (
            Arc::new(Self {
                compute,
                config,
                targets: Mutex::new(HashMap::new()),
                outcomes: Mutex::new(HashMap::new()),
                notify,
                stop: tokio_util::sync::CancellationToken::new(),
                waiting: OnceLock::new(),
            }),
            rx,
        )
    }

    /// Tell the writer how to count the bindings of a target that wait for an identity being
    /// created (set once; without it nothing is held).
    pub fn hold_for(&self, waiting: WaitingSiblings) {
        let _ = self.waiting.set(waiting);
    }

    /// Whether to go on holding `key`'s additions: some of them are queued, none is a removal,
    /// and other bindings of the target will soon ask for a change that is not queued yet.
    fn hold(&self, target: &ComputeTarget, key: &str) -> bool {
        let Some(waiting) = self.waiting.get() else {
            return false;
        };
        let additions_only = self.targets.lock().get(key).is_some_and(|s| {
            !s.pending.is_empty() && s.pending.values().all(|c| c.want == Want::Present)
        });
        if !additions_only {
            return false;
        }
        let soon = waiting(target);
        let targets = self.targets.lock();
        let Some(state) = targets.get(key) else {
            return false;
        };
        soon.iter().any(|id| !state.pending.contains_key(id))
    }

    /// The outcome of the last write that carried `identity_id` on `target`, if any.
    pub fn outcome(&self, target: &ComputeTarget, identity_id: &str) -> Option<Outcome> {
        self.outcomes
            .lock()
            .get(&OnTarget::new(target, identity_id))
            .cloned()
    }

    /// Forget the outcome (after the binding saw it).
    pub fn forget(&self, target: &ComputeTarget, identity_id: &str) {
        self.outcomes
            .lock()
            .remove(&OnTarget::new(target, identity_id));
    }

    /// Ask for `identity_id` to be `want` on `target`; `requester` is reconciled when the write
    /// that carries this change finishes.
    pub fn submit(
        self: &Arc<Self>,
        target: &ComputeTarget,
        identity_id: &str,
        want: Want,
        requester: ObjectRef<IdentityBinding>,
    ) {
        let key = target.key();
        let id_key = identity_id.to_lowercase();
        self.outcomes
            .lock()
            .insert(OnTarget::new(target, identity_id), Outcome::Pending);
        let start = {
            let mut targets = self.targets.lock();
            let state = targets.entry(key.clone()).or_default();
            let entry = state.pending.entry(id_key).or_insert_with(|| Change {
                identity_id: identity_id.to_string(),
                want,
                requesters: Vec::new(),
            });
            entry.want = want;
            if !entry.requesters.contains(&requester) {
                entry.requesters.push(requester);
            }
            if state.running {
                false
            } else {
                state.running = true;
                true
            }
        };
        if start && !self.stop.is_cancelled() {
            let this = Arc::clone(self);
            let target = target.clone();
            tokio::spawn(async move { this.drive(target).await });
        }
    }

    /// Stop every writer and poller now, abandoning writes in flight (leadership lost); later
    /// submissions are dropped.
    /// Wake `binding` as a finished write does (a result it waits for, made elsewhere, is in).
    pub fn wake(&self, binding: ObjectRef<IdentityBinding>) {
        let _ = self.notify.send(binding);
    }

    pub fn stop(&self) {
        self.stop.cancel();
    }

    async fn drive(self: Arc<Self>, target: ComputeTarget) {
        let key = target.key();
        loop {
            // Collect while changes keep arriving: a window with no new change closes the batch,
            // and ten windows at most bound the wait.
            let mut seen = 0;
            for _ in 0..10 {
                tokio::select! {
                    _ = self.stop.cancelled() => return,
                    _ = tokio::time::sleep(self.config.batch_window) => {}
                }
                let queued = self.targets.lock().get(&key).map_or(0, |s| s.pending.len());
                if queued == seen {
                    break;
                }
                seen = queued;
            }
            // Hold for the siblings whose identities are being created, while their changes
            // keep arriving.
            let held = Instant::now();
            let mut changed = held;
            while self.hold(&target, &key)
                && changed.elapsed() < self.config.hold_idle
                && held.elapsed() < self.config.hold_max
            {
                tokio::select! {
                    _ = self.stop.cancelled() => return,
                    _ = tokio::time::sleep(self.config.batch_window.max(Duration::from_millis(500))) => {}
                }
                let queued = self.targets.lock().get(&key).map_or(0, |s| s.pending.len());
                if queued != seen {
                    seen = queued;
                    changed = Instant::now();
                }
            }
            if held.elapsed() > self.config.batch_window {
                tracing::debug!(target = %target.id(), held = ?held.elapsed(), queued = seen, "held the identity write for bindings waiting for their identities");
            }
            let batch = {
                let mut targets = self.targets.lock();
                let Some(state) = targets.get_mut(&key) else {
                    return;
                };
                if state.pending.is_empty() {
                    state.running = false;
                    targets.remove(&key);
                    return;
                }
                std::mem::take(&mut state.pending)
            };
            let written = tokio::select! {
                _ = self.stop.cancelled() => return,
                r = self.write(&target, &batch) => r,
            };
            // Each change of the batch, its requesters and what became of it.
            let mut results = Vec::with_capacity(batch.len());
            match written {
                // ARM refused the batch for what it holds (a 4xx other than a stale etag or
                // throttling, retryable or not): one bad identity must not fail the others, so
                // each change is written again on its own and fails alone.
                Err(WriteError::Arm(e))
                    if batch.len() > 1
                        && e.status()
                            .is_some_and(|s| (400..500).contains(&s) && s != 412 && s != 429) =>
                {
                    tracing::warn!(target = %target.id(), code = e.code(), error = %e, changes = batch.len(), "identity write refused; writing each change on its own");
                    for (id_key, entry) in batch {
                        let requesters = entry.requesters.clone();
                        let single = BTreeMap::from([(id_key.clone(), entry)]);
                        let alone = tokio::select! {
                            _ = self.stop.cancelled() => return,
                            r = self.write(&target, &single) => r,
                        };
                        results.push((id_key, requesters, self.outcome_of(&target, alone)));
                    }
                }
                other => {
                    let outcome = self.outcome_of(&target, other);
                    for (id_key, change) in batch {
                        results.push((id_key, change.requesters, outcome.clone()));
                    }
                }
            }
            for (id_key, requesters, outcome) in results {
                // A newer submission for the same identity keeps its Pending outcome.
                let still_pending = self
                    .targets
                    .lock()
                    .get(&key)
                    .is_some_and(|s| s.pending.contains_key(&id_key));
                if !still_pending {
                    let on = OnTarget {
                        target: key.clone(),
                        identity: id_key,
                    };
                    self.outcomes.lock().insert(on, outcome);
                }
                for r in requesters {
                    let _ = self.notify.send(r);
                }
            }
        }
    }

    /// The outcome of one write, logged when it failed.
    fn outcome_of(&self, target: &ComputeTarget, written: Result<(), WriteError>) -> Outcome {
        match written {
            Ok(()) => Outcome::Done,
            Err(WriteError::Arm(e)) => {
                tracing::warn!(target = %target.id(), code = e.code(), error = %e, "identity write failed");
                failed(&e)
            }
            Err(WriteError::TargetGone) => Outcome::Failed {
                code: "ResourceNotFound".into(),
                message: format!("{} does not exist", target.id()),
                retryable: false,
                retry_after: None,
            },
        }
    }

    async fn write(&self, target: &ComputeTarget, batch: &Batch) -> Result<(), WriteError> {
        let ids = |want: Want| -> Vec<String> {
            batch
                .values()
                .filter(|c| c.want == want)
                .map(|c| c.identity_id.clone())
                .collect()
        };
        let (add, remove) = (ids(Want::Present), ids(Want::Absent));
        let mut attempt = 0;
        loop {
            let Some(current) = self.compute.get_compute(target).await? else {
                return Err(WriteError::TargetGone);
            };
            let Some(body) = build_identity_patch(&current.identity, &add, &remove) else {
                return Ok(());
            };
            match self
                .compute
                .patch_identity(target, &body, current.etag.as_deref())
                .await
            {
                Ok(PatchOutcome::Done(_)) => return Ok(()),
                Ok(PatchOutcome::InProgress { poll, retry_after }) => {
                    return Ok(self.poll(&poll, retry_after).await?);
                }
                Err(e)
                    if e.status() == Some(412)
                        && attempt < self.config.max_precondition_retries =>
                {
                    attempt += 1;
                    tracing::debug!(target = %target.id(), attempt, "etag changed; reading again");
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    async fn poll(&self, url: &LroPoll, mut retry_after: Option<Duration>) -> Result<(), ArmError> {
        // Not a backoff: ARM's `Retry-After` sets each wait (bounded by the configured poll).
        loop {
            let wait = retry_after
                .unwrap_or(self.config.default_poll)
                .min(self.config.max_poll);
            tokio::time::sleep(wait).await;
            match self.compute.poll_operation(url).await? {
                OperationStatus::Succeeded => return Ok(()),
                OperationStatus::Failed(e) => return Err(e),
                OperationStatus::InProgress { retry_after: r } => retry_after = r,
            }
        }
    }
}

enum WriteError {
    Arm(ArmError),
    TargetGone,
}

impl From<ArmError> for WriteError {
    fn from(e: ArmError) -> Self {
        WriteError::Arm(e)
    }
}

/// The failed outcome of an ARM error.
pub fn failed(e: &ArmError) -> Outcome {
    Outcome::Failed {
        code: if e.code().is_empty() {
            e.category().to_string()
        } else {
            e.code().to_string()
        },
        message: e.to_string(),
        retryable: e.is_retryable(),
        retry_after: e.retry_after(),
    }
}

#[cfg(test)]
mod tests;
