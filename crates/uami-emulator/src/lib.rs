//! A local stand-in for Azure: the ARM operations the controller uses, Entra ID (AAD: the token
//! endpoint and the discovery documents MSAL reads), both over HTTPS with a certificate
//! authority made at start, and one plain-HTTP IMDS per emulated VM and scale set instance. RBAC
//! is enforced on every ARM call with the built-in roles' real meaning; requests are counted
//! exactly by operation and status; faults reproduce Azure's failure modes. Stand-alone: it knows
//! nothing of Kubernetes or of the controller.
//!
//! Tests start it in-process with [`start`] on port 0; users run `uami-controller emulator`.

mod aad;
mod aad_discovery;
mod admin;
mod arm;
mod data_plane;
pub mod faults;
mod imds;
pub mod knobs;
pub mod rbac;
mod start;
pub mod state;
mod tokens;
pub mod world;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::Serialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

pub use faults::Faults;
pub use knobs::{Knobs, LroForm};
pub use start::start;
pub use world::World;

use state::State;

/// Principal id of the emulator's administrator: Owner at `/`, for tests and users acting as a
/// human admin (`Emulator::admin_token`).
pub const ADMIN_PRINCIPAL: &str = "00000000-0000-0000-0000-00000000ad01";

/// Why the emulator could not start.
#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    /// The world file is invalid.
    #[error("invalid world: {0}")]
    World(String),
    /// A listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The certificate authority or the TLS configuration could not be made.
    #[error("TLS: {0}")]
    Tls(#[source] uami_local_tls::TlsError),
    /// A bound address does not make a URL.
    #[error("the address {addr} does not make a URL: {source}")]
    Url {
        /// The address.
        addr: SocketAddr,
        /// The error.
        #[source]
        source: url::ParseError,
    },
}

/// One request and its answer, as recorded by the emulator. Tokens, secrets and assertions are
/// never recorded.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Exchange {
    /// Operation id (the specs' operationId, or `Aad_Token`, `Imds_Token`, ...).
    pub operation: String,
    /// HTTP method.
    pub method: String,
    /// Path, percent-decoded. IMDS paths start with the VM or instance name
    /// (`myVM:/metadata/identity/oauth2/token`).
    pub path: String,
    /// Query string (for IMDS, re-encoded from the parameters it read).
    pub query: String,
    /// Status answered, or 0 when the connection dropped before an answer (the faults
    /// `dropConnection` and `appliedThenDrop`).
    pub status: u16,
    /// Request body (JSON), if any; of an AAD token request only the fields that hold no secret.
    pub request: Option<Value>,
    /// Response body (JSON), if any, with an access token replaced by `<redacted>`.
    pub response: Option<Value>,
    /// The fault injected into this exchange, if any (a `faults::kind` name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fault: Option<String>,
    /// The caller as it named itself: `x-ms-client-request-id` when sent, else `User-Agent`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// Milliseconds since the emulator started, when the request arrived.
    pub at_ms: u64,
}

/// Request counts by (operation, status).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counts(pub BTreeMap<(String, u16), u64>);

impl Counts {
    /// Requests of `operation`, any status.
    pub fn total(&self, operation: &str) -> u64 {
        self.0
            .iter()
            .filter(|((o, _), _)| o == operation)
            .map(|(_, n)| n)
            .sum()
    }

    /// Requests of `operation` answered `status`.
    pub fn get(&self, operation: &str, status: u16) -> u64 {
        self.0
            .get(&(operation.to_string(), status))
            .copied()
            .unwrap_or(0)
    }

    /// ARM writes and deletes (PUT, PATCH, DELETE), any status.
    pub fn writes(&self) -> u64 {
        self.0
            .iter()
            .filter(|((o, _), _)| arm::is_write(o))
            .map(|(_, n)| n)
            .sum()
    }

    /// ARM reads (every ARM operation that is not a write), any status.
    pub fn reads(&self) -> u64 {
        self.0
            .iter()
            .filter(|((o, _), _)| {
                !arm::is_write(o) && !o.starts_with("Aad") && !o.starts_with("Imds")
            })
            .map(|(_, n)| n)
            .sum()
    }

    /// Requests answered `status`, any operation.
    pub fn with_status(&self, status: u16) -> u64 {
        self.0
            .iter()
            .filter(|((_, s), _)| *s == status)
            .map(|(_, n)| n)
            .sum()
    }
}

/// Per-IMDS request statistics.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImdsStats {
    /// Token requests served or refused.
    pub requests: u64,
    /// Most requests in flight at once.
    pub max_concurrent: u64,
    /// Most requests within any one second.
    pub max_per_second: u64,
    /// Requests refused with 429 because a limit was exceeded.
    pub limited: u64,
}

/// (subscription, principal, reads|writes|deletes).
pub(crate) type BucketKey = (String, String, &'static str);

pub(crate) struct Inner {
    pub world: World,
    pub state: Mutex<State>,
    pub faults: Mutex<Faults>,
    pub knobs: Mutex<Knobs>,
    pub rng: Mutex<StdRng>,
    pub counts: Mutex<Counts>,
    pub journal: Mutex<Vec<Exchange>>,
    pub tokens: Mutex<Vec<String>>,
    pub key: Vec<u8>,
    pub arm_base: Mutex<String>,
    pub buckets: Mutex<HashMap<BucketKey, (f64, Instant)>>,
    pub imds_stats: Mutex<BTreeMap<String, imds::Limiter>>,
    pub injected: Mutex<BTreeMap<String, u64>>,
    pub started: Instant,
    /// Entra ID's client for OIDC issuers (see `aad::issuer_client`).
    pub http: reqwest::Client,
}

impl Inner {
    /// Count an injected fault by kind.
    pub fn inject(&self, kind: &str) {
        *self.injected.lock().entry(kind.to_string()).or_insert(0) += 1;
    }

    /// Milliseconds since start.
    pub fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    pub fn count(&self, mut ex: Exchange) {
        if ex.at_ms == 0 {
            ex.at_ms = self.elapsed_ms();
        }
        *self
            .counts
            .lock()
            .0
            .entry((ex.operation.clone(), ex.status))
            .or_insert(0) += 1;
        let mut j = self.journal.lock();
        if j.len() < 100_000 {
            j.push(ex);
        }
    }

    /// Forget the counts, the injected faults and the journal.
    pub fn reset(&self) {
        *self.counts.lock() = Counts::default();
        self.journal.lock().clear();
        self.injected.lock().clear();
    }

    /// Replace the fault settings (and reseed the generator behind the rates).
    pub fn set_faults(&self, f: Faults) {
        *self.rng.lock() = StdRng::seed_from_u64(f.seed);
        *self.faults.lock() = f;
    }

    /// Per-IMDS statistics.
    pub fn imds_stats(&self) -> BTreeMap<String, ImdsStats> {
        self.imds_stats
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.stats.clone()))
            .collect()
    }

    /// A dump of the Azure state.
    pub fn dump(&self) -> Value {
        let inner = self;
        let mut st = inner.state.lock();
        st.settle(Instant::now());
        let tenant = &inner.world.tenant_id;
        json!({
            "tenantId": tenant,
            "resourceGroups": st.rgs.values().map(|r| json!({"subscription": r.subscription, "name": r.name, "location": r.location})).collect::<Vec<_>>(),
            "identities": st.identities.values().map(|i| i.json()).collect::<Vec<_>>(),
            "federatedIdentityCredentials": st.fics.iter().flat_map(|(key, fics)| {
                let id = st.identities.get(key).map(|i| i.id()).unwrap_or_default();
                fics.values().map(move |f| f.json(&id)).collect::<Vec<_>>()
            }).collect::<Vec<_>>(),
            "roleAssignments": st.assignments.values().map(|a| a.json()).collect::<Vec<_>>(),
            "computes": st.computes.values().map(|c| c.json(&st.identities, tenant)).collect::<Vec<_>>(),
        })
    }

    /// Roll the dice for a rate fault.
    pub fn chance(&self, rate: f64) -> bool {
        rate > 0.0 && rand::Rng::random::<f64>(&mut *self.rng.lock()) < rate
    }
}

/// A running emulator.
pub struct Emulator {
    inner: Arc<Inner>,
    arm_url: url::Url,
    ca_pem: Option<String>,
    imds: BTreeMap<String, SocketAddr>,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Emulator {
    /// ARM base URL (paths such as `/subscriptions/...` are appended).
    pub fn arm_endpoint(&self) -> url::Url {
        self.arm_url.clone()
    }

    /// Blob Storage of the world's storage accounts, on the ARM listener, as a URL template with
    /// `{account}` (what the agent's `--blob-endpoint` takes).
    pub fn blob_endpoint(&self) -> String {
        format!(
            "{}/_data/blob/{{account}}",
            self.arm_url.as_str().trim_end_matches('/')
        )
    }

    /// Key Vault of the world's vaults, on the ARM listener, as a URL template with `{vault}`
    /// (what the agent's `--keyvault-endpoint` takes).
    pub fn keyvault_endpoint(&self) -> String {
        format!(
            "{}/_data/vault/{{vault}}",
            self.arm_url.as_str().trim_end_matches('/')
        )
    }

    /// Entra ID's authority host: `POST {authority_host}{tenant}/oauth2/v2.0/token`, the
    /// discovery documents under `{authority_host}{tenant}/`.
    pub fn authority_host(&self) -> url::Url {
        self.arm_endpoint()
    }

    /// The certificate authority (PEM) of the ARM and Entra ID listener's certificate, made at
    /// start; `None` when the world asks for plain HTTP.
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    /// IMDS base URL of a VM or scale set instance (`myVM`, `web_0`).
    pub fn imds_endpoint(&self, vm_or_instance: &str) -> Option<url::Url> {
        self.imds
            .get(vm_or_instance)
            .and_then(|a| url::Url::parse(&format!("http://{a}")).ok())
    }

    /// The names of every VM and scale set instance with an IMDS.
    pub fn imds_names(&self) -> Vec<String> {
        self.imds.keys().cloned().collect()
    }

    /// Tenant id.
    pub fn tenant_id(&self) -> String {
        self.inner.world.tenant_id.clone()
    }

    /// The world it runs.
    pub fn world(&self) -> &World {
        &self.inner.world
    }

    /// Exact request counts.
    pub fn counts(&self) -> Counts {
        self.inner.counts.lock().clone()
    }

    /// Forget the counts, the injected faults and the journal.
    pub fn reset_counts(&self) {
        self.inner.reset();
    }

    /// Faults injected so far, by kind (`faults::kind`).
    pub fn injected(&self) -> BTreeMap<String, u64> {
        self.inner.injected.lock().clone()
    }

    /// Every exchange since start or the last reset.
    pub fn journal(&self) -> Vec<Exchange> {
        self.inner.journal.lock().clone()
    }

    /// A dump of the Azure state.
    pub fn state(&self) -> Value {
        self.inner.dump()
    }

    /// Replace the fault settings.
    pub fn set_faults(&self, f: Faults) {
        self.inner.set_faults(f);
    }

    /// Replace the behaviour knobs (LRO forms, page size, link base).
    pub fn set_knobs(&self, k: Knobs) {
        *self.inner.knobs.lock() = k;
    }

    /// The behaviour knobs.
    pub fn knobs(&self) -> Knobs {
        self.inner.knobs.lock().clone()
    }

    /// The fault settings.
    pub fn faults(&self) -> Faults {
        self.inner.faults.lock().clone()
    }

    /// Per-IMDS statistics.
    pub fn imds_stats(&self) -> BTreeMap<String, ImdsStats> {
        self.inner.imds_stats()
    }

    /// A token for any principal (RBAC still applies to it).
    pub fn issue_token(&self, principal_id: &str, audience: &str) -> String {
        tokens::issue(&self.inner, principal_id, principal_id, audience)
    }

    /// A token of the emulator's administrator (Owner at `/`), for ARM.
    pub fn admin_token(&self) -> String {
        self.issue_token(ADMIN_PRINCIPAL, "https://management.azure.com/")
    }

    /// Every access token issued so far (tests search logs and status for them).
    pub fn issued_tokens(&self) -> Vec<String> {
        self.inner.tokens.lock().clone()
    }

    /// Stop serving.
    pub async fn shutdown(self) {
        self.stop.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}
