//! The state shared by the reconcilers: the Kubernetes client, the Azure APIs behind traits, the
//! reflector stores that let one kind look up another, metrics, the Event recorder and the
//! per-object failure counts that drive backoff.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::Resource;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use parking_lot::Mutex;

use super::target_writer::TargetWriter;
use uami_api::{GrantPolicy, IdentityBinding, RoleGrant, UserAssignedIdentity};
use uami_azure::roles::{RoleDefinition, role_definition_guid};
use uami_azure::{ArmError, ComputeApi, IdentityApi, RoleApi};
use uami_telemetry::metrics::ReconcileMetrics;

/// Settings the reconcilers read.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Name of this cluster: part of the owner tag of every identity, so two clusters with the
    /// same namespace and object names never take over each other's identities.
    pub cluster_name: String,
    /// Subscription used where a spec names none.
    pub default_subscription: Option<String>,
    /// Period of the drift check, before jitter.
    pub resync_period: Duration,
    /// Service account bindings (workload identity); `None` without `--oidc-issuer`.
    pub workload: Option<super::workload::WorkloadSettings>,
    /// Role assignments allowed per subscription before grants are refused (Azure's fixed
    /// limit, or lower to leave headroom for others).
    pub role_assignment_limit: usize,
}

impl Settings {
    /// The resync delay with up to 10% jitter, so objects created together do not resync together.
    pub fn jittered_resync(&self) -> Duration {
        self.resync_period
            .mul_f64(0.9 + rand::random::<f64>() * 0.2)
            .max(Duration::from_millis(100))
    }
}

/// The Azure APIs the controller uses.
#[derive(Clone)]
pub struct AzureApis {
    /// User-assigned identities.
    pub identities: Arc<dyn IdentityApi>,
    /// Role definitions and assignments.
    pub roles: Arc<dyn RoleApi>,
    /// VM and scale set identity.
    pub compute: Arc<dyn ComputeApi>,
    /// Federated identity credentials (service account bindings).
    pub federated: Arc<dyn uami_azure::federated::FederatedCredentialApi>,
}

/// Reflector stores of the four kinds.
#[derive(Clone)]
pub struct Stores {
    /// Identities.
    pub identities: Store<UserAssignedIdentity>,
    /// Bindings.
    pub bindings: Store<IdentityBinding>,
    /// Grants.
    pub grants: Store<RoleGrant>,
    /// Policies.
    pub policies: Store<GrantPolicy>,
}

/// Shared reconciler state.
pub struct Context {
    /// Kubernetes client.
    pub client: kube::Client,
    /// Azure APIs.
    pub azure: AzureApis,
    /// Settings.
    pub settings: Settings,
    /// Reflector stores.
    pub stores: Stores,
    /// The one writer per VM / scale set.
    pub writer: Arc<TargetWriter>,
    /// Reconcile metrics.
    pub metrics: ReconcileMetrics,
    /// Event recorder (of warnings; see [`Context::event`]).
    pub recorder: Recorder,
    reporter: Reporter,
    /// One federated identity credential writer at a time per identity.
    pub fic_locks: super::workload::IdentityLocks,
    /// The token checks of service account bindings, run off the reconcile.
    pub token_checks: super::workload::TokenChecks,
    /// Azure's quotas as counted.
    pub budgets: super::budget::Budgets,
    failures: Mutex<HashMap<String, u32>>,
    roles: Mutex<HashMap<(String, String), (RoleDefinition, Instant)>>,
    checked: Mutex<HashMap<String, (String, Instant)>>,
    superseded: Mutex<HashMap<String, String>>,
    azure_identities: Mutex<HashMap<String, super::azure_identity::AzureIdentity>>,
    notes: Mutex<HashMap<String, String>>,
}

impl Context {
    /// Assemble the context.
    pub fn new(
        client: kube::Client,
        azure: AzureApis,
        settings: Settings,
        stores: Stores,
        writer: Arc<TargetWriter>,
        metrics: ReconcileMetrics,
    ) -> Self {
        let reporter = Reporter {
            controller: "uami-controller".into(),
            instance: None,
        };
        let recorder = Recorder::new(client.clone(), reporter.clone());
        let budgets =
            super::budget::Budgets::new(settings.role_assignment_limit, metrics.quota.clone());
        Self {
            budgets,
            client,
            azure,
            settings,
            stores,
            writer,
            metrics,
            recorder,
            reporter,
            fic_locks: super::workload::IdentityLocks::default(),
            token_checks: super::workload::TokenChecks::default(),
            failures: Mutex::new(HashMap::new()),
            roles: Mutex::new(HashMap::new()),
            checked: Mutex::new(HashMap::new()),
            superseded: Mutex::new(HashMap::new()),
            azure_identities: Mutex::new(HashMap::new()),
            notes: Mutex::new(HashMap::new()),
        }
    }

    /// Record a failure of the object with key `key`; returns the count of consecutive failures.
    pub fn record_failure(&self, key: &str) -> u32 {
        let mut failures = self.failures.lock();
        let n = failures.entry(key.to_string()).or_insert(0);
        *n += 1;
        *n
    }

    /// Forget the failures of `key` after a success.
    pub fn record_success(&self, key: &str) {
        self.failures.lock().remove(key);
    }

    /// Publish an Event about `obj`; failures to publish are logged, never fatal.
    pub async fn event<K>(&self, obj: &K, warning: bool, reason: &str, action: &str, note: String)
    where
        K: Resource<DynamicType = ()>,
    {
        // Warnings go through the shared recorder, which turns a repeated one into a series of
        // one Event. A Normal event records a one-off transition (created, assigned, granted):
        // it is published by a recorder of its own, so the shared one does not keep a copy of
        // every Event for six minutes (at 10,000 objects that was most of the heap).
        let recorder = if warning {
            self.recorder.clone()
        } else {
            Recorder::new(self.client.clone(), self.reporter.clone())
        };
        super::outcome::send_event(
            &recorder,
            &obj.object_ref(&()),
            warning,
            reason,
            action,
            note,
        )
        .await;
    }

    /// Resolve `role` (a role name, a role definition GUID or id) in `subscription`. Role
    /// definitions barely change, so answers are cached for an hour: a thousand grants of
    /// `Reader` cost one lookup, not a thousand.
    pub async fn resolve_role(
        &self,
        subscription: &str,
        role: &str,
    ) -> Result<Option<RoleDefinition>, ArmError> {
        const TTL: Duration = Duration::from_secs(3600);
        let key = (subscription.to_lowercase(), role.to_lowercase());
        if let Some((def, at)) = self.roles.lock().get(&key)
            && at.elapsed() < TTL
        {
            return Ok(Some(def.clone()));
        }
        let scope = format!("/subscriptions/{subscription}");
        let found = match role_definition_guid(role) {
            Some(guid) => self.azure.roles.get_role_definition(&scope, &guid).await?,
            None => self.azure.roles.find_role_definition(&scope, role).await?,
        };
        if let Some(def) = &found {
            self.roles.lock().insert(key, (def.clone(), Instant::now()));
        }
        Ok(found)
    }

    /// Whether the Azure side of `key` was checked, with the same `fingerprint` (generation and
    /// inputs), recently enough that a pass triggered by a status change need not read ARM again.
    pub fn recently_checked(&self, key: &str, fingerprint: &str) -> bool {
        let window = self.settings.resync_period.mul_f64(0.8);
        self.checked
            .lock()
            .get(key)
            .is_some_and(|(f, at)| f == fingerprint && at.elapsed() < window)
    }

    /// Record that the Azure side of `key` was just checked with `fingerprint`.
    pub fn mark_checked(&self, key: &str, fingerprint: String) {
        self.checked
            .lock()
            .insert(key.to_string(), (fingerprint, Instant::now()));
    }

    /// Forget the check of `key` (after a write, or when the object goes).
    pub fn forget_checked(&self, key: &str) {
        self.checked.lock().remove(key);
    }

    /// Record that the object `key` at `version` was just patched by its reconcile (its finalizer
    /// added), so that copy is stale.
    pub fn note_superseded(&self, key: &str, version: String) {
        self.superseded.lock().insert(key.to_string(), version);
    }

    /// Whether the copy of `key` at `version` is one its last reconcile patched; the record is
    /// used once.
    pub fn take_superseded(&self, key: &str, version: Option<&str>) -> bool {
        self.superseded
            .lock()
            .remove(key)
            .is_some_and(|v| Some(v.as_str()) == version)
    }

    /// The identity recorded under `key` (see [`super::azure_identity`]).
    pub fn azure_identity(&self, key: &str) -> Option<super::azure_identity::AzureIdentity> {
        self.azure_identities.lock().get(key).cloned()
    }

    /// Record the identity `key` stands for, as ARM returned it.
    pub fn remember_azure_identity(
        &self,
        key: String,
        identity: super::azure_identity::AzureIdentity,
    ) {
        self.azure_identities.lock().insert(key, identity);
    }

    /// Forget the identity recorded under `key`.
    pub fn forget_azure_identity(&self, key: &str) {
        self.azure_identities.lock().remove(key);
    }

    /// Keep `value` under `key` for the life of this process (a step in progress, a decision
    /// last taken); returns what was kept before.
    pub fn keep_note(&self, key: &str, value: String) -> Option<String> {
        self.notes.lock().insert(key.to_string(), value)
    }

    /// What is kept under `key`.
    pub fn note(&self, key: &str) -> Option<String> {
        self.notes.lock().get(key).cloned()
    }

    /// Drop what is kept under `key`; returns it.
    pub fn drop_note(&self, key: &str) -> Option<String> {
        self.notes.lock().remove(key)
    }

    /// All GrantPolicies known to the cache.
    pub fn policies(&self) -> Vec<GrantPolicy> {
        self.stores
            .policies
            .state()
            .iter()
            .map(|p| (**p).clone())
            .collect()
    }

    /// The identity `name` in `namespace`, from the cache.
    pub fn identity(&self, namespace: &str, name: &str) -> Option<Arc<UserAssignedIdentity>> {
        self.stores
            .identities
            .get(&ObjectRef::new(name).within(namespace))
    }

    /// The identity from the cache, or from the API server when the cache does not have it
    /// (right after a start the cache may not be filled yet). For deletions, which must not
    /// take a cache miss for a missing identity.
    pub async fn identity_or_fetch(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Arc<UserAssignedIdentity>>, kube::Error> {
        if let Some(i) = self.identity(namespace, name) {
            return Ok(Some(i));
        }
        let api: kube::Api<UserAssignedIdentity> =
            kube::Api::namespaced(self.client.clone(), namespace);
        let by_name = kube::api::ListParams::default().fields(&format!("metadata.name={name}"));
        Ok(api
            .list(&by_name)
            .await?
            .items
            .into_iter()
            .find(|i| i.metadata.name.as_deref() == Some(name))
            .map(Arc::new))
    }
}

/// A key that names one object of one kind.
pub fn object_key<K: Resource<DynamicType = ()>>(obj: &K) -> String {
    format!(
        "{}/{}/{}",
        K::kind(&()),
        obj.meta().namespace.as_deref().unwrap_or(""),
        obj.meta().name.as_deref().unwrap_or("")
    )
}
