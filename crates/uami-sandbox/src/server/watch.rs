//! Watches: a newline-delimited stream of events, resumed from a resourceVersion (410 Gone when
//! it is older than the history) or started with the current objects, with bookmarks, the
//! `sendInitialEvents` end marker, timeouts, and the injected watch faults.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::read::selected;
use super::{ApiError, Target, with_type};
use crate::Shared;
use crate::deliveries::Stream;
use crate::store::Event;

/// `GET ...?watch=true` by `user`; what it sends is counted in the sandbox's watch deliveries.
pub(super) fn watch(
    shared: &Arc<Shared>,
    user: &str,
    t: &Target,
    q: &HashMap<String, String>,
) -> Response {
    let rv: Option<u64> = match q.get("resourceVersion").filter(|r| !r.is_empty()) {
        None => None,
        Some(r) => match r.parse() {
            Ok(rv) => Some(rv),
            // As the API server answers: 500, without a reason.
            Err(_) => {
                return ApiError::new(
                    500,
                    "",
                    format!(
                        "resourceVersion: Invalid value: {r:?}: strconv.ParseUint: parsing {r:?}: invalid syntax"
                    ),
                )
                .into_response();
            }
        },
    };
    let bookmarks = q.get("allowWatchBookmarks").is_some_and(|b| b == "true");
    let initial = q.get("sendInitialEvents").is_some_and(|b| b == "true");
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(1800);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1024);
    let def = t.def.clone();
    let ns = t.namespace.clone();
    let name = t.name.clone();
    let q = q.clone();
    let shared = shared.clone();
    let line = |v: Value| -> Result<Bytes, std::io::Error> {
        let mut s = v.to_string();
        s.push('\n');
        Ok(Bytes::from(s))
    };
    let key = def.key();
    let stream = shared.deliveries.lock().stream(user, &def.qualified());
    let matches = {
        let ns = ns.clone();
        let name = name.clone();
        let q = q.clone();
        move |e: &Event| -> bool {
            e.resource == key
                && ns.as_ref().is_none_or(|n| *n == e.namespace)
                && name
                    .as_ref()
                    .is_none_or(|n| e.object["metadata"]["name"].as_str() == Some(n))
                && selected(&e.object, &q)
        }
    };
    // Subscribe first, then replay: nothing falls in between.
    let (mut live, replay, start_rv, gone) = {
        let store = shared.store.lock();
        let live = store.tx.subscribe();
        // Each event with the object it is about (none for a bookmark).
        let mut replay: Vec<(Value, Option<(String, String)>)> = Vec::new();
        let mut gone = false;
        match rv {
            Some(rv) if rv != 0 && !initial => {
                if rv < store.oldest {
                    gone = true;
                } else {
                    for e in store.log.iter().filter(|e| e.rv > rv && matches(e)) {
                        replay.push((
                            json!({"type": e.kind, "object": with_type(&def, &e.object)}),
                            Some((e.namespace.clone(), object_name(&e.object).to_string())),
                        ));
                    }
                }
            }
            _ => {
                if let Some(objs) = store.objects.get(&def.key()) {
                    for ((n, nm), obj) in objs {
                        if ns.as_ref().is_none_or(|x| x == n)
                            && name.as_ref().is_none_or(|x| x == nm)
                            && selected(obj, &q)
                        {
                            replay.push((
                                json!({"type": "ADDED", "object": with_type(&def, obj)}),
                                Some((n.clone(), nm.clone())),
                            ));
                        }
                    }
                }
                if initial {
                    replay.push((json!({"type": "BOOKMARK", "object": {"apiVersion": def.api_version(), "kind": def.kind, "metadata": {"resourceVersion": store.rv.to_string(), "annotations": {"k8s.io/initial-events-end": "true"}}}}), None));
                }
            }
        }
        (live, replay, store.rv, gone)
    };
    let mut epoch = shared.disconnect.subscribe();
    let (gone, close_after) = watch_chaos(&shared, gone, rv.is_some_and(|r| r != 0) && !initial);
    tokio::spawn(async move {
        if gone {
            let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": format!("too old resource version: {} ({})", rv.unwrap_or(0), start_rv), "reason": "Expired", "code": 410});
            let _ = tx
                .send(line(json!({"type": "ERROR", "object": status})))
                .await;
            return;
        }
        for (ev, about) in replay {
            if tx.send(line(ev)).await.is_err() {
                return;
            }
            sent(
                &shared,
                stream,
                about.as_ref().map(|(n, nm)| (n.as_str(), nm.as_str())),
            );
        }
        let deadline = tokio::time::sleep(Duration::from_secs(timeout));
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        tick.tick().await;
        let mut current = start_rv;
        let chaos =
            tokio::time::sleep(close_after.unwrap_or(Duration::from_secs(u64::from(u32::MAX))));
        tokio::pin!(chaos);
        loop {
            tokio::select! {
                _ = &mut deadline => break,
                _ = &mut chaos => {
                    shared.watch_chaos.lock().closed += 1;
                    break;
                }
                _ = epoch.changed() => break,
                _ = tick.tick() => {
                    if bookmarks {
                        let b = json!({"type": "BOOKMARK", "object": {"apiVersion": def.api_version(), "kind": def.kind, "metadata": {"resourceVersion": current.to_string()}}});
                        if tx.send(line(b)).await.is_err() { return; }
                        sent(&shared, stream, None);
                    }
                }
                ev = live.recv() => {
                    match ev {
                        Ok(e) => {
                            current = current.max(e.rv);
                            if e.rv <= start_rv || !matches(&e) { continue; }
                            let v = json!({"type": e.kind, "object": with_type(&def, &e.object)});
                            if tx.send(line(v)).await.is_err() { return; }
                            sent(&shared, stream, Some((&e.namespace, object_name(&e.object))));
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                            let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": "watch fell behind", "reason": "Expired", "code": 410});
                            let _ = tx.send(line(json!({"type": "ERROR", "object": status}))).await;
                            return;
                        }
                        Err(_) => return,
                    }
                }
            }
        }
    });
    let body = tokio_stream::wrappers::ReceiverStream::new(rx);
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .header("transfer-encoding", "chunked")
        .body(Body::from_stream(body))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// The name of a stored object.
fn object_name(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap_or_default()
}

/// Count an event sent on `stream`: about the object `(namespace, name)`, or a bookmark.
fn sent(shared: &Shared, stream: Stream, about: Option<(&str, &str)>) {
    let mut d = shared.deliveries.lock();
    match about {
        Some((namespace, name)) => d.event(stream, namespace, name),
        None => d.bookmark(stream),
    }
}

/// Roll the watch faults for a new watch: whether a resume is answered 410 Gone, and when the
/// watch will be closed.
fn watch_chaos(shared: &Shared, gone: bool, resume: bool) -> (bool, Option<Duration>) {
    use rand::Rng;
    let mut c = shared.watch_chaos.lock();
    let c = &mut *c;
    let rate = c.faults.gone_rate;
    let gone_now = !gone && resume && rate > 0.0 && c.rng.random::<f64>() < rate;
    if gone_now {
        c.gone += 1;
    }
    let within = c.faults.close_within;
    let close = (!within.is_zero()).then(|| within.mul_f64(c.rng.random::<f64>().max(0.01)));
    (gone || gone_now, close)
}
