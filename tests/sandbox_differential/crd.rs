//! CustomResourceDefinitions: the GrantPolicy CRD as it was at 516492a (its CEL rules over the
//! cost budget) is refused, naming each rule; the one in `crds/` is accepted and established.

use serde_json::Value;

use crate::harness::*;

/// A YAML document as JSON.
pub fn yaml(text: &str) -> Value {
    serde_yaml_ng::from_str(text).unwrap()
}

/// The CRD path.
pub const CRDS: &str = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions";

fn established(a: &Answer) -> bool {
    a.body["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Established" && c["status"] == "True")
}

fn gone(a: &Answer) -> bool {
    a.code == 404
}

/// The steps that make sure every CRD of `crds/` is installed and established.
pub fn install_steps() -> Vec<Step> {
    let mut steps = Vec::new();
    for (name, text) in crate::project_crds() {
        steps.push(
            post(CRDS, yaml(&text))
                .what(format!("install {name}"))
                .quiet(),
        );
        steps.push(
            get(format!("{CRDS}/{name}"))
                .what(format!("{name} is established"))
                .until(established, 30)
                .expect(200),
        );
    }
    steps
}

pub fn cases() -> Vec<Case> {
    let old = yaml(include_str!("grantpolicies-516492a.yaml"));
    let current = yaml(&crate::project_crd("grantpolicies.uami.dev"));
    let name = "grantpolicies.uami.dev";
    vec![
        Case::new(
            "GrantPolicy CRD over the CEL cost budget (516492a) refused, the current one accepted",
            vec![
                delete(format!("{CRDS}/{name}"))
                    .what("remove the installed GrantPolicy CRD")
                    .quiet(),
                get(format!("{CRDS}/{name}"))
                    .what("the CRD is gone")
                    .until(gone, 60)
                    .expect(404),
                post(CRDS, old)
                    .what("the CRD of 516492a is over the CEL cost budget")
                    .expect(422)
                    .fields(&["/details/name", "/details/group", "/details/kind"]),
                post(CRDS, current)
                    .what("the bounded CRD of crds/ is accepted")
                    .expect(201)
                    .fields(&["/spec/names", "/spec/scope", "/spec/conversion"]),
                get(format!("{CRDS}/{name}"))
                    .what("and established")
                    .until(established, 30)
                    .expect(200)
                    .fields(&["/status/acceptedNames", "/status/storedVersions"])
                    .cmp(Cmp::Conditions),
            ],
        )
        .without_namespace(),
    ]
}
