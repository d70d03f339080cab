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
    let with_issuer_ca = |path: &std::path::Path| {
        let (ok, _, stderr) = run_uami(
            &[
                "emulator",
                "--world",
                "examples/emulator-world.yaml",
                "--oidc-issuer-ca",
                path.to_str().unwrap(),
            ],
            &[],
        );
        assert!(!ok);
        stderr
    };
    let missing = dir.path().join("missing.pem");
    let stderr = with_issuer_ca(&missing);
    assert!(
        stderr.contains(&format!("--oidc-issuer-ca {}", missing.display())),
        "{stderr}"
    );
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let stderr = with_issuer_ca(&garbage);
    assert!(stderr.contains("oidcIssuerCaPems[0]"), "{stderr}");
}

#[tokio::test]
async fn the_emulator_writes_its_certificate_authority_for_clients_to_trust() {
    use tokio::io::AsyncBufReadExt;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("emulator-ca.pem");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_uami-controller"))
        .args(["emulator", "--world", "examples/emulator-world.yaml"])
        .args(["--listen", "127.0.0.1:0", "--ca-out"])
        .arg(&ca)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut printed = String::new();
    let arm = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            printed.push_str(&line);
            printed.push('\n');
            if let Some(url) = line.strip_prefix("ARM:") {
                return url.trim().to_string();
            }
        }
        panic!("the emulator exited:\n{printed}");
    })
    .await
    .unwrap();
    assert!(arm.starts_with("https://127.0.0.1:"), "{arm}");
    let pem = std::fs::read(&ca).unwrap();
    let trusting = reqwest::Client::builder()
        .tls_certs_merge(reqwest::Certificate::from_pem_bundle(&pem).unwrap())
        .build()
        .unwrap();
    let config = format!(
        "{arm}{}/v2.0/.well-known/openid-configuration",
        uami_emulator::world::TUTORIAL_TENANT
    );
    let r = trusting.get(&config).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(reqwest::Client::new().get(&config).send().await.is_err());
    child.kill().await.unwrap();
}

#[test]
fn the_controller_refuses_an_azure_ca_file_it_cannot_use() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    for command in [&["run", "--cluster-name", "test"][..], &["agent"]] {
        let mut args = command.to_vec();
        args.extend(["--azure-ca-file", garbage.to_str().unwrap()]);
        let (ok, _, stderr) = run_uami(&args, &["UAMI_AZURE_CA_FILE"]);
        assert!(!ok);
        assert!(
            stderr.contains(&format!("--azure-ca-file {}", garbage.display())),
            "{command:?}: {stderr}"
        );
    }
}
