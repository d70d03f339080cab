//! A real Kubernetes control plane for the tests, found as controller-runtime's envtest finds
//! it: `KUBEBUILDER_ASSETS` names a folder with `etcd`, `kube-apiserver` and (for namespace
//! deletion and garbage collection) `kube-controller-manager`. `scripts/test.sh` points it at
//! `../shared/envtest/` (unpacked once into `.tools/envtest/`).
//!
//! kube-controller-manager runs the namespace, garbage-collector and ClusterRole aggregation
//! controllers.
//!
//! One control plane per test binary, started by the first test that asks for it; the tests of
//! the binary take turns on it ([`cluster`] holds the turn), each starting from a reset server
//! (see `External::reset`). The processes are stopped when the test binary ends, however it ends
//! (a watchdog per process waits for the binary's end of a pipe to close), so a panic or a kill
//! leaves nothing running.
//!
//! The service-account issuer is published on loopback over HTTPS (its discovery document and
//! keys, read from the API server), as AKS publishes its issuer outside the cluster, so Entra ID
//! (the emulator) can verify the cluster's tokens.
#![allow(dead_code)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use tokio::sync::{Mutex, MutexGuard, OnceCell};
use uami::demo::cluster::External;

/// The variable that names the binaries' folder.
pub const ASSETS: &str = "KUBEBUILDER_ASSETS";
/// Set to `1` (as `scripts/test.sh` does when it found the binaries), a test that needs the real
/// API server fails instead of saying that it did not run.
pub const REQUIRED: &str = "UAMI_REAL_APISERVER_REQUIRED";

/// A running control plane.
pub struct ControlPlane {
    /// Its folder: kubeconfig, certificates, logs.
    pub dir: PathBuf,
    /// `https://127.0.0.1:PORT`.
    pub server: String,
    /// The API server's serving certificate (PEM), its own authority.
    pub ca_pem: String,
    /// The administrator's bearer token (`system:masters`).
    pub admin_token: String,
    /// The service-account issuer (`iss` of its tokens), served on loopback.
    pub issuer: String,
    /// The certificate (PEM) of the issuer's HTTPS listener, its own authority.
    pub issuer_ca_pem: String,
    /// Static tokens of users without extra fields, by name (see [`STATIC_USERS`]).
    pub static_tokens: Vec<(String, String)>,
    /// The pipes whose closing stops the processes.
    _watchdogs: Vec<(Child, ChildStdin)>,
}

/// Fixed users of the static token file, as (name, user, groups): users that carry no extra
/// fields, as a legacy service-account token or a static token does.
pub const STATIC_USERS: &[(&str, &str, &str)] = &[(
    "legacy-agent",
    "system:serviceaccount:uami-system:uami-agent",
    "system:serviceaccounts,system:serviceaccounts:uami-system,system:authenticated",
)];

static PLANE: OnceCell<Result<ControlPlane, String>> = OnceCell::const_new();
static TURN: Mutex<()> = Mutex::const_new(());

/// The real API server for one test: the stack option that selects it, and the turn.
pub struct Real {
    pub plane: &'static ControlPlane,
    pub external: External,
    _turn: MutexGuard<'static, ()>,
}

impl Real {
    /// A client of the static user `name` (see [`STATIC_USERS`]).
    pub fn static_client(&self, name: &str) -> kube::Client {
        let token = self
            .plane
            .static_tokens
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t.clone())
            .unwrap();
        kube::Client::try_from(self.external.config_with_token(token)).unwrap()
    }

    /// The administrator's kubeconfig file (for kubectl and helm).
    pub fn kubeconfig(&self) -> PathBuf {
        self.plane.dir.join("kubeconfig")
    }
}

/// The real API server, after the previous test's turn ended; `None` (having said why and how
/// to turn it on) when `KUBEBUILDER_ASSETS` is not set and [`REQUIRED`] is not `1`.
pub async fn cluster(test: &str) -> Option<Real> {
    let Some(assets) = std::env::var_os(ASSETS).filter(|a| !a.is_empty()) else {
        let why = format!(
            "{test}: the real-API-server part did NOT run: {ASSETS} is not set. Run scripts/test.sh \
             (it sets it from ../shared/envtest), or set {ASSETS} to a folder with etcd, \
             kube-apiserver and kube-controller-manager."
        );
        if std::env::var(REQUIRED).as_deref() == Ok("1") {
            panic!("{why}");
        }
        eprintln!("{why}");
        return None;
    };
    let turn = TURN.lock().await;
    let plane = PLANE
        .get_or_init(|| async move {
            let assets = PathBuf::from(assets);
            tokio::task::spawn_blocking(move || start(&assets))
                .await
                .map_err(|e| e.to_string())?
        })
        .await;
    let plane = match plane {
        Ok(p) => p,
        Err(e) => panic!("the real API server did not start: {e}"),
    };
    let kubeconfig = kube::config::Kubeconfig::read_from(plane.dir.join("kubeconfig")).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    Some(Real {
        plane,
        external: External::new(config, plane.issuer.clone()),
        _turn: turn,
    })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

fn random_hex() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Start `bin args` with its output in `log`, behind a watchdog that stops it (TERM, then KILL
/// after 3 s) when our end of its pipe closes.
fn spawn(bin: &Path, args: &[String], log: &Path) -> Result<(Child, ChildStdin), String> {
    let out = std::fs::File::create(log).map_err(|e| e.to_string())?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    let script = r#"exec 3<&0; "$@" 3<&- </dev/null & pid=$!; cat <&3 >/dev/null; kill $pid 2>/dev/null; for i in 1 2 3 4 5 6; do kill -0 $pid 2>/dev/null || exit 0; sleep 0.5; done; kill -9 $pid 2>/dev/null"#;
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg("watchdog")
        .arg(bin)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("{}: {e}", bin.display()))?;
    let stdin = child.stdin.take().ok_or("no pipe")?;
    Ok((child, stdin))
}

fn wait_for(what: &str, secs: u64, log: &Path, mut ok: impl FnMut() -> bool) -> Result<(), String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    while std::time::Instant::now() < deadline {
        if ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let tail = std::fs::read_to_string(log).unwrap_or_default();
    let tail: Vec<&str> = tail.lines().rev().take(20).collect();
    Err(format!(
        "{what} did not start within {secs} s; the end of {}:\n{}",
        log.display(),
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    ))
}

/// Start etcd, kube-apiserver, the issuer's publisher and kube-controller-manager.
fn start(assets: &Path) -> Result<ControlPlane, String> {
    let bin = |name: &str| {
        let p = assets.join(name);
        p.is_file()
            .then_some(p.clone())
            .ok_or(format!("{ASSETS}={} has no {name}", assets.display()))
    };
    let (etcd, apiserver) = (bin("etcd")?, bin("kube-apiserver")?);
    let kcm = bin("kube-controller-manager").ok();
    let dir = tempfile::Builder::new()
        .prefix("uami-envtest-")
        .tempdir()
        .map_err(|e| e.to_string())?
        .keep();
    let mut watchdogs = Vec::new();
    // The folder goes when the binary ends, after the processes.
    {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(r#"cat >/dev/null; sleep 4; rm -rf "$0""#)
            .arg(&dir)
            .stdin(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        let stdin = child.stdin.take().ok_or("no pipe")?;
        watchdogs.push((child, stdin));
    }
    let (ep, pp, ap, ip) = (free_port(), free_port(), free_port(), free_port());

    // Service-account signing key.
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let write =
        |name: &str, text: &str| std::fs::write(dir.join(name), text).map_err(|e| e.to_string());
    write("sa.key", &key.serialize_pem())?;
    write("sa.pub", &key.public_key_pem())?;
    let admin_token = random_hex();
    let mut tokens = format!("{admin_token},envtest-admin,1,\"system:masters\"\n");
    let mut static_tokens = Vec::new();
    for (i, (name, user, groups)) in STATIC_USERS.iter().enumerate() {
        let t = random_hex();
        tokens.push_str(&format!("{t},{user},static-{i},\"{groups}\"\n"));
        static_tokens.push((name.to_string(), t));
    }
    write("tokens.csv", &tokens)?;

    let etcd_log = dir.join("etcd.log");
    let d = |p: &str| dir.join(p).display().to_string();
    watchdogs.push(spawn(
        &etcd,
        &[
            format!("--data-dir={}", d("etcd")),
            format!("--listen-client-urls=http://127.0.0.1:{ep}"),
            format!("--advertise-client-urls=http://127.0.0.1:{ep}"),
            format!("--listen-peer-urls=http://127.0.0.1:{pp}"),
            "--unsafe-no-fsync".into(),
        ],
        &etcd_log,
    )?);
    wait_for("etcd", 20, &etcd_log, || {
        std::fs::read_to_string(&etcd_log).is_ok_and(|l| l.contains("etcd ready"))
    })?;

    let issuer = format!("https://127.0.0.1:{ip}");
    let api_log = dir.join("kube-apiserver.log");
    watchdogs.push(spawn(
        &apiserver,
        &[
            format!("--etcd-servers=http://127.0.0.1:{ep}"),
            format!("--secure-port={ap}"),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--cert-dir={}", d("certs")),
            format!("--service-account-issuer={issuer}"),
            format!("--service-account-jwks-uri={issuer}/openid/v1/jwks"),
            format!("--service-account-key-file={}", d("sa.pub")),
            format!("--service-account-signing-key-file={}", d("sa.key")),
            format!("--token-auth-file={}", d("tokens.csv")),
            "--authorization-mode=RBAC".into(),
            "--service-cluster-ip-range=10.0.0.0/24".into(),
        ],
        &api_log,
    )?);
    let server = format!("https://127.0.0.1:{ap}");
    let ca_path = dir.join("certs").join("apiserver.crt");
    wait_for("kube-apiserver", 60, &api_log, || {
        ca_path.is_file()
            && curl(&server, &ca_path, &admin_token, "/readyz").is_ok_and(|b| b.starts_with("ok"))
    })?;
    let ca_pem = std::fs::read_to_string(&ca_path).map_err(|e| e.to_string())?;
    let ca64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &ca_pem);
    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: envtest\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca64}\nusers:\n- name: admin\n  user:\n    token: {admin_token}\ncontexts:\n- name: envtest\n  context:\n    cluster: envtest\n    user: admin\n    namespace: default\ncurrent-context: envtest\n"
    );
    let mut f = std::fs::File::create(dir.join("kubeconfig")).map_err(|e| e.to_string())?;
    f.write_all(kubeconfig.as_bytes())
        .map_err(|e| e.to_string())?;

    let issuer_ca_pem = publish_issuer(ip, &server, &ca_path, &admin_token)?;

    if let Some(kcm) = kcm {
        // No serving port (`--secure-port=0`): nothing reads its health, and a port picked here
        // could be taken by another server before it binds. The tests start once its controllers
        // have: the last one started is the ClusterRole aggregator, which a test waits on.
        let kcm_log = dir.join("kube-controller-manager.log");
        watchdogs.push(spawn(
            &kcm,
            &[
                format!("--kubeconfig={}", d("kubeconfig")),
                "--controllers=namespace-controller,garbage-collector-controller,clusterrole-aggregation-controller".into(),
                "--leader-elect=false".into(),
                "--secure-port=0".into(),
            ],
            &kcm_log,
        )?);
        wait_for("kube-controller-manager", 60, &kcm_log, || {
            std::fs::read_to_string(&kcm_log)
                .is_ok_and(|l| l.contains("Starting ClusterRoleAggregator controller"))
        })?;
    } else {
        eprintln!(
            "{ASSETS} has no kube-controller-manager: namespaces will not finish terminating"
        );
    }
    Ok(ControlPlane {
        dir,
        server,
        ca_pem,
        admin_token,
        issuer,
        issuer_ca_pem,
        static_tokens,
        _watchdogs: watchdogs,
    })
}

/// GET `path` of the API server as the administrator, through curl (no runtime needed here).
fn curl(server: &str, ca_file: &Path, token: &str, path: &str) -> Result<String, String> {
    let out = Command::new("curl")
        .args(["-sf", "--max-time", "5", "--cacert"])
        .arg(ca_file)
        .arg("-H")
        .arg(format!("Authorization: Bearer {token}"))
        .arg(format!("{server}{path}"))
        .output()
        .map_err(|e| e.to_string())?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
        .ok_or_else(|| format!("curl {path}: {}", out.status))
}

/// Serve the issuer's discovery document and keys (read from the API server) over HTTPS on
/// `port`, from a thread of its own that lives as long as the test binary. The certificate's PEM.
fn publish_issuer(port: u16, server: &str, ca: &Path, token: &str) -> Result<String, String> {
    use axum::routing::get;
    let discovery = curl(server, ca, token, "/.well-known/openid-configuration")?;
    let jwks = curl(server, ca, token, "/openid/v1/jwks")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                let _ = tx.send(Err(e.to_string()));
                return;
            }
        };
        rt.block_on(async move {
            let json = |body: String| {
                move || async move { ([(http::header::CONTENT_TYPE, "application/json")], body) }
            };
            let router = axum::Router::new()
                .route("/.well-known/openid-configuration", get(json(discovery)))
                .route("/openid/v1/jwks", get(json(jwks)));
            let stop = tokio_util::sync::CancellationToken::new();
            let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
            match uami_sandbox::tls::serve(addr, router, stop.clone()).await {
                Ok(https) => {
                    let _ = tx.send(Ok(https.ca_pem.clone()));
                    let _ = https.task.await;
                }
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                }
            }
        });
    });
    rx.recv_timeout(Duration::from_secs(10))
        .map_err(|e| e.to_string())?
}
