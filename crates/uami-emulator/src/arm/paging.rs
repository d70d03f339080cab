//! Paged lists: every list answer carries at most `pageSize` items and a `nextLink` to the rest,
//! as ARM's pageable operations do (`{"value": [...], "nextLink": "..."}`). The link repeats the
//! request's query with a `$skiptoken`.

use std::collections::HashMap;

use axum::http::StatusCode;
use serde_json::{Value, json};

use super::{arm_err, bad_request};
use crate::Inner;

/// Cut a list answer `body` to the page the request's `$skiptoken` names; `Err` with ARM's
/// envelope for a token this emulator did not issue.
pub(super) fn page(
    inner: &Inner,
    path: &str,
    query: &HashMap<String, String>,
    body: &mut Value,
) -> Result<(), (StatusCode, Value)> {
    let Some(items) = body.get_mut("value").and_then(Value::as_array_mut) else {
        return Ok(());
    };
    let start = match query.get("$skiptoken") {
        None => 0,
        Some(t) => t.parse::<usize>().map_err(|_| {
            bad_request(
                "InvalidSkipToken",
                &format!("The skip token '{t}' is not valid."),
            )
        })?,
    };
    let (size, base) = {
        let k = inner.knobs.lock();
        (
            k.page_size(),
            k.link_base
                .clone()
                .unwrap_or_else(|| inner.arm_base.lock().clone()),
        )
    };
    let all = std::mem::take(items);
    let end = start.saturating_add(size).min(all.len());
    let more = end < all.len();
    *items = all
        .into_iter()
        .skip(start)
        .take(end.saturating_sub(start))
        .collect();
    if more {
        let mut pairs: Vec<(&String, &String)> =
            query.iter().filter(|(k, _)| *k != "$skiptoken").collect();
        pairs.sort();
        let mut link = url::Url::parse(&base)
            .and_then(|b| b.join(path.trim_start_matches('/')))
            .map_err(|_| {
                arm_err(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "InternalServerError",
                    "bad link base",
                )
            })?;
        {
            let mut q = link.query_pairs_mut();
            for (k, v) in pairs {
                q.append_pair(k, v);
            }
            q.append_pair("$skiptoken", &end.to_string());
        }
        body["nextLink"] = json!(link.to_string());
    }
    Ok(())
}
