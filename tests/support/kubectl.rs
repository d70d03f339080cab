//! The real kubectl, run against a kubeconfig: from `scripts/install-tools.sh` (`.tools/bin`) or
//! `$UAMI_KUBECTL`.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use uami_sandbox::{self as sandbox, Sandbox, SandboxOptions};

pub fn kubectl_bin() -> PathBuf {
    let path = std::env::var_os("UAMI_KUBECTL")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/bin/kubectl"));
    assert!(
        path.exists(),
        "kubectl not found at {}: run scripts/install-tools.sh (or set UAMI_KUBECTL)",
        path.display()
    );
    path
}

/// kubectl with one kubeconfig.
pub struct Kubectl {
    /// The kubeconfig every command uses.
    pub kubeconfig: PathBuf,
}

impl Kubectl {
    pub async fn run(&self, args: &[&str]) -> (bool, String, String) {
        let mut cmd = Command::new(kubectl_bin());
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
            .await
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    pub async fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.run(args).await;
        assert!(ok, "kubectl {args:?} failed:\n{out}\n{err}");
        out
    }

    pub async fn fails(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.run(args).await;
        assert!(!ok, "kubectl {args:?} should have failed:\n{out}\n{err}");
        err
    }

    /// `ok` with the arguments of one command line (split at whitespace).
    pub async fn ok_line(&self, line: &str) -> String {
        self.ok(&line.split_whitespace().collect::<Vec<_>>()).await
    }

    /// `fails` with the arguments of one command line (split at whitespace).
    pub async fn fails_line(&self, line: &str) -> String {
        self.fails(&line.split_whitespace().collect::<Vec<_>>())
            .await
    }

    /// `json` with the arguments of one command line (split at whitespace).
    pub async fn json_line(&self, line: &str) -> Value {
        self.json(&line.split_whitespace().collect::<Vec<_>>())
            .await
    }

    pub async fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&a).await).unwrap()
    }
}

/// A sandbox with the project's CRDs and kubectl on it: as `admin`, or `anonymous` with a
/// kubeconfig without credentials (kubectl on loopback as it comes). The directory holds the
/// kubeconfig.
pub async fn sandbox_with_crds(anonymous: bool) -> (Sandbox, Kubectl, tempfile::TempDir) {
    let sb = sandbox::start(SandboxOptions::default()).await.unwrap();
    sb.install_crds_from_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("crds"))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    if anonymous {
        anonymous_kubeconfig(&sb.url(), &kubeconfig);
    } else {
        sb.write_kubeconfig(&kubeconfig, "admin").unwrap();
    }
    (sb, Kubectl { kubeconfig }, dir)
}

/// A kubeconfig without credentials: kubectl on loopback as it comes.
pub fn anonymous_kubeconfig(url: &url::Url, path: &Path) {
    std::fs::write(
        path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: s\n  cluster:\n    server: {url}\ncontexts:\n- name: s\n  context:\n    cluster: s\n    user: u\n    namespace: default\ncurrent-context: s\nusers:\n- name: u\n  user: {{}}\n"
        ),
    )
    .unwrap();
}

/// kubectl as service account `ns/name` of `sb` (bound to `node`, when given), with its
/// kubeconfig at `path`.
pub fn service_account_kubectl(
    sb: &Sandbox,
    path: PathBuf,
    ns: &str,
    name: &str,
    node: Option<&str>,
) -> Kubectl {
    sb.write_service_account_kubeconfig(&path, ns, name, node)
        .unwrap();
    Kubectl { kubeconfig: path }
}
