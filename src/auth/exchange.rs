//! The workload identity token exchange, as a pod does it: a service account token (the
//! federated assertion) is exchanged at Entra ID's v2 token endpoint for an access token of the
//! identity whose client id is named. The controller uses it to prove a service account binding
//! works; the assertion and the token never leave this call except as [`AccessToken`].

use secrecy::{ExposeSecret, SecretString};
use url::Url;

use super::{AccessToken, AuthError, JWT_BEARER, request_token, token_endpoint};

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
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", client_id),
        ("scope", scope),
        ("client_assertion_type", JWT_BEARER),
        ("client_assertion", assertion.expose_secret()),
    ];
    request_token(http, &token_endpoint(authority_host, tenant_id), &form).await
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
