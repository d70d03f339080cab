//! A real kubectl against the sandbox: `apply -f examples/`, `get` with the printer columns and
//! the shared category, `explain`, server-side apply, `delete`, and invalid objects refused with
//! the API server's message. kubectl comes from `scripts/install-tools.sh` (`.tools/bin`) or
//! `$UAMI_KUBECTL`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::contains_all;
use support::kubectl::sandbox_with_crds;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_applies_gets_explains_and_deletes() {
    let (sb, k, _dir) = sandbox_with_crds(false).await;
    let resources = k.ok(&["api-resources", "--api-group=uami.dev"]).await;
    contains_all(
        &resources,
        &[
            "userassignedidentities",
            "uami",
            "identitybindings",
            "idb",
            "rolegrants",
            "grant",
            "grantpolicies",
        ],
    );
    let out = k.ok(&["apply", "-f", "examples/"]).await;
    contains_all(
        &out,
        &[
            "userassignedidentity.uami.dev/my-identity created",
            "grantpolicy.uami.dev/tutorial-devtest-reader created",
        ],
    );
    // Applying again changes nothing.
    let again = k.ok(&["apply", "-f", "examples/tutorial.yaml"]).await;
    assert!(again.contains("my-identity unchanged"), "{again}");

    let get = k.ok(&["get", "uami", "-n", "tutorial"]).await;
    let header = get.lines().next().unwrap();
    for col in ["NAME", "READY", "REASON", "CLIENT ID", "AGE"] {
        assert!(header.contains(col), "{get}");
    }
    assert!(get.contains("my-identity"), "{get}");
    let grants = k.ok(&["get", "grant", "-n", "tutorial"]).await;
    assert!(
        grants.lines().next().unwrap().contains("ROLE") && grants.contains("Reader"),
        "{grants}"
    );
    let all = k.ok(&["get", "azureidentity", "-A"]).await;
    for kind in [
        "userassignedidentity.uami.dev/my-identity",
        "identitybinding.uami.dev/my-identity-on-myvm",
        "rolegrant.uami.dev/my-identity-reads-devtest",
        "grantpolicy.uami.dev/tutorial-devtest-reader",
    ] {
        assert!(all.contains(kind), "{all}");
    }

    let explain = k.ok(&["explain", "userassignedidentity.spec"]).await;
    assert!(
        explain.contains("azureName")
            && explain.contains("deletionPolicy")
            && explain.contains("Defaults to metadata.name"),
        "{explain}"
    );

    let ssa = k
        .ok(&["apply", "--server-side", "-f", "examples/tutorial.yaml"])
        .await;
    assert!(ssa.contains("serverside-applied"), "{ssa}");

    let del = k
        .ok_line("delete rolegrant my-identity-reads-devtest -n tutorial")
        .await;
    assert!(del.contains("deleted"), "{del}");
    let (ok, _, err) = k
        .run(&[
            "get",
            "rolegrant",
            "my-identity-reads-devtest",
            "-n",
            "tutorial",
        ])
        .await;
    assert!(!ok && err.contains("NotFound"), "{err}");
    sb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_shows_the_api_servers_refusals() {
    let (sb, k, dir) = sandbox_with_crds(false).await;
    let ns = dir.path().join("ns.yaml");
    std::fs::write(
        &ns,
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: demo}\n",
    )
    .unwrap();
    k.ok(&["apply", "-f", ns.to_str().unwrap()]).await;
    let two_targets = dir.path().join("bad.yaml");
    std::fs::write(&two_targets, "apiVersion: uami.dev/v1alpha1\nkind: IdentityBinding\nmetadata: {name: bad, namespace: demo}\nspec:\n  identityRef: {name: x}\n  target:\n    virtualMachine: {resourceGroup: DevTest, name: a}\n    virtualMachineScaleSet: {resourceGroup: DevTest, name: b}\n").unwrap();
    let (ok, _, err) = k.run(&["apply", "-f", two_targets.to_str().unwrap()]).await;
    assert!(!ok);
    assert!(
        err.contains("spec.target")
            && err.contains(
                "exactly one of virtualMachine, virtualMachineScaleSet or serviceAccount"
            ),
        "{err}"
    );
    let bad_guid = dir.path().join("guid.yaml");
    std::fs::write(&bad_guid, "apiVersion: uami.dev/v1alpha1\nkind: UserAssignedIdentity\nmetadata: {name: guid, namespace: demo}\nspec: {subscriptionId: nope, resourceGroup: DevTest, location: eastus}\n").unwrap();
    let (ok, _, err) = k.run(&["apply", "-f", bad_guid.to_str().unwrap()]).await;
    assert!(!ok && err.contains("spec.subscriptionId"), "{err}");
    let typo = dir.path().join("typo.yaml");
    std::fs::write(&typo, "apiVersion: uami.dev/v1alpha1\nkind: UserAssignedIdentity\nmetadata: {name: typo, namespace: demo}\nspec: {resourceGroup: DevTest, location: eastus, tagz: {a: b}}\n").unwrap();
    let (ok, _, err) = k.run(&["apply", "-f", typo.to_str().unwrap()]).await;
    assert!(!ok && err.contains("unknown field \"spec.tagz\""), "{err}");
    // An immutable field, changed.
    let good = dir.path().join("good.yaml");
    std::fs::write(&good, "apiVersion: uami.dev/v1alpha1\nkind: UserAssignedIdentity\nmetadata: {name: moving, namespace: demo}\nspec: {resourceGroup: DevTest, location: eastus}\n").unwrap();
    k.ok(&["apply", "-f", good.to_str().unwrap()]).await;
    std::fs::write(&good, "apiVersion: uami.dev/v1alpha1\nkind: UserAssignedIdentity\nmetadata: {name: moving, namespace: demo}\nspec: {resourceGroup: Other, location: eastus}\n").unwrap();
    let (ok, _, err) = k.run(&["apply", "-f", good.to_str().unwrap()]).await;
    assert!(
        !ok && err.contains("spec.resourceGroup") && err.contains("immutable"),
        "{err}"
    );
    sb.shutdown().await;
}
