//! The sandbox against the real API server: the same requests go to the sandbox and to
//! kube-apiserver (the reference), and their answers must agree on what is deterministic: status
//! code, `reason`, the causes' fields and reasons, and the body fields each step names (never
//! uids, timestamps or resourceVersions). Each case of the table names what it checks; a failure
//! shows both answers. The project's CRDs are installed on both the same way, through the API.
//!
//! A difference that cannot be closed is kept in the table with `differs(why)`: the real
//! server's answer is still asserted, and the difference is reported instead of failed.
//!
//! Needs the real control plane (`KUBEBUILDER_ASSETS`, see `tests/support/envtest.rs`).
//! `DIFF_CASE=<words>` runs only the cases whose name contains them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

#[path = "sandbox_differential/admission.rs"]
mod admission;
#[path = "support/bad_objects.rs"]
mod bad_objects;
#[path = "sandbox_differential/crd.rs"]
mod crd;
#[path = "sandbox_differential/harness.rs"]
mod harness;
#[path = "sandbox_differential/lifecycle.rs"]
mod lifecycle;
#[path = "sandbox_differential/reads.rs"]
mod reads;
#[path = "sandbox_differential/tokens.rs"]
mod tokens;
#[path = "sandbox_differential/validation.rs"]
mod validation;
#[path = "sandbox_differential/writes.rs"]
mod writes;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use harness::{Case, Outcome, Pair, Report, Side};
use support::envtest;
use uami_sandbox::{self as sandbox, SandboxOptions, UserInfo};

/// The CRDs of `crds/`, as (name, YAML), sorted by name.
fn project_crds() -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
    let mut out: Vec<(String, String)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .map(|p| {
            let name = p.file_stem().unwrap().to_string_lossy().to_string();
            (name, std::fs::read_to_string(&p).unwrap())
        })
        .collect();
    out.sort();
    out
}

/// The CRD `name` of `crds/`.
fn project_crd(name: &str) -> String {
    project_crds()
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, t)| t)
        .unwrap()
}

/// The static user `legacy-agent` as the sandbox knows it: the same name, uid and groups as in
/// the real server's token file, and no extra fields.
fn legacy_agent() -> UserInfo {
    let (_, user, groups) = envtest::STATIC_USERS
        .iter()
        .find(|(n, _, _)| *n == "legacy-agent")
        .unwrap();
    UserInfo {
        username: user.to_string(),
        uid: "static-0".into(),
        groups: groups.split(',').map(str::to_string).collect(),
        extra: BTreeMap::new(),
    }
}

/// The real server of this binary and a new sandbox, with the project's CRDs installed on both.
async fn pair(real: &envtest::Real) -> (Pair, sandbox::Sandbox) {
    let sb = sandbox::start(SandboxOptions::default()).await.unwrap();
    let mut legacy = kube::Config::new(sb.url().as_str().parse().unwrap());
    legacy.auth_info.token = Some(secrecy::SecretString::from(sb.token_for(legacy_agent())));
    let real_side = Side {
        name: "real",
        admin: kube::Client::try_from(real.external.config().clone()).unwrap(),
        legacy: real.static_client("legacy-agent"),
        vars: BTreeMap::from([("issuer".to_string(), real.plane.issuer.clone())]),
    };
    let sandbox_side = Side {
        name: "sandbox",
        admin: sb.client(),
        legacy: kube::Client::try_from(legacy).unwrap(),
        vars: BTreeMap::from([("issuer".to_string(), sb.oidc_issuer())]),
    };
    let mut pair = Pair {
        real: real_side,
        sandbox: sandbox_side,
    };
    let mut report = Report::default();
    let install = Case::new("install the CRDs of crds/", crd::install_steps()).without_namespace();
    pair.run(&install, &mut report).await;
    assert!(
        report.failures.is_empty(),
        "{}",
        report.failures.join("\n\n")
    );
    (pair, sb)
}

/// Run `cases` (those `DIFF_CASE` selects) and fail with every difference.
async fn run(test: &str, cases: Vec<Case>) {
    let Some(real) = envtest::cluster(test).await else {
        return;
    };
    let started = Instant::now();
    let (mut pair, sb) = pair(&real).await;
    let only = std::env::var("DIFF_CASE").ok().filter(|c| !c.is_empty());
    let mut report = Report::default();
    for case in cases
        .iter()
        .filter(|c| only.as_ref().is_none_or(|o| c.name.contains(o.as_str())))
    {
        pair.run(case, &mut report).await;
    }
    sb.shutdown().await;
    eprintln!(
        "{test}: {} cases in {:.1} s\n{}",
        report.rows.len(),
        started.elapsed().as_secs_f64(),
        report.table()
    );
    for n in &report.notes {
        eprintln!("NOTE {n}\n");
    }
    let failed = report
        .rows
        .iter()
        .filter(|(_, o, _)| *o == Outcome::Fail)
        .count();
    assert!(
        report.failures.is_empty(),
        "{failed} case(s) differ from the real API server:\n\n{}",
        report.failures.join("\n\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_answers_as_the_real_api_server() {
    let mut cases = Vec::new();
    cases.extend(validation::cases());
    cases.extend(admission::cases());
    cases.extend(writes::cases());
    cases.extend(reads::cases());
    cases.extend(lifecycle::cases());
    cases.extend(tokens::cases());
    run("sandbox_answers_as_the_real_api_server", cases).await;
}

/// kube-apiserver refuses the GrantPolicy CRD of 516492a (its CEL rules over the cost budget),
/// naming each rule, and accepts the bounded one of `crds/`; so does the sandbox (its CEL cost
/// estimation of CRDs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grant_policy_crd_over_the_cel_budget_is_refused_by_both() {
    run(
        "grant_policy_crd_over_the_cel_budget_is_refused_by_both",
        crd::cases(),
    )
    .await;
}
