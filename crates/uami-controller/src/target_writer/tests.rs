use super::*;
use async_trait::async_trait;
use std::sync::atomic::{AtomicU32, Ordering};
use uami_azure::compute::{ComputeIdentity, ComputeResource, TargetKind, UserAssignedInfo};

/// An in-memory VM that applies identity PATCHes like ARM: `{}` adds, `null` removes, a
/// new etag on every change; optionally one stale-etag answer and an LRO.
struct FakeVm {
    identity: Mutex<ComputeIdentity>,
    etag: AtomicU32,
    patches: AtomicU32,
    polls: AtomicU32,
    stale_once: Mutex<bool>,
    lro: bool,
    /// An identity ARM refuses (400), as it does an identity that does not exist.
    refuse: Mutex<Option<String>>,
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
            refuse: Mutex::new(None),
        })
    }
}

#[async_trait]
impl ComputeApi for FakeVm {
    async fn get_compute(&self, _: &ComputeTarget) -> Result<Option<ComputeResource>, ArmError> {
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
        if let Some(bad) = self.refuse.lock().clone()
            && body["identity"]["userAssignedIdentities"]
                .as_object()
                .is_some_and(|m| m.contains_key(&bad))
        {
            return Err(ArmError {
                operation: "VirtualMachines_Update",
                status: Some(400),
                code: "FailedIdentityOperation".into(),
                message: format!("identity {bad} does not exist"),
                retry_after: None,
            });
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
                    kind: uami_azure::compute::LroKind::Location,
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

#[tokio::test]
async fn a_refused_batch_is_written_change_by_change_so_a_bad_identity_fails_alone() {
    let vm = FakeVm::new(false, false);
    *vm.refuse.lock() = Some(id(2));
    let (writer, mut rx) = TargetWriter::new(vm.clone(), config());
    for n in 1..=3 {
        writer.submit(&target(), &id(n), Want::Present, requester(n));
    }
    assert_eq!(drain(&mut rx, 3).await, vec!["b1", "b2", "b3"]);
    assert_eq!(writer.outcome(&target(), &id(1)), Some(Outcome::Done));
    assert_eq!(writer.outcome(&target(), &id(3)), Some(Outcome::Done));
    assert!(matches!(
        writer.outcome(&target(), &id(2)),
        Some(Outcome::Failed { ref code, .. }) if code == "FailedIdentityOperation"
    ));
    let identity = vm.identity.lock().clone();
    assert!(identity.has_user_assigned(&id(1)) && identity.has_user_assigned(&id(3)));
    assert!(!identity.has_user_assigned(&id(2)));
    assert_eq!(
        vm.patches.load(Ordering::SeqCst),
        4,
        "the batch, then each of the three changes on its own"
    );
}
