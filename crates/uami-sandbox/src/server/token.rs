//! TokenRequest: `POST .../serviceaccounts/{name}/token`, answered with a token bound to the object its `boundObjectRef` names.

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::Value;

use super::{ApiError, Request, get_obj, json_response, parse_body};
use crate::store::Store;
use crate::{serviceaccount, validate};

/// `POST .../serviceaccounts/{name}/token`: a TokenRequest answered with a signed token, bound
/// to the object its `boundObjectRef` names.
pub(super) fn token_request(req: &Request) -> Result<Response, ApiError> {
    let t = req.target;
    let request = parse_body(req.body, req.headers)?;
    let refused = |r: serviceaccount::Refusal| match r {
        serviceaccount::Refusal::Invalid(field, message) => ApiError::invalid_kind(
            "TokenRequest",
            "authentication.k8s.io",
            request["metadata"]["name"].as_str().unwrap_or_default(),
            vec![validate::Cause {
                reason: "FieldValueInvalid".into(),
                field: field.into(),
                message,
            }],
        ),
        serviceaccount::Refusal::Other(code, reason, message) => {
            ApiError::new(code, reason, message)
        }
    };
    serviceaccount::check(&req.shared.issuer, &request).map_err(refused)?;
    let (sa, bound) = {
        let store = req.shared.store.lock();
        let sa = get_obj(&store, &t.def, t.ns(), t.name())?;
        let bound = bound_object(&store, &sa, &request["spec"]["boundObjectRef"])?;
        (sa, bound)
    };
    serviceaccount::token_request(&req.shared.issuer, &sa, &request, bound.as_ref())
        .map(|out| json_response(StatusCode::CREATED, &out))
        .map_err(refused)
}

/// The object a TokenRequest's `boundObjectRef` names (a Pod, with its Node, a Secret, or a
/// Node), checked as the API server checks it: it exists, has the uid the reference names, and
/// a pod runs as the service account `sa`.
fn bound_object(
    store: &Store,
    sa: &Value,
    reference: &Value,
) -> Result<Option<serviceaccount::Bound>, ApiError> {
    let Some(kind) = reference["kind"].as_str() else {
        return Ok(None);
    };
    let (plural, claim) = match kind {
        "Pod" => ("pods", "pod"),
        "Secret" => ("secrets", "secret"),
        "Node" => ("nodes", "node"),
        other => {
            return Err(ApiError::bad_request(format!(
                "cannot bind token for serviceaccount {:?} to object of kind {other:?}",
                sa["metadata"]["name"].as_str().unwrap_or_default()
            )));
        }
    };
    let resource = |plural: &str| {
        store
            .resources
            .iter()
            .find(|r| r.group.is_empty() && r.plural == plural)
            .cloned()
            .ok_or_else(ApiError::no_resource)
    };
    let def = resource(plural)?;
    let ns = if def.namespaced {
        sa["metadata"]["namespace"].as_str().unwrap_or_default()
    } else {
        ""
    };
    let name = reference["name"].as_str().unwrap_or_default();
    let obj = get_obj(store, &def, ns, name)?;
    let uid = obj["metadata"]["uid"].as_str().unwrap_or_default();
    if let Some(want) = reference["uid"].as_str().filter(|u| !u.is_empty())
        && want != uid
    {
        return Err(ApiError::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {kind} {name:?}: the UID in the bound object reference ({want}) does not match the UID in record. The object might have been deleted and then recreated"
            ),
        ));
    }
    let mut bound = serviceaccount::Bound {
        claim,
        name: name.to_string(),
        uid: uid.to_string(),
        node: None,
    };
    if kind == "Pod" {
        let sa_name = sa["metadata"]["name"].as_str().unwrap_or_default();
        if obj["spec"]["serviceAccountName"].as_str() != Some(sa_name) {
            return Err(ApiError::bad_request(format!(
                "cannot bind token for serviceaccount {sa_name:?} to pod running with different serviceaccount name."
            )));
        }
        if let Some(node) = obj["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) {
            let nodes = resource("nodes")?;
            let node_uid = store
                .get(&nodes, "", node)
                .and_then(|n| n["metadata"]["uid"].as_str().map(str::to_string))
                .unwrap_or_default();
            bound.node = Some((node.to_string(), node_uid));
        }
    }
    Ok(Some(bound))
}
