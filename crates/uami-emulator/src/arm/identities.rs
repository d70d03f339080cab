//! User-assigned identities: GET, PUT, PATCH, DELETE, and lists by subscription or resource
//! group.

use std::time::Instant;

use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};

use super::authorization::authorized;
use super::groups::group;
use super::route::identity_scope;
use super::{arm_err, bad_request, eq, invalid_name, valid_name};
use crate::Inner;
use crate::state::{IdentityState, State as Az};
use crate::tokens::Claims;

/// A user-assigned identity as its path names it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Ident<'a> {
    pub(super) sub: &'a str,
    pub(super) rg: &'a str,
    pub(super) name: &'a str,
}

impl Ident<'_> {
    /// Its key in the state: the id, lower-case.
    pub(super) fn key(&self) -> String {
        let Ident { sub, rg, name } = self;
        format!("/subscriptions/{sub}/resourcegroups/{rg}/providers/microsoft.managedidentity/userassignedidentities/{name}").to_lowercase()
    }

    /// The answer when it does not exist.
    pub(super) fn missing(&self) -> (StatusCode, Value) {
        let Ident { rg, name, .. } = self;
        arm_err(
            StatusCode::NOT_FOUND,
            "ResourceNotFound",
            &format!(
                "The Resource 'Microsoft.ManagedIdentity/userAssignedIdentities/{name}' under resource group '{rg}' was not found. For more details please go to https://aka.ms/ARMResourceNotFoundFix"
            ),
        )
    }
}

/// `GET`.
pub(super) fn get(st: &Az, id: Ident<'_>) -> (StatusCode, Value) {
    if let Err(missing) = group(st, id.sub, id.rg) {
        return missing;
    }
    match st.identities.get(&id.key()) {
        Some(i) => (StatusCode::OK, i.json()),
        None => id.missing(),
    }
}

/// `PUT`: create (201) or update the tags (200); `If-None-Match: *` creates only.
pub(super) fn put(
    inner: &Inner,
    st: &mut Az,
    id: Ident<'_>,
    headers: &HeaderMap,
    body: Option<&Value>,
) -> (StatusCode, Value) {
    let Ident { sub, rg, name } = id;
    if !valid_name(name, 128) {
        return invalid_name(&format!(
            "Resource name {name} is invalid. The name can be between 3 and 128 characters long, must start with a letter or number, and can contain only letters, numbers, hyphens and underscores."
        ));
    }
    let rg_name = match group(st, sub, rg) {
        Ok(r) => r.name.clone(),
        Err(missing) => return missing,
    };
    let Some(body) = body.filter(|b| b.is_object()) else {
        return super::invalid_content();
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
    let key = id.key();
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

/// `PATCH`: the tags.
pub(super) fn patch(st: &mut Az, id: Ident<'_>, body: Option<&Value>) -> (StatusCode, Value) {
    let Some(existing) = st.identities.get_mut(&id.key()) else {
        return id.missing();
    };
    if let Some(tags) = body.map(|b| &b["tags"]).filter(|t| t.is_object()) {
        existing.tags = tags.clone();
    }
    (StatusCode::OK, existing.json())
}

/// `DELETE`: 200 when it existed, 204 when not.
pub(super) fn delete(st: &mut Az, id: Ident<'_>) -> (StatusCode, Value) {
    // Its federated identity credentials go with it.
    st.fics.remove(&id.key());
    // As in Azure, VMs keep listing a deleted identity until they are updated, with the
    // principal and client ids it had when it was assigned: one created again under the same
    // name is a new principal, which a VM has only once the identity is removed from it and
    // assigned again (see `Compute::assigned_as`). Role assignments stay too, naming a principal
    // that no longer exists ("Role assignments with identity not found", Understand Azure role
    // assignments, learn.microsoft.com/azure/role-based-access-control/role-assignments).
    match st.identities.remove(&id.key()) {
        Some(_) => (StatusCode::OK, Value::Null),
        None => (StatusCode::NO_CONTENT, Value::Null),
    }
}

/// The identities of a subscription or resource group the caller may read.
pub(super) fn list(
    st: &Az,
    claims: &Claims,
    sub: &str,
    rg: Option<&str>,
    now: Instant,
) -> (StatusCode, Value) {
    if let Some(Err(missing)) = rg.map(|rg| group(st, sub, rg)) {
        return missing;
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
