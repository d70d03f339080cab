//! [`IdentityApi`] over ARM (`Microsoft.ManagedIdentity/userAssignedIdentities`).

use std::collections::BTreeMap;

use async_trait::async_trait;
use reqwest::Method;
use reqwest::header::IF_NONE_MATCH;
use serde_json::{Value, json};
use url::Url;

use super::ArmClient;
use super::transport::{CREATED, OK, Request, text};
use crate::federated::IdentityCoordinates;
use crate::identity::Identity;
use crate::{ArmError, IdentityApi, api_versions};

fn parse_identity(v: &Value) -> Identity {
    let tags = v["tags"].as_object().into_iter().flatten();
    Identity {
        id: text(v, "/id"),
        name: text(v, "/name"),
        location: text(v, "/location"),
        tags: tags.map(|(k, v)| (k.clone(), text(v, ""))).collect(),
        client_id: text(v, "/properties/clientId"),
        principal_id: text(v, "/properties/principalId"),
        tenant_id: text(v, "/properties/tenantId"),
    }
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
