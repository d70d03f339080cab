//! The workspace's layers as `ARCHITECTURE.md` draws them: every crate depends on exactly the
//! crates its `arrows` block names (so an upward import cannot compile and the document cannot
//! drift), the controller and the agent never reach the emulator or the sandbox, and the binary
//! built without default features (the production image's) carries neither.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use serde_json::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// `crate -> (normal dependencies, of which optional)` among the workspace's own crates.
type Graph = BTreeMap<String, (BTreeSet<String>, BTreeSet<String>)>;

fn metadata() -> Value {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--offline",
        ])
        .current_dir(ROOT)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The workspace's crates and their dependencies on one another, from the manifests.
fn manifests() -> Graph {
    let meta = metadata();
    let members: BTreeSet<String> = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect();
    let mut graph = Graph::new();
    for p in meta["packages"].as_array().unwrap() {
        let (mut deps, mut optional) = (BTreeSet::new(), BTreeSet::new());
        for d in p["dependencies"].as_array().unwrap() {
            let name = d["name"].as_str().unwrap().to_string();
            if !members.contains(&name) || !d["kind"].is_null() {
                continue; // another project's crate, or a dev- or build-dependency
            }
            if d["optional"].as_bool() == Some(true) {
                optional.insert(name.clone());
            }
            deps.insert(name);
        }
        graph.insert(p["name"].as_str().unwrap().to_string(), (deps, optional));
    }
    graph
}

/// The `arrows` block of ARCHITECTURE.md: `crate -> a, b, [feature] c, d` (what follows a
/// `[feature]` is optional, behind that feature).
fn documented() -> Graph {
    let text = std::fs::read_to_string(Path::new(ROOT).join("ARCHITECTURE.md")).unwrap();
    let block = text
        .split("```arrows\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("ARCHITECTURE.md has an ```arrows block");
    let mut graph = Graph::new();
    for line in block.lines().filter(|l| !l.trim().is_empty()) {
        let (name, deps) = line.split_once("->").expect("crate -> dependencies");
        let (mut all, mut optional) = (BTreeSet::new(), BTreeSet::new());
        let mut behind_feature = false;
        for d in deps.split(',').map(str::trim).filter(|d| !d.is_empty()) {
            let d = match d.strip_prefix('[') {
                Some(rest) => {
                    behind_feature = true;
                    rest.split_once(']').unwrap().1.trim()
                }
                None => d,
            };
            if behind_feature {
                optional.insert(d.to_string());
            }
            all.insert(d.to_string());
        }
        graph.insert(name.trim().to_string(), (all, optional));
    }
    graph
}

/// Every crate `name` reaches through normal dependencies (optional ones included or not).
fn reach(graph: &Graph, name: &str, with_optional: bool) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![name.to_string()];
    while let Some(n) = todo.pop() {
        let Some((deps, optional)) = graph.get(&n) else {
            continue;
        };
        for d in deps {
            if (with_optional || !optional.contains(d)) && seen.insert(d.clone()) {
                todo.push(d.clone());
            }
        }
    }
    seen
}

#[test]
fn the_manifests_depend_exactly_as_architecture_md_draws() {
    let (manifests, documented) = (manifests(), documented());
    assert_eq!(
        manifests.keys().collect::<Vec<_>>(),
        documented.keys().collect::<Vec<_>>(),
        "the crates of the workspace and of ARCHITECTURE.md's arrows"
    );
    for (name, deps) in &manifests {
        assert_eq!(
            deps, &documented[name],
            "{name}: (dependencies, optional) in its Cargo.toml vs ARCHITECTURE.md"
        );
    }
}

#[test]
fn the_controller_and_the_agent_never_reach_the_embedded_world() {
    let graph = manifests();
    let embedded = ["uami-emulator", "uami-sandbox", "uami-local-tls"];
    for name in [
        "uami-api",
        "uami-azure",
        "uami-kube",
        "uami-controller",
        "uami-agent",
    ] {
        let reached = reach(&graph, name, true);
        for e in embedded {
            assert!(!reached.contains(e), "{name} reaches {e}: {reached:?}");
        }
    }
    // The binary without default features (the production image's) leaves them out; with the
    // `embedded` feature (the default, `cargo run -- demo`) it has them.
    let lean = reach(&graph, "uami", false);
    let full = reach(&graph, "uami", true);
    for e in embedded {
        assert!(!lean.contains(e), "uami without features reaches {e}");
        assert!(full.contains(e), "uami with `embedded` misses {e}");
    }
    assert!(lean.contains("uami-controller") && lean.contains("uami-agent"));
}

#[test]
fn the_production_image_builds_without_the_embedded_world() {
    // The Dockerfile builds the binary without default features, so the image has neither the
    // emulator nor the sandbox.
    let dockerfile = std::fs::read_to_string(Path::new(ROOT).join("Dockerfile")).unwrap();
    let build = dockerfile
        .lines()
        .find(|l| l.contains("cargo build"))
        .expect("the Dockerfile builds with cargo");
    assert!(
        build.contains("--no-default-features") && build.contains("-p uami"),
        "{build}"
    );
    let manifest = std::fs::read_to_string(Path::new(ROOT).join("Cargo.toml")).unwrap();
    assert!(manifest.contains("default = [\"embedded\"]"));
}

#[test]
fn no_rust_file_is_over_600_lines() {
    // One file, one responsibility a reader can hold: a file past 600 lines is split by what its
    // parts do (the suite's own long files keep their parts in `tests/<name>/`).
    fn walk(dir: &Path, out: &mut Vec<(String, usize)>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let lines = std::fs::read_to_string(&path).unwrap().lines().count();
                out.push((path.display().to_string(), lines));
            }
        }
    }
    let mut files = Vec::new();
    for dir in ["src", "crates", "tests", "benches"] {
        walk(&Path::new(ROOT).join(dir), &mut files);
    }
    assert!(files.len() > 100, "the walk found {} files", files.len());
    let long: Vec<_> = files.into_iter().filter(|(_, n)| *n > 600).collect();
    assert!(long.is_empty(), "files over 600 lines: {long:?}");
}
