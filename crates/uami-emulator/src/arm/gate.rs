//! What ARM checks before an operation runs, and the faults injected around it: the
//! api-version, the bearer token and its audience, the token buckets per (subscription,
//! principal, reads|writes|deletes), and the failures before and after a write is applied.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, Method, StatusCode};
use serde_json::Value;

use super::route::subscription_of;
use super::versions::ApiVersions;
use super::{Answer, Ran, arm_err, bad_request, eq};
use crate::Inner;
use crate::faults::{arm_limits, kind as fk, take_next};
use crate::tokens::{self, Claims};

/// The api-version of the query, checked against the versions the operation's type accepts;
/// `routed` gives, for a refusal, where ARM routed the request and the world's locations.
pub(super) fn api_version(
    query: &HashMap<String, String>,
    versions: &ApiVersions,
    routed: impl FnOnce() -> (String, Vec<String>),
) -> Result<(), (StatusCode, Value)> {
    match query.get("api-version") {
        None => Err(bad_request(
            "MissingApiVersionParameter",
            "The api-version query parameter (?api-version=) is required for all requests.",
        )),
        Some(v) if !versions.accepts(v) => {
            let (location, locations) = routed();
            Err(versions.refusal(v, &location, &locations))
        }
        Some(_) => Ok(()),
    }
}

/// The caller: a valid token the emulator issued, for ARM's audience.
pub(super) fn authenticate(
    inner: &Inner,
    headers: &HeaderMap,
) -> Result<Claims, (StatusCode, Value)> {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(token) = token else {
        return Err(arm_err(
            StatusCode::UNAUTHORIZED,
            "AuthenticationFailed",
            "Authentication failed. The 'Authorization' header is missing.",
        ));
    };
    let claims = tokens::verify(inner, token)
        .map_err(|(code, message)| arm_err(StatusCode::UNAUTHORIZED, code, &message))?;
    let aud = claims.aud.trim_end_matches('/');
    if !(eq(aud, "https://management.azure.com") || eq(aud, "https://management.core.windows.net"))
    {
        return Err(arm_err(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthenticationToken",
            "The access token has been obtained for wrong audience or resource. It should exactly match with one of the allowed audiences 'https://management.core.windows.net/','https://management.azure.com/'.",
        ));
    }
    Ok(claims)
}

/// Take one token from the caller's bucket for this request: the bucket kind and the tokens
/// left, or the 429 answer.
pub(super) fn throttle(
    inner: &Inner,
    method: &Method,
    scope: &str,
    principal: &str,
) -> Result<(&'static str, u64), Ran> {
    let kind: &'static str = match *method {
        Method::GET => "reads",
        Method::DELETE => "deletes",
        _ => "writes",
    };
    match take(inner, &subscription_of(scope), principal, kind) {
        Ok(n) => Ok((kind, n)),
        Err(wait) => {
            let mut a: Answer = arm_err(StatusCode::TOO_MANY_REQUESTS, "TooManyRequests", "The request is being throttled as the limit has been reached for operation type. For more information, see https://aka.ms/armthrottling").into();
            a.headers.push(("retry-after", wait.as_secs().to_string()));
            inner.inject(fk::THROTTLED);
            Err(Ran {
                answer: a,
                remaining: Some((kind, 0)),
                fault: Some(fk::THROTTLED),
            })
        }
    }
}

/// Take one token from the (subscription, principal, kind) bucket.
fn take(inner: &Inner, sub: &str, principal: &str, kind: &'static str) -> Result<u64, Duration> {
    let scale = inner
        .faults
        .lock()
        .throttling
        .as_ref()
        .map(|t| t.scale.max(0.0001));
    let (size, rate) = arm_limits(kind);
    let (size, rate) = (size * scale.unwrap_or(1.0), rate * scale.unwrap_or(1.0));
    let mut buckets = inner.buckets.lock();
    let now = Instant::now();
    let entry = buckets
        .entry((sub.to_string(), principal.to_lowercase(), kind))
        .or_insert((size, now));
    entry.0 = (entry.0 + now.duration_since(entry.1).as_secs_f64() * rate).min(size);
    entry.1 = now;
    if entry.0 >= 1.0 {
        entry.0 -= 1.0;
        Ok(entry.0.floor() as u64)
    } else if scale.is_none() {
        Ok(0)
    } else {
        Err(Duration::from_secs_f64(
            ((1.0 - entry.0) / rate).ceil().max(1.0),
        ))
    }
}

/// A fault injected into one request (its `faults::kind` is counted when it is chosen).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Injected {
    /// The connection drops before an answer.
    Drop(&'static str),
    /// The answer is ARM's 500.
    ServerError(&'static str),
    /// The answer comes after the client's timeout.
    Slow,
}

/// The fault injected before the request is applied, if any.
pub(super) fn before(inner: &Inner) -> Option<Injected> {
    let (drop_now, rate) = {
        let mut f = inner.faults.lock();
        (
            take_next(&mut f.drop_connection_next),
            f.drop_connection_rate,
        )
    };
    if drop_now || inner.chance(rate) {
        inner.inject(fk::DROP_CONNECTION);
        return Some(Injected::Drop(fk::DROP_CONNECTION));
    }
    let (fail_now, rate) = {
        let mut f = inner.faults.lock();
        (take_next(&mut f.server_error_next), f.server_error_rate)
    };
    if fail_now || inner.chance(rate) {
        inner.inject(fk::SERVER_ERROR);
        return Some(Injected::ServerError(fk::SERVER_ERROR));
    }
    None
}

/// The fault injected after a write was applied, if any: the caller cannot tell that it
/// happened.
pub(super) fn after(inner: &Inner) -> Option<Injected> {
    // Every "next" counter counts this write, whichever fault it gets.
    let (drop_now, drop_rate, err_now, err_rate, slow_now, slow_rate) = {
        let mut f = inner.faults.lock();
        (
            take_next(&mut f.applied_then_drop_next),
            f.applied_then_drop_rate,
            take_next(&mut f.applied_then_error_next),
            f.applied_then_error_rate,
            take_next(&mut f.applied_then_slow_next),
            f.applied_then_slow_rate,
        )
    };
    if drop_now || inner.chance(drop_rate) {
        inner.inject(fk::APPLIED_THEN_DROP);
        return Some(Injected::Drop(fk::APPLIED_THEN_DROP));
    }
    if err_now || inner.chance(err_rate) {
        inner.inject(fk::APPLIED_THEN_ERROR);
        return Some(Injected::ServerError(fk::APPLIED_THEN_ERROR));
    }
    if slow_now || inner.chance(slow_rate) {
        // Recorded now, answered after `slow` (see `handle`): a caller that gives up or dies
        // meanwhile still leaves the applied write in the journal.
        inner.inject(fk::APPLIED_THEN_SLOW);
        return Some(Injected::Slow);
    }
    None
}

/// ARM's 500.
pub(super) fn server_error() -> (StatusCode, Value) {
    arm_err(
        StatusCode::INTERNAL_SERVER_ERROR,
        "InternalServerError",
        "Encountered internal server error. Diagnostic information: timestamp, subscription id, tracking id, request correlation id.",
    )
}
