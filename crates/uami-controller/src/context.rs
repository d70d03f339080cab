//! The state shared by the reconcilers: the Kubernetes client, the Azure APIs behind traits, the
//! reflector stores that let one kind look up another, metrics, the Event recorder and what is
//! remembered of each object between its passes ([`Memo`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::Resource;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use parking_lot::Mutex;

use super::memo::{Fingerprint, Memo, ObjectKey};
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
    pub workload: Option<super::workload::state::WorkloadSettings>,
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

impl Stores {
    /// All GrantPolicies known to the cache.
    pub fn policies(&self) -> Vec<GrantPolicy> {
        self.policies
            .state()
            .iter()
            .map(|p| (**p).clone())
            .collect()
    }
}

/// The objects of `store` in namespace `ns` that are not being deleted and that `keep` accepts.
pub fn live_in<K>(store: &Store<K>, ns: &str, keep: impl Fn(&K) -> bool) -> Vec<Arc<K>>
where
    K: Resource + Clone + 'static,
    K::DynamicType: std::hash::Hash + Eq + Clone,
{
    store
        .state()
        .into_iter()
        .filter(|o| {
            let meta = o.meta();
            meta.deletion_timestamp.is_none() && meta.namespace.as_deref() == Some(ns) && keep(o)
        })
        .collect()
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
    pub fic_locks: super::workload::state::IdentityLocks,
    /// The token checks of service account bindings, run off the reconcile.
    pub token_checks: super::workload::state::TokenChecks,
    /// Azure's quotas as counted.
    pub budgets: super::budget::ledger::Budgets,
    /// The service account defaults last decided (see [`super::workload`]).
    pub sa_defaults: super::workload::state::Defaults,
    /// What is remembered of each object between its passes.
    pub memo: Memo,
    roles: Mutex<HashMap<RoleKey, (RoleDefinition, Instant)>>,
    azure_identities: Mutex<HashMap<ObjectKey, super::azure_identity::record::AzureIdentity>>,
}

/// A role as a grant names it, in one subscription (both lowercased).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct RoleKey {
    subscription: String,
    role: String,
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
        let budgets = super::budget::ledger::Budgets::new(
            settings.role_assignment_limit,
            metrics.quota.clone(),
        );
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
            fic_locks: super::workload::state::IdentityLocks::default(),
            token_checks: super::workload::state::TokenChecks::default(),
            sa_defaults: super::workload::state::Defaults::default(),
            memo: Memo::default(),
            roles: Mutex::new(HashMap::new()),
            azure_identities: Mutex::new(HashMap::new()),
        }
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
        uami_kube::events::send_event(
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
        let key = RoleKey {
            subscription: subscription.to_lowercase(),
            role: role.to_lowercase(),
        };
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
    pub fn recently_checked(&self, key: &ObjectKey, fingerprint: Fingerprint) -> bool {
        let window = self.settings.resync_period.mul_f64(0.8);
        self.memo.recently_checked(key, fingerprint, window)
    }

    /// The identity recorded for the identity object `key` (see [`super::azure_identity`]).
    pub fn azure_identity(
        &self,
        key: &ObjectKey,
    ) -> Option<super::azure_identity::record::AzureIdentity> {
        self.azure_identities.lock().get(key).cloned()
    }

    /// Record the identity the identity object `key` stands for, as ARM returned it.
    pub fn remember_azure_identity(
        &self,
        key: ObjectKey,
        identity: super::azure_identity::record::AzureIdentity,
    ) {
        self.azure_identities.lock().insert(key, identity);
    }

    /// Forget the identity recorded for the identity object `key`.
    pub fn forget_azure_identity(&self, key: &ObjectKey) {
        self.azure_identities.lock().remove(key);
    }

    /// Forget what is kept about objects no longer in their caches: deleted without a cleanup
    /// (they had no finalizer), or whose cleanup this replica did not see.
    pub fn sweep(&self) {
        let stores = &self.stores;
        let holds = |key: &ObjectKey| {
            if key.kind == UserAssignedIdentity::kind(&()) {
                stores.identities.get(&ref_of(key)).is_some()
            } else if key.kind == IdentityBinding::kind(&()) {
                stores.bindings.get(&ref_of(key)).is_some()
            } else if key.kind == RoleGrant::kind(&()) {
                stores.grants.get(&ref_of(key)).is_some()
            } else {
                false
            }
        };
        self.memo.retain(holds);
        self.azure_identities.lock().retain(|k, _| holds(k));
        self.token_checks.retain(holds);
    }

    /// Forget everything kept about the object `key` (it was cleaned up).
    pub fn forget_object(&self, key: &ObjectKey) {
        self.memo.forget(key);
        self.azure_identities.lock().remove(key);
    }

    /// All GrantPolicies known to the cache.
    pub fn policies(&self) -> Vec<GrantPolicy> {
        self.stores.policies()
    }

    /// The identity `name` in `namespace`, from the shared cache. This is the one way the
    /// reconcilers read identities: no reconcile starts before every cache has synced (see
    /// [`super::run`]), and an identity's change reaches the cache before it wakes its
    /// dependents, so the cache is never older than the event a pass answers.
    pub fn identity(&self, namespace: &str, name: &str) -> Option<Arc<UserAssignedIdentity>> {
        self.stores
            .identities
            .get(&ObjectRef::new(name).within(namespace))
    }
}

/// The reference of the object `key` names, for a store lookup.
fn ref_of<K: Resource<DynamicType = ()>>(key: &ObjectKey) -> ObjectRef<K> {
    ObjectRef::new(&key.name).within(&key.namespace)
}
