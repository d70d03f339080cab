//! The agent: runs on a VM (or a scale set instance), the only place IMDS answers. It learns which
//! VM it is from IMDS instance metadata, watches the bindings that target that VM, obtains a
//! token through IMDS for each bound identity, reads each granted scope with that token, and
//! writes what it found (token metadata, never the token) into status with its own field manager.
//!
//! IMDS and ARM are behind the small traits [`TokenSource`] and [`AccessProbe`], so the loop is
//! the same against a real VM and the emulator.

pub mod config;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use parking_lot::Mutex;
use secrecy::SecretString;

use crate::api::binding::{InstanceTokenStatus, TokenStatus};
use crate::api::conditions::{self, NewCondition, set_condition, types};
use crate::api::grant::AccessStatus;
use crate::api::{IdentityBinding, RoleGrant, UserAssignedIdentity};
use crate::controller::status::{contained_in, now};

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
        let wc = watcher::Config::default().any_semantic();
        let (b_store, b_writer) = reflector::store::<IdentityBinding>();
        let (g_store, g_writer) = reflector::store::<RoleGrant>();
        let (i_store, i_writer) = reflector::store::<UserAssignedIdentity>();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        let tx1 = tx.clone();
        let tx2 = tx.clone();
        let b = reflector::reflector(b_writer, watcher(Api::all(self.client.clone()), wc.clone()))
            .touched_objects()
            .for_each(move |_| {
                let _ = tx.try_send(());
                futures::future::ready(())
            });
        let g = reflector::reflector(g_writer, watcher(Api::all(self.client.clone()), wc.clone()))
            .touched_objects()
            .for_each(move |_| {
                let _ = tx1.try_send(());
                futures::future::ready(())
            });
        let i = reflector::reflector(i_writer, watcher(Api::all(self.client.clone()), wc))
            .touched_objects()
            .for_each(move |_| {
                let _ = tx2.try_send(());
                futures::future::ready(())
            });
        let watches = tokio::spawn(async move {
            tokio::join!(b, g, i);
        });
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

    async fn write_binding(
        &self,
        b: &IdentityBinding,
        result: &Result<Token, TokenFailure>,
    ) -> kube::Result<()> {
        let generation = b.metadata.generation;
        let current = b.status.clone().unwrap_or_default();
        let mut own: Vec<_> = current
            .conditions
            .iter()
            .filter(|c| c.type_ == types::TOKEN_ACQUIRED)
            .cloned()
            .collect();
        let checked_by = self.me.checked_by();
        let (cond, token) = match result {
            Ok(t) => (
                NewCondition::new(
                    types::TOKEN_ACQUIRED,
                    true,
                    "TokenAcquired",
                    format!(
                        "{checked_by} obtained a token for {} through IMDS",
                        t.meta.resource.clone().unwrap_or_default()
                    ),
                ),
                Some(TokenStatus {
                    checked_by: Some(checked_by.clone()),
                    ..t.meta.clone()
                }),
            ),
            Err(e) => (
                NewCondition::new(
                    types::TOKEN_ACQUIRED,
                    false,
                    &e.reason,
                    format!("{checked_by}: {}", e.message),
                ),
                None,
            ),
        };
        set_condition(&mut own, cond, generation, now());
        let mut status = serde_json::json!({ "conditions": own });
        match &self.me.scale_set {
            None => {
                if let Some(token) = token {
                    status["token"] = serde_json::to_value(token).unwrap_or_default();
                }
            }
            Some(_) => {
                let known = current
                    .instances
                    .iter()
                    .any(|i| i.instance_id == self.me.name);
                if !known && current.instances.len() >= MAX_INSTANCES {
                    tracing::warn!(binding = %b.name_any(), "instance list is full; not reporting this instance");
                } else {
                    let entry = InstanceTokenStatus {
                        instance_id: self.me.name.clone(),
                        acquired: result.is_ok(),
                        reason: result.as_ref().err().map(|e| e.reason.clone()),
                        token,
                    };
                    status["instances"] = serde_json::json!([entry]);
                }
            }
        }
        let current_json = serde_json::to_value(&current).unwrap_or_default();
        if contained_in(&status, &current_json) {
            return Ok(());
        }
        let api: Api<IdentityBinding> =
            Api::namespaced(self.client.clone(), &b.namespace().unwrap_or_default());
        apply(
            &api,
            &b.name_any(),
            "IdentityBinding",
            status,
            &self.field_manager(),
        )
        .await
    }

    async fn write_grant(
        &self,
        g: &RoleGrant,
        scope: &str,
        outcome: Result<u16, CheckFailure>,
    ) -> kube::Result<()> {
        let current = g.status.clone().unwrap_or_default();
        let mut own: Vec<_> = current
            .conditions
            .iter()
            .filter(|c| c.type_ == types::ACCESS_VERIFIED)
            .cloned()
            .collect();
        let checked_by = self.me.checked_by();
        let (cond, access) = match outcome {
            Ok(200) => (
                NewCondition::new(
                    types::ACCESS_VERIFIED,
                    true,
                    "AccessVerified",
                    format!("{checked_by} read {scope} with the identity's token (HTTP 200)"),
                ),
                Some(AccessStatus {
                    verified: true,
                    http_status: Some(200),
                    checked_by: Some(checked_by),
                }),
            ),
            Ok(code @ (401 | 403)) => (
                NewCondition::new(
                    types::ACCESS_VERIFIED,
                    false,
                    "AccessDenied",
                    format!(
                        "{checked_by} got HTTP {code} reading {scope}; a new role assignment can take minutes to take effect"
                    ),
                ),
                Some(AccessStatus {
                    verified: false,
                    http_status: Some(code.into()),
                    checked_by: Some(checked_by),
                }),
            ),
            Ok(code) => (
                NewCondition::new(
                    types::ACCESS_VERIFIED,
                    false,
                    "UnexpectedStatus",
                    format!("{checked_by} got HTTP {code} reading {scope}"),
                ),
                Some(AccessStatus {
                    verified: false,
                    http_status: Some(code.into()),
                    checked_by: Some(checked_by),
                }),
            ),
            Err(failure) => (
                NewCondition::new(
                    types::ACCESS_VERIFIED,
                    false,
                    &failure.reason,
                    format!("{checked_by}: {}", failure.message),
                ),
                None,
            ),
        };
        set_condition(&mut own, cond, g.metadata.generation, now());
        let mut status = serde_json::json!({ "conditions": own });
        if let Some(access) = &access {
            status["access"] = serde_json::to_value(access).unwrap_or_default();
        }
        // Several VMs may check one grant: `checkedBy` alone changing is not worth a write.
        let mut compare = status.clone();
        if let Some(a) = compare.get_mut("access").and_then(|a| a.as_object_mut()) {
            a.remove("checkedBy");
        }
        let current_json = serde_json::to_value(&current).unwrap_or_default();
        if contained_in(&compare, &current_json) {
            return Ok(());
        }
        let api: Api<RoleGrant> =
            Api::namespaced(self.client.clone(), &g.namespace().unwrap_or_default());
        apply(&api, &g.name_any(), "RoleGrant", status, FIELD_MANAGER).await
    }
}

async fn apply<K>(
    api: &Api<K>,
    name: &str,
    kind: &str,
    status: serde_json::Value,
    manager: &str,
) -> kube::Result<()>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": kind,
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(manager).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

/// Token metadata from a JWT's claims, for status: tenant and object id.
pub fn claims_meta(
    claims: &BTreeMap<String, serde_json::Value>,
) -> (Option<String>, Option<String>) {
    let s = |k: &str| claims.get(k).and_then(|v| v.as_str()).map(str::to_string);
    (s("tid"), s("oid"))
}

/// [`TokenSource`] over the VM's IMDS.
pub struct ImdsSource {
    imds: crate::auth::ImdsClient,
}

impl ImdsSource {
    /// IMDS at `endpoint`.
    pub fn new(
        http: reqwest::Client,
        endpoint: url::Url,
        policy: crate::auth::ImdsRetryPolicy,
    ) -> Self {
        Self {
            imds: crate::auth::ImdsClient::new(http, endpoint, policy),
        }
    }
}

fn timestamp(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

#[async_trait]
impl TokenSource for ImdsSource {
    async fn whoami(&self) -> Result<Whoami, TokenFailure> {
        let c = self
            .imds
            .instance_compute()
            .await
            .map_err(|e| TokenFailure {
                reason: "ImdsUnavailable".into(),
                message: e.to_string(),
            })?;
        Ok(Whoami {
            subscription_id: c.subscription_id,
            resource_group: c.resource_group_name,
            name: c.name,
            scale_set: (!c.vm_scale_set_name.is_empty()).then_some(c.vm_scale_set_name),
        })
    }

    async fn token(&self, client_id: &str, resource: &str) -> Result<Token, TokenFailure> {
        let selector = crate::auth::IdentitySelector::ClientId(client_id.to_string());
        match self.imds.token(resource, &selector, false).await {
            Ok(t) => {
                let claims = crate::auth::decode_claims(&t.access_token).unwrap_or_default();
                Ok(Token {
                    meta: TokenStatus {
                        resource: Some(if t.resource.is_empty() {
                            resource.to_string()
                        } else {
                            t.resource.clone()
                        }),
                        token_type: Some(t.token_type.clone()),
                        client_id: Some(
                            t.client_id.clone().unwrap_or_else(|| client_id.to_string()),
                        ),
                        tenant_id: claims.tid,
                        object_id: claims.oid,
                        expires_on: Some(timestamp(t.expires_on)),
                        not_before: t.not_before.map(timestamp),
                        checked_by: None,
                    },
                    expires_on: t.expires_on,
                    secret: t.access_token,
                })
            }
            Err(e) if e.is_identity_not_found() => Err(TokenFailure {
                reason: "IdentityNotAssigned".into(),
                message: format!("IMDS does not know identity {client_id} on this VM: {e}"),
            }),
            Err(crate::auth::ImdsError::Status { status: 429, .. }) => Err(TokenFailure {
                reason: "ImdsThrottled".into(),
                message: "IMDS kept answering 429 after retries".into(),
            }),
            Err(e) => Err(TokenFailure {
                reason: "ImdsUnavailable".into(),
                message: e.to_string(),
            }),
        }
    }
}

/// [`AccessProbe`] over ARM.
pub struct ArmProbe {
    http: reqwest::Client,
    endpoint: url::Url,
}

impl ArmProbe {
    /// ARM at `endpoint`.
    pub fn new(http: reqwest::Client, endpoint: url::Url) -> Self {
        Self { http, endpoint }
    }
}

#[async_trait]
impl AccessProbe for ArmProbe {
    async fn probe(&self, scope: &str, token: &SecretString) -> Result<u16, CheckFailure> {
        crate::azure::probe_access(&self.http, &self.endpoint, scope, token)
            .await
            .map_err(|e| CheckFailure {
                reason: if e.code() == "UnsupportedScope" {
                    "UnsupportedScope".into()
                } else {
                    "CheckFailed".into()
                },
                message: if e.code() == "UnsupportedScope" {
                    e.message.clone()
                } else {
                    e.to_string()
                },
            })
    }
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
