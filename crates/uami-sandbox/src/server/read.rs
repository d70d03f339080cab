//! Reads: `get` of one object (as JSON or as a Table for kubectl) and `list` with label and
//! field selectors, `limit` and `continue` pages (continue tokens in the API server's form,
//! `remainingItemCount` when there is no selector).

use std::collections::HashMap;

use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};

use super::{ApiError, Request, get_obj, json_response, with_type};
use crate::{events, table};

/// `GET` of one object.
pub(super) fn get(req: &Request) -> Result<Response, ApiError> {
    let t = req.target;
    let store = req.shared.store.lock();
    let obj = get_obj(&store, &t.def, t.ns(), t.name())?;
    if wants_table(req.headers) {
        return Ok(json_response(
            StatusCode::OK,
            &table::table(&t.def, &[obj.as_ref().clone()], &store.rv.to_string()),
        ));
    }
    Ok(json_response(StatusCode::OK, &with_type(&t.def, &obj)))
}

/// `GET` of a collection, one page at a time.
pub(super) fn list(req: &Request) -> Result<Response, ApiError> {
    let (t, q) = (req.target, req.query);
    let mut store = req.shared.store.lock();
    let limit: usize = q
        .get("limit")
        .and_then(|l| l.parse().ok())
        .filter(|l| *l > 0)
        .unwrap_or(usize::MAX);
    let after: Option<(String, String, u64)> = match q.get("continue").filter(|c| !c.is_empty()) {
        None => None,
        Some(c) => {
            if q.get("resourceVersion").is_some_and(|r| !r.is_empty()) {
                return Err(ApiError::bad_request(
                    "specifying resource version is not allowed when using continue",
                ));
            }
            let (rv, key) = decode_continue(c).map_err(|e| {
                ApiError::bad_request(format!(
                    "invalid continue token: continue key is not valid: {e}"
                ))
            })?;
            if rv < store.oldest {
                return Err(expired());
            }
            // The key after which the page starts: `name`, or `namespace/name` in a list of
            // every namespace.
            let (n, name) = match (&t.namespace, t.def.namespaced) {
                (None, true) => key.split_once('/').unwrap_or(("", key.as_str())),
                (Some(ns), _) => (ns.as_str(), key.as_str()),
                (None, false) => ("", key.as_str()),
            };
            Some((n.to_string(), name.to_string(), rv))
        }
    };
    // Every page of one list reports the resourceVersion of its first page and shows the
    // collection as it was then, as kube-apiserver serves later pages from its storage's snapshot
    // at that revision: a watch started from that resourceVersion then replays exactly the
    // changes made since, each newer than anything the list showed.
    let list_rv = after.as_ref().map_or(store.rv, |(_, _, rv)| *rv);
    let paged = store
        .objects
        .get(&t.def.key())
        .is_some_and(|o| o.len() > limit);
    let snapshot = match &after {
        None if !paged => None,
        None => Some(store.snapshot(&t.def, list_rv)),
        Some(_) => match store.snapshot_at(&t.def, list_rv) {
            Some(objs) => Some(objs),
            None => return Err(expired()),
        },
    };
    let objs = match &snapshot {
        Some(s) => Some(s.as_ref()),
        None => store.objects.get(&t.def.key()),
    };
    let after = after.map(|(n, name, _)| (n, name));
    let ns = t.namespace.clone();
    let mut items: Vec<Value> = Vec::new();
    let mut next: Option<String> = None;
    let mut remaining = 0usize;
    if let Some(objs) = objs {
        let iter = objs
            .iter()
            .filter(|((n, _), _)| ns.as_ref().is_none_or(|x| x == n))
            .filter(|(k, _)| after.as_ref().is_none_or(|a| *k > a));
        for ((n, name), obj) in iter {
            if !selected(obj, q) {
                continue;
            }
            if items.len() == limit {
                break;
            }
            items.push(with_type(&t.def, obj));
            next = Some(format!("{n}/{name}"));
        }
        // A continue token only when more items follow.
        if items.len() == limit {
            let last = next.clone().unwrap_or_default();
            let (ln, lname) = last.split_once('/').unwrap_or(("", ""));
            remaining = objs
                .iter()
                .filter(|((n, _), _)| ns.as_ref().is_none_or(|x| x == n))
                .filter(|((n, name), obj)| {
                    (n.as_str(), name.as_str()) > (ln, lname) && selected(obj, q)
                })
                .count();
            let key = match (&t.namespace, t.def.namespaced) {
                (None, true) => last.clone(),
                _ => lname.to_string(),
            };
            next = (remaining > 0).then(|| encode_continue(list_rv, &key));
        } else {
            next = None;
        }
    }
    let rv = list_rv.to_string();
    if wants_table(req.headers) {
        let raw: Vec<Value> = items;
        return Ok(json_response(
            StatusCode::OK,
            &table::table(&t.def, &raw, &rv),
        ));
    }
    let mut meta = json!({"resourceVersion": rv});
    if let Some(c) = next {
        meta["continue"] = json!(c);
        // How many items the later pages hold, known (as to the API server) only without
        // selectors.
        let selector = |k: &str| q.get(k).is_some_and(|s| !s.is_empty());
        if !selector("labelSelector") && !selector("fieldSelector") {
            meta["remainingItemCount"] = json!(remaining);
        }
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({"apiVersion": t.def.api_version(), "kind": format!("{}List", t.def.kind), "metadata": meta, "items": items}),
    ))
}

/// The continue token of a list at `rv` whose next page starts after `key`, in the API
/// server's form: unpadded base64url of `{"v":"meta.k8s.io/v1","rv":RV,"start":"KEY\0"}`.
fn encode_continue(rv: u64, key: &str) -> String {
    let token = json!({"v": "meta.k8s.io/v1", "rv": rv, "start": format!("{key}\u{0}")});
    base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        token.to_string(),
    )
}

/// The resourceVersion and start key of a continue token, or why it is not one.
fn decode_continue(token: &str) -> Result<(u64, String), String> {
    let bytes = base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, token)
        .map_err(|e| e.to_string())?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
    match v["v"].as_str() {
        Some("meta.k8s.io/v1") => {}
        other => {
            return Err(format!(
                "server does not recognize this encoded version {}",
                other.unwrap_or_default()
            ));
        }
    }
    let start = v["start"].as_str().unwrap_or_default();
    if start.is_empty() {
        return Err("encoded start key empty".into());
    }
    let rv = v["rv"].as_u64().unwrap_or(0);
    Ok((rv, start.trim_end_matches('\u{0}').to_string()))
}

/// A continue token whose snapshot is gone.
fn expired() -> ApiError {
    ApiError::new(
        410,
        "Expired",
        "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
    )
}

/// The values of a set requirement: `(a, b)`.
fn values(set: &str) -> Vec<&str> {
    set.trim()
        .trim_start_matches('(')
        .trim_end_matches(')')
        .split(',')
        .map(str::trim)
        .collect()
}

fn matches_labels(obj: &Value, selector: &str) -> bool {
    let labels = &obj["metadata"]["labels"];
    let get = |k: &str| labels.get(k).and_then(|v| v.as_str());
    let mut reqs: Vec<String> = Vec::new();
    let mut depth = 0;
    let mut cur = String::new();
    for c in selector.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                reqs.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    reqs.push(cur);
    reqs.iter()
        .map(|r| r.trim())
        .filter(|r| !r.is_empty())
        .all(|r| {
            if let Some((k, v)) = r.split_once("!=") {
                get(k.trim()) != Some(v.trim())
            } else if let Some((k, v)) = r.split_once("==").or_else(|| r.split_once('=')) {
                get(k.trim()) == Some(v.trim())
            } else if let Some((k, set)) = r.split_once(" notin ") {
                get(k.trim()).is_none_or(|v| !values(set).contains(&v))
            } else if let Some((k, set)) = r.split_once(" in ") {
                get(k.trim()).is_some_and(|v| values(set).contains(&v))
            } else if let Some(k) = r.strip_prefix('!') {
                get(k.trim()).is_none()
            } else {
                get(r).is_some()
            }
        })
}

fn matches_fields(obj: &Value, selector: &str) -> bool {
    selector
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .all(|r| {
            let (k, v, neg) = match r.split_once("!=") {
                Some((k, v)) => (k, v, true),
                None => match r.split_once("==").or_else(|| r.split_once('=')) {
                    Some((k, v)) => (k, v, false),
                    None => return true,
                },
            };
            let actual = match k.trim() {
                "metadata.name" => obj["metadata"]["name"].as_str().map(str::to_string),
                "metadata.namespace" => obj["metadata"]["namespace"].as_str().map(str::to_string),
                "status.phase" => obj["status"]["phase"].as_str().map(str::to_string),
                k if obj["kind"] == "Event" => events::field(obj, k),
                _ => None,
            };
            (actual.as_deref() == Some(v.trim())) != neg
        })
}

/// Whether `obj` matches the request's `labelSelector` and `fieldSelector`.
pub(super) fn selected(obj: &Value, q: &HashMap<String, String>) -> bool {
    q.get("labelSelector")
        .is_none_or(|s| matches_labels(obj, s))
        && q.get("fieldSelector")
            .is_none_or(|s| matches_fields(obj, s))
}

fn wants_table(headers: &HeaderMap) -> bool {
    headers
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("as=Table"))
}
