//! What the reconcile context keeps for service account bindings, apart from the reconciles
//! that use it (so the context depends on this file alone): the settings, one credential writer
//! per identity, the defaults last decided, and the token checks' state.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::Semaphore;

use super::super::memo::{Fingerprint, ObjectKey};
use uami_api::binding::{ScopeAccess, TokenStatus};
use uami_api::conditions::NewCondition;
use uami_azure::federated::IdentityCoordinates;

/// What service account bindings need to know about the cluster and Entra ID.
#[derive(Clone, Debug)]
pub struct WorkloadSettings {
    /// The cluster's OIDC issuer URL, exactly as its tokens carry it in `iss`.
    pub oidc_issuer: String,
    /// Entra ID's authority host (`https://login.microsoftonline.com/`).
    pub authority_host: url::Url,
    /// The ARM endpoint the granted scopes are read from.
    pub arm_endpoint: url::Url,
    /// The data planes grants of data roles are read on.
    pub data_planes: uami_azure::DataPlanes,
    /// HTTP client for the exchange and the reads.
    pub http: reqwest::Client,
}

/// One writer at a time per identity: Azure refuses concurrent federated identity credential
/// writes on one identity (`ConcurrentFederatedIdentityCredentialsWritesForSingleManagedIdentity`).
/// A lock lives while someone holds or waits for it: the table keeps only weak references, and
/// drops the dead ones whenever a lock is handed out.
#[derive(Default)]
pub struct IdentityLocks {
    locks: parking_lot::Mutex<HashMap<IdentityCoordinates, Weak<tokio::sync::Mutex<()>>>>,
}

impl IdentityLocks {
    /// The lock of the identity at `at` (the same for any spelling of its coordinates).
    pub fn of(&self, at: &IdentityCoordinates) -> Arc<tokio::sync::Mutex<()>> {
        let key = IdentityCoordinates::new(
            &at.subscription.to_lowercase(),
            &at.resource_group.to_lowercase(),
            &at.name.to_lowercase(),
        );
        let mut locks = self.locks.lock();
        locks.retain(|_, lock| lock.strong_count() > 0);
        if let Some(lock) = locks.get(&key).and_then(Weak::upgrade) {
            return lock;
        }
        let lock = Arc::new(tokio::sync::Mutex::new(()));
        locks.insert(key, Arc::downgrade(&lock));
        lock
    }

    /// How many identities have a lock in use.
    pub fn len(&self) -> usize {
        let mut locks = self.locks.lock();
        locks.retain(|_, lock| lock.strong_count() > 0);
        locks.len()
    }

    /// Whether no lock is in use.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The default last decided for each service account (namespace, name) that has live bindings.
#[derive(Default)]
pub struct Defaults {
    decided: parking_lot::Mutex<HashMap<(String, String), DefaultChoice>>,
}

impl Defaults {
    /// Record `choice` as the default of `sa` in `ns`; whether it differs from the last one.
    pub(super) fn changed(&self, ns: &str, sa: &str, choice: &Option<DefaultChoice>) -> bool {
        let key = (ns.to_string(), sa.to_string());
        let mut decided = self.decided.lock();
        let before = match choice {
            Some(c) => decided.insert(key, c.clone()),
            None => decided.remove(&key),
        };
        before != *choice
    }
}

/// Which binding's identity the service account's client id annotation names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum DefaultChoice {
    /// This binding (name, identity): the one marked `default: true`, else the oldest.
    Default(String, String),
    /// Bindings (name, identity) of different identities all marked `default: true`.
    Conflict(Vec<(String, String)>),
}

/// The result of the token check.
#[derive(Clone, Debug)]
pub(super) struct TokenCheck {
    pub token: Option<TokenStatus>,
    pub condition: NewCondition,
    pub access: Vec<ScopeAccess>,
    /// Access checks that did not pass and may pass later (not those of scopes the check cannot
    /// read, which no retry changes).
    pub pending: usize,
}

impl TokenCheck {
    /// Whether the exchange worked and every access that can be checked was verified.
    pub fn settled(&self) -> bool {
        self.token.is_some() && self.pending == 0
    }
}

/// How many token checks run at once: each requests a token, exchanges it and reads up to 100
/// scopes, off the reconcile, so neither reconcile workers nor ARM's budget wait on them.
const CONCURRENT_CHECKS: usize = 2;
/// The first look again after a check that did not settle; it doubles up to the resync.
const FIRST_RECHECK: Duration = Duration::from_secs(5);

/// The token checks of service account bindings: run in tasks of their own, at most
/// [`CONCURRENT_CHECKS`] at once, each binding's result kept until its next check, which comes
/// with backoff while it has not settled and at the resync once it has.
pub struct TokenChecks {
    limit: Arc<Semaphore>,
    state: Mutex<HashMap<ObjectKey, CheckState>>,
}

impl Default for TokenChecks {
    fn default() -> Self {
        Self {
            limit: Arc::new(Semaphore::new(CONCURRENT_CHECKS)),
            state: Mutex::new(HashMap::new()),
        }
    }
}

struct CheckState {
    /// What the check was for (identity, credential, resource, generation).
    fingerprint: Fingerprint,
    running: bool,
    last: Option<TokenCheck>,
    due: Instant,
    unsettled: u32,
}

/// What the reconcile of a binding learns from [`TokenChecks::look`].
pub(super) struct Look {
    /// The last finished check for the binding's current fingerprint.
    pub last: Option<TokenCheck>,
    /// Start a check now (the caller spawns it with [`TokenChecks::run`]).
    pub start: bool,
    /// When to look again: the next check is due then (a running one wakes the binding itself).
    pub again: Duration,
}

impl TokenChecks {
    /// The state of `key`'s check at `fingerprint`: its last result, and whether one is due.
    pub(super) fn look(&self, key: &ObjectKey, fingerprint: Fingerprint, resync: Duration) -> Look {
        let mut state = self.state.lock();
        let now = Instant::now();
        let entry = state.entry(key.clone()).or_insert_with(|| CheckState {
            fingerprint,
            running: false,
            last: None,
            due: now,
            unsettled: 0,
        });
        if entry.fingerprint != fingerprint && !entry.running {
            *entry = CheckState {
                fingerprint,
                running: false,
                last: None,
                due: now,
                unsettled: 0,
            };
        }
        let start = !entry.running && entry.due <= now;
        if start {
            entry.running = true;
        }
        Look {
            last: entry
                .last
                .clone()
                .filter(|_| entry.fingerprint == fingerprint),
            start,
            again: if entry.running {
                resync
            } else {
                entry
                    .due
                    .saturating_duration_since(now)
                    .max(Duration::from_secs(1))
            },
        }
    }

    /// Run `check` for `key` when a place is free, keep its result, and wake the binding.
    pub(super) async fn run<F>(
        &self,
        key: ObjectKey,
        fingerprint: Fingerprint,
        resync: Duration,
        check: F,
    ) where
        F: std::future::Future<Output = TokenCheck>,
    {
        let permit = self.limit.clone().acquire_owned().await;
        let result = check.await;
        drop(permit);
        let mut state = self.state.lock();
        let Some(entry) = state.get_mut(&key) else {
            return;
        };
        entry.running = false;
        if entry.fingerprint != fingerprint {
            // The binding changed meanwhile: its next look checks again at once.
            entry.due = Instant::now();
            return;
        }
        entry.unsettled = if result.settled() {
            0
        } else {
            entry.unsettled.saturating_add(1)
        };
        let backoff = FIRST_RECHECK
            .saturating_mul(1u32 << entry.unsettled.saturating_sub(1).min(16))
            .min(resync);
        entry.due = Instant::now()
            + if entry.unsettled == 0 {
                resync
            } else {
                backoff
            };
        entry.last = Some(result);
    }

    /// Forget `key` (its binding is gone).
    pub(super) fn forget(&self, key: &ObjectKey) {
        self.state.lock().remove(key);
    }

    /// Keep only the bindings `exists` says are still there (a running check is kept: it ends
    /// on its own).
    pub fn retain(&self, exists: impl Fn(&ObjectKey) -> bool) {
        self.state.lock().retain(|k, c| c.running || exists(k));
    }
}
