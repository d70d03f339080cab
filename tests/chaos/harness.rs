//! The chaos harness: scenarios, the controller as a separate process that is killed and
//! restarted, the objects a run applies and the Azure state it reads back.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kube::api::ListParams;
use rand::Rng;
use rand::rngs::StdRng;
use serde_json::{Value, json};
use uami::demo::cluster::External;
use uami::demo::stack::{Stack, StackOptions};
use uami_emulator::world::{
    TUTORIAL_CONTROLLER_CLIENT_ID, TUTORIAL_CONTROLLER_SECRET, TUTORIAL_SUBSCRIPTION as SUB,
    TUTORIAL_TENANT, VirtualMachine,
};
use uami_emulator::{Faults, faults::Throttling};
use uami_sandbox::WatchFaults;

use crate::support::arm::Admin;
use crate::support::*;

pub const RG: &str = "DevTest";
pub const OOB: &str = "out-of-band";

/// One chaos run.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub seed: u64,
    /// Namespaces, each with `sets` (identity, Reader grant, binding) sets.
    pub namespaces: Vec<String>,
    pub sets: usize,
    pub vms: usize,
    pub kills_converging: u32,
    pub kills_deleting: u32,
    /// Azure faults during the run.
    pub faults: Faults,
    /// Watch faults during the run.
    pub watch: WatchFaults,
    /// Azure names shared by the same set index in every namespace (all but the first
    /// namespace's are refused with AlreadyExists).
    pub shared_azure_names: bool,
    /// Upper bound on convergence and on deletion.
    pub deadline: Duration,
    /// Kills happen at a random moment within this long after a (re)start.
    pub kill_within: Duration,
    /// Controller's ARM request timeout.
    pub arm_timeout: &'static str,
    /// Run on this API server instead of the sandbox (watch faults are the sandbox's only).
    pub external: Option<External>,
}

pub fn realistic_faults(seed: u64) -> Faults {
    Faults {
        throttling: Some(Throttling { scale: 0.5 }),
        server_error_rate: 0.03,
        drop_connection_rate: 0.02,
        applied_then_drop_rate: 0.03,
        applied_then_error_rate: 0.03,
        applied_then_slow_rate: 0.02,
        slow_answer_ms: 4_000,
        principal_not_found_seconds: 4.0,
        another_operation_in_progress: true,
        lro_fail_next: 2,
        lro_late_rate: 0.1,
        seed,
        ..Faults::default()
    }
}

pub fn realistic_watch(seed: u64) -> WatchFaults {
    WatchFaults {
        close_within: Duration::from_secs(20),
        gone_rate: 0.2,
        seed,
    }
}

pub fn seed(default: u64) -> u64 {
    std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

pub fn vm(i: usize) -> String {
    format!("vm-{i}")
}

/// What a run measured.
#[derive(Debug, Default)]
pub struct Report {
    pub seed: u64,
    pub objects: usize,
    pub time_to_ready: Duration,
    pub time_to_deleted: Duration,
    pub kills_converging: u32,
    pub kills_deleting: u32,
    pub injected: BTreeMap<String, u64>,
    pub watches_closed: u64,
    pub resumes_gone: u64,
    pub duplicates: Vec<String>,
    pub orphans: Vec<String>,
    /// Ready transitions from True, as watched (none expected).
    pub flaps: Vec<String>,
}

impl Report {
    pub fn print(&self, name: &str) {
        println!(
            "chaos {name}: seed {} | {} objects Ready after {:.1}s with {} kills | deleted after {:.1}s with {} kills | faults injected {:?}, watches closed {}, resumes answered 410 {} | Ready flaps {} | duplicates {} | orphans {}",
            self.seed,
            self.objects,
            self.time_to_ready.as_secs_f64(),
            self.kills_converging,
            self.time_to_deleted.as_secs_f64(),
            self.kills_deleting,
            self.injected,
            self.watches_closed,
            self.resumes_gone,
            self.flaps.len(),
            self.duplicates.len(),
            self.orphans.len()
        );
    }
}

/// The controller as a separate process.
pub struct ControllerProcess {
    pub child: Option<Child>,
    pub args: Vec<String>,
    pub log: PathBuf,
    pub starts: u32,
}

impl ControllerProcess {
    pub fn new(args: Vec<String>, log: PathBuf) -> Self {
        Self {
            child: None,
            args,
            log,
            starts: 0,
        }
    }

    pub fn start(&mut self) {
        assert!(self.child.is_none());
        self.starts += 1;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_uami-controller"))
            .args(&self.args)
            .env("RUST_LOG", "uami_controller=info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// SIGKILL: no shutdown, no Lease release, in-flight requests cut wherever they are.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    pub fn stop(&mut self) {
        self.kill();
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The arguments of `uami-controller run` against the stack.
pub fn controller_args(stack: &Stack, dir: &Path, user: &str, arm_timeout: &str) -> Vec<String> {
    let kubeconfig = dir.join(format!("{user}.kubeconfig"));
    std::fs::write(&kubeconfig, stack.cluster.admin_kubeconfig(user).unwrap()).unwrap();
    let secret = dir.join("secret");
    std::fs::write(&secret, TUTORIAL_CONTROLLER_SECRET).unwrap();
    let ca = crate::support::write_emulator_ca(&stack.emulator, dir);
    [
        "run",
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
        "--credential",
        "client-secret",
        "--tenant-id",
        TUTORIAL_TENANT,
        "--client-id",
        TUTORIAL_CONTROLLER_CLIENT_ID,
        "--client-secret-file",
        secret.to_str().unwrap(),
        "--arm-endpoint",
        stack.emulator.arm_endpoint().as_str(),
        "--authority-host",
        stack.emulator.authority_host().as_str(),
        "--azure-ca-file",
        ca.to_str().unwrap(),
        "--default-subscription",
        SUB,
        "--admin-listen",
        "127.0.0.1:0",
        "--arm-timeout",
        arm_timeout,
        "--holder-identity",
        user,
        "--cluster-name",
        "chaos",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

pub async fn start_stack(vms: usize) -> Stack {
    start_stack_on(vms, None).await
}

/// [`start_stack`] on the sandbox, or on `external`.
pub async fn start_stack_on(vms: usize, external: Option<External>) -> Stack {
    let mut opts = StackOptions::tutorial(Duration::from_secs(600)).unwrap();
    opts.external = external;
    opts.controller = false;
    opts.agents = true;
    opts.agent_interval = Duration::from_secs(2);
    opts.world.rbac_propagation_seconds = 0.5;
    opts.world.lro_retry_after_seconds = 0;
    let rg = &mut opts.world.subscriptions[0].resource_groups[0];
    rg.virtual_machines = (0..vms)
        .map(|i| VirtualMachine {
            system_assigned: i % 2 == 0,
            ..VirtualMachine::named(&vm(i))
        })
        .collect();
    Stack::start(opts).await.unwrap()
}

/// An identity created and assigned to vm-0 by someone else, as an administrator would.
pub async fn out_of_band_identity(stack: &Stack) -> Value {
    let admin = Admin::of(&stack.emulator);
    let created = admin.put_identity(OOB, json!({"team": "ops"})).await;
    let id = created["id"].as_str().unwrap().to_string();
    let (status, _, _) = admin
        .patch_vm(
            &vm(0),
            json!({"identity": {"type": "SystemAssigned, UserAssigned", "userAssignedIdentities": {id.clone(): {}}}}),
        )
        .await;
    assert_eq!(status, 200);
    eventually(30, "the out-of-band identity on vm-0", || async {
        let state = stack.emulator.state();
        vm_identities(&state, &vm(0))
            .contains(&id.to_lowercase())
            .then_some(())
    })
    .await;
    created
}

/// The user-assigned identity ids (lower case) a VM holds.
pub fn vm_identities(state: &Value, name: &str) -> BTreeSet<String> {
    compute(state, name)["identity"]["userAssignedIdentities"]
        .as_object()
        .map(|m| m.keys().map(|k| k.to_lowercase()).collect())
        .unwrap_or_default()
}

pub fn objects_yaml(s: &Scenario) -> String {
    objects_yaml_in(s, &s.namespaces)
}

pub fn objects_yaml_in(s: &Scenario, namespaces: &[String]) -> String {
    let mut yaml = String::new();
    let vms: Vec<String> = (0..s.vms)
        .map(|i| {
            format!(
                "{{virtualMachine: {{resourceGroup: {RG}, name: {}}}}}",
                vm(i)
            )
        })
        .collect();
    yaml.push_str(&format!(
        "apiVersion: uami.dev/v1alpha1\nkind: GrantPolicy\nmetadata: {{name: chaos}}\nspec:\n  namespaces: [{}]\n  roleGrants:\n  - roles: [Reader]\n    scopes: [{{resourceGroup: {{name: {RG}}}}}]\n  identityBindings: [{}]\n",
        s.namespaces.join(", "),
        vms.join(", ")
    ));
    for ns in namespaces {
        yaml.push_str(&format!(
            "---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n"
        ));
        for i in 0..s.sets {
            let azure = if s.shared_azure_names {
                format!(", azureName: shared-{i}")
            } else {
                format!(", azureName: {ns}-id-{i}")
            };
            yaml.push_str(&format!(
                "---\napiVersion: uami.dev/v1alpha1\nkind: UserAssignedIdentity\nmetadata: {{name: id-{i}, namespace: {ns}}}\nspec: {{resourceGroup: {RG}, location: eastus{azure}}}\n---\napiVersion: uami.dev/v1alpha1\nkind: RoleGrant\nmetadata: {{name: grant-{i}, namespace: {ns}}}\nspec: {{identityRef: {{name: id-{i}}}, role: Reader, scope: {{resourceGroup: {{name: {RG}}}}}, verifyAccess: false}}\n---\napiVersion: uami.dev/v1alpha1\nkind: IdentityBinding\nmetadata: {{name: bind-{i}, namespace: {ns}}}\nspec: {{identityRef: {{name: id-{i}}}, target: {{virtualMachine: {{resourceGroup: {RG}, name: {}}}}}}}\n",
                vm(i % s.vms)
            ));
        }
    }
    yaml
}

pub fn is_ready(v: &Value) -> bool {
    v["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

pub fn reason(v: &Value) -> String {
    v["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
        .map(|c| format!("{}: {}", c["reason"], c["message"]))
        .unwrap_or_else(|| "no Ready condition".into())
}

/// Every object of the three kinds, as JSON, with its kind.
pub async fn all_objects(stack: &Stack, namespaces: &[String]) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for ns in namespaces {
        for o in identities(stack, ns)
            .list(&ListParams::default())
            .await
            .unwrap()
        {
            out.push((
                "UserAssignedIdentity".into(),
                serde_json::to_value(o).unwrap(),
            ));
        }
        for o in grants(stack, ns)
            .list(&ListParams::default())
            .await
            .unwrap()
        {
            out.push(("RoleGrant".into(), serde_json::to_value(o).unwrap()));
        }
        for o in bindings(stack, ns)
            .list(&ListParams::default())
            .await
            .unwrap()
        {
            out.push(("IdentityBinding".into(), serde_json::to_value(o).unwrap()));
        }
    }
    out
}

/// Which objects must end Ready: with shared Azure names, only the first namespace's objects; the
/// others' identities end `AlreadyExists` and their dependents wait for them.
pub fn must_be_ready(s: &Scenario, ns: &str) -> bool {
    !s.shared_azure_names || ns == s.namespaces[0]
}

/// Kill the controller at random moments while `done` is false, at most `kills` times; then let it
/// run until `done`. Returns the kills made, or `None` when `deadline` passed first.
pub async fn kill_while<F, Fut>(
    ctl: &mut ControllerProcess,
    rng: &mut StdRng,
    kills: u32,
    within: Duration,
    deadline: Duration,
    what: &str,
    mut done: F,
) -> Option<u32>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = Instant::now() + deadline;
    let mut made = 0;
    while made < kills {
        let wait = within.mul_f64(rng.random_range(0.1..1.0));
        tokio::time::sleep(wait).await;
        if done().await {
            break;
        }
        ctl.kill();
        made += 1;
        ctl.start();
        if Instant::now() > end {
            return None;
        }
    }
    loop {
        if done().await {
            return Some(made);
        }
        if Instant::now() > end {
            eprintln!("timed out after {deadline:?} waiting for {what}");
            return None;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Wait for a future from synchronous code inside the multi-threaded runtime.
pub fn futures_block<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

pub fn not_ready(s: &Scenario, objs: &[(String, Value)]) -> Vec<String> {
    objs.iter()
        .filter(|(_, o)| {
            let ns = o["metadata"]["namespace"].as_str().unwrap_or_default();
            must_be_ready(s, ns) && !is_ready(o)
        })
        .map(|(k, o)| {
            format!(
                "{k} {}/{}: {}",
                o["metadata"]["namespace"],
                o["metadata"]["name"],
                reason(o)
            )
        })
        .collect()
}

/// Principal ids and resource ids the controller's identities had.
#[derive(Default)]
pub struct Created {
    pub identity_ids: BTreeSet<String>,
    /// identity id -> its role assignment id (lower case).
    pub assignments: BTreeMap<String, String>,
    pub principals: BTreeSet<String>,
}
