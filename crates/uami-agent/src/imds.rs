//! The agent's windows on the world: IMDS (who this VM is, tokens of its identities) and ARM
//! and the data planes (a read of a granted scope with such a token).

use async_trait::async_trait;
use secrecy::SecretString;

use super::{AccessProbe, CheckFailure, Token, TokenFailure, TokenSource, Whoami};
use uami_api::binding::{AccessCheck, TokenStatus};
use uami_api::conditions::Reason;

/// [`TokenSource`] over the VM's IMDS.
pub struct ImdsSource {
    imds: uami_azure::auth::ImdsClient,
}

impl ImdsSource {
    /// IMDS at `endpoint`.
    pub fn new(
        http: reqwest::Client,
        endpoint: url::Url,
        policy: uami_azure::auth::ImdsRetryPolicy,
    ) -> Self {
        Self {
            imds: uami_azure::auth::ImdsClient::new(http, endpoint, policy),
        }
    }
}

fn timestamp(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

#[async_trait]
impl TokenSource for ImdsSource {
    async fn whoami(&self) -> Result<Whoami, TokenFailure> {
        let c = self
            .imds
            .instance_compute()
            .await
            .map_err(|e| TokenFailure {
                reason: Reason::ImdsUnavailable.as_str().into(),
                message: e.to_string(),
            })?;
        Ok(Whoami {
            subscription_id: c.subscription_id,
            resource_group: c.resource_group_name,
            name: c.name,
            scale_set: (!c.vm_scale_set_name.is_empty()).then_some(c.vm_scale_set_name),
        })
    }

    async fn token(&self, client_id: &str, resource: &str) -> Result<Token, TokenFailure> {
        let selector = uami_azure::auth::IdentitySelector::ClientId(client_id.to_string());
        match self.imds.token(resource, &selector).await {
            Ok(t) => {
                let claims = uami_azure::auth::decode_claims(&t.access_token).unwrap_or_default();
                Ok(Token {
                    meta: TokenStatus {
                        resource: Some(if t.resource.is_empty() {
                            resource.to_string()
                        } else {
                            t.resource.clone()
                        }),
                        token_type: Some(t.token_type.clone()),
                        client_id: Some(
                            t.client_id.clone().unwrap_or_else(|| client_id.to_string()),
                        ),
                        tenant_id: claims.tid,
                        object_id: claims.oid,
                        expires_on: Some(timestamp(t.expires_on)),
                        not_before: t.not_before.map(timestamp),
                        checked_by: None,
                    },
                    expires_on: t.expires_on,
                    secret: t.access_token,
                })
            }
            Err(e) if e.is_identity_not_found() => Err(TokenFailure {
                reason: Reason::IdentityNotAssigned.as_str().into(),
                message: format!("IMDS does not know identity {client_id} on this VM: {e}"),
            }),
            Err(uami_azure::auth::ImdsError::Status { status: 429, .. }) => Err(TokenFailure {
                reason: Reason::ImdsThrottled.as_str().into(),
                message: "IMDS kept answering 429 after retries".into(),
            }),
            Err(e) => Err(TokenFailure {
                reason: Reason::ImdsUnavailable.as_str().into(),
                message: e.to_string(),
            }),
        }
    }
}

/// [`AccessProbe`] over ARM and the data planes.
pub struct AzureProbe {
    http: reqwest::Client,
    endpoint: url::Url,
    data_planes: uami_azure::DataPlanes,
}

impl AzureProbe {
    /// ARM at `endpoint`, the data planes at `data_planes`.
    pub fn new(
        http: reqwest::Client,
        endpoint: url::Url,
        data_planes: uami_azure::DataPlanes,
    ) -> Self {
        Self {
            http,
            endpoint,
            data_planes,
        }
    }

    async fn read(
        &self,
        check: &AccessCheck,
        token: &SecretString,
    ) -> Result<u16, uami_azure::ArmError> {
        let Some(read) =
            uami_azure::data_read(check.plane, &check.scope, check.container.as_deref())?
        else {
            return uami_azure::probe_access(&self.http, &self.endpoint, &check.scope, token).await;
        };
        let request = self.data_planes.request(&read)?;
        uami_azure::probe_data_plane(&self.http, request, token).await
    }
}

#[async_trait]
impl AccessProbe for AzureProbe {
    async fn probe(&self, check: &AccessCheck, token: &SecretString) -> Result<u16, CheckFailure> {
        self.read(check, token).await.map_err(|e| {
            if e.code() == "UnsupportedScope" {
                CheckFailure {
                    reason: Reason::UnsupportedScope.as_str().into(),
                    message: e.message.clone(),
                }
            } else {
                CheckFailure {
                    reason: Reason::CheckFailed.as_str().into(),
                    message: e.to_string(),
                }
            }
        })
    }
}
