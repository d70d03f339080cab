//! The workload identity token exchange, as a pod does it: a service account token (the
//! federated assertion) is exchanged at Entra ID's v2 token endpoint for an access token of the
//! identity whose client id is named. The controller uses it to prove a service account binding
//! works; the assertion and the token never leave this call except as [`AccessToken`].

use secrecy::{ExposeSecret, SecretString};
use url::Url;

use super::{AccessToken, AuthError};

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
    #[derive(serde::Deserialize)]
    struct Token {
        access_token: String,
        #[serde(default)]
        expires_in: Option<serde_json::Value>,
    }
    #[derive(serde::Deserialize, Default)]
    struct Refusal {
        #[serde(default)]
        error: String,
        #[serde(default)]
        error_codes: Vec<u32>,
    }
    let endpoint = format!(
        "{}/{tenant_id}/oauth2/v2.0/token",
        authority_host.as_str().trim_end_matches('/')
    );
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", client_id),
        ("scope", scope),
        (
            "client_assertion_type",
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        ),
        ("client_assertion", assertion.expose_secret()),
    ];
    let resp = http
        .post(&endpoint)
        .form(&form)
        .send()
        .await
        .map_err(|e| AuthError::Transport(e.without_url().to_string()))?;
    let status = resp.status().as_u16();
    let body = resp
        .bytes()
        .await
        .map_err(|e| AuthError::Transport(e.without_url().to_string()))?;
    if status != 200 {
        let r: Refusal = serde_json::from_slice(&body).unwrap_or_default();
        return Err(AuthError::Aad {
            status,
            error: r.error,
            aadsts: r.error_codes.first().copied(),
        });
    }
    let t: Token = serde_json::from_slice(&body)
        .map_err(|_| AuthError::InvalidResponse("not a token response".into()))?;
    let expires_in = t
        .expires_in
        .and_then(|v| {
            v.as_i64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        })
        .unwrap_or(3600);
    Ok(AccessToken {
        token: SecretString::from(t.access_token),
        expires_on: jiff::Timestamp::now() + jiff::SignedDuration::from_secs(expires_in),
    })
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
