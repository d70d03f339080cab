//! User-assigned identities: GET, PUT, PATCH, DELETE, and lists by subscription or resource
//! group.

use std::time::Instant;

use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};

use super::authorization::authorized;
use super::groups::rg_missing;
use super::route::identity_scope;
use super::{arm_err, bad_request, eq, invalid_name, valid_name};
use crate::emulator::Inner;
use crate::emulator::aad::Claims;
use crate::emulator::state::{IdentityState, State as Az};

pub(super) fn identity_key(sub: &str, rg: &str, name: &str) -> String {
    format!("/subscriptions/{sub}/resourcegroups/{rg}/providers/microsoft.managedidentity/userassignedidentities/{name}").to_lowercase()
}

pub(super) fn identity_missing(rg: &str, name: &str) -> (StatusCode, Value) {
    arm_err(
        StatusCode::NOT_FOUND,
        "ResourceNotFound",
        &format!(
            "The Resource 'Microsoft.ManagedIdentity/userAssignedIdentities/{name}' under resource group '{rg}' was not found. For more details please go to https://aka.ms/ARMResourceNotFoundFix"
        ),
    )
}

pub(super) fn identity_get(st: &Az, sub: &str, rg: &str, name: &str) -> (StatusCode, Value) {
    if !st
        .rgs
        .contains_key(&(sub.to_lowercase(), rg.to_lowercase()))
    {
        return rg_missing(rg);
    }
    match st.identities.get(&identity_key(sub, rg, name)) {
        Some(i) => (StatusCode::OK, i.json()),
        None => identity_missing(rg, name),
    }
}

pub(super) fn identity_put(
    inner: &Inner,
    st: &mut Az,
    sub: &str,
    rg: &str,
    name: &str,
    headers: &HeaderMap,
    body: Option<&Value>,
) -> (StatusCode, Value) {
    if !valid_name(name, 128) {
        return invalid_name(&format!(
            "Resource name {name} is invalid. The name can be between 3 and 128 characters long, must start with a letter or number, and can contain only letters, numbers, hyphens and underscores."
        ));
    }
    let Some(rg_state) = st.rgs.get(&(sub.to_lowercase(), rg.to_lowercase())) else {
        return rg_missing(rg);
    };
    let rg_name = rg_state.name.clone();
    let Some(body) = body.filter(|b| b.is_object()) else {
        return bad_request(
            "InvalidRequestContent",
            "The request content was invalid and could not be deserialized.",
        );
    };
    let Some(location) = body["location"].as_str() else {
        return bad_request(
            "LocationRequired",
            "The location property is required for this definition.",
        );
    };
    let tags = if body["tags"].is_object() {
        body["tags"].clone()
    } else {
        json!({})
    };
    let key = identity_key(sub, rg, name);
    // As ARM: `If-None-Match: *` creates only; an existing resource answers 412.
    let create_only = headers
        .get("if-none-match")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim() == "*");
    if create_only && st.identities.contains_key(&key) {
        return arm_err(
            StatusCode::PRECONDITION_FAILED,
            "PreconditionFailed",
            "The condition specified using HTTP conditional header(s) is not met.",
        );
    }
    if let Some(existing) = st.identities.get_mut(&key) {
        if !eq(
            &existing.location.replace(' ', ""),
            &location.replace(' ', ""),
        ) {
            return bad_request(
                "InvalidResourceLocation",
                &format!(
                    "The resource '{name}' already exists in location '{}' in resource group '{rg}'. A resource with the same name cannot be created in location '{location}'. Please select a new resource name.",
                    existing.location
                ),
            );
        }
        existing.tags = tags;
        return (StatusCode::OK, existing.json());
    }
    let identity = IdentityState {
        subscription: sub.to_string(),
        resource_group: rg_name,
        name: name.to_string(),
        location: location.to_string(),
        tags,
        client_id: uuid::Uuid::new_v4().to_string(),
        principal_id: uuid::Uuid::new_v4().to_string(),
        tenant_id: inner.world.tenant_id.clone(),
        created: Instant::now(),
    };
    let body = identity.json();
    st.identities.insert(key, identity);
    (StatusCode::CREATED, body)
}

pub(super) fn identity_patch(
    st: &mut Az,
    sub: &str,
    rg: &str,
    name: &str,
    body: Option<&Value>,
) -> (StatusCode, Value) {
    let Some(existing) = st.identities.get_mut(&identity_key(sub, rg, name)) else {
        return identity_missing(rg, name);
    };
    if let Some(tags) = body.map(|b| &b["tags"]).filter(|t| t.is_object()) {
        existing.tags = tags.clone();
    }
    (StatusCode::OK, existing.json())
}

pub(super) fn identity_delete(st: &mut Az, sub: &str, rg: &str, name: &str) -> (StatusCode, Value) {
    // Its federated identity credentials go with it.
    st.fics.remove(&identity_key(sub, rg, name));
    // As in Azure, VMs keep listing a deleted identity until they are updated.
    match st.identities.remove(&identity_key(sub, rg, name)) {
        Some(_) => (StatusCode::OK, Value::Null),
        None => (StatusCode::NO_CONTENT, Value::Null),
    }
}

pub(super) fn identity_list(
    st: &Az,
    claims: &Claims,
    sub: &str,
    rg: Option<&str>,
    now: Instant,
) -> (StatusCode, Value) {
    if let Some(rg) = rg
        && !st
            .rgs
            .contains_key(&(sub.to_lowercase(), rg.to_lowercase()))
    {
        return rg_missing(rg);
    }
    let value: Vec<Value> = st
        .identities
        .values()
        .filter(|i| eq(&i.subscription, sub) && rg.is_none_or(|rg| eq(&i.resource_group, rg)))
        .filter(|i| {
            authorized(
                st,
                &claims.oid,
                "Microsoft.ManagedIdentity/userAssignedIdentities/read",
                &identity_scope(&i.subscription, &i.resource_group, &i.name),
                now,
            )
        })
        .map(IdentityState::json)
        .collect();
    (StatusCode::OK, json!({"value": value}))
}
