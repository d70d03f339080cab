//! [`ArmClient`]: the REST calls behind the resource-family traits.
//!
//! Every call goes through one path ([`transport`]): the request is pinned to the ARM
//! endpoint's origin, paced against the subscription's remaining budget, sent with a fresh token
//! within the leader fence, counted, retried after a short `Retry-After`, then classified by its
//! status and decoded. The resource families only name the operation, the URL, the statuses that
//! carry a result and how to read the body.

mod compute;
mod federated;
mod identity;
mod metrics;
mod probe;
mod roles;
mod transport;

use std::sync::Arc;
use std::time::Duration;

use reqwest::Client;
use url::Url;

use super::throttle::{SubscriptionThrottle, ThrottleConfig};
use crate::auth::TokenCredential;

pub use metrics::ArmMetrics;
pub use probe::{
    ACCESS_CHECK_PROVIDERS, DataPlanes, DataRead, DataRequest, KEY_VAULT_AUDIENCE,
    PUBLIC_BLOB_ENDPOINT, PUBLIC_KEY_VAULT_ENDPOINT, STORAGE_AUDIENCE, access_check_api_version,
    blob_read, data_read, probe_access, probe_data_plane, secrets_read,
};

/// Azure's public ARM endpoint.
pub const PUBLIC_ARM_ENDPOINT: &str = "https://management.azure.com/";

/// Settings of the ARM client.
#[derive(Clone, Debug)]
pub struct ArmClientOptions {
    /// ARM endpoint, such as `https://management.azure.com/`.
    pub endpoint: Url,
    /// Token scope, such as `https://management.azure.com/.default`.
    pub scope: String,
    /// Client-side rate limits per subscription.
    pub throttle: ThrottleConfig,
    /// A 429 whose `Retry-After` is at most this long is waited out and retried here.
    pub max_inline_retry_after: Duration,
    /// How many times a 429 is retried here before it is returned.
    pub max_inline_retries: u32,
}

impl ArmClientOptions {
    /// The options for the ARM endpoint `endpoint`: the public cloud's token scope (ARM's
    /// audience, whatever the endpoint's address), ARM's pacing, and up to 3 inline retries of a
    /// 429 whose `Retry-After` is at most 10 s.
    pub fn new(endpoint: Url) -> Self {
        Self {
            scope: format!("{PUBLIC_ARM_ENDPOINT}.default"),
            endpoint,
            throttle: ThrottleConfig::default(),
            max_inline_retry_after: Duration::from_secs(10),
            max_inline_retries: 3,
        }
    }
}

/// When this process may send writes to Azure: the controller's leader lease. A request is sent
/// only while [`WriteGate::deadline`] is in the future, and abandoned when its answer has not come
/// by then.
pub trait WriteGate: Send + Sync {
    /// Until when requests may be sent; `None` when not at all.
    fn deadline(&self) -> Option<tokio::time::Instant>;
}

/// The ARM REST client.
#[derive(Clone)]
pub struct ArmClient {
    http: Client,
    opts: ArmClientOptions,
    credential: Arc<dyn TokenCredential>,
    throttle: SubscriptionThrottle,
    metrics: ArmMetrics,
    fence: Option<Arc<dyn WriteGate>>,
}

impl ArmClient {
    /// A client over `http` (share one pooled client with timeouts across the process).
    pub fn new(
        http: Client,
        opts: ArmClientOptions,
        credential: Arc<dyn TokenCredential>,
        registry: Option<&mut prometheus_client::registry::Registry>,
    ) -> Self {
        let metrics = match registry {
            Some(r) => ArmMetrics::register(r),
            None => ArmMetrics::unregistered(),
        };
        Self {
            http,
            throttle: SubscriptionThrottle::new(opts.throttle),
            opts,
            credential,
            metrics,
            fence: None,
        }
    }

    /// Send requests only while `fence` allows (leader election): a request is refused past
    /// the deadline and abandoned when its answer has not come by then.
    pub fn with_fence(mut self, fence: impl WriteGate + 'static) -> Self {
        self.fence = Some(Arc::new(fence));
        self
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_public_endpoint_is_a_url_with_its_scope() {
        let endpoint = url::Url::parse(super::PUBLIC_ARM_ENDPOINT).unwrap();
        let opts = super::ArmClientOptions::new(endpoint);
        assert_eq!(opts.endpoint.as_str(), super::PUBLIC_ARM_ENDPOINT);
        assert_eq!(opts.scope, "https://management.azure.com/.default");
    }
}
