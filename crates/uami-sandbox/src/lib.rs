//! An embedded, in-memory Kubernetes API server: enough of kube-apiserver for kube-rs clients
//! and controllers and for kubectl (discovery, OpenAPI v3, Tables, the protobuf bodies of
//! kubectl's typed commands), serving namespaces (with termination), ConfigMaps, Events (one
//! store for both APIs), Leases, the kinds the chart installs, CustomResourceDefinitions and
//! every kind the CRDs declare, with watch, optimistic concurrency, server-side apply,
//! finalizers, the status subresource and schema + CEL validation. Plain HTTP and HTTPS on
//! loopback with bearer tokens.
//!
//! Tests start it in-process with [`start`] on port 0; users run `uami-controller sandbox`.
//! It authenticates (a bearer token per user), authorizes service accounts with RBAC, evaluates
//! ValidatingAdmissionPolicies, and records an audit log of every request (how tests check
//! which calls a component makes).

mod admission;
mod authz;
pub mod cel_cost;
mod deliveries;
mod error;
mod events;
mod namespace;
mod protobuf;
mod registry;
mod server;
pub mod serviceaccount;
mod ssa;
mod store;
mod table;
pub mod tls;
mod validate;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use axum::Router;
use parking_lot::Mutex;
use serde::Serialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

pub use authz::UserInfo;
pub use deliveries::{StreamDeliveries, WatchDeliveries};
use store::Store;

/// The current time as the apiserver writes it.
pub fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// Why the sandbox could not start or do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Error.
        #[source]
        source: std::io::Error,
    },
    /// The service account signing key could not be made.
    #[error(transparent)]
    Key(#[from] serviceaccount::KeyError),
    /// A file could not be read or parsed.
    #[error("{0}")]
    Input(String),
    /// A Kubernetes client of the sandbox could not be built.
    #[error("cannot build a client of the sandbox: {0}")]
    Client(String),
    /// The listen address does not make a URL.
    #[error("cannot serve at {url}: {source}")]
    Url {
        /// The URL.
        url: String,
        /// Error.
        #[source]
        source: url::ParseError,
    },
}

/// Options.
#[derive(Clone, Debug)]
pub struct SandboxOptions {
    /// Listen address (`127.0.0.1:0` picks a free port).
    pub listen: SocketAddr,
    /// Watch events kept for resuming watches; older resourceVersions answer 410 Gone.
    pub history: usize,
    /// Listen address of the HTTPS port (for kubectl with a token: kubectl sends credentials
    /// only over TLS).
    pub https_listen: SocketAddr,
}

impl Default for SandboxOptions {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            history: 50_000,
            https_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        }
    }
}

/// One request as the sandbox saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditRecord {
    /// User (by bearer token).
    pub user: String,
    /// get, list, watch, create, update, patch, delete, deletecollection.
    pub verb: String,
    /// API group.
    pub group: String,
    /// Version.
    pub version: String,
    /// Resource (plural).
    pub resource: String,
    /// Subresource (`status`) or "".
    pub subresource: String,
    /// Namespace or "".
    pub namespace: String,
    /// Name or "".
    pub name: String,
    /// HTTP status answered.
    pub code: u16,
}

/// Watch faults: what a real API server does under load or during an upgrade. Changed at run
/// time with [`Sandbox::set_watch_faults`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WatchFaults {
    /// Each watch is closed after a random time up to this long (never when zero).
    pub close_within: std::time::Duration,
    /// Fraction of resumed watches (from a resourceVersion) answered 410 Gone.
    pub gone_rate: f64,
    /// Seed of the random generator.
    pub seed: u64,
}

/// Watch faults and their random generator, with counts of what was injected.
pub(crate) struct WatchChaos {
    pub faults: WatchFaults,
    pub rng: rand::rngs::StdRng,
    pub closed: u64,
    pub gone: u64,
}

impl WatchChaos {
    fn new(faults: WatchFaults) -> Self {
        use rand::SeedableRng;
        Self {
            rng: rand::rngs::StdRng::seed_from_u64(faults.seed),
            faults,
            closed: 0,
            gone: 0,
        }
    }
}

pub(crate) struct Shared {
    pub store: Mutex<Store>,
    pub users: Mutex<HashMap<String, UserInfo>>,
    pub audit: Mutex<Vec<AuditRecord>>,
    pub base: String,
    pub disconnect: tokio::sync::watch::Sender<u64>,
    pub watch_chaos: Mutex<WatchChaos>,
    pub deliveries: Mutex<deliveries::Tally>,
    pub issuer: serviceaccount::Issuer,
}

/// A running sandbox.
pub struct Sandbox {
    shared: Arc<Shared>,
    addr: SocketAddr,
    url: url::Url,
    https_url: url::Url,
    https: tls::Https,
    admin: kube::Client,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

fn app(shared: Arc<Shared>) -> Router {
    Router::new()
        .route(
            "/_sandbox/watch-faults",
            axum::routing::get(get_watch_faults).put(put_watch_faults),
        )
        .route(
            "/_sandbox/watch-deliveries",
            axum::routing::get(get_watch_deliveries),
        )
        .fallback(server::handle)
        .with_state(shared)
}

/// `PUT /_sandbox/watch-faults` body: `{"closeWithinMs": 20000, "goneRate": 0.2, "seed": 1}`.
#[derive(Debug, Default, serde::Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
struct WatchFaultsBody {
    close_within_ms: u64,
    gone_rate: f64,
    seed: u64,
}

async fn get_watch_faults(
    axum::extract::State(shared): axum::extract::State<Arc<Shared>>,
) -> axum::Json<Value> {
    let c = shared.watch_chaos.lock();
    axum::Json(serde_json::json!({
        "closeWithinMs": c.faults.close_within.as_millis() as u64,
        "goneRate": c.faults.gone_rate,
        "seed": c.faults.seed,
        "closed": c.closed,
        "gone": c.gone,
    }))
}

async fn put_watch_faults(
    axum::extract::State(shared): axum::extract::State<Arc<Shared>>,
    body: axum::body::Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    match serde_json::from_slice::<WatchFaultsBody>(&body) {
        Ok(b) => {
            *shared.watch_chaos.lock() = WatchChaos::new(WatchFaults {
                close_within: std::time::Duration::from_millis(b.close_within_ms),
                gone_rate: b.gone_rate,
                seed: b.seed,
            });
            axum::Json(b).into_response()
        }
        Err(e) => (
            axum::http::StatusCode::BAD_REQUEST,
            axum::Json(serde_json::json!({"error": e.to_string()})),
        )
            .into_response(),
    }
}

/// `GET /_sandbox/watch-deliveries`: [`Sandbox::watch_deliveries`] as JSON.
async fn get_watch_deliveries(
    axum::extract::State(shared): axum::extract::State<Arc<Shared>>,
) -> axum::Json<WatchDeliveries> {
    axum::Json(shared.watch_deliveries())
}

impl Shared {
    fn watch_deliveries(&self) -> WatchDeliveries {
        let changes = self.store.lock().changes.clone();
        self.deliveries.lock().snapshot(changes)
    }
}

/// Start the sandbox.
pub async fn start(opts: SandboxOptions) -> Result<Sandbox, SandboxError> {
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .map_err(|source| SandboxError::Bind {
            addr: opts.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| SandboxError::Bind {
        addr: opts.listen,
        source,
    })?;
    let (disconnect, _) = tokio::sync::watch::channel(0);
    let base = format!("http://{addr}");
    let shared = Arc::new(Shared {
        store: Mutex::new(Store::new(opts.history)),
        users: Mutex::new(HashMap::from([(
            uuid::Uuid::new_v4().to_string(),
            UserInfo::admin("admin"),
        )])),
        audit: Mutex::new(Vec::new()),
        issuer: serviceaccount::Issuer::generate(&base)?,
        base,
        disconnect,
        watch_chaos: Mutex::new(WatchChaos::new(WatchFaults::default())),
        deliveries: Mutex::new(deliveries::Tally::default()),
    });
    let stop = CancellationToken::new();
    let s = stop.clone();
    let router = app(shared.clone());
    let parse =
        |url: String| url::Url::parse(&url).map_err(|source| SandboxError::Url { url, source });
    let url = parse(shared.base.clone())?;
    let https = tls::serve(opts.https_listen, router.clone(), stop.clone()).await?;
    let https_url = parse(format!("https://{}", https.addr)).inspect_err(|_| stop.cancel())?;
    let admin_token = uuid::Uuid::new_v4().to_string();
    shared
        .users
        .lock()
        .insert(admin_token.clone(), UserInfo::admin("admin"));
    let admin = client_with_token(&url, admin_token).inspect_err(|_| stop.cancel())?;
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, router)
            .with_graceful_shutdown(async move { s.cancelled().await })
            .await;
    });
    Ok(Sandbox {
        shared,
        addr,
        url,
        https_url,
        https,
        admin,
        stop,
        task,
    })
}

/// A client of the sandbox at `url` that sends `token`.
fn client_with_token(url: &url::Url, token: String) -> Result<kube::Client, SandboxError> {
    let uri = url
        .as_str()
        .parse()
        .map_err(|e: http::uri::InvalidUri| SandboxError::Client(e.to_string()))?;
    let mut config = kube::Config::new(uri);
    config.auth_info.token = Some(secrecy::SecretString::from(token));
    config.default_namespace = "default".into();
    kube::Client::try_from(config).map_err(|e| SandboxError::Client(e.to_string()))
}

impl Sandbox {
    /// The server URL.
    pub fn url(&self) -> url::Url {
        self.url.clone()
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The HTTPS URL (same API; for clients that send credentials only over TLS).
    pub fn https_url(&self) -> url::Url {
        self.https_url.clone()
    }

    /// The HTTPS port's certificate (PEM), its own certificate authority.
    pub fn ca_pem(&self) -> &str {
        &self.https.ca_pem
    }

    /// The bearer token of the administrator `user` (made on first use; a member of
    /// `system:masters`, so RBAC does not apply).
    pub fn token(&self, user: &str) -> String {
        self.token_for(UserInfo::admin(user))
    }

    /// The bearer token of `user` (made on first use for that user name, groups and extra).
    pub fn token_for(&self, user: UserInfo) -> String {
        let mut users = self.shared.users.lock();
        if let Some((t, _)) = users.iter().find(|(_, u)| {
            u.username == user.username && u.groups == user.groups && u.extra == user.extra
        }) {
            return t.clone();
        }
        let t = uuid::Uuid::new_v4().to_string();
        users.insert(t.clone(), user);
        t
    }

    /// A token of the service account `namespace`/`name` (user
    /// `system:serviceaccount:NAMESPACE:NAME`, groups `system:serviceaccounts`,
    /// `system:serviceaccounts:NAMESPACE`, `system:authenticated`), authorized by RBAC. With
    /// `node`, the token is one bound to a pod on that node: `request.userInfo.extra` carries
    /// `authentication.kubernetes.io/node-name`.
    pub fn service_account_token(&self, namespace: &str, name: &str, node: Option<&str>) -> String {
        self.token_for(UserInfo::service_account(namespace, name, node))
    }

    /// A client as the admin user (built when the sandbox starts).
    pub fn client(&self) -> kube::Client {
        self.admin.clone()
    }

    /// A client as the administrator `user` (its own bearer token, so the audit log tells
    /// users apart).
    pub fn client_as(&self, user: &str) -> Result<kube::Client, SandboxError> {
        client_with_token(&self.url, self.token(user))
    }

    /// A client that sends `token` (one of [`Sandbox::token_for`]).
    pub fn client_with_token(&self, token: String) -> Result<kube::Client, SandboxError> {
        client_with_token(&self.url, token)
    }

    /// A client as a service account (see [`Sandbox::service_account_token`]).
    pub fn client_for_service_account(
        &self,
        namespace: &str,
        name: &str,
        node: Option<&str>,
    ) -> Result<kube::Client, SandboxError> {
        client_with_token(&self.url, self.service_account_token(namespace, name, node))
    }

    fn kubeconfig_with_token(&self, user: &str, namespace: &str, token: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: sandbox\n  cluster:\n    server: {}\ncontexts:\n- name: sandbox\n  context:\n    cluster: sandbox\n    user: {user}\n    namespace: {namespace}\ncurrent-context: sandbox\nusers:\n- name: {user}\n  user:\n    token: {token}\n",
            self.shared.base,
        )
    }

    /// A kubeconfig over HTTPS (kubectl sends the token only over TLS).
    fn https_kubeconfig_with_token(&self, user: &str, namespace: &str, token: &str) -> String {
        let ca = base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            self.https.ca_pem.as_bytes(),
        );
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: sandbox\n  cluster:\n    server: {}\n    certificate-authority-data: {ca}\ncontexts:\n- name: sandbox\n  context:\n    cluster: sandbox\n    user: {user}\n    namespace: {namespace}\ncurrent-context: sandbox\nusers:\n- name: {user}\n  user:\n    token: {token}\n",
            self.https_url().as_str().trim_end_matches('/'),
        )
    }

    /// A kubeconfig for the administrator `user`.
    pub fn kubeconfig_yaml(&self, user: &str) -> String {
        self.kubeconfig_with_token(user, "default", &self.token(user))
    }

    /// A kubeconfig for the service account `namespace`/`name` (its default namespace is
    /// `namespace`), over the HTTPS port.
    pub fn service_account_kubeconfig_yaml(
        &self,
        namespace: &str,
        name: &str,
        node: Option<&str>,
    ) -> String {
        let token = self.service_account_token(namespace, name, node);
        self.https_kubeconfig_with_token(
            &format!("system:serviceaccount:{namespace}:{name}"),
            namespace,
            &token,
        )
    }

    /// Write a kubeconfig for `user` to `path` (readable by the owner only).
    pub fn write_kubeconfig(&self, path: &Path, user: &str) -> std::io::Result<()> {
        write_private(path, &self.kubeconfig_yaml(user))
    }

    /// Write a kubeconfig for a service account to `path` (readable by the owner only).
    pub fn write_service_account_kubeconfig(
        &self,
        path: &Path,
        namespace: &str,
        name: &str,
        node: Option<&str>,
    ) -> std::io::Result<()> {
        write_private(
            path,
            &self.service_account_kubeconfig_yaml(namespace, name, node),
        )
    }

    /// The OIDC issuer URL of its service account tokens (`iss`), as `az aks show --query
    /// oidcIssuerProfile.issuerUrl` gives for an AKS cluster.
    pub fn oidc_issuer(&self) -> String {
        self.shared.issuer.url.clone()
    }

    /// Every request so far.
    pub fn audit(&self) -> Vec<AuditRecord> {
        self.shared.audit.lock().clone()
    }

    /// The requests after the first `from`.
    pub fn audit_from(&self, from: usize) -> Vec<AuditRecord> {
        self.shared
            .audit
            .lock()
            .get(from..)
            .map(<[AuditRecord]>::to_vec)
            .unwrap_or_default()
    }

    /// Apply every CRD in `dir` (`*.yaml`).
    pub async fn install_crds_from_dir(&self, dir: &Path) -> Result<(), SandboxError> {
        let mut paths: Vec<_> = std::fs::read_dir(dir)
            .map_err(|e| SandboxError::Input(format!("{}: {e}", dir.display())))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
            .collect();
        paths.sort();
        let mut crds = Vec::new();
        for p in paths {
            let text = std::fs::read_to_string(&p)
                .map_err(|e| SandboxError::Input(format!("{}: {e}", p.display())))?;
            let v: Value = serde_yaml_ng::from_str(&text)
                .map_err(|e| SandboxError::Input(format!("{}: {e}", p.display())))?;
            crds.push(v);
        }
        self.install(crds)
    }

    /// Create objects directly (CRDs, namespaces, ...), bypassing HTTP.
    pub fn install(&self, objects: Vec<Value>) -> Result<(), SandboxError> {
        let mut store = self.shared.store.lock();
        for o in objects {
            server::create_object(&mut store, o).map_err(SandboxError::Input)?;
        }
        Ok(())
    }

    /// Close every open watch (clients see the stream end and resume).
    pub fn disconnect_watches(&self) {
        self.shared.disconnect.send_modify(|e| *e += 1);
    }

    /// Close watches at random and answer 410 Gone to some resumes (`WatchFaults::default()`
    /// turns it off).
    pub fn set_watch_faults(&self, faults: WatchFaults) {
        *self.shared.watch_chaos.lock() = WatchChaos::new(faults);
    }

    /// Watches closed at random and resumes answered 410, since the last `set_watch_faults`.
    pub fn watch_faults_injected(&self) -> (u64, u64) {
        let c = self.shared.watch_chaos.lock();
        (c.closed, c.gone)
    }

    /// The watch events sent so far, per user, resource and object, with the changes the store
    /// published per resource.
    pub fn watch_deliveries(&self) -> WatchDeliveries {
        self.shared.watch_deliveries()
    }

    /// Forget the watch history: resuming from an older resourceVersion answers 410 Gone.
    pub fn compact(&self) {
        self.shared.store.lock().compact();
    }

    /// Stop serving.
    pub async fn shutdown(self) {
        self.disconnect_watches();
        self.stop.cancel();
        let _ = self.task.await;
        let _ = self.https.task.await;
    }
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    std::fs::write(path, text)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}
