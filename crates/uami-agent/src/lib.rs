//! The agent: runs on a VM (or a scale set instance), the only place IMDS answers. It learns which
//! VM it is from IMDS instance metadata, lists and watches only the bindings labelled with its
//! target (the controller labels them, and writes into their status the identity's client id and
//! the scopes to verify), obtains a token through IMDS for each bound identity, reads each granted
//! scope with that token, and writes what it found (token metadata, never the token) into status
//! with its own field manager.
//!
//! Each binding is checked on its own: on its change, every `interval`, and after a passing
//! failure with backoff; checks run side by side within IMDS's limits (the IMDS client holds 5
//! requests at once and 20 per second). Tokens are cached until their renewal and access
//! results until their recheck, so an unchanged binding with a fresh token costs no request. A
//! passing failure keeps the last verified result and says so in `lastCheckError`.
//!
//! IMDS and ARM are behind the small traits [`TokenSource`] and [`AccessProbe`], so the loop is
//! the same against a real VM and the emulator.

mod check;
pub mod config;
mod imds;
mod report;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use kube::Client;
use kube::api::Api;
use kube::core::DeserializeGuard;
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};
use parking_lot::Mutex;
use secrecy::SecretString;

pub use imds::{AzureProbe, ImdsSource};
use uami_api::IdentityBinding;
use uami_api::binding::{AccessCheck, AccessPlane, TARGET_LABEL, TokenStatus, target_label_value};
use uami_api::conditions::Reason;

/// The agent's field manager prefix; a scale set instance appends its instance id so that
/// instances never remove each other's entries.
pub const FIELD_MANAGER: &str = "uami-agent";

/// Most per-instance entries a scale set binding keeps.
pub const MAX_INSTANCES: usize = 100;

/// Who the agent is, from IMDS instance metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Whoami {
    /// Subscription of the VM.
    pub subscription_id: String,
    /// Resource group of the VM.
    pub resource_group: String,
    /// VM name (for a scale set instance, the instance's name).
    pub name: String,
    /// Scale set name, when the VM is a scale set instance.
    pub scale_set: Option<String>,
}

impl Whoami {
    /// The ARM id of the binding target this agent serves: the VM, or the scale set.
    pub fn target_id(&self) -> String {
        match &self.scale_set {
            Some(ss) => format!(
                "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Compute/virtualMachineScaleSets/{ss}",
                self.subscription_id, self.resource_group
            ),
            None => format!(
                "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Compute/virtualMachines/{}",
                self.subscription_id, self.resource_group, self.name
            ),
        }
    }

    /// The name written into `checkedBy`.
    pub fn checked_by(&self) -> String {
        match &self.scale_set {
            Some(ss) => format!("{ss}/{}", self.name),
            None => self.name.clone(),
        }
    }
}

/// A token obtained through IMDS, with its metadata. The token itself stays a secret.
#[derive(Clone)]
pub struct Token {
    /// The access token.
    pub secret: SecretString,
    /// Metadata written to status.
    pub meta: TokenStatus,
    /// When it expires.
    pub expires_on: jiff::Timestamp,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("meta", &self.meta)
            .finish_non_exhaustive()
    }
}

/// Why IMDS gave no token.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {message}")]
pub struct TokenFailure {
    /// Condition reason, such as `IdentityNotAssigned` or `ImdsUnavailable`.
    pub reason: String,
    /// Message (never a token).
    pub message: String,
}

impl TokenFailure {
    /// IMDS does not know the identity on this VM: definitive once that has lasted longer than
    /// an assignment takes to reach IMDS.
    pub fn not_assigned(&self) -> bool {
        self.reason == Reason::IdentityNotAssigned.as_str()
    }
}

/// IMDS, as the agent uses it.
#[async_trait]
pub trait TokenSource: Send + Sync {
    /// Who this VM is.
    async fn whoami(&self) -> Result<Whoami, TokenFailure>;
    /// A fresh token for the user-assigned identity `client_id` and `resource`.
    async fn token(&self, client_id: &str, resource: &str) -> Result<Token, TokenFailure>;
}

/// Why an access check could not run: the condition's reason and message (never a token).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {message}")]
pub struct CheckFailure {
    /// Condition reason: `UnsupportedScope` for a resource type the check cannot read,
    /// `CheckFailed` otherwise.
    pub reason: String,
    /// Message.
    pub message: String,
}

impl CheckFailure {
    /// A failure that says nothing about access (a dropped connection, a timeout): the next
    /// check may answer. `UnsupportedScope` is definitive.
    pub fn passing(&self) -> bool {
        self.reason != Reason::UnsupportedScope.as_str()
    }
}

/// A read of a granted scope with a bearer token, where the grant's role acts: a GET of the
/// scope through ARM, or a list on the data plane the controller named (`check.plane`).
#[async_trait]
pub trait AccessProbe: Send + Sync {
    /// The HTTP status of the read `check` asks for with `token` (for the audience of
    /// [`audience`]), or why it could not be sent.
    async fn probe(&self, check: &AccessCheck, token: &SecretString) -> Result<u16, CheckFailure>;
}

/// The audience of the token that reads on `plane`.
pub fn audience(plane: AccessPlane) -> &'static str {
    match plane {
        AccessPlane::Arm => "https://management.azure.com/",
        AccessPlane::Blob => uami_azure::STORAGE_AUDIENCE,
        AccessPlane::KeyVault => uami_azure::KEY_VAULT_AUDIENCE,
    }
}

/// Agent settings.
#[derive(Clone, Debug)]
pub struct AgentSettings {
    /// How often every binding is looked at, besides changes.
    pub interval: Duration,
    /// Renew a cached token this long before it expires (at most half its lifetime).
    pub refresh_margin: Duration,
    /// Ask IMDS again this often even with a cached token, to notice an identity that was
    /// removed from the VM (the cached token is kept when IMDS still answers), and read a
    /// verified scope again this often.
    pub recheck: Duration,
    /// How long IMDS may not know an assigned identity before that is reported: an assignment
    /// takes a while to reach IMDS, and until then the binding waits rather than fails.
    pub assignment_propagation: Duration,
}

impl Default for AgentSettings {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(30),
            refresh_margin: Duration::from_secs(300),
            recheck: Duration::from_secs(300),
            assignment_propagation: Duration::from_secs(120),
        }
    }
}

struct Cached {
    token: Token,
    renew_at: jiff::Timestamp,
    checked: Instant,
}

/// The last answer of one grant's access check, as this agent last reported it.
#[derive(Clone, Debug)]
struct Reported {
    /// The identity, the scope and the plane read.
    client_id: String,
    scope: String,
    plane: AccessPlane,
    /// The HTTP status, or the definitive reason the check could not run.
    answer: Result<u16, String>,
    /// When the scope was read.
    at: Instant,
}

/// Most binding checks running at once (their IMDS requests are bounded further, to IMDS's
/// limits, by the IMDS client).
const CHECKS_AT_ONCE: usize = 16;

/// Most ARM reads of granted scopes at once.
const PROBES_AT_ONCE: usize = 8;

/// The agent's state.
pub struct Agent {
    client: Client,
    imds: Arc<dyn TokenSource>,
    probe: Arc<dyn AccessProbe>,
    settings: AgentSettings,
    me: Whoami,
    label: String,
    cache: Mutex<HashMap<(String, String), Cached>>,
    /// Per grant (`namespace/name`): the last access answer reported.
    access: Mutex<HashMap<String, Reported>>,
    /// Per binding: passing failures in a row, for the backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// Per client id: since when IMDS has not known the identity.
    missing: Mutex<HashMap<String, Instant>>,
    checks: tokio::sync::Semaphore,
    probes: tokio::sync::Semaphore,
    /// `true` once the store of this agent's bindings has synced.
    synced: tokio::sync::watch::Sender<bool>,
}

impl Agent {
    /// Ask IMDS who this VM is and build the agent.
    pub async fn new(
        client: Client,
        imds: Arc<dyn TokenSource>,
        probe: Arc<dyn AccessProbe>,
        settings: AgentSettings,
    ) -> Result<Arc<Self>, TokenFailure> {
        let me = imds.whoami().await?;
        let label = target_label_value(&me.target_id());
        Ok(Arc::new(Self {
            client,
            imds,
            probe,
            settings,
            me,
            label,
            cache: Mutex::new(HashMap::new()),
            access: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            missing: Mutex::new(HashMap::new()),
            checks: tokio::sync::Semaphore::new(CHECKS_AT_ONCE),
            probes: tokio::sync::Semaphore::new(PROBES_AT_ONCE),
            synced: tokio::sync::watch::Sender::new(false),
        }))
    }

    /// `true` once the agent's store of bindings has synced: what its readiness reports.
    pub fn synced(&self) -> tokio::sync::watch::Receiver<bool> {
        self.synced.subscribe()
    }

    /// Who the agent is.
    pub fn whoami(&self) -> &Whoami {
        &self.me
    }

    /// The label selector of this agent's bindings.
    pub fn selector(&self) -> String {
        format!("{TARGET_LABEL}={}", self.label)
    }

    fn field_manager(&self) -> String {
        match &self.me.scale_set {
            Some(_) => format!("{FIELD_MANAGER}-{}", self.me.name),
            None => FIELD_MANAGER.to_string(),
        }
    }

    /// Run until `shutdown` resolves: watch the bindings labelled with this agent's target, and
    /// check each on its change, every `interval`, and when its backoff or its token's renewal
    /// is due. A binding is checked by one task at a time; a change during its check runs it
    /// again after.
    pub async fn run(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()> + Send) {
        type Ref = ObjectRef<IdentityBinding>;
        let (store, writer) = reflector::store::<IdentityBinding>();
        let (due_tx, mut due_rx) = tokio::sync::mpsc::unbounded_channel::<Ref>();
        let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<Ref>();
        let wc = watcher::Config::default()
            .labels(&self.selector())
            .any_semantic();
        let changed = due_tx.clone();
        // Each binding decodes on its own: one that does not is logged and left out (the
        // controller's watch of it publishes the Event).
        let bindings = uami_kube::watch::guarded(
            Api::<DeserializeGuard<IdentityBinding>>::all(self.client.clone()),
            wc,
            writer.as_reader(),
            uami_kube::watch::Rejects::logged(),
        );
        let watch = tokio::spawn(
            reflector::reflector(writer, bindings)
                .touched_objects()
                .for_each(move |ev| {
                    match ev {
                        Ok(b) => {
                            let _ = changed.send(ObjectRef::from_obj(&b));
                        }
                        Err(e) => tracing::warn!(error = %e, "binding watch error"),
                    }
                    futures::future::ready(())
                }),
        );
        let this = self.clone();
        let main = async move {
            let _ = store.wait_until_ready().await;
            this.synced.send_replace(true);
            let mut running: HashSet<Ref> = HashSet::new();
            let mut again: HashSet<Ref> = HashSet::new();
            let mut tick = tokio::time::interval(this.settings.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let due: Vec<Ref> = tokio::select! {
                    _ = tick.tick() => store.state().iter().map(|b| ObjectRef::from_obj(&**b)).collect(),
                    Some(r) = due_rx.recv() => vec![r],
                    Some(r) = done_rx.recv() => {
                        running.remove(&r);
                        if again.remove(&r) { vec![r] } else { Vec::new() }
                    }
                };
                for r in due {
                    if running.contains(&r) {
                        again.insert(r);
                        continue;
                    }
                    let Some(b) = store.get(&r) else {
                        this.failures.lock().remove(&r.to_string());
                        continue;
                    };
                    running.insert(r.clone());
                    let (agent, done, later) = (this.clone(), done_tx.clone(), due_tx.clone());
                    tokio::spawn(async move {
                        let next = match agent.checks.acquire().await {
                            Ok(_permit) => agent.check(&b).await,
                            Err(_) => None,
                        };
                        let _ = done.send(r.clone());
                        if let Some(wait) = next.filter(|w| *w < agent.settings.interval) {
                            tokio::time::sleep(wait).await;
                            let _ = later.send(r);
                        }
                    });
                }
            }
        };
        tokio::select! {
            _ = main => {}
            _ = shutdown => {}
        }
        watch.abort();
    }

    /// A token for (client id, resource), from the cache while it is fresh; IMDS is asked again
    /// at the token's renewal, and every `recheck` to learn whether the identity is still
    /// assigned (keeping the cached token while it is). When IMDS fails for a passing reason
    /// and the cached token has not expired, that token is still the answer, with the failure
    /// beside it.
    async fn token(
        &self,
        client_id: &str,
        resource: &str,
    ) -> (Result<Token, TokenFailure>, Option<TokenFailure>) {
        let key = (client_id.to_lowercase(), resource.to_string());
        let now = jiff::Timestamp::now();
        let cached = self
            .cache
            .lock()
            .get(&key)
            .filter(|c| now < c.renew_at)
            .map(|c| (c.token.clone(), c.checked.elapsed() < self.settings.recheck));
        if let Some((t, true)) = &cached {
            return (Ok(t.clone()), None);
        }
        match self.imds.token(client_id, resource).await {
            Ok(fetched) => {
                self.missing.lock().remove(&key.0);
                if let Some((t, _)) = cached {
                    // Still assigned: keep the token in use (no renewal, no status change);
                    // only note the check.
                    if let Some(c) = self.cache.lock().get_mut(&key) {
                        c.checked = Instant::now();
                    }
                    return (Ok(t), None);
                }
                let t = fetched;
                let lifetime = (t.expires_on.as_second() - now.as_second()).max(0) as u64;
                let margin = self
                    .settings
                    .refresh_margin
                    .min(Duration::from_secs(lifetime / 2));
                let renew_at =
                    t.expires_on - jiff::SignedDuration::from_secs(margin.as_secs() as i64);
                self.cache.lock().insert(
                    key,
                    Cached {
                        token: t.clone(),
                        renew_at,
                        checked: Instant::now(),
                    },
                );
                (Ok(t), None)
            }
            Err(e) if e.not_assigned() => {
                self.cache.lock().remove(&key);
                self.missing
                    .lock()
                    .entry(key.0)
                    .or_insert_with(Instant::now);
                (Err(e), None)
            }
            Err(e) => {
                // A passing failure: a token that has not expired is still good to use.
                let valid = self
                    .cache
                    .lock()
                    .get(&key)
                    .filter(|c| now < c.token.expires_on)
                    .map(|c| c.token.clone());
                match valid {
                    Some(t) => (Ok(t), Some(e)),
                    None => (Err(e), None),
                }
            }
        }
    }

    /// How long IMDS has not known `client_id` on this VM.
    fn missing_for(&self, client_id: &str) -> Duration {
        self.missing
            .lock()
            .get(&client_id.to_lowercase())
            .map(Instant::elapsed)
            .unwrap_or_default()
    }

    /// When the cached token of (client id, resource) is due for renewal, from now.
    fn renewal_in(&self, client_id: &str, resource: &str) -> Option<Duration> {
        let key = (client_id.to_lowercase(), resource.to_string());
        let now = jiff::Timestamp::now();
        self.cache.lock().get(&key).map(|c| {
            let secs = (c.renew_at.as_second() - now.as_second()).max(0) as u64;
            Duration::from_secs(secs + 1)
        })
    }
}

/// Where the agent's access checks read.
#[derive(Clone, Debug)]
pub struct AccessEndpoints {
    /// Azure Resource Manager.
    pub arm: url::Url,
    /// Blob Storage and Key Vault.
    pub data_planes: uami_azure::DataPlanes,
}

/// Start an agent for the VM whose IMDS is at `imds_endpoint`; it runs until `stop` is
/// cancelled. Its access reads at `endpoints` trust the system's roots and `azure_ca`.
pub async fn start(
    client: Client,
    imds_endpoint: url::Url,
    endpoints: AccessEndpoints,
    azure_ca: &uami_azure::http::AzureCa,
    settings: AgentSettings,
    policy: uami_azure::auth::ImdsRetryPolicy,
    stop: tokio_util::sync::CancellationToken,
) -> Result<(Arc<Agent>, tokio::task::JoinHandle<()>), TokenFailure> {
    let http = uami_azure::http::http_client(azure_ca);
    let imds = Arc::new(ImdsSource::new(http.clone(), imds_endpoint, policy));
    let probe = Arc::new(AzureProbe::new(http, endpoints.arm, endpoints.data_planes));
    let agent = Agent::new(client, imds, probe, settings).await?;
    let run = agent.clone();
    let handle = tokio::spawn(async move { run.run(async move { stop.cancelled().await }).await });
    Ok((agent, handle))
}
