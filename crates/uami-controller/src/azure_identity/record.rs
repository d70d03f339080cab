//! An identity as the controller records it from ARM: what the reconcile context keeps for
//! each identity object, apart from the reconciles that read and write it.

use uami_azure::federated::IdentityCoordinates;
use uami_azure::identity::Identity;

/// An identity as ARM returned it, proven to belong to its object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AzureIdentity {
    /// Where it lives, from the spec.
    pub coordinates: IdentityCoordinates,
    /// Its ARM id.
    pub id: String,
    /// Its client (application) id.
    pub client_id: String,
    /// Its principal (object) id.
    pub principal_id: String,
    /// Its tenant.
    pub tenant_id: String,
    /// The principal id of the identity this one replaced under the same ARM id (deleted and
    /// created again), as this controller read it from ARM earlier; what a grant's old role
    /// assignment names.
    pub replaced_principal_id: Option<String>,
}

impl AzureIdentity {
    pub(crate) fn of(coordinates: IdentityCoordinates, identity: &Identity) -> Self {
        Self {
            id: if identity.id.is_empty() {
                coordinates.path()
            } else {
                identity.id.clone()
            },
            coordinates,
            client_id: identity.client_id.clone(),
            principal_id: identity.principal_id.clone(),
            tenant_id: identity.tenant_id.clone(),
            replaced_principal_id: None,
        }
    }
}
