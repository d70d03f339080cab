//! The IMDS client: managed-identity tokens and instance metadata, with IMDS's retry policy
//! (404, 410, 429, 5xx and timeouts retried with exponential backoff; 410 for at least 70 s;
//! other 4xx never) and IMDS's limits kept on this side (20 requests per second and 5 at once per
//! VM).

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::Retryable;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use secrecy::SecretString;
use tokio::sync::Semaphore;
use url::Url;

/// IMDS's address on every Azure VM.
pub const IMDS_ENDPOINT: &str = "http://169.254.169.254";

/// Which identity of the VM a token is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdentitySelector {
    /// The system-assigned identity.
    System,
    /// A user-assigned identity by client id.
    ClientId(String),
    /// A user-assigned identity by object (principal) id.
    ObjectId(String),
    /// A user-assigned identity by ARM resource id.
    ResourceId(String),
}

/// A token from IMDS: the token stays secret; the rest is metadata.
#[derive(Clone)]
pub struct ImdsToken {
    /// The access token.
    pub access_token: SecretString,
    /// Expiry (`expires_on`).
    pub expires_on: jiff::Timestamp,
    /// Not before (`not_before`).
    pub not_before: Option<jiff::Timestamp>,
    /// The resource (audience) asked for.
    pub resource: String,
    /// `Bearer`.
    pub token_type: String,
    /// The client id echoed by IMDS, when given.
    pub client_id: Option<String>,
}

impl std::fmt::Debug for ImdsToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImdsToken")
            .field("access_token", &"<redacted>")
            .field("expires_on", &self.expires_on)
            .field("resource", &self.resource)
            .finish()
    }
}

/// The VM's own description (`/metadata/instance/compute`).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceCompute {
    /// VM name (for a scale set instance, the instance's name).
    #[serde(default)]
    pub name: String,
    /// Resource group.
    #[serde(default)]
    pub resource_group_name: String,
    /// Subscription.
    #[serde(default)]
    pub subscription_id: String,
    /// Scale set name; empty for a standalone VM.
    #[serde(default)]
    pub vm_scale_set_name: String,
    /// The VM's ARM id.
    #[serde(default)]
    pub resource_id: String,
    /// Location.
    #[serde(default)]
    pub location: String,
    /// VM unique id.
    #[serde(default)]
    pub vm_id: String,
}

/// Why IMDS gave no answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ImdsError {
    /// IMDS answered with an error (after retries where the policy retries).
    #[error("IMDS answered HTTP {status} {error}: {description}")]
    Status {
        /// HTTP status.
        status: u16,
        /// `error` of the body.
        error: String,
        /// `error_description` of the body.
        description: String,
    },
    /// IMDS could not be reached.
    #[error("IMDS unreachable: {0}")]
    Transport(String),
    /// The answer was not what IMDS sends.
    #[error("invalid IMDS response: {0}")]
    InvalidResponse(String),
}

impl ImdsError {
    /// Whether IMDS said this identity is not on this VM (400 on a token request).
    pub fn is_identity_not_found(&self) -> bool {
        matches!(self, ImdsError::Status { status: 400, error, .. } if error != "bad_request_102" && error != "invalid_resource")
    }
}

/// IMDS's retry policy (D1): exponential backoff `delta * (2^n - 1)` capped at `max_delay`,
/// `max_retries` times; 410 keeps being retried until `gone_for` has passed.
#[derive(Clone, Debug)]
pub struct ImdsRetryPolicy {
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// Backoff delta.
    pub delta: Duration,
    /// Longest single wait.
    pub max_delay: Duration,
    /// How long 410 is retried at least.
    pub gone_for: Duration,
    /// Timeout of one request.
    pub timeout: Duration,
}

impl Default for ImdsRetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 5,
            delta: Duration::from_secs(2),
            max_delay: Duration::from_secs(60),
            gone_for: Duration::from_secs(70),
            timeout: Duration::from_secs(10),
        }
    }
}

impl ImdsRetryPolicy {
    fn delay(&self, attempt: u32) -> Duration {
        let factor = (1u64 << attempt.min(20)).saturating_sub(1) as u32;
        self.delta.saturating_mul(factor).min(self.max_delay)
    }

    /// The waits before retries 1, 2, 3, ...: a backoff for `backon`, which stops it after
    /// `max_retries` (or, for 410, after `gone_for`).
    fn backoff(&self) -> impl backon::Backoff + use<> {
        let policy = self.clone();
        (1..=u32::MAX).map(move |attempt| policy.delay(attempt))
    }
}

/// IMDS's limit of requests per second per VM, with a burst of as many.
const IMDS_REQUESTS_PER_SECOND: NonZeroU32 = match NonZeroU32::new(20) {
    Some(n) => n,
    None => NonZeroU32::MIN,
};

/// IMDS's limit of requests at once per VM.
const IMDS_CONCURRENCY: usize = 5;

/// A failed attempt, and whether IMDS's policy tries again.
struct Failure {
    retry: bool,
    error: ImdsError,
}

impl Failure {
    /// A failure no retry can fix.
    fn last(error: ImdsError) -> Self {
        Self {
            retry: false,
            error,
        }
    }
}

/// IMDS of one VM.
#[derive(Clone)]
pub struct ImdsClient {
    http: reqwest::Client,
    endpoint: Url,
    policy: ImdsRetryPolicy,
    concurrency: Arc<Semaphore>,
    rate: Arc<DefaultDirectRateLimiter>,
}

impl ImdsClient {
    /// A client of the IMDS at `endpoint` (such as `http://169.254.169.254`).
    pub fn new(http: reqwest::Client, endpoint: Url, policy: ImdsRetryPolicy) -> Self {
        Self {
            http,
            endpoint,
            policy,
            concurrency: Arc::new(Semaphore::new(IMDS_CONCURRENCY)),
            rate: Arc::new(RateLimiter::direct(Quota::per_second(
                IMDS_REQUESTS_PER_SECOND,
            ))),
        }
    }

    /// `GET path?query` with IMDS's retry policy: the body of a 200.
    async fn get(&self, path: &str, query: &[(&str, &str)]) -> Result<bytes::Bytes, ImdsError> {
        let mut url = self.endpoint.clone();
        url.set_path(path);
        let started = Instant::now();
        let mut retries = 0u32;
        (|| self.get_once(&url, query))
            .retry(self.policy.backoff())
            .when(|f: &Failure| f.retry)
            .adjust(|Failure { error: err, .. }, wait| {
                let gone = matches!(err, ImdsError::Status { status: 410, .. });
                let keep_going = retries < self.policy.max_retries
                    || (gone && started.elapsed() < self.policy.gone_for);
                if !keep_going {
                    return None;
                }
                retries += 1;
                let mut wait = wait?;
                if matches!(err, ImdsError::Status { status, .. } if *status >= 500) {
                    wait = wait.max(Duration::from_secs(1).min(self.policy.max_delay));
                }
                Some(wait)
            })
            .notify(|f, wait| tracing::debug!(?wait, error = %f.error, "retrying IMDS"))
            .await
            .map_err(|f| f.error)
    }

    /// One request within IMDS's limits: the body of a 200, or the error and whether the
    /// policy retries it.
    async fn get_once(&self, url: &Url, query: &[(&str, &str)]) -> Result<bytes::Bytes, Failure> {
        let result = {
            let _permit = self
                .concurrency
                .acquire()
                .await
                .map_err(|_| Failure::last(ImdsError::Transport("closed".into())))?;
            self.rate.until_ready().await;
            self.http
                .get(url.clone())
                .query(query)
                .header("Metadata", "true")
                .timeout(self.policy.timeout)
                .send()
                .await
        };
        let resp = result.map_err(|e| Failure {
            retry: true,
            error: ImdsError::Transport(e.to_string()),
        })?;
        let status = resp.status().as_u16();
        let body = resp
            .bytes()
            .await
            .map_err(|e| Failure::last(ImdsError::Transport(e.to_string())))?;
        if status == 200 {
            return Ok(body);
        }
        #[derive(serde::Deserialize, Default)]
        struct Body {
            #[serde(default)]
            error: String,
            #[serde(default)]
            error_description: String,
        }
        let b: Body = serde_json::from_slice(&body).unwrap_or_default();
        Err(Failure {
            retry: matches!(status, 404 | 410 | 429) || status >= 500,
            error: ImdsError::Status {
                status,
                error: b.error,
                description: b.error_description,
            },
        })
    }

    /// A token for `resource` and the selected identity.
    pub async fn token(
        &self,
        resource: &str,
        selector: &IdentitySelector,
    ) -> Result<ImdsToken, ImdsError> {
        let mut query = vec![("api-version", "2018-02-01"), ("resource", resource)];
        match selector {
            IdentitySelector::System => {}
            IdentitySelector::ClientId(id) => query.push(("client_id", id)),
            IdentitySelector::ObjectId(id) => query.push(("object_id", id)),
            IdentitySelector::ResourceId(id) => query.push(("msi_res_id", id)),
        }
        let body = self.get("/metadata/identity/oauth2/token", &query).await?;
        #[derive(serde::Deserialize)]
        struct Resp {
            access_token: String,
            expires_on: serde_json::Value,
            #[serde(default)]
            not_before: Option<serde_json::Value>,
            #[serde(default)]
            resource: String,
            #[serde(default)]
            token_type: String,
            #[serde(default)]
            client_id: Option<String>,
        }
        let r: Resp = serde_json::from_slice(&body)
            .map_err(|_| ImdsError::InvalidResponse("not a token response".into()))?;
        let secs = |v: &serde_json::Value| {
            v.as_i64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        };
        let expires_on = secs(&r.expires_on)
            .and_then(|s| jiff::Timestamp::from_second(s).ok())
            .ok_or_else(|| ImdsError::InvalidResponse("expires_on is not epoch seconds".into()))?;
        let not_before = r
            .not_before
            .as_ref()
            .and_then(secs)
            .and_then(|s| jiff::Timestamp::from_second(s).ok());
        Ok(ImdsToken {
            access_token: SecretString::from(r.access_token),
            expires_on,
            not_before,
            resource: r.resource,
            token_type: r.token_type,
            client_id: r.client_id,
        })
    }

    /// This VM's compute metadata.
    pub async fn instance_compute(&self) -> Result<InstanceCompute, ImdsError> {
        let body = self
            .get(
                "/metadata/instance/compute",
                &[("api-version", "2021-02-01")],
            )
            .await?;
        serde_json::from_slice(&body).map_err(|e| ImdsError::InvalidResponse(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_follows_the_imds_guidance() {
        let p = ImdsRetryPolicy::default();
        let d: Vec<u64> = p.backoff().take(6).map(|d| d.as_secs()).collect();
        assert_eq!(d, vec![2, 6, 14, 30, 60, 60]);
    }

    #[test]
    fn identity_not_found_is_told_apart() {
        let e = ImdsError::Status {
            status: 400,
            error: "invalid_request".into(),
            description: "Identity not found".into(),
        };
        assert!(e.is_identity_not_found());
        let h = ImdsError::Status {
            status: 400,
            error: "bad_request_102".into(),
            description: String::new(),
        };
        assert!(!h.is_identity_not_found());
    }
}
