//! `uami-controller demo`, run as a user runs it: exit 0, the token metadata and the verified
//! access printed, and no access token (a JWT) anywhere in the output.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::{contains_all, run_uami};

/// The demo with `args`, which must exit 0 and print no access token (a JWT starts with the
/// base64 of '{"'); its standard output.
fn demo(args: &[&str]) -> String {
    let (ok, stdout, stderr) = run_uami(args, &[]);
    assert!(ok, "exit failure\n{stdout}\n{stderr}");
    assert!(
        !stdout.contains("eyJ") && !stderr.contains("eyJ"),
        "a token was printed:\n{stdout}\n{stderr}"
    );
    stdout
}

#[test]
fn the_demo_runs_the_tutorial_and_exits_zero() {
    let stdout = demo(&["demo", "--timeout", "90s"]);
    contains_all(
        &stdout,
        &[
            "Everything is Ready",
            "clientId:",
            "expiresOn:",
            "audience:   https://management.azure.com/",
            "httpStatus: 200",
            "verified:   true",
            "Reader",
            "AccessVerified=True",
        ],
    );
}

#[test]
fn the_demo_shows_the_service_account_path() {
    let stdout = demo(&["demo", "--workload-identity", "--timeout", "90s"]);
    let part = stdout
        .split("Workload identity:")
        .nth(1)
        .unwrap_or_else(|| panic!("no workload identity part in:\n{stdout}"));
    contains_all(
        part,
        &[
            "The service account binding is Ready",
            "subject:   system:serviceaccount:workload:reporter",
            "audiences: [\"api://AzureADTokenExchange\"]",
            "azure.workload.identity/client-id: ",
            "azure.workload.identity/tenant-id: ",
            "checkedBy:  token-exchange",
            "audience:   https://management.azure.com/",
            "httpStatus: 200",
            "verified:   true",
            "TokenAcquired=True",
        ],
    );
}

#[test]
fn the_demo_fails_clearly_when_time_runs_out() {
    let (ok, _, stderr) = run_uami(&["demo", "--timeout", "0s"], &[]);
    assert!(!ok);
    assert!(
        stderr.contains("demo failed: not everything was Ready"),
        "{stderr}"
    );
}

#[test]
fn the_emulator_refuses_an_issuer_certificate_it_cannot_use() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let (ok, _, stderr) = run_uami(
        &[
            "emulator",
            "--world",
            "examples/emulator-world.yaml",
            "--oidc-issuer-ca",
            missing.to_str().unwrap(),
        ],
        &[],
    );
    assert!(!ok);
    assert!(
        stderr.contains(&format!("--oidc-issuer-ca {}", missing.display())),
        "{stderr}"
    );
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let (ok, _, stderr) = run_uami(
        &[
            "emulator",
            "--world",
            "examples/emulator-world.yaml",
            "--oidc-issuer-ca",
            garbage.to_str().unwrap(),
        ],
        &[],
    );
    assert!(!ok);
    assert!(stderr.contains("oidcIssuerCaPems[0]"), "{stderr}");
}
