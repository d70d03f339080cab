//! Subscriptions (GET) and resource groups (GET, PUT).

use axum::http::StatusCode;
use serde_json::{Value, json};

use super::{arm_err, bad_request, eq};
use crate::Inner;
use crate::state::{Rg, State as Az};

/// `GET` of a subscription of the world.
pub(super) fn subscription_get(inner: &Inner, sub: &str) -> (StatusCode, Value) {
    match inner.world.subscriptions.iter().find(|s| eq(&s.id, sub)) {
        Some(s) => (
            StatusCode::OK,
            json!({"id": format!("/subscriptions/{}", s.id), "subscriptionId": s.id, "tenantId": inner.world.tenant_id, "displayName": "Emulated subscription", "state": "Enabled"}),
        ),
        None => arm_err(
            StatusCode::NOT_FOUND,
            "SubscriptionNotFound",
            &format!("The subscription '{sub}' could not be found."),
        ),
    }
}

fn rg_json(r: &Rg) -> Value {
    json!({
        "id": format!("/subscriptions/{}/resourceGroups/{}", r.subscription, r.name),
        "name": r.name,
        "type": "Microsoft.Resources/resourceGroups",
        "location": r.location,
        "tags": r.tags,
        "properties": {"provisioningState": "Succeeded"},
    })
}

fn rg_missing(rg: &str) -> (StatusCode, Value) {
    arm_err(
        StatusCode::NOT_FOUND,
        "ResourceGroupNotFound",
        &format!("Resource group '{rg}' could not be found."),
    )
}

/// The resource group `rg` of `sub`, or the answer that it does not exist.
pub(super) fn group<'a>(st: &'a Az, sub: &str, rg: &str) -> Result<&'a Rg, (StatusCode, Value)> {
    st.rgs
        .get(&(sub.to_lowercase(), rg.to_lowercase()))
        .ok_or_else(|| rg_missing(rg))
}

/// `GET` of a resource group.
pub(super) fn rg_get(st: &Az, sub: &str, rg: &str) -> (StatusCode, Value) {
    match group(st, sub, rg) {
        Ok(r) => (StatusCode::OK, rg_json(r)),
        Err(missing) => missing,
    }
}

/// `PUT` of a resource group: created (201) or its tags replaced (200); another location
/// answers 409.
pub(super) fn rg_put(
    st: &mut Az,
    sub: &str,
    rg: &str,
    body: Option<&Value>,
) -> (StatusCode, Value) {
    let Some(location) = body.and_then(|b| b["location"].as_str()) else {
        return bad_request(
            "LocationRequired",
            "The location property is required for this definition.",
        );
    };
    let key = (sub.to_lowercase(), rg.to_lowercase());
    let tags = body
        .map(|b| b["tags"].clone())
        .filter(|t| t.is_object())
        .unwrap_or(json!({}));
    let existed = st.rgs.contains_key(&key);
    let entry = st.rgs.entry(key).or_insert_with(|| Rg {
        subscription: sub.to_string(),
        name: rg.to_string(),
        location: location.to_string(),
        tags: json!({}),
    });
    if existed && !eq(&entry.location.replace(' ', ""), &location.replace(' ', "")) {
        return arm_err(
            StatusCode::CONFLICT,
            "InvalidResourceGroupLocation",
            &format!(
                "Invalid resource group location '{location}'. The Resource group already exists in location '{}'.",
                entry.location
            ),
        );
    }
    entry.tags = tags;
    (
        if existed {
            StatusCode::OK
        } else {
            StatusCode::CREATED
        },
        rg_json(entry),
    )
}
