//! [`FederatedCredentialApi`] over ARM.

use async_trait::async_trait;
use reqwest::Method;
use serde_json::{Value, json};

use super::ArmClient;
use crate::azure::federated::{FederatedCredential, FederatedCredentialApi, IdentityCoordinates};
use crate::azure::{ArmError, api_versions};

fn path(identity: &IdentityCoordinates, name: Option<&str>) -> String {
    let base = format!(
        "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{}/federatedIdentityCredentials",
        identity.subscription, identity.resource_group, identity.name
    );
    match name {
        Some(n) => format!("{base}/{n}"),
        None => base,
    }
}

fn parse(v: &Value) -> FederatedCredential {
    let s = |p: &Value| p.as_str().unwrap_or_default().to_string();
    FederatedCredential {
        name: s(&v["name"]),
        id: s(&v["id"]),
        issuer: s(&v["properties"]["issuer"]),
        subject: s(&v["properties"]["subject"]),
        audiences: v["properties"]["audiences"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default(),
    }
}

#[async_trait]
impl FederatedCredentialApi for ArmClient {
    async fn get_federated_credential(
        &self,
        identity: &IdentityCoordinates,
        name: &str,
    ) -> Result<Option<FederatedCredential>, ArmError> {
        const OP: &str = "FederatedIdentityCredentials_Get";
        let url = self.url(
            &path(identity, Some(name)),
            api_versions::MANAGED_IDENTITY,
            &[],
        );
        let r = self.send(OP, Method::GET, url, None, None).await?;
        match r.status {
            200 => Ok(Some(parse(&Self::json(OP, &r)?))),
            404 => Ok(None),
            _ => Err(Self::fail(OP, &r)),
        }
    }

    async fn list_federated_credentials(
        &self,
        identity: &IdentityCoordinates,
    ) -> Result<Vec<FederatedCredential>, ArmError> {
        const OP: &str = "FederatedIdentityCredentials_List";
        let url = self.url(&path(identity, None), api_versions::MANAGED_IDENTITY, &[]);
        Ok(self.list_all(OP, url).await?.iter().map(parse).collect())
    }

    async fn put_federated_credential(
        &self,
        identity: &IdentityCoordinates,
        credential: &FederatedCredential,
    ) -> Result<FederatedCredential, ArmError> {
        const OP: &str = "FederatedIdentityCredentials_CreateOrUpdate";
        let url = self.url(
            &path(identity, Some(&credential.name)),
            api_versions::MANAGED_IDENTITY,
            &[],
        );
        let body = json!({"properties": {
            "issuer": credential.issuer,
            "subject": credential.subject,
            "audiences": credential.audiences,
        }});
        let r = self.send(OP, Method::PUT, url, Some(&body), None).await?;
        match r.status {
            200 | 201 => Ok(parse(&Self::json(OP, &r)?)),
            _ => Err(Self::fail(OP, &r)),
        }
    }

    async fn delete_federated_credential(
        &self,
        identity: &IdentityCoordinates,
        name: &str,
    ) -> Result<(), ArmError> {
        const OP: &str = "FederatedIdentityCredentials_Delete";
        let url = self.url(
            &path(identity, Some(name)),
            api_versions::MANAGED_IDENTITY,
            &[],
        );
        let r = self.send(OP, Method::DELETE, url, None, None).await?;
        match r.status {
            200 | 204 | 404 => Ok(()),
            _ => Err(Self::fail(OP, &r)),
        }
    }
}
