//! The real helm, run on the chart: from `scripts/install-tools.sh` (`.tools/bin`) or
//! `$UAMI_HELM`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde::Deserialize;
use serde_json::Value;

pub const CHART: &str = "deploy/helm/uami-controller";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub fn helm_bin() -> PathBuf {
    let path = std::env::var_os("UAMI_HELM")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".tools/bin/helm"));
    assert!(
        path.exists(),
        "helm not found at {}: run scripts/install-tools.sh (or set UAMI_HELM)",
        path.display()
    );
    path
}

/// helm with `args`, in the project directory, whatever its exit code.
pub fn helm(args: &[&str]) -> Output {
    Command::new(helm_bin())
        .args(args)
        .current_dir(root())
        .output()
        .expect("run helm")
}

/// helm with `args`, which must succeed; its standard output.
pub fn helm_ok(args: &[&str]) -> String {
    let out = helm(args);
    assert!(
        out.status.success(),
        "helm {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `helm template` of the chart into `uami-system`, with `extra` arguments.
pub fn template(extra: &[&str]) -> String {
    let mut args = vec![
        "template",
        "uami-controller",
        CHART,
        "--namespace",
        "uami-system",
    ];
    args.extend_from_slice(extra);
    helm_ok(&args)
}

/// The documents of a YAML stream, empty ones left out.
pub fn docs(yaml: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(yaml)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}
