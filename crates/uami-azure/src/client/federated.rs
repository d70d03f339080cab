//! [`FederatedCredentialApi`] over ARM.

use async_trait::async_trait;
use reqwest::Method;
use serde::Deserialize;
use serde_json::{Value, json};
use url::Url;

use super::ArmClient;
use super::transport::{CREATED, Request, Wire};
use crate::federated::{FederatedCredential, FederatedCredentialApi, IdentityCoordinates};
use crate::{ArmError, api_versions};

impl ArmClient {
    /// The identity's federated credentials, or the one named `name`.
    fn federated_url(&self, identity: &IdentityCoordinates, name: Option<&str>) -> Url {
        let base = format!("{}/federatedIdentityCredentials", identity.path());
        let path = match name {
            Some(n) => format!("{base}/{n}"),
            None => base,
        };
        self.url(&path, api_versions::MANAGED_IDENTITY, &[])
    }
}

/// The properties of a federated identity credential as ARM answers it.
#[derive(Deserialize)]
struct WireCredentialProperties {
    issuer: String,
    subject: String,
    #[serde(default)]
    audiences: Option<Vec<String>>,
}

fn parse(v: Value) -> Result<FederatedCredential, serde_json::Error> {
    let w: Wire<WireCredentialProperties> = serde_json::from_value(v)?;
    Ok(FederatedCredential {
        audiences: w.properties.audiences.unwrap_or_default(),
        name: w.name,
        id: w.id,
        issuer: w.properties.issuer,
        subject: w.properties.subject,
    })
}

#[async_trait]
impl FederatedCredentialApi for ArmClient {
    async fn get_federated_credential(
        &self,
        identity: &IdentityCoordinates,
        name: &str,
    ) -> Result<Option<FederatedCredential>, ArmError> {
        let url = self.federated_url(identity, Some(name));
        self.read(Request::get("FederatedIdentityCredentials_Get", url), parse)
            .await
    }

    async fn list_federated_credentials(
        &self,
        identity: &IdentityCoordinates,
    ) -> Result<Vec<FederatedCredential>, ArmError> {
        let url = self.federated_url(identity, None);
        self.list_all("FederatedIdentityCredentials_List", url, parse)
            .await
    }

    async fn put_federated_credential(
        &self,
        identity: &IdentityCoordinates,
        credential: &FederatedCredential,
    ) -> Result<FederatedCredential, ArmError> {
        const OP: &str = "FederatedIdentityCredentials_CreateOrUpdate";
        let url = self.federated_url(identity, Some(&credential.name));
        let body = json!({"properties": {
            "issuer": credential.issuer,
            "subject": credential.subject,
            "audiences": credential.audiences,
        }});
        let req = Request::new(OP, Method::PUT, url).json(&body);
        self.write(req, CREATED, parse).await
    }

    async fn delete_federated_credential(
        &self,
        identity: &IdentityCoordinates,
        name: &str,
    ) -> Result<(), ArmError> {
        let url = self.federated_url(identity, Some(name));
        self.delete("FederatedIdentityCredentials_Delete", url)
            .await
    }
}
