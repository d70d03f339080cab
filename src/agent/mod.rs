//! The agent: runs on a VM (or a scale set instance), the only place IMDS answers. It learns which
//! VM it is from IMDS instance metadata, watches the bindings that target that VM, obtains a
//! token through IMDS for each bound identity, reads each granted scope with that token, and
//! writes what it found (token metadata, never the token) into status with its own field manager.
//!
//! IMDS and ARM are behind the small traits [`TokenSource`] and [`AccessProbe`], so the loop is
//! the same against a real VM and the emulator.

pub mod config;
mod imds;
mod report;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use parking_lot::Mutex;
use secrecy::SecretString;

use crate::api::binding::TokenStatus;
use crate::api::conditions::{self, types};
use crate::api::{IdentityBinding, RoleGrant, UserAssignedIdentity};
pub use imds::{ArmProbe, ImdsSource};

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

/// A GET of an ARM scope with a bearer token.
#[async_trait]
pub trait AccessProbe: Send + Sync {
    /// The HTTP status of `GET {scope}` with `token`, or why it could not be sent.
    async fn probe(&self, scope: &str, token: &SecretString) -> Result<u16, CheckFailure>;
}

/// Agent settings.
#[derive(Clone, Debug)]
pub struct AgentSettings {
    /// How often every binding is looked at, besides changes.
    pub interval: Duration,
    /// Renew a cached token this long before it expires (at most half its lifetime).
    pub refresh_margin: Duration,
    /// Ask IMDS again this often even with a cached token, to notice an identity that was
    /// removed from the VM (the cached token is kept when IMDS still answers).
    pub recheck: Duration,
}

impl Default for AgentSettings {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(30),
            refresh_margin: Duration::from_secs(300),
            recheck: Duration::from_secs(300),
        }
    }
}

struct Cached {
    token: Token,
    renew_at: jiff::Timestamp,
    checked: std::time::Instant,
}

/// The agent's state.
pub struct Agent {
    client: Client,
    imds: Arc<dyn TokenSource>,
    probe: Arc<dyn AccessProbe>,
    settings: AgentSettings,
    me: Whoami,
    cache: Mutex<HashMap<(String, String), Cached>>,
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
        Ok(Arc::new(Self {
            client,
            imds,
            probe,
            settings,
            me,
            cache: Mutex::new(HashMap::new()),
        }))
    }

    /// Who the agent is.
    pub fn whoami(&self) -> &Whoami {
        &self.me
    }

    fn field_manager(&self) -> String {
        match &self.me.scale_set {
            Some(_) => format!("{FIELD_MANAGER}-{}", self.me.name),
            None => FIELD_MANAGER.to_string(),
        }
    }

    /// Run until `shutdown` resolves: watch bindings, grants and identities, and check every
    /// binding of this VM on each change and every `interval`.
    pub async fn run(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()> + Send) {
        let (b_store, b_writer) = reflector::store::<IdentityBinding>();
        let (g_store, g_writer) = reflector::store::<RoleGrant>();
        let (i_store, i_writer) = reflector::store::<UserAssignedIdentity>();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        let watches = tokio::spawn(futures::future::join3(
            watch(&self.client, b_writer, tx.clone()),
            watch(&self.client, g_writer, tx.clone()),
            watch(&self.client, i_writer, tx),
        ));
        let this = self.clone();
        let main = async move {
            let _ = b_store.wait_until_ready().await;
            let _ = g_store.wait_until_ready().await;
            let _ = i_store.wait_until_ready().await;
            loop {
                this.pass(&b_store, &g_store, &i_store).await;
                let wake = this.next_wake();
                tokio::select! {
                    _ = rx.recv() => {
                        // Let a burst of changes settle into one pass.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        while rx.try_recv().is_ok() {}
                    }
                    _ = tokio::time::sleep(wake) => {}
                }
            }
        };
        tokio::select! {
            _ = main => {}
            _ = shutdown => {}
        }
        watches.abort();
    }

    /// Sleep until the next interval or the next token renewal, whichever comes first.
    fn next_wake(&self) -> Duration {
        let now = jiff::Timestamp::now();
        self.cache
            .lock()
            .values()
            .filter_map(|c| {
                let secs = c.renew_at.as_second() - now.as_second();
                (secs >= 0).then(|| Duration::from_secs(secs as u64 + 1))
            })
            .min()
            .unwrap_or(self.settings.interval)
            .min(self.settings.interval)
    }

    /// One pass over every binding of this VM.
    pub async fn pass(
        &self,
        bindings: &Store<IdentityBinding>,
        grants: &Store<RoleGrant>,
        identities: &Store<UserAssignedIdentity>,
    ) {
        let target = self.me.target_id().to_lowercase();
        for b in bindings.state() {
            let ours = b
                .status
                .as_ref()
                .and_then(|s| s.target_resource_id.as_deref())
                .is_some_and(|t| t.to_lowercase() == target);
            if !ours || b.meta().deletion_timestamp.is_some() {
                continue;
            }
            let ns = b.namespace().unwrap_or_default();
            let identity = identities.state().into_iter().find(|i| {
                i.namespace().as_deref() == Some(&ns) && i.name_any() == b.spec.identity_ref.name
            });
            let Some(client_id) = identity
                .as_ref()
                .and_then(|i| i.status.as_ref())
                .and_then(|s| s.client_id.clone())
            else {
                continue;
            };
            let assigned = b
                .status
                .as_ref()
                .is_some_and(|s| conditions::is_true(&s.conditions, types::ASSIGNED));
            let result = if assigned {
                self.token(&client_id, &b.spec.token_check.resource).await
            } else {
                Err(TokenFailure {
                    reason: "IdentityNotAssigned".into(),
                    message: "the controller has not assigned the identity to this VM yet".into(),
                })
            };
            if let Err(e) = self.write_binding(&b, &result).await {
                tracing::warn!(binding = %b.name_any(), namespace = %ns, error = %e, "could not write binding status");
            }
            // Access checks use an ARM token of the identity.
            let grants_of: Vec<_> = grants
                .state()
                .into_iter()
                .filter(|g| {
                    g.namespace().as_deref() == Some(&ns)
                        && g.spec.identity_ref.name == b.spec.identity_ref.name
                        && g.spec.verify_access
                        && g.meta().deletion_timestamp.is_none()
                })
                .collect();
            if grants_of.is_empty() || !assigned {
                continue;
            }
            let arm_token = self
                .token(&client_id, "https://management.azure.com/")
                .await;
            for g in grants_of {
                let Some(scope) = g.status.as_ref().and_then(|s| s.scope.clone()) else {
                    continue;
                };
                let granted = g
                    .status
                    .as_ref()
                    .is_some_and(|s| conditions::is_true(&s.conditions, types::GRANTED));
                if !granted {
                    continue;
                }
                let outcome = match &arm_token {
                    Ok(t) => self.probe.probe(&scope, &t.secret).await,
                    Err(e) => Err(CheckFailure {
                        reason: "CheckFailed".into(),
                        message: e.to_string(),
                    }),
                };
                if let Err(e) = self.write_grant(&g, &scope, outcome).await {
                    tracing::warn!(grant = %g.name_any(), namespace = %ns, error = %e, "could not write grant status");
                }
            }
        }
    }

    /// A token for (client id, resource), from the cache while it is fresh.
    async fn token(&self, client_id: &str, resource: &str) -> Result<Token, TokenFailure> {
        let key = (client_id.to_lowercase(), resource.to_string());
        let now = jiff::Timestamp::now();
        let cached = self
            .cache
            .lock()
            .get(&key)
            .filter(|c| now < c.renew_at)
            .map(|c| (c.token.clone(), c.checked.elapsed() < self.settings.recheck));
        if let Some((t, true)) = &cached {
            return Ok(t.clone());
        }
        match self.imds.token(client_id, resource).await {
            Ok(fetched) => {
                if let Some((t, _)) = cached {
                    // Still assigned: keep the token in use (no renewal, no status change);
                    // only note the check.
                    if let Some(c) = self.cache.lock().get_mut(&key) {
                        c.checked = std::time::Instant::now();
                    }
                    return Ok(t);
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
                        checked: std::time::Instant::now(),
                    },
                );
                Ok(t)
            }
            Err(e) => {
                self.cache.lock().remove(&key);
                Err(e)
            }
        }
    }
}

/// Mirror every object of kind `K` into `writer`, and nudge `wake` on each change.
fn watch<K>(
    client: &Client,
    writer: reflector::store::Writer<K>,
    wake: tokio::sync::mpsc::Sender<()>,
) -> impl std::future::Future<Output = ()> + Send + 'static
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    K: Send + Sync + 'static,
{
    let wc = watcher::Config::default().any_semantic();
    reflector::reflector(writer, watcher(Api::<K>::all(client.clone()), wc))
        .touched_objects()
        .for_each(move |_| {
            let _ = wake.try_send(());
            futures::future::ready(())
        })
}

/// Start an agent for the VM whose IMDS is at `imds_endpoint`; it runs until `stop` is
/// cancelled.
pub async fn start(
    client: Client,
    imds_endpoint: url::Url,
    arm_endpoint: url::Url,
    settings: AgentSettings,
    policy: crate::auth::ImdsRetryPolicy,
    stop: tokio_util::sync::CancellationToken,
) -> Result<(Arc<Agent>, tokio::task::JoinHandle<()>), TokenFailure> {
    let http = crate::controller::app::http_client();
    let imds = Arc::new(ImdsSource::new(http.clone(), imds_endpoint, policy));
    let probe = Arc::new(ArmProbe::new(http, arm_endpoint));
    let agent = Agent::new(client, imds, probe, settings).await?;
    let run = agent.clone();
    let handle = tokio::spawn(async move { run.run(async move { stop.cancelled().await }).await });
    Ok((agent, handle))
}
