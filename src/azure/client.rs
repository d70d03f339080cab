//! [`ArmClient`]: the REST calls behind the resource-family traits.

mod federated;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use url::Url;

use super::compute::{
    ComputeIdentity, ComputeResource, ComputeTarget, LroKind, LroPoll, OperationStatus,
    PatchOutcome, UserAssignedInfo,
};
use super::identity::Identity;
use super::roles::{RoleAssignment, RoleDefinition};
use super::scope::ArmScope;
use super::throttle::{OpKind, SubscriptionThrottle, ThrottleConfig};
use super::{ArmError, ComputeApi, IdentityApi, ResourceGroupApi, RoleApi, api_versions};
use crate::auth::TokenCredential;
use crate::telemetry::metrics::ArmBudgetMetrics;

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

impl Default for ArmClientOptions {
    fn default() -> Self {
        Self {
            endpoint: Url::parse("https://management.azure.com/")
                .unwrap_or_else(|_| unreachable!()),
            scope: "https://management.azure.com/.default".into(),
            throttle: ThrottleConfig::default(),
            max_inline_retry_after: Duration::from_secs(10),
            max_inline_retries: 3,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    operation: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: String,
}

/// ARM request metrics: by operation and status code, latency, throttling.
#[derive(Clone)]
pub struct ArmMetrics {
    requests: Family<RequestLabels, Counter>,
    latency: Family<OperationLabels, Histogram>,
    throttled: Family<OperationLabels, Counter>,
    budget: ArmBudgetMetrics,
}

impl ArmMetrics {
    /// Create and register under `uami_arm_`.
    pub fn register(registry: &mut Registry) -> Self {
        let mut m = Self::unregistered();
        m.budget = ArmBudgetMetrics::register(registry);
        registry.register(
            "uami_arm_requests",
            "ARM requests by operation and HTTP status",
            m.requests.clone(),
        );
        registry.register(
            "uami_arm_request_duration_seconds",
            "ARM request latency",
            m.latency.clone(),
        );
        registry.register(
            "uami_arm_throttled",
            "ARM answers 429 by operation",
            m.throttled.clone(),
        );
        m
    }

    fn unregistered() -> Self {
        Self {
            requests: Family::default(),
            latency: Family::new_with_constructor(|| {
                Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])
            }),
            throttled: Family::default(),
            budget: ArmBudgetMetrics::default(),
        }
    }
}

/// The ARM REST client.
#[derive(Clone)]
pub struct ArmClient {
    http: reqwest::Client,
    opts: ArmClientOptions,
    credential: Arc<dyn TokenCredential>,
    throttle: SubscriptionThrottle,
    metrics: ArmMetrics,
    fence: Option<crate::controller::leader::Fence>,
}

struct Response {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: bytes::Bytes,
}

fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// The remaining budget ARM reports for `kind` (`x-ms-ratelimit-remaining-subscription-*`).
fn remaining_budget(headers: &reqwest::header::HeaderMap, kind: OpKind) -> Option<u64> {
    let name = match kind {
        OpKind::Read => "x-ms-ratelimit-remaining-subscription-reads",
        OpKind::Write => "x-ms-ratelimit-remaining-subscription-writes",
        OpKind::Delete => "x-ms-ratelimit-remaining-subscription-deletes",
    };
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
}

fn subscription_of(path: &str) -> String {
    let mut parts = path.split('/').filter(|p| !p.is_empty());
    match (parts.next(), parts.next()) {
        (Some(s), Some(id)) if s.eq_ignore_ascii_case("subscriptions") => id.to_lowercase(),
        _ => "tenant".into(),
    }
}

impl ArmClient {
    /// A client over `http` (share one pooled client with timeouts across the process).
    pub fn new(
        http: reqwest::Client,
        opts: ArmClientOptions,
        credential: Arc<dyn TokenCredential>,
        registry: Option<&mut Registry>,
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
    pub fn with_fence(mut self, fence: crate::controller::leader::Fence) -> Self {
        self.fence = Some(fence);
        self
    }

    fn url(&self, path: &str, api_version: &str, query: &[(&str, &str)]) -> Url {
        let mut url = self.opts.endpoint.clone();
        let base = url.path().trim_end_matches('/').to_string();
        url.set_path(&format!("{base}/{}", path.trim_start_matches('/')));
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("api-version", api_version);
            for (k, v) in query {
                q.append_pair(k, v);
            }
        }
        url
    }

    async fn send(
        &self,
        operation: &'static str,
        method: Method,
        url: Url,
        body: Option<&Value>,
        if_match: Option<&str>,
    ) -> Result<Response, ArmError> {
        match if_match {
            Some(etag) => {
                self.send_with(
                    operation,
                    method,
                    url,
                    body,
                    &[(reqwest::header::IF_MATCH, etag)],
                )
                .await
            }
            None => self.send_with(operation, method, url, body, &[]).await,
        }
    }

    async fn send_with(
        &self,
        operation: &'static str,
        method: Method,
        url: Url,
        body: Option<&Value>,
        headers: &[(reqwest::header::HeaderName, &str)],
    ) -> Result<Response, ArmError> {
        let kind = match method {
            Method::GET | Method::HEAD => OpKind::Read,
            Method::DELETE => OpKind::Delete,
            _ => OpKind::Write,
        };
        // The ARM token goes only to the ARM endpoint's origin, whatever URL a response named.
        if url.origin() != self.opts.endpoint.origin() {
            return Err(ArmError::untrusted_origin(
                operation,
                "request",
                &url,
                &self.opts.endpoint,
            ));
        }
        let subscription = subscription_of(url.path());
        let mut attempt = 0;
        loop {
            self.throttle.acquire(&subscription, kind).await;
            let token = self
                .credential
                .get_token(&self.opts.scope)
                .await
                .map_err(|e| ArmError::local(operation, "NoCredential", e.to_string()))?;
            let mut req = self
                .http
                .request(method.clone(), url.clone())
                .bearer_auth(token.token.expose_secret());
            if let Some(b) = body {
                req = req.json(b);
            }
            for (name, value) in headers {
                req = req.header(name.clone(), *value);
            }
            let started = Instant::now();
            let result = match &self.fence {
                None => req.send().await,
                Some(fence) => {
                    let not_leader = || {
                        ArmError::local(
                            operation,
                            "NotLeader",
                            "this replica no longer holds the leader lease",
                        )
                    };
                    let Some(deadline) = fence.deadline() else {
                        return Err(not_leader());
                    };
                    tokio::time::timeout_at(deadline, req.send())
                        .await
                        .map_err(|_| not_leader())?
                }
            };
            let labels = OperationLabels {
                operation: operation.into(),
            };
            self.metrics
                .latency
                .get_or_create(&labels)
                .observe(started.elapsed().as_secs_f64());
            let resp = match result {
                Ok(r) => r,
                Err(e) => {
                    self.metrics
                        .requests
                        .get_or_create(&RequestLabels {
                            operation: operation.into(),
                            code: "transport".into(),
                        })
                        .inc();
                    return Err(ArmError::transport(operation, &e));
                }
            };
            let status = resp.status().as_u16();
            self.metrics
                .requests
                .get_or_create(&RequestLabels {
                    operation: operation.into(),
                    code: status.to_string(),
                })
                .inc();
            let headers = resp.headers().clone();
            self.metrics.budget.observe(&subscription, &headers);
            if let Some(remaining) = remaining_budget(&headers, kind) {
                self.throttle
                    .observe(&subscription, kind, remaining, Instant::now());
            }
            let body = resp
                .bytes()
                .await
                .map_err(|e| ArmError::transport(operation, &e))?;
            if status == 429 {
                self.metrics.throttled.get_or_create(&labels).inc();
                let wait = retry_after(&headers).unwrap_or(Duration::from_secs(1));
                // Nothing of this kind goes to the subscription before Retry-After has passed.
                self.throttle
                    .throttled(&subscription, kind, wait, Instant::now());
                if attempt < self.opts.max_inline_retries
                    && wait <= self.opts.max_inline_retry_after
                {
                    attempt += 1;
                    tracing::debug!(operation, ?wait, "ARM throttled; waiting");
                    tokio::time::sleep(wait).await;
                    continue;
                }
                return Err(ArmError::from_response(
                    operation,
                    status,
                    &body,
                    Some(wait),
                ));
            }
            return Ok(Response {
                status,
                headers,
                body,
            });
        }
    }

    fn json(operation: &'static str, r: &Response) -> Result<Value, ArmError> {
        serde_json::from_slice(&r.body).map_err(|_| {
            ArmError::local(
                operation,
                "InvalidResponse",
                "the response body is not JSON",
            )
        })
    }

    fn fail(operation: &'static str, r: &Response) -> ArmError {
        ArmError::from_response(operation, r.status, &r.body, retry_after(&r.headers))
    }

    /// A URL that ARM named in a response (`nextLink`, `Azure-AsyncOperation`, `Location`),
    /// resolved against the endpoint, refused unless it is on the ARM endpoint's origin (scheme,
    /// host and port), so the bearer token is never sent anywhere else.
    fn follow(&self, operation: &'static str, what: &str, link: &str) -> Result<Url, ArmError> {
        let url = self.opts.endpoint.join(link.trim()).map_err(|_| {
            ArmError::local(
                operation,
                "InvalidResponse",
                format!("ARM returned a {what} that is not a URL"),
            )
        })?;
        if url.origin() != self.opts.endpoint.origin() {
            return Err(ArmError::untrusted_origin(
                operation,
                what,
                &url,
                &self.opts.endpoint,
            ));
        }
        Ok(url)
    }

    /// Every page of a list: `value` of each page, following `nextLink` until there is none.
    async fn list_all(&self, operation: &'static str, first: Url) -> Result<Vec<Value>, ArmError> {
        const MAX_PAGES: usize = 1000;
        let mut out = Vec::new();
        let mut next = Some(first);
        let mut pages = 0;
        while let Some(url) = next.take() {
            if pages == MAX_PAGES {
                return Err(ArmError::local(
                    operation,
                    "TooManyPages",
                    format!("the list did not end after {MAX_PAGES} pages"),
                ));
            }
            let r = self.send(operation, Method::GET, url, None, None).await?;
            if r.status != 200 {
                return Err(Self::fail(operation, &r));
            }
            let v = Self::json(operation, &r)?;
            out.extend(v["value"].as_array().cloned().unwrap_or_default());
            pages += 1;
            next = match v["nextLink"].as_str().filter(|s| !s.trim().is_empty()) {
                Some(link) => Some(self.follow(operation, "nextLink", link)?),
                None => None,
            };
        }
        Ok(out)
    }
}

fn identity_path(subscription: &str, rg: &str, name: &str) -> String {
    format!(
        "/subscriptions/{subscription}/resourceGroups/{rg}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{name}"
    )
}

fn parse_identity(v: &Value) -> Identity {
    let s = |p: &Value| p.as_str().unwrap_or_default().to_string();
    Identity {
        id: s(&v["id"]),
        name: s(&v["name"]),
        location: s(&v["location"]),
        tags: v["tags"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect()
            })
            .unwrap_or_default(),
        client_id: s(&v["properties"]["clientId"]),
        principal_id: s(&v["properties"]["principalId"]),
        tenant_id: s(&v["properties"]["tenantId"]),
    }
}

#[async_trait]
impl IdentityApi for ArmClient {
    async fn get_identity(
        &self,
        subscription: &str,
        resource_group: &str,
        name: &str,
    ) -> Result<Option<Identity>, ArmError> {
        const OP: &str = "UserAssignedIdentities_Get";
        let url = self.url(
            &identity_path(subscription, resource_group, name),
            api_versions::MANAGED_IDENTITY,
            &[],
        );
        let r = self.send(OP, Method::GET, url, None, None).await?;
        match r.status {
            200 => Ok(Some(parse_identity(&Self::json(OP, &r)?))),
            404 => Ok(None),
            _ => Err(Self::fail(OP, &r)),
        }
    }

    async fn create_identity(
        &self,
        subscription: &str,
        resource_group: &str,
        name: &str,
        location: &str,
        tags: &BTreeMap<String, String>,
    ) -> Result<Identity, ArmError> {
        const OP: &str = "UserAssignedIdentities_CreateOrUpdate";
        let url = self.url(
            &identity_path(subscription, resource_group, name),
            api_versions::MANAGED_IDENTITY,
            &[],
        );
        let body = json!({"location": location, "tags": tags});
        let r = self
            .send_with(
                OP,
                Method::PUT,
                url,
                Some(&body),
                &[(reqwest::header::IF_NONE_MATCH, "*")],
            )
            .await?;
        match r.status {
            200 | 201 => Ok(parse_identity(&Self::json(OP, &r)?)),
            _ => Err(Self::fail(OP, &r)),
        }
    }

    async fn update_identity_tags(
        &self,
        subscription: &str,
        resource_group: &str,
        name: &str,
        tags: &BTreeMap<String, String>,
    ) -> Result<Identity, ArmError> {
        const OP: &str = "UserAssignedIdentities_Update";
        let url = self.url(
            &identity_path(subscription, resource_group, name),
            api_versions::MANAGED_IDENTITY,
            &[],
        );
        let body = json!({"tags": tags});
        let r = self.send(OP, Method::PATCH, url, Some(&body), None).await?;
        match r.status {
            200 => Ok(parse_identity(&Self::json(OP, &r)?)),
            _ => Err(Self::fail(OP, &r)),
        }
    }

    async fn delete_identity(
        &self,
        subscription: &str,
        resource_group: &str,
        name: &str,
    ) -> Result<(), ArmError> {
        const OP: &str = "UserAssignedIdentities_Delete";
        let url = self.url(
            &identity_path(subscription, resource_group, name),
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

fn parse_definition(v: &Value) -> RoleDefinition {
    let s = |p: &Value| p.as_str().unwrap_or_default().to_string();
    RoleDefinition {
        id: s(&v["id"]),
        name: s(&v["name"]),
        role_name: s(&v["properties"]["roleName"]),
        role_type: s(&v["properties"]["type"]),
    }
}

fn parse_assignment(v: &Value) -> RoleAssignment {
    let s = |p: &Value| p.as_str().unwrap_or_default().to_string();
    RoleAssignment {
        id: s(&v["id"]),
        name: s(&v["name"]),
        scope: s(&v["properties"]["scope"]),
        role_definition_id: s(&v["properties"]["roleDefinitionId"]),
        principal_id: s(&v["properties"]["principalId"]),
        principal_type: v["properties"]["principalType"]
            .as_str()
            .map(str::to_string),
    }
}

fn scope_path(scope: &str) -> String {
    format!("/{}", scope.trim_matches('/'))
}

/// The path of a role API scope: only a canonical scope is sent, so the URL names exactly the
/// scope the caller checked (a `..` segment would be resolved by the URL builder).
fn canonical_scope_path(operation: &'static str, scope: &str) -> Result<String, ArmError> {
    ArmScope::parse(scope)
        .map(|s| s.to_string())
        .map_err(|e| ArmError::local(operation, "InvalidScope", e.to_string()))
}

#[async_trait]
impl RoleApi for ArmClient {
    async fn get_role_definition(
        &self,
        scope: &str,
        guid: &str,
    ) -> Result<Option<RoleDefinition>, ArmError> {
        const OP: &str = "RoleDefinitions_Get";
        let path = format!(
            "{}/providers/Microsoft.Authorization/roleDefinitions/{guid}",
            canonical_scope_path(OP, scope)?
        );
        let r = self
            .send(
                OP,
                Method::GET,
                self.url(&path, api_versions::AUTHORIZATION, &[]),
                None,
                None,
            )
            .await?;
        match r.status {
            200 => Ok(Some(parse_definition(&Self::json(OP, &r)?))),
            404 => Ok(None),
            _ => Err(Self::fail(OP, &r)),
        }
    }

    async fn find_role_definition(
        &self,
        scope: &str,
        role_name: &str,
    ) -> Result<Option<RoleDefinition>, ArmError> {
        const OP: &str = "RoleDefinitions_List";
        let path = format!(
            "{}/providers/Microsoft.Authorization/roleDefinitions",
            canonical_scope_path(OP, scope)?
        );
        let filter = format!("roleName eq '{}'", role_name.replace('\'', "''"));
        let url = self.url(&path, api_versions::AUTHORIZATION, &[("$filter", &filter)]);
        let all = self.list_all(OP, url).await?;
        let matching: Vec<RoleDefinition> = all
            .iter()
            .map(parse_definition)
            .filter(|d| d.role_name.eq_ignore_ascii_case(role_name))
            .collect();
        match matching.len() {
            0 => Ok(None),
            1 => Ok(matching.into_iter().next()),
            n => Err(ArmError::local(
                OP,
                "AmbiguousRoleName",
                format!("{n} role definitions are named {role_name}; use the role definition id"),
            )),
        }
    }

    async fn get_role_assignment(
        &self,
        scope: &str,
        name: &str,
    ) -> Result<Option<RoleAssignment>, ArmError> {
        const OP: &str = "RoleAssignments_Get";
        let path = format!(
            "{}/providers/Microsoft.Authorization/roleAssignments/{name}",
            canonical_scope_path(OP, scope)?
        );
        let r = self
            .send(
                OP,
                Method::GET,
                self.url(&path, api_versions::AUTHORIZATION, &[]),
                None,
                None,
            )
            .await?;
        match r.status {
            200 => Ok(Some(parse_assignment(&Self::json(OP, &r)?))),
            404 => Ok(None),
            _ => Err(Self::fail(OP, &r)),
        }
    }

    async fn create_role_assignment(
        &self,
        scope: &str,
        name: &str,
        role_definition_id: &str,
        principal_id: &str,
    ) -> Result<RoleAssignment, ArmError> {
        const OP: &str = "RoleAssignments_Create";
        let path = format!(
            "{}/providers/Microsoft.Authorization/roleAssignments/{name}",
            canonical_scope_path(OP, scope)?
        );
        let body = json!({"properties": {
            "roleDefinitionId": role_definition_id,
            "principalId": principal_id,
            "principalType": "ServicePrincipal",
            "description": "managed by uami-controller",
        }});
        let r = self
            .send(
                OP,
                Method::PUT,
                self.url(&path, api_versions::AUTHORIZATION, &[]),
                Some(&body),
                None,
            )
            .await?;
        match r.status {
            200 | 201 => Ok(parse_assignment(&Self::json(OP, &r)?)),
            _ => Err(Self::fail(OP, &r)),
        }
    }

    async fn delete_role_assignment(&self, scope: &str, name: &str) -> Result<(), ArmError> {
        const OP: &str = "RoleAssignments_Delete";
        let path = format!(
            "{}/providers/Microsoft.Authorization/roleAssignments/{name}",
            canonical_scope_path(OP, scope)?
        );
        let r = self
            .send(
                OP,
                Method::DELETE,
                self.url(&path, api_versions::AUTHORIZATION, &[]),
                None,
                None,
            )
            .await?;
        match r.status {
            200 | 204 | 404 => Ok(()),
            _ => Err(Self::fail(OP, &r)),
        }
    }

    async fn list_role_assignments_for_principal(
        &self,
        scope: &str,
        principal_id: &str,
    ) -> Result<Vec<RoleAssignment>, ArmError> {
        const OP: &str = "RoleAssignments_ListForScope";
        let path = format!(
            "{}/providers/Microsoft.Authorization/roleAssignments",
            canonical_scope_path(OP, scope)?
        );
        let filter = format!("principalId eq '{principal_id}'");
        let url = self.url(&path, api_versions::AUTHORIZATION, &[("$filter", &filter)]);
        Ok(self
            .list_all(OP, url)
            .await?
            .iter()
            .map(parse_assignment)
            .collect())
    }
}

fn parse_compute(v: &Value, headers_etag: Option<String>) -> ComputeResource {
    let identity = &v["identity"];
    let user_assigned = identity["userAssignedIdentities"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        UserAssignedInfo {
                            principal_id: v["principalId"].as_str().map(str::to_string),
                            client_id: v["clientId"].as_str().map(str::to_string),
                        },
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    ComputeResource {
        id: v["id"].as_str().unwrap_or_default().to_string(),
        etag: v["etag"].as_str().map(str::to_string).or(headers_etag),
        identity: ComputeIdentity {
            type_: identity["type"].as_str().unwrap_or("None").to_string(),
            principal_id: identity["principalId"].as_str().map(str::to_string),
            user_assigned,
        },
        provisioning_state: v["properties"]["provisioningState"]
            .as_str()
            .map(str::to_string),
    }
}

fn compute_ops(target: &ComputeTarget) -> (&'static str, &'static str) {
    match target.kind {
        super::compute::TargetKind::VirtualMachine => {
            ("VirtualMachines_Get", "VirtualMachines_Update")
        }
        super::compute::TargetKind::VirtualMachineScaleSet => (
            "VirtualMachineScaleSets_Get",
            "VirtualMachineScaleSets_Update",
        ),
    }
}

#[async_trait]
impl ComputeApi for ArmClient {
    async fn get_compute(
        &self,
        target: &ComputeTarget,
    ) -> Result<Option<ComputeResource>, ArmError> {
        let (op, _) = compute_ops(target);
        let r = self
            .send(
                op,
                Method::GET,
                self.url(&target.id(), api_versions::COMPUTE, &[]),
                None,
                None,
            )
            .await?;
        match r.status {
            200 => {
                let etag = r
                    .headers
                    .get(reqwest::header::ETAG)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                Ok(Some(parse_compute(&Self::json(op, &r)?, etag)))
            }
            404 => Ok(None),
            _ => Err(Self::fail(op, &r)),
        }
    }

    async fn patch_identity(
        &self,
        target: &ComputeTarget,
        body: &Value,
        if_match: Option<&str>,
    ) -> Result<PatchOutcome, ArmError> {
        let (_, op) = compute_ops(target);
        let r = self
            .send(
                op,
                Method::PATCH,
                self.url(&target.id(), api_versions::COMPUTE, &[]),
                Some(body),
                if_match,
            )
            .await?;
        if !(200..=202).contains(&r.status) {
            return Err(Self::fail(op, &r));
        }
        let header = |name: &str| {
            r.headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        // D3: poll `Azure-AsyncOperation` when present, otherwise `Location`.
        let poll = match (header("azure-asyncoperation"), header("location")) {
            (Some(u), _) => Some(LroPoll {
                url: self.follow(op, "Azure-AsyncOperation", &u)?,
                kind: LroKind::AsyncOperation,
            }),
            (None, Some(u)) => Some(LroPoll {
                url: self.follow(op, "Location", &u)?,
                kind: LroKind::Location,
            }),
            (None, None) => None,
        };
        let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        let state = v["properties"]["provisioningState"]
            .as_str()
            .unwrap_or("Succeeded");
        let terminal = matches!(state, "Succeeded" | "Failed" | "Canceled");
        match poll {
            Some(poll) if r.status == 202 || !terminal => Ok(PatchOutcome::InProgress {
                poll,
                retry_after: retry_after(&r.headers),
            }),
            None if r.status == 202 => Err(ArmError::local(
                op,
                "InvalidResponse",
                "ARM accepted the request (202) without a Location or Azure-AsyncOperation to poll",
            )),
            _ => Ok(PatchOutcome::Done(parse_compute(&v, None))),
        }
    }

    async fn poll_operation(&self, poll: &LroPoll) -> Result<OperationStatus, ArmError> {
        if poll.kind == LroKind::Location {
            // D3: the Location URL answers 202 while the operation runs, 200 or 204 when it
            // succeeded, and the operation's error (4xx/5xx with ARM's envelope) when it failed.
            const OP: &str = "LocationOperation_Get";
            let r = self
                .send(OP, Method::GET, poll.url.clone(), None, None)
                .await?;
            return Ok(match r.status {
                202 => OperationStatus::InProgress {
                    retry_after: retry_after(&r.headers),
                },
                200 | 201 | 204 => OperationStatus::Succeeded,
                _ => OperationStatus::Failed(Self::fail(OP, &r)),
            });
        }
        const OP: &str = "AsyncOperation_Get";
        let r = self
            .send(OP, Method::GET, poll.url.clone(), None, None)
            .await?;
        if r.status == 202 {
            return Ok(OperationStatus::InProgress {
                retry_after: retry_after(&r.headers),
            });
        }
        if !matches!(r.status, 200 | 204) {
            return Err(Self::fail(OP, &r));
        }
        let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        match v["status"].as_str() {
            Some("Succeeded") | None => Ok(OperationStatus::Succeeded),
            Some("Failed") | Some("Canceled") => {
                let code = v["error"]["code"]
                    .as_str()
                    .unwrap_or("OperationFailed")
                    .to_string();
                let message = v["error"]["message"]
                    .as_str()
                    .unwrap_or("the long-running operation failed")
                    .to_string();
                Ok(OperationStatus::Failed(ArmError {
                    operation: OP,
                    status: Some(200),
                    code,
                    message,
                    retry_after: None,
                }))
            }
            Some(_) => Ok(OperationStatus::InProgress {
                retry_after: retry_after(&r.headers),
            }),
        }
    }
}

#[async_trait]
impl ResourceGroupApi for ArmClient {
    async fn get_resource_group(
        &self,
        subscription: &str,
        name: &str,
    ) -> Result<Option<Value>, ArmError> {
        const OP: &str = "ResourceGroups_Get";
        let path = format!("/subscriptions/{subscription}/resourcegroups/{name}");
        let r = self
            .send(
                OP,
                Method::GET,
                self.url(&path, api_versions::RESOURCES, &[]),
                None,
                None,
            )
            .await?;
        match r.status {
            200 => Ok(Some(Self::json(OP, &r)?)),
            404 => Ok(None),
            _ => Err(Self::fail(OP, &r)),
        }
    }
}

/// The resource types whose api-version the access check knows, as `(namespace/type,
/// api-version)`. ARM refuses a GET whose api-version its provider does not serve, so every
/// provider needs its own.
pub const ACCESS_CHECK_PROVIDERS: &[(&str, &str)] = &[
    ("Microsoft.Storage/storageAccounts", api_versions::STORAGE),
    ("Microsoft.KeyVault/vaults", api_versions::KEY_VAULT),
    (
        "Microsoft.ManagedIdentity/userAssignedIdentities",
        api_versions::MANAGED_IDENTITY,
    ),
    ("Microsoft.Compute/virtualMachines", api_versions::COMPUTE),
    (
        "Microsoft.Compute/virtualMachineScaleSets",
        api_versions::COMPUTE,
    ),
];

/// The api-version to read `scope` with: subscriptions, resource groups and the resource types
/// of [`ACCESS_CHECK_PROVIDERS`]. Anything else is refused with code `UnsupportedScope` and a
/// message naming the resource type.
pub fn access_check_api_version(scope: &str) -> Result<&'static str, ArmError> {
    const OP: &str = "AccessProbe";
    let segments: Vec<&str> = scope.split('/').filter(|s| !s.is_empty()).collect();
    let eq = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
    match segments.as_slice() {
        [s, _] if eq(s, "subscriptions") => return Ok(api_versions::SUBSCRIPTIONS),
        [s, _, r, _] if eq(s, "subscriptions") && eq(r, "resourceGroups") => {
            return Ok(api_versions::RESOURCES);
        }
        _ => {}
    }
    // The resource type is the namespace after the last `providers` and the type segments
    // (every other segment after it: `type/name[/childType/childName]`).
    let resource_type = segments
        .iter()
        .rposition(|s| eq(s, "providers"))
        .filter(|i| segments.len() > i + 3)
        .map(|i| {
            let rest = &segments[i + 1..];
            let mut parts = vec![rest[0]];
            parts.extend(rest[1..].iter().step_by(2));
            parts.join("/")
        });
    if let Some(t) = &resource_type
        && let Some((_, version)) = ACCESS_CHECK_PROVIDERS.iter().find(|(k, _)| eq(k, t))
    {
        return Ok(version);
    }
    let known: Vec<&str> = ACCESS_CHECK_PROVIDERS.iter().map(|(k, _)| *k).collect();
    Err(ArmError::local(
        OP,
        "UnsupportedScope",
        format!(
            "access checks read subscriptions, resource groups and {}; {} is not one of them, so the grant was made but its access cannot be verified (set verifyAccess: false for this scope)",
            known.join(", "),
            resource_type
                .map(|t| format!("resource type {t}"))
                .unwrap_or_else(|| "this scope".into()),
        ),
    ))
}

/// The agent's access check: `GET {scope}` with `token` and the api-version of the scope's
/// provider, returning the HTTP status (200 when the identity may read the scope, 403 before
/// the grant takes effect).
pub async fn probe_access(
    http: &reqwest::Client,
    arm_endpoint: &Url,
    scope: &str,
    token: &SecretString,
) -> Result<u16, ArmError> {
    const OP: &str = "AccessProbe";
    let api_version = access_check_api_version(scope)?;
    let mut url = arm_endpoint.clone();
    let base = url.path().trim_end_matches('/').to_string();
    url.set_path(&format!("{base}{}", scope_path(scope)));
    url.query_pairs_mut()
        .append_pair("api-version", api_version);
    let resp = http
        .get(url)
        .bearer_auth(token.expose_secret())
        .send()
        .await
        .map_err(|e| ArmError::transport(OP, &e))?;
    Ok(resp.status().as_u16())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NoToken;

    #[async_trait]
    impl TokenCredential for NoToken {
        async fn get_token(
            &self,
            _: &str,
        ) -> Result<crate::auth::AccessToken, crate::auth::AuthError> {
            Err(crate::auth::AuthError::InvalidResponse("none".into()))
        }
    }

    #[test]
    fn only_links_on_the_endpoints_origin_are_followed() {
        let client = ArmClient::new(
            reqwest::Client::new(),
            ArmClientOptions {
                endpoint: Url::parse("https://management.azure.com/").unwrap(),
                ..Default::default()
            },
            Arc::new(NoToken),
            None,
        );
        let ok = client
            .follow(
                "Op",
                "nextLink",
                "https://management.azure.com/subscriptions/s?$skiptoken=1",
            )
            .unwrap();
        assert_eq!(ok.host_str(), Some("management.azure.com"));
        let relative = client
            .follow("Op", "Location", "/subscriptions/s/operations/1")
            .unwrap();
        assert_eq!(
            relative.as_str(),
            "https://management.azure.com/subscriptions/s/operations/1"
        );
        for foreign in [
            "http://management.azure.com/subscriptions/s",
            "https://management.azure.com:8443/subscriptions/s",
            "https://evil.example/subscriptions/s",
            "https://management.azure.com.evil.example/x",
            "//evil.example/x",
        ] {
            let e = client.follow("Op", "nextLink", foreign).unwrap_err();
            assert_eq!(e.code(), crate::azure::error::UNTRUSTED_ORIGIN, "{foreign}");
            assert!(!e.is_retryable());
        }
    }

    #[test]
    fn access_checks_use_the_providers_api_version() {
        let sub = "/subscriptions/6a2bd3a4-59c6-4d4e-9e8b-5c5a2f0a1b2c";
        let rg = format!("{sub}/resourceGroups/DevTest");
        assert_eq!(
            access_check_api_version(sub),
            Ok(api_versions::SUBSCRIPTIONS)
        );
        assert_eq!(access_check_api_version(&rg), Ok(api_versions::RESOURCES));
        assert_eq!(
            access_check_api_version(&format!(
                "{rg}/providers/microsoft.storage/storageaccounts/devtestdata"
            )),
            Ok(api_versions::STORAGE)
        );
        assert_eq!(
            access_check_api_version(&format!("{rg}/providers/Microsoft.KeyVault/vaults/kv1")),
            Ok(api_versions::KEY_VAULT)
        );
        let e = access_check_api_version(&format!(
            "{rg}/providers/Microsoft.Network/virtualNetworks/vnet1"
        ))
        .unwrap_err();
        assert_eq!(e.code(), "UnsupportedScope");
        assert!(
            e.message.contains("Microsoft.Network/virtualNetworks"),
            "{e}"
        );
        let child = access_check_api_version(&format!(
            "{rg}/providers/Microsoft.Storage/storageAccounts/a/blobServices/default"
        ))
        .unwrap_err();
        assert!(
            child
                .message
                .contains("Microsoft.Storage/storageAccounts/blobServices"),
            "{child}"
        );
    }
}
