//! Discovery: `/version`, `/api`, `/apis`, each group and group-version's resource list,
//! OpenAPI v2 and v3, and the service account issuer's OIDC documents.

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{ApiError, json_response};
use crate::store::Store;
use crate::{Shared, table};

/// The answer to a discovery path (`segs` are its segments), or `None` for any other path.
pub(super) fn serve(shared: &Shared, segs: &[&str], headers: &HeaderMap) -> Option<Response> {
    if segs == ["openapi", "v2"] && !accepts_json(headers) {
        // The OpenAPI v2 document is served as JSON only: a client asking for protobuf alone
        // is told so rather than handed JSON it would parse as protobuf.
        return Some(
            ApiError::new(
                406,
                "NotAcceptable",
                "only the following media types are accepted: application/json",
            )
            .into_response(),
        );
    }
    let store = shared.store.lock();
    let r = match segs {
        ["version"] => {
            json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-uami-sandbox", "gitCommit": "", "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z", "goVersion": "", "compiler": "rustc", "platform": "linux/amd64"})
        }
        ["api"] => {
            json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": shared.base.trim_start_matches("http://").trim_end_matches('/')}]})
        }
        ["apis"] => {
            let mut groups: Vec<Value> = Vec::new();
            let mut seen: Vec<String> = Vec::new();
            for r in store.resources.iter().filter(|r| !r.group.is_empty()) {
                if seen.contains(&r.group) {
                    continue;
                }
                seen.push(r.group.clone());
                let versions: Vec<Value> = store
                    .resources
                    .iter()
                    .filter(|x| x.group == r.group)
                    .map(|x| x.version.clone())
                    .fold(Vec::new(), |mut acc: Vec<String>, v| {
                        if !acc.contains(&v) {
                            acc.push(v);
                        }
                        acc
                    })
                    .into_iter()
                    .map(|v| json!({"groupVersion": format!("{}/{v}", r.group), "version": v}))
                    .collect();
                let preferred = versions.first().cloned().unwrap_or(Value::Null);
                groups.push(
                    json!({"name": r.group, "versions": versions, "preferredVersion": preferred}),
                );
            }
            json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
        }
        ["apis", g] => {
            let versions: Vec<Value> = store
                .resources
                .iter()
                .filter(|x| x.group == *g)
                .map(
                    |x| json!({"groupVersion": format!("{g}/{}", x.version), "version": x.version}),
                )
                .collect();
            if versions.is_empty() {
                return None;
            }
            json!({"kind": "APIGroup", "apiVersion": "v1", "name": g, "versions": versions, "preferredVersion": versions[0]})
        }
        [".well-known", "openid-configuration"] => shared.issuer.openid_configuration(),
        ["openid", "v1", "jwks"] => shared.issuer.jwks(),
        ["openapi", "v2"] => table::openapi_v2(&store.resources),
        ["openapi", "v3"] => {
            let mut paths = serde_json::Map::new();
            let mut gvs: Vec<(String, String)> = store
                .resources
                .iter()
                .map(|r| (r.group.clone(), r.version.clone()))
                .collect();
            gvs.dedup();
            for (g, v) in gvs {
                let key = if g.is_empty() {
                    format!("api/{v}")
                } else {
                    format!("apis/{g}/{v}")
                };
                paths.insert(
                    key.clone(),
                    json!({"serverRelativeURL": format!("/openapi/v3/{key}?hash={}", store.rv)}),
                );
            }
            json!({"paths": paths})
        }
        ["openapi", "v3", rest @ ..] => {
            let (g, v) = match rest {
                ["api", v] => ("", *v),
                ["apis", g, v] => (*g, *v),
                _ => return None,
            };
            table::openapi_v3(&store.resources, g, v)
        }
        _ => return None,
    };
    Some(json_response(StatusCode::OK, &r))
}

/// The `APIResourceList` of `group`/`version` (`None` when it serves nothing).
pub(super) fn resource_list(store: &Store, group: &str, version: &str) -> Option<Response> {
    let resources: Vec<Value> = store
        .resources
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .flat_map(|r| r.discovery())
        .collect();
    if resources.is_empty() {
        return None;
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(json_response(
        StatusCode::OK,
        &json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
    ))
}

fn accepts_json(headers: &HeaderMap) -> bool {
    headers
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .is_none_or(|a| a.contains("json") || a.contains("*/*") || a.trim().is_empty())
}
