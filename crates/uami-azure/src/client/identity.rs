//! [`IdentityApi`] over ARM (`Microsoft.ManagedIdentity/userAssignedIdentities`).

use std::collections::BTreeMap;

use async_trait::async_trait;
use reqwest::Method;
use reqwest::header::IF_NONE_MATCH;
use serde::Deserialize;
use serde_json::{Value, json};
use url::Url;

use super::ArmClient;
use super::transport::{CREATED, OK, Request};
use crate::federated::IdentityCoordinates;
use crate::identity::Identity;
use crate::{ArmError, IdentityApi, api_versions};

/// A user-assigned identity as ARM answers it: the ids the controller acts on are required.
#[derive(Deserialize)]
struct WireIdentity {
    id: String,
    name: String,
    location: String,
    #[serde(default)]
    tags: Option<BTreeMap<String, String>>,
    properties: WireIdentityProperties,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireIdentityProperties {
    client_id: String,
    principal_id: String,
    tenant_id: String,
}

fn parse_identity(v: Value) -> Result<Identity, serde_json::Error> {
    let w: WireIdentity = serde_json::from_value(v)?;
    Ok(Identity {
        id: w.id,
        name: w.name,
        location: w.location,
        tags: w.tags.unwrap_or_default(),
        client_id: w.properties.client_id,
        principal_id: w.properties.principal_id,
        tenant_id: w.properties.tenant_id,
    })
}

impl ArmClient {
    fn identity_url(&self, at: &IdentityCoordinates) -> Url {
        self.url(&at.path(), api_versions::MANAGED_IDENTITY, &[])
    }
}

#[async_trait]
impl IdentityApi for ArmClient {
    async fn get_identity(&self, at: &IdentityCoordinates) -> Result<Option<Identity>, ArmError> {
        let url = self.identity_url(at);
        self.read(
            Request::get("UserAssignedIdentities_Get", url),
            parse_identity,
        )
        .await
    }

    async fn create_identity(
        &self,
        at: &IdentityCoordinates,
        location: &str,
        tags: &BTreeMap<String, String>,
    ) -> Result<Identity, ArmError> {
        const OP: &str = "UserAssignedIdentities_CreateOrUpdate";
        let url = self.identity_url(at);
        let body = json!({"location": location, "tags": tags});
        let req = Request::new(OP, Method::PUT, url)
            .json(&body)
            .precondition(IF_NONE_MATCH, Some("*"));
        self.write(req, CREATED, parse_identity).await
    }

    async fn update_identity_tags(
        &self,
        at: &IdentityCoordinates,
        tags: &BTreeMap<String, String>,
    ) -> Result<Identity, ArmError> {
        const OP: &str = "UserAssignedIdentities_Update";
        let url = self.identity_url(at);
        let body = json!({"tags": tags});
        let req = Request::new(OP, Method::PATCH, url).json(&body);
        self.write(req, OK, parse_identity).await
    }

    async fn delete_identity(&self, at: &IdentityCoordinates) -> Result<(), ArmError> {
        let url = self.identity_url(at);
        self.delete("UserAssignedIdentities_Delete", url).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::transport::decoded;

    fn answer() -> Value {
        json!({
            "id": "/subscriptions/s/resourceGroups/g/providers/Microsoft.ManagedIdentity/userAssignedIdentities/i",
            "name": "i", "location": "eastus", "tags": {"a": "b"},
            "properties": {"clientId": "c", "principalId": "p", "tenantId": "t"},
        })
    }

    #[test]
    fn an_identity_decodes_into_its_ids() {
        let i = decoded("UserAssignedIdentities_Get", answer(), parse_identity).unwrap();
        assert_eq!(
            (
                i.principal_id.as_str(),
                i.client_id.as_str(),
                i.tenant_id.as_str()
            ),
            ("p", "c", "t")
        );
        assert_eq!(i.tags.get("a").map(String::as_str), Some("b"));
    }

    #[test]
    fn an_identity_without_its_principal_id_is_an_error_that_names_it() {
        let mut v = answer();
        v["properties"]
            .as_object_mut()
            .unwrap()
            .remove("principalId");
        let e = decoded("UserAssignedIdentities_Get", v, parse_identity).unwrap_err();
        assert_eq!(e.code, "InvalidResponse");
        assert!(
            e.to_string()
                .contains("UserAssignedIdentities_Get: InvalidResponse")
                && e.to_string().contains("missing field `principalId`"),
            "{e}"
        );
    }
}
