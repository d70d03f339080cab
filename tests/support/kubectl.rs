//! The real kubectl, run against a kubeconfig: from `scripts/install-tools.sh` (`.tools/bin`) or
//! `$UAMI_KUBECTL`.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

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

    pub async fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&a).await).unwrap()
    }
}
