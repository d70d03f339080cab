//! `uami-controller demo`, run as a user runs it: exit 0, the token metadata and the verified
//! access printed, and no access token (a JWT) anywhere in the output.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

#[test]
fn the_demo_runs_the_tutorial_and_exits_zero() {
    let out = Command::new(env!("CARGO_BIN_EXE_uami-controller"))
        .args(["demo", "--timeout", "90s"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "exit {:?}\n{stdout}\n{stderr}",
        out.status
    );
    for needle in [
        "Everything is Ready",
        "clientId:",
        "expiresOn:",
        "audience:   https://management.azure.com/",
        "httpStatus: 200",
        "verified:   true",
        "Reader",
        "AccessVerified=True",
    ] {
        assert!(stdout.contains(needle), "missing {needle:?} in:\n{stdout}");
    }
    // A JWT starts with the base64 of '{"': never printed.
    assert!(
        !stdout.contains("eyJ") && !stderr.contains("eyJ"),
        "a token was printed:\n{stdout}\n{stderr}"
    );
}

#[test]
fn the_demo_shows_the_service_account_path() {
    let out = Command::new(env!("CARGO_BIN_EXE_uami-controller"))
        .args(["demo", "--workload-identity", "--timeout", "90s"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "exit {:?}\n{stdout}\n{stderr}",
        out.status
    );
    let part = stdout
        .split("Workload identity:")
        .nth(1)
        .unwrap_or_else(|| panic!("no workload identity part in:\n{stdout}"));
    for needle in [
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
    ] {
        assert!(part.contains(needle), "missing {needle:?} in:\n{part}");
    }
    assert!(
        !stdout.contains("eyJ") && !stderr.contains("eyJ"),
        "a token was printed:\n{stdout}\n{stderr}"
    );
}

#[test]
fn the_demo_fails_clearly_when_time_runs_out() {
    let out = Command::new(env!("CARGO_BIN_EXE_uami-controller"))
        .args(["demo", "--timeout", "0s"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("demo failed: not everything was Ready"),
        "{stderr}"
    );
}
