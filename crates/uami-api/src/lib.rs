//! The custom resources of group `uami.dev`, version `v1alpha1`.
//!
//! Every kind shares the `azureidentity` category, so `kubectl get azureidentity` lists them all.
//! Validation lives in the generated schemas (patterns, enums, CEL rules) so that bad input is
//! refused at apply time; [`crds`] renders them and `crds/` holds the committed copy.

pub mod binding;
pub mod common;
pub mod conditions;
pub mod grant;
pub mod identity;
pub mod policy;
pub mod text;

pub use binding::{IdentityBinding, IdentityBindingSpec, IdentityBindingStatus};
pub use common::*;
pub use grant::{RoleGrant, RoleGrantSpec, RoleGrantStatus};
pub use identity::{UserAssignedIdentity, UserAssignedIdentitySpec, UserAssignedIdentityStatus};
pub use policy::{GrantPolicy, GrantPolicySpec};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps,
};
use kube::CustomResourceExt;

/// API group of every kind here.
pub const GROUP: &str = "uami.dev";
/// API version of every kind here.
pub const VERSION: &str = "v1alpha1";
/// The category shared by all kinds.
pub const CATEGORY: &str = "azureidentity";

/// All custom resource definitions, in a stable order.
pub fn crds() -> Vec<CustomResourceDefinition> {
    let mut crds = vec![
        UserAssignedIdentity::crd(),
        IdentityBinding::crd(),
        RoleGrant::crd(),
        GrantPolicy::crd(),
    ];
    crds.iter_mut().for_each(declare_type_and_object_meta);
    crds
}

/// The longest object name Kubernetes accepts (a DNS subdomain).
const MAX_NAME: i64 = 253;

/// Declares `apiVersion`, `kind`, `metadata.name` and `metadata.generateName` at the root of each
/// version's schema, as bounded strings. kube-apiserver estimates the cost of a rule that reads
/// `self.metadata.name` (the UserAssignedIdentity's name check) from the name's `maxLength` only
/// when all four are declared; otherwise it takes the name to fill a whole request.
fn declare_type_and_object_meta(crd: &mut CustomResourceDefinition) {
    let string = |max_length: i64, description: Option<&str>| JSONSchemaProps {
        type_: Some("string".into()),
        max_length: Some(max_length),
        description: description.map(str::to_string),
        ..Default::default()
    };
    for version in &mut crd.spec.versions {
        let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        else {
            continue;
        };
        let props = schema.properties.get_or_insert_with(Default::default);
        props.insert(
            "apiVersion".into(),
            string(
                317,
                Some("The versioned schema of this object: group/version."),
            ),
        );
        props.insert(
            "kind".into(),
            string(63, Some("The kind of this object, in CamelCase.")),
        );
        props.insert(
            "metadata".into(),
            JSONSchemaProps {
                type_: Some("object".into()),
                properties: Some(
                    [
                        ("name".to_string(), string(MAX_NAME, None)),
                        ("generateName".to_string(), string(MAX_NAME - 1, None)),
                    ]
                    .into(),
                ),
                ..Default::default()
            },
        );
    }
}

/// File name of a CRD inside `crds/`.
pub fn crd_file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}.yaml", crd.metadata.name.as_deref().unwrap_or("unnamed"))
}

/// One CRD as a YAML document.
pub fn crd_yaml(crd: &CustomResourceDefinition) -> Result<String, serde_yaml_ng::Error> {
    serde_yaml_ng::to_string(crd)
}

/// All CRDs as one multi-document YAML stream.
pub fn crds_yaml() -> Result<String, serde_yaml_ng::Error> {
    let mut out = String::new();
    for crd in crds() {
        out.push_str("---\n");
        out.push_str(&crd_yaml(&crd)?);
    }
    Ok(out)
}
