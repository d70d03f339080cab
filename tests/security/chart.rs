//! The chart fails closed and names the cluster.

use std::path::PathBuf;

use super::*;
use crate::support::helm::{CHART, docs, helm, template};

fn imds_egress(objects: &[Value]) -> bool {
    let np = objects
        .iter()
        .find(|o| o["kind"] == "NetworkPolicy")
        .unwrap();
    np["spec"]["egress"].as_array().unwrap().iter().any(|rule| {
        rule["to"].as_array().is_some_and(|to| {
            to.iter()
                .any(|t| t["ipBlock"]["cidr"] == "169.254.169.254/32")
        }) && rule["ports"]
            .as_array()
            .is_some_and(|p| p.iter().any(|p| p["port"] == 80))
    })
}

/// The chart rendered for cluster `aks-east` with `--set` of each of `values`.
fn render(values: &[&str]) -> Vec<Value> {
    let mut args = vec!["--set", "clusterName=aks-east"];
    for v in values {
        args.extend(["--set", v]);
    }
    docs(&template(&args))
}

#[test]
fn the_chart_fails_closed_and_names_the_cluster() {
    // clusterName is required.
    let out = helm(&["template", "uami-controller", CHART]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("clusterName is required"));

    let objects = render(&[]);
    assert!(
        !objects.iter().any(|o| o["kind"] == "GrantPolicy"),
        "a GrantPolicy is installed by default"
    );
    let deploy = objects.iter().find(|o| o["kind"] == "Deployment").unwrap();
    let args = &deploy["spec"]["template"]["spec"]["containers"][0]["args"];
    assert!(
        args.as_array()
            .unwrap()
            .iter()
            .any(|a| a == "--cluster-name=aks-east"),
        "{args}"
    );
    assert!(
        !imds_egress(&objects),
        "IMDS reachable without the managed-identity credential"
    );

    let objects = render(&["controller.credential=managed-identity"]);
    assert!(
        imds_egress(&objects),
        "the managed-identity credential cannot reach IMDS"
    );
    let objects = render(&["defaultGrantPolicy.enabled=true"]);
    assert!(objects.iter().any(|o| o["kind"] == "GrantPolicy"));

    let readme =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("README.md"))
            .unwrap();
    assert!(readme.contains("## Security model"));
    assert!(readme.contains("every pod on the node"));
}
