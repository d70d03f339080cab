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

pub use binding::{IdentityBinding, IdentityBindingSpec, IdentityBindingStatus};
pub use common::*;
pub use grant::{RoleGrant, RoleGrantSpec, RoleGrantStatus};
pub use identity::{UserAssignedIdentity, UserAssignedIdentitySpec, UserAssignedIdentityStatus};
pub use policy::{GrantPolicy, GrantPolicySpec};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// API group of every kind here.
pub const GROUP: &str = "uami.dev";
/// API version of every kind here.
pub const VERSION: &str = "v1alpha1";
/// The category shared by all kinds.
pub const CATEGORY: &str = "azureidentity";

/// All custom resource definitions, in a stable order.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![
        UserAssignedIdentity::crd(),
        IdentityBinding::crd(),
        RoleGrant::crd(),
        GrantPolicy::crd(),
    ]
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
