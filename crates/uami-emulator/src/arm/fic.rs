//! Federated identity credentials: the child resource of a user-assigned identity
//! (`.../userAssignedIdentities/{name}/federatedIdentityCredentials/{ficName}`, PUT, GET, LIST,
//! DELETE, as the MSI document describes them), with Azure's rules: at most 20 per identity, one
//! audience, a unique issuer and subject per identity, and no concurrent writes on one identity
//! (`ConcurrentFederatedIdentityCredentialsWritesForSingleManagedIdentity`). The `ficWriteMs`
//! fault makes a write take time, so that the rejection can be provoked.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use serde_json::{Value, json};

use super::identities::Ident;
use super::route::Route;
use super::{arm_err, bad_request, invalid_name};
use crate::Inner;
use crate::state::{IdentityState, State as Az};

/// At most this many federated identity credentials per identity.
pub const MAX_PER_IDENTITY: usize = 20;

/// A stored federated identity credential.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fic {
    /// Name as written.
    pub name: String,
    /// Trusted issuer URL.
    pub issuer: String,
    /// Subject (`system:serviceaccount:<ns>:<name>`).
    pub subject: String,
    /// Audiences (Azure accepts exactly one).
    pub audiences: Vec<String>,
}

impl Fic {
    /// The resource body under the identity `identity_id`.
    pub fn json(&self, identity_id: &str) -> Value {
        json!({
            "id": format!("{identity_id}/federatedIdentityCredentials/{}", self.name),
            "name": self.name,
            "type": "Microsoft.ManagedIdentity/userAssignedIdentities/federatedIdentityCredentials",
            "properties": {
                "issuer": self.issuer,
                "subject": self.subject,
                "audiences": self.audiences,
            }
        })
    }
}

/// The name rule of the MSI document: `^[a-zA-Z0-9]{1}[a-zA-Z0-9-_]{2,119}$`.
pub fn valid_name(name: &str) -> bool {
    super::valid_name(name, 120)
}

/// Azure requires an `https` issuer; the emulator also takes `http` on loopback, where the
/// sandbox's issuer lives.
fn valid_issuer(issuer: &str) -> bool {
    let Ok(u) = url::Url::parse(issuer) else {
        return false;
    };
    match u.scheme() {
        "https" => true,
        "http" => matches!(
            u.host_str(),
            Some("127.0.0.1") | Some("localhost") | Some("[::1]")
        ),
        _ => false,
    }
}

fn missing(name: &str) -> (StatusCode, Value) {
    arm_err(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("Federated identity credential '{name}' was not found."),
    )
}

/// The FICs of the identity with key `identity_key`.
pub fn of<'a>(st: &'a Az, identity_key: &str) -> Option<&'a BTreeMap<String, Fic>> {
    st.fics.get(identity_key)
}

/// `GET`.
pub fn get(st: &Az, identity: &IdentityState, key: &str, name: &str) -> (StatusCode, Value) {
    match of(st, key).and_then(|m| m.get(&name.to_lowercase())) {
        Some(f) => (StatusCode::OK, f.json(&identity.id())),
        None => missing(name),
    }
}

/// `GET` of the collection.
pub fn list(st: &Az, identity: &IdentityState, key: &str) -> (StatusCode, Value) {
    let value: Vec<Value> = of(st, key)
        .map(|m| m.values().map(|f| f.json(&identity.id())).collect())
        .unwrap_or_default();
    (StatusCode::OK, json!({"value": value}))
}

/// `PUT`: create (201) or update (200).
pub fn put(
    st: &mut Az,
    identity: &IdentityState,
    key: &str,
    name: &str,
    body: Option<&Value>,
) -> (StatusCode, Value) {
    if !valid_name(name) {
        return invalid_name(&format!(
            "Resource name '{name}' is invalid. The name must match ^[a-zA-Z0-9]{{1}}[a-zA-Z0-9-_]{{2,119}}$."
        ));
    }
    let props = body.map(|b| &b["properties"]);
    let issuer = props.and_then(|p| p["issuer"].as_str()).unwrap_or_default();
    let subject = props
        .and_then(|p| p["subject"].as_str())
        .unwrap_or_default();
    let audiences: Vec<String> = props
        .and_then(|p| p["audiences"].as_array())
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    if issuer.is_empty() || subject.is_empty() || audiences.is_empty() {
        return bad_request(
            "InvalidRequestContent",
            "The request content was invalid: properties.issuer, properties.subject and properties.audiences are required.",
        );
    }
    if !valid_issuer(issuer) {
        return bad_request(
            "BadRequest",
            &format!("The issuer '{issuer}' is invalid. The issuer must be an https URL."),
        );
    }
    if audiences.len() != 1 {
        return bad_request(
            "BadRequest",
            "Only one audience is allowed in a federated identity credential.",
        );
    }
    let lower = name.to_lowercase();
    let existing = st.fics.entry(key.to_string()).or_default();
    if existing
        .values()
        .any(|f| f.name.to_lowercase() != lower && f.issuer == issuer && f.subject == subject)
    {
        return bad_request(
            "BadRequest",
            &format!(
                "A federated identity credential with issuer '{issuer}' and subject '{subject}' already exists on this identity."
            ),
        );
    }
    let created = !existing.contains_key(&lower);
    if created && existing.len() >= MAX_PER_IDENTITY {
        return bad_request(
            "BadRequest",
            &format!(
                "A maximum of {MAX_PER_IDENTITY} federated identity credentials can be added to a user-assigned managed identity; '{}' has {}.",
                identity.name,
                existing.len()
            ),
        );
    }
    let fic = Fic {
        name: existing
            .get(&lower)
            .map(|f| f.name.clone())
            .unwrap_or_else(|| name.to_string()),
        issuer: issuer.to_string(),
        subject: subject.to_string(),
        audiences,
    };
    let body = fic.json(&identity.id());
    existing.insert(lower, fic);
    (
        if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        body,
    )
}

/// `DELETE`: 200 when it existed, 204 when not.
pub fn delete(st: &mut Az, key: &str, name: &str) -> (StatusCode, Value) {
    match st
        .fics
        .get_mut(key)
        .and_then(|m| m.remove(&name.to_lowercase()))
    {
        Some(_) => (StatusCode::OK, Value::Null),
        None => (StatusCode::NO_CONTENT, Value::Null),
    }
}

/// The refusal of a write while another write on the same identity is in progress.
pub fn concurrent_write(identity: &str) -> (StatusCode, Value) {
    arm_err(
        StatusCode::CONFLICT,
        "ConcurrentFederatedIdentityCredentialsWritesForSingleManagedIdentity",
        &format!(
            "Too many Federated Identity Credentials are written concurrently for the managed identity '{identity}'. Concurrent writes are not supported; retry after the other write completes."
        ),
    )
}

/// Marks a write on one identity in progress; the set goes when this is dropped (also when the
/// request is abandoned).
pub struct WriteGuard<'a> {
    inner: &'a Inner,
    key: String,
}

impl<'a> WriteGuard<'a> {
    /// Mark `key` as being written; `None` when another write is in progress.
    pub fn begin(inner: &'a Inner, st: &mut Az, key: &str) -> Option<Self> {
        st.fic_writes.insert(key.to_string()).then(|| Self {
            inner,
            key: key.to_string(),
        })
    }
}

impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        self.inner.state.lock().fic_writes.remove(&self.key);
    }
}

/// A request on the credentials of an identity: answered at once, or a write that holds the
/// identity's write mark.
pub(super) enum Step<'a> {
    Done((StatusCode, Value)),
    Write(WriteGuard<'a>),
}

/// Federated identity credentials of an identity: reads answer at once; a write (PUT or DELETE)
/// marks the identity busy for `ficWriteMs`, and a second write meanwhile is refused as Azure
/// refuses it.
pub(super) fn begin<'a>(inner: &'a Inner, st: &mut Az, method: &Method, r: &Route) -> Step<'a> {
    let (Route::Fic { sub, rg, name, .. } | Route::FicList { sub, rg, name }) = r else {
        return Step::Done(arm_err(StatusCode::NOT_FOUND, "NotFound", "Not found."));
    };
    let id = Ident { sub, rg, name };
    let key = id.key();
    let Some(identity) = st.identities.get(&key).cloned() else {
        return Step::Done(id.missing());
    };
    Step::Done(match (method.as_str(), r) {
        ("GET", Route::Fic { fic: f, .. }) => get(st, &identity, &key, f),
        ("GET", Route::FicList { .. }) => list(st, &identity, &key),
        ("PUT" | "DELETE", Route::Fic { .. }) => {
            return match WriteGuard::begin(inner, st, &key) {
                Some(guard) => Step::Write(guard),
                None => Step::Done(concurrent_write(&identity.name)),
            };
        }
        _ => arm_err(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "The method is not allowed.",
        ),
    })
}

/// A write: takes `ficWriteMs`, then applies.
pub(super) async fn write(
    inner: &Inner,
    guard: WriteGuard<'_>,
    method: &Method,
    r: &Route,
    body: Option<&Value>,
) -> (StatusCode, Value) {
    let Route::Fic {
        sub,
        rg,
        name,
        fic: f,
    } = r
    else {
        return arm_err(StatusCode::NOT_FOUND, "NotFound", "Not found.");
    };
    let delay = inner.faults.lock().fic_write_ms;
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let id = Ident { sub, rg, name };
    let key = id.key();
    let answer = {
        let mut st = inner.state.lock();
        match st.identities.get(&key).cloned() {
            None => id.missing(),
            Some(identity) if *method == Method::PUT => put(&mut st, &identity, &key, f, body),
            Some(_) => delete(&mut st, &key, f),
        }
    };
    drop(guard);
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_msi_pattern() {
        assert!(valid_name("abc"));
        assert!(valid_name("a-b_c9"));
        assert!(valid_name(&"a".repeat(120)));
        assert!(!valid_name(&"a".repeat(121)));
        assert!(!valid_name("ab"));
        assert!(!valid_name("-abc"));
        assert!(!valid_name("a.bc"));
    }

    #[test]
    fn issuers_are_https_or_loopback_http() {
        assert!(valid_issuer("https://oidc.prod-aks.azure.com/x/"));
        assert!(valid_issuer("http://127.0.0.1:6443"));
        assert!(!valid_issuer("http://example.com"));
        assert!(!valid_issuer("not a url"));
    }
}
