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

use crate::api::IdentityBinding;
use crate::azure::ArmError;
use crate::azure::ComputeApi;
use crate::azure::compute::{
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

#[derive(Default)]
struct TargetState {
    /// identity id (lowercase) -> (id as given, want, requesters).
    pending: BTreeMap<String, (String, Want, Vec<ObjectRef<IdentityBinding>>)>,
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
    outcomes: Mutex<HashMap<(String, String), Outcome>>,
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
            !s.pending.is_empty() && s.pending.values().all(|(_, w, _)| *w == Want::Present)
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
            .get(&(target.key(), identity_id.to_lowercase()))
            .cloned()
    }

    /// Forget the outcome (after the binding saw it).
    pub fn forget(&self, target: &ComputeTarget, identity_id: &str) {
        self.outcomes
            .lock()
            .remove(&(target.key(), identity_id.to_lowercase()));
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
            .insert((key.clone(), id_key.clone()), Outcome::Pending);
        let start = {
            let mut targets = self.targets.lock();
            let state = targets.entry(key.clone()).or_default();
            let entry = state
                .pending
                .entry(id_key)
                .or_insert_with(|| (identity_id.to_string(), want, Vec::new()));
            entry.1 = want;
            if !entry.2.contains(&requester) {
                entry.2.push(requester);
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
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Whether a write for `target` is queued or in flight.
    pub fn busy(&self, target: &ComputeTarget) -> bool {
        self.targets
            .lock()
            .get(&target.key())
            .is_some_and(|s| s.running)
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
            let outcome = match written {
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
            };
            for (id_key, (_, _, requesters)) in batch {
                // A newer submission for the same identity keeps its Pending outcome.
                let still_pending = self
                    .targets
                    .lock()
                    .get(&key)
                    .is_some_and(|s| s.pending.contains_key(&id_key));
                if !still_pending {
                    self.outcomes
                        .lock()
                        .insert((key.clone(), id_key), outcome.clone());
                }
                for r in requesters {
                    let _ = self.notify.send(r);
                }
            }
        }
    }

    async fn write(
        &self,
        target: &ComputeTarget,
        batch: &BTreeMap<String, (String, Want, Vec<ObjectRef<IdentityBinding>>)>,
    ) -> Result<(), WriteError> {
        let add: Vec<String> = batch
            .values()
            .filter(|(_, w, _)| *w == Want::Present)
            .map(|(id, _, _)| id.clone())
            .collect();
        let remove: Vec<String> = batch
            .values()
            .filter(|(_, w, _)| *w == Want::Absent)
            .map(|(id, _, _)| id.clone())
            .collect();
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
mod tests {
    use super::*;
    use crate::azure::compute::{ComputeIdentity, ComputeResource, TargetKind, UserAssignedInfo};
    use async_trait::async_trait;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// An in-memory VM that applies identity PATCHes like ARM: `{}` adds, `null` removes, a
    /// new etag on every change; optionally one stale-etag answer and an LRO.
    struct FakeVm {
        identity: Mutex<ComputeIdentity>,
        etag: AtomicU32,
        patches: AtomicU32,
        polls: AtomicU32,
        stale_once: Mutex<bool>,
        lro: bool,
    }

    impl FakeVm {
        fn new(lro: bool, stale_once: bool) -> Arc<Self> {
            Arc::new(Self {
                identity: Mutex::new(ComputeIdentity {
                    type_: "SystemAssigned".into(),
                    principal_id: Some("sys".into()),
                    user_assigned: BTreeMap::new(),
                }),
                etag: AtomicU32::new(1),
                patches: AtomicU32::new(0),
                polls: AtomicU32::new(0),
                stale_once: Mutex::new(stale_once),
                lro,
            })
        }
    }

    #[async_trait]
    impl ComputeApi for FakeVm {
        async fn get_compute(
            &self,
            _: &ComputeTarget,
        ) -> Result<Option<ComputeResource>, ArmError> {
            Ok(Some(ComputeResource {
                id: "vm".into(),
                etag: Some(self.etag.load(Ordering::SeqCst).to_string()),
                identity: self.identity.lock().clone(),
                provisioning_state: Some("Succeeded".into()),
            }))
        }
        async fn patch_identity(
            &self,
            _: &ComputeTarget,
            body: &serde_json::Value,
            if_match: Option<&str>,
        ) -> Result<PatchOutcome, ArmError> {
            self.patches.fetch_add(1, Ordering::SeqCst);
            {
                let mut stale = self.stale_once.lock();
                if *stale {
                    // Someone else changed the VM between our GET and PATCH.
                    *stale = false;
                    self.etag.fetch_add(1, Ordering::SeqCst);
                }
            }
            let etag = self.etag.load(Ordering::SeqCst).to_string();
            if if_match.is_some_and(|m| m != etag) {
                return Err(precondition_failed());
            }
            let mut id = self.identity.lock();
            id.type_ = body["identity"]["type"]
                .as_str()
                .unwrap_or("None")
                .to_string();
            if let Some(m) = body["identity"]["userAssignedIdentities"].as_object() {
                for (k, v) in m {
                    if v.is_null() {
                        id.user_assigned.retain(|x, _| !x.eq_ignore_ascii_case(k));
                    } else {
                        id.user_assigned
                            .insert(k.clone(), UserAssignedInfo::default());
                    }
                }
            }
            self.etag.fetch_add(1, Ordering::SeqCst);
            if self.lro {
                Ok(PatchOutcome::InProgress {
                    poll: LroPoll {
                        url: url::Url::parse("http://arm.invalid/op/1").unwrap(),
                        kind: crate::azure::compute::LroKind::Location,
                    },
                    retry_after: Some(Duration::from_millis(10)),
                })
            } else {
                Ok(PatchOutcome::Done(ComputeResource::default()))
            }
        }
        async fn poll_operation(&self, _: &LroPoll) -> Result<OperationStatus, ArmError> {
            let n = self.polls.fetch_add(1, Ordering::SeqCst);
            Ok(if n == 0 {
                OperationStatus::InProgress {
                    retry_after: Some(Duration::from_millis(10)),
                }
            } else {
                OperationStatus::Succeeded
            })
        }
    }

    fn precondition_failed() -> ArmError {
        ArmError {
            operation: "VirtualMachines_Update",
            status: Some(412),
            code: "PreconditionFailed".into(),
            message: "etag mismatch".into(),
            retry_after: None,
        }
    }

    fn target() -> ComputeTarget {
        ComputeTarget {
            kind: TargetKind::VirtualMachine,
            subscription: "s".into(),
            resource_group: "DevTest".into(),
            name: "myVM".into(),
        }
    }

    fn id(n: u32) -> String {
        format!(
            "/subscriptions/s/resourceGroups/DevTest/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id{n}"
        )
    }

    fn requester(n: u32) -> ObjectRef<IdentityBinding> {
        ObjectRef::new(&format!("b{n}")).within("ns")
    }

    fn config() -> WriterConfig {
        WriterConfig {
            batch_window: Duration::from_millis(50),
            default_poll: Duration::from_millis(10),
            ..Default::default()
        }
    }

    async fn drain(
        rx: &mut mpsc::UnboundedReceiver<ObjectRef<IdentityBinding>>,
        n: usize,
    ) -> Vec<String> {
        let mut names = Vec::new();
        for _ in 0..n {
            let r = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .unwrap()
                .unwrap();
            names.push(r.name);
        }
        names.sort();
        names
    }

    #[tokio::test]
    async fn five_identities_cost_one_patch_and_keep_the_system_identity() {
        let vm = FakeVm::new(true, false);
        let (writer, mut rx) = TargetWriter::new(vm.clone(), config());
        for n in 0..5 {
            writer.submit(&target(), &id(n), Want::Present, requester(n));
        }
        assert_eq!(drain(&mut rx, 5).await, vec!["b0", "b1", "b2", "b3", "b4"]);
        assert_eq!(vm.patches.load(Ordering::SeqCst), 1);
        assert_eq!(
            vm.polls.load(Ordering::SeqCst),
            2,
            "the LRO was polled to the end"
        );
        let identity = vm.identity.lock().clone();
        assert_eq!(identity.user_assigned.len(), 5);
        assert!(
            identity.type_.contains("SystemAssigned"),
            "{}",
            identity.type_
        );
        for n in 0..5 {
            assert_eq!(writer.outcome(&target(), &id(n)), Some(Outcome::Done));
        }
    }

    #[tokio::test]
    async fn a_stale_etag_is_read_again_and_retried() {
        let vm = FakeVm::new(false, true);
        let (writer, mut rx) = TargetWriter::new(vm.clone(), config());
        writer.submit(&target(), &id(1), Want::Present, requester(1));
        drain(&mut rx, 1).await;
        assert_eq!(vm.patches.load(Ordering::SeqCst), 2, "412 then success");
        assert_eq!(writer.outcome(&target(), &id(1)), Some(Outcome::Done));
        assert!(vm.identity.lock().has_user_assigned(&id(1)));
    }

    #[tokio::test]
    async fn removal_touches_only_the_removed_identity_and_nothing_to_do_costs_no_patch() {
        let vm = FakeVm::new(false, false);
        let (writer, mut rx) = TargetWriter::new(vm.clone(), config());
        writer.submit(&target(), &id(1), Want::Present, requester(1));
        writer.submit(&target(), &id(2), Want::Present, requester(2));
        drain(&mut rx, 2).await;
        writer.submit(&target(), &id(1), Want::Absent, requester(1));
        drain(&mut rx, 1).await;
        let identity = vm.identity.lock().clone();
        assert!(!identity.has_user_assigned(&id(1)));
        assert!(identity.has_user_assigned(&id(2)));
        assert!(identity.has_system_assigned());
        let before = vm.patches.load(Ordering::SeqCst);
        writer.submit(&target(), &id(2), Want::Present, requester(2));
        drain(&mut rx, 1).await;
        assert_eq!(
            vm.patches.load(Ordering::SeqCst),
            before,
            "already present: no write"
        );
    }
}
