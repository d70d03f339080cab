//! The workload identity token exchange, as a pod does it: a service account token (the
//! federated assertion) is exchanged at Entra ID's v2 token endpoint for an access token of the
//! identity whose client id is named. The controller uses it to prove a service account binding
//! works; the assertion and the token never leave this call except as [`AccessToken`].
//!
//! The exchange is `azure_identity`'s `ClientAssertionCredential`, one per exchange, with the
//! service account token as its assertion; the access token it returns is the JWT whose claims
//! the check reports.

use std::sync::Arc;

use secrecy::SecretString;
use url::Url;

use super::entra::{ClientProof, EntraCredential};
use super::{AccessToken, AuthError, TokenCredential};

/// The scope of a client-credentials request for `resource` (`https://management.azure.com/`
/// gives `https://management.azure.com/.default`).
pub fn scope_for(resource: &str) -> String {
    format!("{}/.default", resource.trim_end_matches('/'))
}

/// Exchange `assertion` for a token of `client_id` in `tenant_id`, for `scope`.
pub async fn exchange_assertion(
    http: &reqwest::Client,
    authority_host: &Url,
    tenant_id: &str,
    client_id: &str,
    assertion: &SecretString,
    scope: &str,
) -> Result<AccessToken, AuthError> {
    EntraCredential::new(
        authority_host,
        tenant_id,
        client_id.to_string(),
        ClientProof::Assertion(assertion.clone()),
        Arc::new(http.clone()),
    )?
    .get_token(scope)
    .await
}

#[cfg(test)]
mod tests {
    #[test]
    fn scopes_of_resources() {
        assert_eq!(
            super::scope_for("https://management.azure.com/"),
            "https://management.azure.com/.default"
        );
        assert_eq!(super::scope_for("api://my-app"), "api://my-app/.default");
    }
}
