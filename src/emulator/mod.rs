//! A local stand-in for Azure: the ARM operations the controller uses, an Entra ID (AAD) token
//! endpoint, and one IMDS per emulated VM and scale set instance. RBAC is enforced on every ARM
//! call with the built-in roles' real meaning; requests are counted exactly by operation and
//! status; faults reproduce Azure's failure modes. Stand-alone: it knows nothing of Kubernetes or
//! of the controller.
//!
//! Tests start it in-process with [`start`] on port 0; users run `uami-controller emulator`.

mod aad;
mod arm;
pub mod faults;
mod imds;
pub mod knobs;
pub mod rbac;
pub mod state;
pub mod world;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::State as AxState;
use axum::routing::{get, post};
use parking_lot::Mutex;
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::Serialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

pub use faults::Faults;
pub use knobs::{Knobs, LroForm};
pub use world::World;

use state::{Assignment, Compute, ComputeKind, Rg, State};

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
    /// Path.
    pub path: String,
    /// Query string.
    pub query: String,
    /// Status answered (0 for a dropped connection).
    pub status: u16,
    /// Request body (JSON), if any.
    pub request: Option<Value>,
    /// Response body (JSON), if any.
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

    /// Roll the dice for a rate fault.
    pub fn chance(&self, rate: f64) -> bool {
        rate > 0.0 && rand::Rng::random::<f64>(&mut *self.rng.lock()) < rate
    }
}

/// A running emulator.
pub struct Emulator {
    inner: Arc<Inner>,
    arm_addr: SocketAddr,
    imds: BTreeMap<String, SocketAddr>,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn build_state(world: &World) -> Result<State, EmulatorError> {
    let mut st = State::default();
    let now = Instant::now();
    st.service_principals = world
        .service_principals
        .iter()
        .map(|s| s.principal_id.clone())
        .collect();
    st.service_principals.push(ADMIN_PRINCIPAL.to_string());
    for sub in &world.subscriptions {
        for rg in &sub.resource_groups {
            st.rgs.insert(
                (sub.id.to_lowercase(), rg.name.to_lowercase()),
                Rg {
                    subscription: sub.id.clone(),
                    name: rg.name.clone(),
                    location: rg.location.clone(),
                    tags: json!({}),
                },
            );
            for vm in &rg.virtual_machines {
                let c = Compute {
                    kind: ComputeKind::Vm,
                    subscription: sub.id.clone(),
                    resource_group: rg.name.clone(),
                    name: vm.name.clone(),
                    location: rg.location.clone(),
                    vm_id: uuid::Uuid::new_v4().to_string(),
                    system_principal: vm.system_assigned.then(|| uuid::Uuid::new_v4().to_string()),
                    user_assigned: BTreeMap::new(),
                    etag: 1,
                    pending: None,
                    applied_seq: 0,
                    instances: Vec::new(),
                };
                st.computes.insert(c.id().to_lowercase(), c);
            }
            for ss in &rg.virtual_machine_scale_sets {
                let c = Compute {
                    kind: ComputeKind::ScaleSet,
                    subscription: sub.id.clone(),
                    resource_group: rg.name.clone(),
                    name: ss.name.clone(),
                    location: rg.location.clone(),
                    vm_id: uuid::Uuid::new_v4().to_string(),
                    system_principal: ss.system_assigned.then(|| uuid::Uuid::new_v4().to_string()),
                    user_assigned: BTreeMap::new(),
                    etag: 1,
                    pending: None,
                    applied_seq: 0,
                    instances: (0..ss.instances)
                        .map(|i| format!("{}_{i}", ss.name))
                        .collect(),
                };
                st.computes.insert(c.id().to_lowercase(), c);
            }
        }
    }
    let mut initial = world.role_assignments.clone();
    initial.push(world::InitialAssignment {
        principal_id: ADMIN_PRINCIPAL.into(),
        role: "Owner".into(),
        scope: "/".into(),
    });
    for (i, a) in initial.iter().enumerate() {
        let role = rbac::find(&a.role).ok_or_else(|| {
            EmulatorError::World(format!("roleAssignments[{i}]: unknown role {}", a.role))
        })?;
        let name = uuid::Uuid::new_v5(
            &uuid::Uuid::NAMESPACE_OID,
            format!("{}|{}|{}", a.scope, a.principal_id, role.guid).as_bytes(),
        )
        .to_string();
        let asg = Assignment {
            name,
            scope: if a.scope == "/" {
                "/".into()
            } else {
                a.scope.trim_end_matches('/').to_string()
            },
            role_guid: role.guid.to_string(),
            principal_id: a.principal_id.clone(),
            principal_type: "ServicePrincipal".into(),
            description: None,
            effective_at: now,
            created_on: jiff::Timestamp::now().to_string(),
        };
        st.assignments.insert(asg.id().to_lowercase(), asg);
    }
    Ok(st)
}

/// Start the emulator: ARM and AAD on the world's listen address, one IMDS per VM and scale set
/// instance.
pub async fn start(world: World) -> Result<Emulator, EmulatorError> {
    let state = build_state(&world)?;
    let seed = world.faults.seed;
    let inner = Arc::new(Inner {
        faults: Mutex::new(world.faults.clone()),
        knobs: Mutex::new(world.knobs.clone()),
        rng: Mutex::new(StdRng::seed_from_u64(seed)),
        state: Mutex::new(state),
        counts: Mutex::new(Counts::default()),
        journal: Mutex::new(Vec::new()),
        tokens: Mutex::new(Vec::new()),
        key: uuid::Uuid::new_v4().as_bytes().to_vec(),
        arm_base: Mutex::new(String::new()),
        buckets: Mutex::new(HashMap::new()),
        imds_stats: Mutex::new(BTreeMap::new()),
        injected: Mutex::new(BTreeMap::new()),
        started: Instant::now(),
        world,
    });
    let stop = CancellationToken::new();
    let mut tasks = Vec::new();
    let listener = tokio::net::TcpListener::bind(inner.world.listen)
        .await
        .map_err(|source| EmulatorError::Bind {
            addr: inner.world.listen,
            source,
        })?;
    let arm_addr = listener
        .local_addr()
        .map_err(|source| EmulatorError::Bind {
            addr: inner.world.listen,
            source,
        })?;
    *inner.arm_base.lock() = format!("http://{arm_addr}/");
    tasks.push(serve(listener, app(inner.clone()), stop.clone()));

    let mut imds = BTreeMap::new();
    let mut endpoints: Vec<(String, String, SocketAddr)> = Vec::new();
    for sub in &inner.world.subscriptions {
        for rg in &sub.resource_groups {
            for vm in &rg.virtual_machines {
                let id = format!("/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Compute/virtualMachines/{}", sub.id, rg.name, vm.name).to_lowercase();
                endpoints.push((vm.name.clone(), id, vm.imds_listen));
            }
            for ss in &rg.virtual_machine_scale_sets {
                let id = format!("/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Compute/virtualMachineScaleSets/{}", sub.id, rg.name, ss.name).to_lowercase();
                for i in 0..ss.instances {
                    endpoints.push((
                        format!("{}_{i}", ss.name),
                        id.clone(),
                        SocketAddr::from(([127, 0, 0, 1], 0)),
                    ));
                }
            }
        }
    }
    for (name, compute, addr) in endpoints {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| EmulatorError::Bind { addr, source })?;
        let local = l
            .local_addr()
            .map_err(|source| EmulatorError::Bind { addr, source })?;
        inner
            .imds_stats
            .lock()
            .insert(name.clone(), imds::Limiter::default());
        tasks.push(serve(
            l,
            imds::app(inner.clone(), name.clone(), compute),
            stop.clone(),
        ));
        imds.insert(name, local);
    }
    Ok(Emulator {
        inner,
        arm_addr,
        imds,
        stop,
        tasks,
    })
}

fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
    })
}

/// The ARM + AAD + admin router.
pub(crate) fn app(inner: Arc<Inner>) -> Router {
    Router::new()
        .route("/_emulator/counts", get(admin_counts))
        .route("/_emulator/reset", post(admin_reset))
        .route("/_emulator/state", get(admin_state))
        .route("/_emulator/journal", get(admin_journal))
        .route("/_emulator/imds", get(admin_imds))
        .route("/_emulator/faults", get(admin_faults).put(admin_set_faults))
        .route("/_emulator/knobs", get(admin_knobs).put(admin_set_knobs))
        .route("/{tenant}/oauth2/v2.0/token", post(aad::token))
        .fallback(arm::handle)
        .with_state(inner)
}

async fn admin_counts(AxState(inner): AxState<Arc<Inner>>) -> axum::Json<Value> {
    let c = inner.counts.lock().clone();
    let rows: Vec<Value> =
        c.0.iter()
            .map(|((o, s), n)| json!({"operation": o, "status": s, "count": n}))
            .collect();
    let injected = inner.injected.lock().clone();
    axum::Json(json!({"counts": rows, "writes": c.writes(), "injected": injected}))
}

async fn admin_reset(AxState(inner): AxState<Arc<Inner>>) -> axum::http::StatusCode {
    *inner.counts.lock() = Counts::default();
    inner.journal.lock().clear();
    inner.injected.lock().clear();
    axum::http::StatusCode::NO_CONTENT
}

async fn admin_state(AxState(inner): AxState<Arc<Inner>>) -> axum::Json<Value> {
    axum::Json(dump(&inner))
}

async fn admin_journal(AxState(inner): AxState<Arc<Inner>>) -> axum::Json<Value> {
    axum::Json(serde_json::to_value(&*inner.journal.lock()).unwrap_or_default())
}

async fn admin_imds(AxState(inner): AxState<Arc<Inner>>) -> axum::Json<Value> {
    let stats: BTreeMap<String, ImdsStats> = inner
        .imds_stats
        .lock()
        .iter()
        .map(|(k, v)| (k.clone(), v.stats.clone()))
        .collect();
    axum::Json(serde_json::to_value(stats).unwrap_or_default())
}

async fn admin_knobs(AxState(inner): AxState<Arc<Inner>>) -> axum::Json<Knobs> {
    axum::Json(inner.knobs.lock().clone())
}

async fn admin_set_knobs(
    AxState(inner): AxState<Arc<Inner>>,
    body: axum::body::Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    match serde_json::from_slice::<Knobs>(&body) {
        Ok(k) => {
            *inner.knobs.lock() = k.clone();
            axum::Json(k).into_response()
        }
        Err(e) => (
            axum::http::StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": e.to_string()})),
        )
            .into_response(),
    }
}

async fn admin_faults(AxState(inner): AxState<Arc<Inner>>) -> axum::Json<Faults> {
    axum::Json(inner.faults.lock().clone())
}

async fn admin_set_faults(
    AxState(inner): AxState<Arc<Inner>>,
    body: axum::body::Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    match serde_json::from_slice::<Faults>(&body) {
        Ok(f) => {
            *inner.rng.lock() = StdRng::seed_from_u64(f.seed);
            *inner.faults.lock() = f.clone();
            axum::Json(f).into_response()
        }
        Err(e) => (
            axum::http::StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": e.to_string()})),
        )
            .into_response(),
    }
}

fn dump(inner: &Inner) -> Value {
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

impl Emulator {
    /// ARM base URL (paths such as `/subscriptions/...` are appended).
    pub fn arm_endpoint(&self) -> url::Url {
        url::Url::parse(&format!("http://{}/", self.arm_addr)).unwrap_or_else(|_| unreachable!())
    }

    /// AAD base: `POST {authority_host}{tenant}/oauth2/v2.0/token`.
    pub fn authority_host(&self) -> url::Url {
        self.arm_endpoint()
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
        *self.inner.counts.lock() = Counts::default();
        self.inner.journal.lock().clear();
        self.inner.injected.lock().clear();
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
        dump(&self.inner)
    }

    /// Replace the fault settings.
    pub fn set_faults(&self, f: Faults) {
        *self.inner.rng.lock() = StdRng::seed_from_u64(f.seed);
        *self.inner.faults.lock() = f;
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
        self.inner
            .imds_stats
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.stats.clone()))
            .collect()
    }

    /// A token for any principal (RBAC still applies to it).
    pub fn issue_token(&self, principal_id: &str, audience: &str) -> String {
        aad::issue(&self.inner, principal_id, principal_id, audience)
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
