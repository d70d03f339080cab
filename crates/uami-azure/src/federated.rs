//! Federated identity credentials of a user-assigned identity (workload identity): the trust of
//! one external issuer and subject, for one audience.

use async_trait::async_trait;

use super::ArmError;

/// A federated identity credential.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FederatedCredential {
    /// Name (`^[a-zA-Z0-9]{1}[a-zA-Z0-9-_]{2,119}$`).
    pub name: String,
    /// ARM id (empty before it is created).
    pub id: String,
    /// Issuer URL (the cluster's OIDC issuer).
    pub issuer: String,
    /// Subject (`system:serviceaccount:<namespace>:<name>`).
    pub subject: String,
    /// Audiences (Azure takes exactly one, `api://AzureADTokenExchange`).
    pub audiences: Vec<String>,
}

impl FederatedCredential {
    /// Whether `other` trusts the same issuer, subject and audiences.
    pub fn same_trust(&self, other: &FederatedCredential) -> bool {
        self.issuer == other.issuer
            && self.subject == other.subject
            && self.audiences == other.audiences
    }
}

/// An identity by its ARM coordinates.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct IdentityCoordinates {
    /// Subscription id.
    pub subscription: String,
    /// Resource group.
    pub resource_group: String,
    /// Azure name.
    pub name: String,
}

impl IdentityCoordinates {
    /// The identity in `subscription`/`resource_group` named `name`.
    pub fn new(subscription: &str, resource_group: &str, name: &str) -> Self {
        Self {
            subscription: subscription.to_string(),
            resource_group: resource_group.to_string(),
            name: name.to_string(),
        }
    }

    /// The identity's ARM resource path.
    pub fn path(&self) -> String {
        format!(
            "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{}",
            self.subscription, self.resource_group, self.name
        )
    }

    /// Parse `/subscriptions/{s}/resourceGroups/{rg}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{name}`.
    pub fn from_id(id: &str) -> Option<Self> {
        let segs: Vec<&str> = id.split('/').filter(|s| !s.is_empty()).collect();
        match segs.as_slice() {
            [s, sub, r, rg, p, ns, t, name]
                if s.eq_ignore_ascii_case("subscriptions")
                    && r.eq_ignore_ascii_case("resourceGroups")
                    && p.eq_ignore_ascii_case("providers")
                    && ns.eq_ignore_ascii_case("Microsoft.ManagedIdentity")
                    && t.eq_ignore_ascii_case("userAssignedIdentities") =>
            {
                Some(Self {
                    subscription: sub.to_string(),
                    resource_group: rg.to_string(),
                    name: name.to_string(),
                })
            }
            _ => None,
        }
    }

    /// A key that names the identity, case-insensitively.
    pub fn key(&self) -> String {
        format!(
            "{}/{}/{}",
            self.subscription, self.resource_group, self.name
        )
        .to_lowercase()
    }
}

/// Federated identity credentials (`Microsoft.ManagedIdentity`, api-version 2023-01-31).
#[async_trait]
pub trait FederatedCredentialApi: Send + Sync {
    /// One credential; `None` when absent.
    async fn get_federated_credential(
        &self,
        identity: &IdentityCoordinates,
        name: &str,
    ) -> Result<Option<FederatedCredential>, ArmError>;
    /// Every credential of the identity.
    async fn list_federated_credentials(
        &self,
        identity: &IdentityCoordinates,
    ) -> Result<Vec<FederatedCredential>, ArmError>;
    /// Create or update.
    async fn put_federated_credential(
        &self,
        identity: &IdentityCoordinates,
        credential: &FederatedCredential,
    ) -> Result<FederatedCredential, ArmError>;
    /// Delete (absent is success).
    async fn delete_federated_credential(
        &self,
        identity: &IdentityCoordinates,
        name: &str,
    ) -> Result<(), ArmError>;
}
