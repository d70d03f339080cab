//! The one path every ARM call takes: send (origin pinning, pacing, token, leader fence,
//! metrics, 429 and `Retry-After`), classify the answer by status, decode its body, and follow
//! `nextLink` pages.

use std::time::{Duration, Instant};

use reqwest::Method;
use reqwest::header::{HeaderMap, HeaderName};
use secrecy::ExposeSecret;
use serde_json::Value;
use url::Url;

use super::ArmClient;
use crate::ArmError;
use crate::throttle::OpKind;

/// One ARM request: the operation it counts as, the method, URL, JSON body and a precondition
/// header (`If-Match`, `If-None-Match`).
pub(super) struct Request<'a> {
    op: &'static str,
    method: Method,
    url: Url,
    body: Option<&'a Value>,
    precondition: Option<(HeaderName, &'a str)>,
}

impl<'a> Request<'a> {
    /// `method url` as `op`.
    pub(super) fn new(op: &'static str, method: Method, url: Url) -> Self {
        Self {
            op,
            method,
            url,
            body: None,
            precondition: None,
        }
    }

    /// `GET url` as `op`.
    pub(super) fn get(op: &'static str, url: Url) -> Self {
        Self::new(op, Method::GET, url)
    }

    /// With a JSON body.
    pub(super) fn json(mut self, body: &'a Value) -> Self {
        self.body = Some(body);
        self
    }

    /// With the precondition `name: value`, when there is one.
    pub(super) fn precondition(mut self, name: HeaderName, value: Option<&'a str>) -> Self {
        self.precondition = value.map(|v| (name, v));
        self
    }

    fn kind(&self) -> OpKind {
        match self.method {
            Method::GET | Method::HEAD => OpKind::Read,
            Method::DELETE => OpKind::Delete,
            _ => OpKind::Write,
        }
    }
}

/// ARM's answer.
pub(super) struct Response {
    pub(super) status: u16,
    headers: HeaderMap,
    body: bytes::Bytes,
}

impl Response {
    /// A header's value, when it is text.
    pub(super) fn header(&self, name: impl reqwest::header::AsHeaderName) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }

    /// `Retry-After` in seconds.
    pub(super) fn retry_after(&self) -> Option<Duration> {
        retry_after(&self.headers)
    }

    /// The body as JSON; a body that is not JSON is an `InvalidResponse`.
    pub(super) fn json(&self, operation: &'static str) -> Result<Value, ArmError> {
        serde_json::from_slice(&self.body).map_err(|_| {
            ArmError::local(
                operation,
                "InvalidResponse",
                "the response body is not JSON",
            )
        })
    }

    /// The body as JSON, `null` when it is empty or not JSON (bodies of LRO answers).
    pub(super) fn json_or_null(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// The operation's error: ARM's code and message.
    pub(super) fn error(&self, operation: &'static str) -> ArmError {
        ArmError::from_response(operation, self.status, &self.body, self.retry_after())
    }
}

/// How a resource family reads an answer: ARM's JSON into the typed shape it expects (a
/// missing required field is an error).
pub(super) type Decode<T> = fn(Value) -> Result<T, serde_json::Error>;

/// A resource as ARM answers it: its id, its name and the properties of its family, all
/// required.
#[derive(serde::Deserialize)]
pub(super) struct Wire<P> {
    pub(super) id: String,
    pub(super) name: String,
    pub(super) properties: P,
}

/// `body` decoded by `decode`; an answer without a field the decoder requires is an
/// `InvalidResponse` error of `operation` that names the field.
pub(super) fn decoded<T>(
    operation: &'static str,
    body: Value,
    decode: Decode<T>,
) -> Result<T, ArmError> {
    decode(body).map_err(|e| {
        ArmError::local(
            operation,
            "InvalidResponse",
            format!("the response does not have the expected shape: {e}"),
        )
    })
}

/// The statuses of an operation's answer that carry its result; every other status is the
/// operation's error (ARM's code and message).
pub(super) type Expect = &'static [u16];
/// A GET of one resource: 404 says it is absent.
pub(super) const FOUND: Expect = &[200, 404];
/// A PUT: created or replaced.
pub(super) const CREATED: Expect = &[200, 201];
/// A PATCH answered synchronously, or one page of a list.
pub(super) const OK: Expect = &[200];
/// A DELETE: an absent resource counts as deleted.
pub(super) const DELETED: Expect = &[200, 204, 404];
/// A write that may continue as a long-running operation.
pub(super) const ACCEPTED: Expect = &[200, 201, 202];

fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// The remaining budget ARM reports for `kind` (`x-ms-ratelimit-remaining-subscription-*`).
fn remaining_budget(headers: &HeaderMap, kind: OpKind) -> Option<u64> {
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
    /// `path` on the ARM endpoint with `api-version` and `query`.
    pub(super) fn url(&self, path: &str, api_version: &str, query: &[(&str, &str)]) -> Url {
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

    /// A URL that ARM named in a response (`nextLink`, `Azure-AsyncOperation`, `Location`),
    /// resolved against the endpoint, refused unless it is on the ARM endpoint's origin (scheme,
    /// host and port), so the bearer token is never sent anywhere else.
    pub(super) fn follow(
        &self,
        operation: &'static str,
        what: &str,
        link: &str,
    ) -> Result<Url, ArmError> {
        let url = self.opts.endpoint.join(link.trim()).map_err(|_| {
            ArmError::local(
                operation,
                "InvalidResponse",
                format!("ARM returned a {what} that is not a URL"),
            )
        })?;
        self.pinned(operation, what, url)
    }

    /// `url` when it is on the ARM endpoint's origin; the ARM token goes nowhere else.
    fn pinned(&self, operation: &'static str, what: &str, url: Url) -> Result<Url, ArmError> {
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

    /// Sends `req` and returns ARM's answer when its status is one of `expect`; any other
    /// status is the operation's error.
    pub(super) async fn call(
        &self,
        req: Request<'_>,
        expect: Expect,
    ) -> Result<Response, ArmError> {
        let r = self.send(&req).await?;
        if expect.contains(&r.status) {
            Ok(r)
        } else {
            Err(r.error(req.op))
        }
    }

    /// A read of one resource: decoded on 200, `None` on 404.
    pub(super) async fn read<T>(
        &self,
        req: Request<'_>,
        decode: Decode<T>,
    ) -> Result<Option<T>, ArmError> {
        let op = req.op;
        let r = self.call(req, FOUND).await?;
        if r.status == 404 {
            return Ok(None);
        }
        decoded(op, r.json(op)?, decode).map(Some)
    }

    /// A write whose answer (one of `expect`) carries the resource.
    pub(super) async fn write<T>(
        &self,
        req: Request<'_>,
        expect: Expect,
        decode: Decode<T>,
    ) -> Result<T, ArmError> {
        let op = req.op;
        let r = self.call(req, expect).await?;
        decoded(op, r.json(op)?, decode)
    }

    /// DELETE; an absent resource counts as deleted.
    pub(super) async fn delete(&self, op: &'static str, url: Url) -> Result<(), ArmError> {
        self.call(Request::new(op, Method::DELETE, url), DELETED)
            .await
            .map(|_| ())
    }

    /// Every item of a list, decoded: `value` of each page, following `nextLink` until there
    /// is none.
    pub(super) async fn list_all<T>(
        &self,
        operation: &'static str,
        first: Url,
        decode: Decode<T>,
    ) -> Result<Vec<T>, ArmError> {
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
            let mut v = self
                .call(Request::get(operation, url), OK)
                .await?
                .json(operation)?;
            if let Some(Value::Array(items)) = v.get_mut("value").map(Value::take) {
                for item in items {
                    out.push(decoded(operation, item, decode)?);
                }
            }
            pages += 1;
            next = match v["nextLink"].as_str().filter(|s| !s.trim().is_empty()) {
                Some(link) => Some(self.follow(operation, "nextLink", link)?),
                None => None,
            };
        }
        Ok(out)
    }

    /// Sends `req` within the subscription's pacing and the leader fence, with a fresh token,
    /// and counts it. A 429 stops the subscription's requests of that kind for `Retry-After`
    /// and is retried here while that wait is short.
    pub(super) async fn send(&self, req: &Request<'_>) -> Result<Response, ArmError> {
        let operation = req.op;
        let kind = req.kind();
        // The ARM token goes only to the ARM endpoint's origin, whatever URL a response named.
        let url = self.pinned(operation, "request", req.url.clone())?;
        let subscription = subscription_of(url.path());
        let mut attempt = 0;
        // Not a backoff: every wait is the one ARM named in `Retry-After`, so this loop is a
        // poll driven by the server rather than a retry policy of this client.
        loop {
            self.throttle.acquire(&subscription, kind).await;
            let r = self.send_once(req, &url, &subscription, kind).await?;
            if r.status != 429 {
                return Ok(r);
            }
            self.metrics.throttled(operation);
            let wait = r.retry_after().unwrap_or(Duration::from_secs(1));
            // Nothing of this kind goes to the subscription before Retry-After has passed.
            self.throttle
                .throttled(&subscription, kind, wait, Instant::now());
            if attempt >= self.opts.max_inline_retries || wait > self.opts.max_inline_retry_after {
                return Err(ArmError::from_response(
                    operation,
                    r.status,
                    &r.body,
                    Some(wait),
                ));
            }
            attempt += 1;
            tracing::debug!(operation, ?wait, "ARM throttled; waiting");
            tokio::time::sleep(wait).await;
        }
    }

    /// One attempt: token, request within the fence, metrics, and the remaining budget ARM
    /// reported.
    async fn send_once(
        &self,
        req: &Request<'_>,
        url: &Url,
        subscription: &str,
        kind: OpKind,
    ) -> Result<Response, ArmError> {
        let operation = req.op;
        let token = self
            .credential
            .get_token(&self.opts.scope)
            .await
            .map_err(|e| ArmError::local(operation, "NoCredential", e.to_string()))?;
        let mut builder = self
            .http
            .request(req.method.clone(), url.clone())
            .bearer_auth(token.token.expose_secret());
        if let Some(b) = req.body {
            builder = builder.json(b);
        }
        if let Some((name, value)) = &req.precondition {
            builder = builder.header(name.clone(), *value);
        }
        let started = Instant::now();
        let result = match &self.fence {
            None => builder.send().await,
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
                tokio::time::timeout_at(deadline, builder.send())
                    .await
                    .map_err(|_| not_leader())?
            }
        };
        self.metrics
            .latency(operation, started.elapsed().as_secs_f64());
        let resp = result.map_err(|e| {
            self.metrics.answered(operation, "transport");
            ArmError::transport(operation, &e)
        })?;
        let status = resp.status().as_u16();
        self.metrics.answered(operation, &status.to_string());
        let headers = resp.headers().clone();
        self.metrics.budget.observe(subscription, &headers);
        if let Some(remaining) = remaining_budget(&headers, kind) {
            self.throttle
                .observe(subscription, kind, remaining, Instant::now());
        }
        let body = resp
            .bytes()
            .await
            .map_err(|e| ArmError::transport(operation, &e))?;
        Ok(Response {
            status,
            headers,
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use async_trait::async_trait;

    use super::*;
    use crate::ArmClientOptions;
    use crate::auth::TokenCredential;

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
            ArmClientOptions::new(Url::parse("https://management.azure.com/").unwrap()),
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
            assert_eq!(e.code(), crate::error::UNTRUSTED_ORIGIN, "{foreign}");
            assert!(!e.is_retryable());
        }
    }
}
