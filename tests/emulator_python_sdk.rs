//! The official Azure SDK for Python (azure-identity with MSAL, azure-mgmt-msi, -compute,
//! -authorization, -resource; pinned in `tests/sdk/requirements.txt`, installed by
//! `scripts/install-tools.sh` into `.tools/azure-sdk`) runs the tutorial's operations against the
//! emulator unmodified: only the ARM endpoint, the authority, the IMDS host and the certificate
//! authority to trust are set. Every operation must succeed, including the access denied until
//! the role assignment propagates and then granted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;
use uami_emulator::{self as emulator, World, world};

fn sdk_python() -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".tools/azure-sdk/bin/python");
    p.exists().then_some(p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_python_sdk_runs_the_tutorial_against_the_emulator() {
    let Some(python) = sdk_python() else {
        // The SDK is installed by the test command (scripts/test.sh); CI runs that.
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!(
                "CI needs the Azure SDK for Python in .tools/azure-sdk (scripts/install-tools.sh)"
            );
        }
        eprintln!(
            "emulator_python_sdk did NOT run: no .tools/azure-sdk (run scripts/install-tools.sh, or scripts/test.sh)"
        );
        return;
    };
    let mut w = World::tutorial().unwrap();
    w.rbac_propagation_seconds = 2.0;
    // Compute's operations say when to poll again (`Retry-After`); without it the SDK waits 30 s.
    w.lro_retry_after_seconds = 1;
    let em = emulator::start(w).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, em.ca_pem().expect("the emulator serves HTTPS")).unwrap();
    let imds = em.imds_endpoint("myVM").unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/tutorial.py");
    let arm = em.arm_endpoint().to_string();
    let authority = em.authority_host().to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("REQUESTS_CA_BUNDLE", &ca)
            .env(
                "AZURE_POD_IDENTITY_AUTHORITY_HOST",
                imds.as_str().trim_end_matches('/'),
            )
            .env("UAMI_SDK_ARM", arm)
            .env("UAMI_SDK_AUTHORITY", authority)
            .env("UAMI_SDK_TENANT", world::TUTORIAL_TENANT)
            .env("UAMI_SDK_CLIENT_ID", world::TUTORIAL_CONTROLLER_CLIENT_ID)
            .env("UAMI_SDK_SECRET", world::TUTORIAL_CONTROLLER_SECRET)
            .env("UAMI_SDK_SUBSCRIPTION", world::TUTORIAL_SUBSCRIPTION)
            .env("UAMI_SDK_RESOURCE_GROUP", "DevTest")
            .env("UAMI_SDK_VM", "myVM")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let steps: Vec<Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let failed: Vec<&Value> = steps.iter().filter(|s| s["ok"] == false).collect();
    assert!(
        out.status.success() && failed.is_empty(),
        "the SDK failed: {failed:#?}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for s in steps.iter().filter(|s| s["op"].is_string()) {
        println!("{} {}s", s["op"], s["seconds"]);
    }
    let ops: Vec<&str> = steps.iter().filter_map(|s| s["op"].as_str()).collect();
    for op in [
        "ClientSecretCredential.get_token",
        "UserAssignedIdentities.CreateOrUpdate",
        "VirtualMachines.Get",
        "VirtualMachines.Update (assign)",
        "RoleAssignments.Create",
        "ManagedIdentityCredential.get_token",
        "ResourceGroups.Get (as the identity)",
        "VirtualMachines.Update (unassign)",
        "UserAssignedIdentities.Delete",
    ] {
        assert!(ops.contains(&op), "{op} ran: {ops:?}");
    }
    // The read as the identity met the propagation delay first, as in Azure.
    let read = steps
        .iter()
        .find(|s| s["op"] == "ResourceGroups.Get (as the identity)")
        .unwrap();
    assert_eq!(read["detail"]["name"], "DevTest");
    assert!(
        read["detail"]["denied_first"].as_u64() >= Some(1),
        "403 before the assignment propagated: {read}"
    );
    // The SDK's calls reached the emulator with the SDK's own api-versions and user agent.
    let journal = em.journal();
    assert!(
        journal.iter().any(|e| e
            .client
            .as_deref()
            .is_some_and(|c| c.contains("azsdk-python"))),
        "the journal names the Python SDK's user agent"
    );
    // Azure's state after the clean-up: the SDK's identity and assignment are gone, and the VM
    // lists no identity of it.
    let state = em.state();
    assert!(
        !state.to_string().contains("sdk-identity"),
        "nothing of the SDK's run is left: {state}"
    );
    em.shutdown().await;
}
