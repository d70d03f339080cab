//! Who a request is and what it may do. Bearer tokens map to users; service-account tokens
//! (minted by [`super::Sandbox::service_account_token`]) are authorized with RBAC as the API
//! server does: ClusterRoleBindings grant their ClusterRole's rules everywhere, RoleBindings
//! grant their Role's (or ClusterRole's) rules in their namespace, rules match verbs, API
//! groups, resources (`resource/subresource`, `*`, `*/subresource`) and resource names, and a
//! denial is a 403 `Forbidden` Status naming the user, verb, resource and namespace. Members of
//! `system:masters` (the sandbox's own users and kubectl on loopback without a token) are
//! administrators.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::server::ApiError;
use super::store::Store;

/// The group whose members may do anything.
pub const MASTERS: &str = "system:masters";
const RBAC: &str = "rbac.authorization.k8s.io";

/// An authenticated user, as admission's `request.userInfo` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserInfo {
    /// User name (`system:serviceaccount:NS:NAME` for a service account).
    pub username: String,
    /// Unique id.
    pub uid: String,
    /// Groups.
    pub groups: Vec<String>,
    /// Extra attributes (`authentication.kubernetes.io/node-name`, ...).
    pub extra: BTreeMap<String, Vec<String>>,
}

/// The extra attribute a token bound to a pod carries: the name of the pod's node.
pub const NODE_NAME: &str = "authentication.kubernetes.io/node-name";

impl UserInfo {
    /// A cluster administrator.
    pub fn admin(name: &str) -> Self {
        Self {
            username: name.to_string(),
            uid: uuid::Uuid::new_v4().to_string(),
            groups: vec![MASTERS.into(), "system:authenticated".into()],
            extra: BTreeMap::new(),
        }
    }

    /// A service account, optionally bound to a pod on `node`.
    pub fn service_account(namespace: &str, name: &str, node: Option<&str>) -> Self {
        let mut extra = BTreeMap::new();
        if let Some(n) = node {
            extra.insert(NODE_NAME.to_string(), vec![n.to_string()]);
        }
        Self {
            username: format!("system:serviceaccount:{namespace}:{name}"),
            uid: uuid::Uuid::new_v4().to_string(),
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{namespace}"),
                "system:authenticated".into(),
            ],
            extra,
        }
    }

    /// Whether RBAC is bypassed.
    pub fn is_admin(&self) -> bool {
        self.groups.iter().any(|g| g == MASTERS)
    }

    /// `request.userInfo` as admission sees it: like the API server's UserInfo, a field that is
    /// empty (uid, groups, extra) is absent, so `has(request.userInfo.extra)` is false and
    /// `request.userInfo.extra[...]` fails for a user without extra fields.
    pub fn to_json(&self) -> Value {
        let mut v = json!({"username": self.username});
        if !self.uid.is_empty() {
            v["uid"] = json!(self.uid);
        }
        if !self.groups.is_empty() {
            v["groups"] = json!(self.groups);
        }
        if !self.extra.is_empty() {
            v["extra"] = json!(self.extra);
        }
        v
    }
}

/// What a request asks to do.
#[derive(Clone, Debug)]
pub struct Attributes<'a> {
    /// get, list, watch, create, update, patch, delete, deletecollection.
    pub verb: &'a str,
    /// API group.
    pub group: &'a str,
    /// Resource (plural).
    pub resource: &'a str,
    /// Subresource or "".
    pub subresource: &'a str,
    /// Namespace or "" (cluster scope).
    pub namespace: &'a str,
    /// Name or "".
    pub name: &'a str,
}

fn strings(v: &Value) -> impl Iterator<Item = &str> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str())
}

fn has(v: &Value, want: &str) -> bool {
    strings(v).any(|s| s == want || s == "*")
}

fn rule_allows(rule: &Value, a: &Attributes) -> bool {
    if !has(&rule["verbs"], a.verb) || !has(&rule["apiGroups"], a.group) {
        return false;
    }
    let combined = if a.subresource.is_empty() {
        a.resource.to_string()
    } else {
        format!("{}/{}", a.resource, a.subresource)
    };
    let resource_ok = strings(&rule["resources"]).any(|r| {
        r == "*"
            || r == combined
            || (!a.subresource.is_empty() && r.strip_prefix("*/") == Some(a.subresource))
    });
    if !resource_ok {
        return false;
    }
    let names: Vec<&str> = strings(&rule["resourceNames"]).collect();
    names.is_empty() || (!a.name.is_empty() && names.contains(&a.name))
}

fn subject_matches(subject: &Value, user: &UserInfo) -> bool {
    let name = subject["name"].as_str().unwrap_or_default();
    match subject["kind"].as_str() {
        Some("User") => name == user.username,
        Some("Group") => user.groups.iter().any(|g| g == name),
        Some("ServiceAccount") => {
            let ns = subject["namespace"].as_str().unwrap_or_default();
            user.username == format!("system:serviceaccount:{ns}:{name}")
        }
        _ => false,
    }
}

fn bound(binding: &Value, user: &UserInfo) -> bool {
    binding["subjects"]
        .as_array()
        .is_some_and(|s| s.iter().any(|s| subject_matches(s, user)))
}

fn role_rules<'s>(store: &'s Store, role_ref: &Value, namespace: &str) -> Vec<&'s Value> {
    let name = role_ref["name"].as_str().unwrap_or_default().to_string();
    let (plural, ns) = match role_ref["kind"].as_str() {
        Some("ClusterRole") => ("clusterroles", String::new()),
        Some("Role") => ("roles", namespace.to_string()),
        _ => return Vec::new(),
    };
    store
        .objects
        .get(&(RBAC.to_string(), plural.to_string()))
        .and_then(|o| o.get(&(ns, name)))
        .and_then(|r| r["rules"].as_array())
        .map(|r| r.iter().collect())
        .unwrap_or_default()
}

/// Whether RBAC allows the request.
pub fn allowed(store: &Store, user: &UserInfo, a: &Attributes) -> bool {
    if user.is_admin() {
        return true;
    }
    // What the default ClusterRole system:basic-user grants every authenticated user.
    if a.verb == "create"
        && matches!(
            (a.group, a.resource),
            ("authorization.k8s.io", "selfsubjectaccessreviews")
                | ("authentication.k8s.io", "selfsubjectreviews")
        )
    {
        return true;
    }
    let objects = |plural: &str| {
        store
            .objects
            .get(&(RBAC.to_string(), plural.to_string()))
            .into_iter()
            .flat_map(|o| o.iter())
    };
    let cluster = objects("clusterrolebindings")
        .filter(|(_, b)| bound(b, user))
        .any(|(_, b)| {
            b["roleRef"]["kind"] == "ClusterRole"
                && role_rules(store, &b["roleRef"], "")
                    .into_iter()
                    .any(|r| rule_allows(r, a))
        });
    if cluster {
        return true;
    }
    if a.namespace.is_empty() {
        return false;
    }
    objects("rolebindings")
        .filter(|((ns, _), b)| ns == a.namespace && bound(b, user))
        .any(|(_, b)| {
            role_rules(store, &b["roleRef"], a.namespace)
                .into_iter()
                .any(|r| rule_allows(r, a))
        })
}

/// The answer to a SelfSubjectAccessReview (`kubectl auth can-i`): the review with its
/// `status`. Non-resource URLs (discovery) are open to every user.
pub fn review(store: &Store, user: &UserInfo, mut review: Value) -> Value {
    let ra = review["spec"]["resourceAttributes"].clone();
    let s = |k: &str| ra[k].as_str().unwrap_or_default().to_string();
    let (verb, group, resource, subresource, namespace, name) = (
        s("verb"),
        s("group"),
        s("resource"),
        s("subresource"),
        s("namespace"),
        s("name"),
    );
    let allowed = !ra.is_object()
        || allowed(
            store,
            user,
            &Attributes {
                verb: &verb,
                group: &group,
                resource: &resource,
                subresource: &subresource,
                namespace: &namespace,
                name: &name,
            },
        );
    review["status"] = if allowed {
        json!({"allowed": true, "reason": if user.is_admin() { "member of system:masters" } else { "allowed by RBAC" }})
    } else {
        json!({"allowed": false})
    };
    review
}

/// `Ok` when RBAC allows the request, else the API server's 403.
pub fn authorize(store: &Store, user: &UserInfo, a: &Attributes) -> Result<(), ApiError> {
    if allowed(store, user, a) {
        return Ok(());
    }
    let combined = if a.subresource.is_empty() {
        a.resource.to_string()
    } else {
        format!("{}/{}", a.resource, a.subresource)
    };
    let qualified = if a.group.is_empty() {
        a.resource.to_string()
    } else {
        format!("{}.{}", a.resource, a.group)
    };
    let subject = if a.name.is_empty() {
        qualified
    } else {
        format!("{qualified} \"{}\"", a.name)
    };
    let scope = if a.namespace.is_empty() {
        "at the cluster scope".to_string()
    } else {
        format!("in the namespace \"{}\"", a.namespace)
    };
    let mut e = ApiError::new(
        403,
        "Forbidden",
        format!(
            "{subject} is forbidden: User \"{}\" cannot {} resource \"{combined}\" in API group \"{}\" {scope}",
            user.username, a.verb, a.group
        ),
    );
    e.details = Some(json!({"name": a.name, "group": a.group, "kind": a.resource}));
    Err(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::create_object;

    fn store_with(objects: Vec<Value>) -> Store {
        let mut s = Store::new(100);
        for o in objects {
            create_object(&mut s, o).unwrap();
        }
        s
    }

    fn attrs<'a>(
        verb: &'a str,
        resource: &'a str,
        sub: &'a str,
        ns: &'a str,
        name: &'a str,
    ) -> Attributes<'a> {
        Attributes {
            verb,
            group: "uami.dev",
            resource,
            subresource: sub,
            namespace: ns,
            name,
        }
    }

    #[test]
    fn rbac_rules_bindings_and_subjects() {
        let s = store_with(vec![
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a"}}),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "status"},
                   "rules": [{"apiGroups": ["uami.dev"], "resources": ["rolegrants/status"], "verbs": ["patch"]},
                             {"apiGroups": ["uami.dev"], "resources": ["rolegrants"], "verbs": ["get"], "resourceNames": ["one"]}]}),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "b", "namespace": "a"},
                   "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "status"},
                   "subjects": [{"kind": "ServiceAccount", "name": "agent", "namespace": "sys"}]}),
        ]);
        let sa = UserInfo::service_account("sys", "agent", None);
        let can =
            |verb, resource, sub, ns, name| allowed(&s, &sa, &attrs(verb, resource, sub, ns, name));
        assert!(can("patch", "rolegrants", "status", "a", "x"));
        // Only in the binding's namespace, only the subresource, only the named object.
        assert!(!can("patch", "rolegrants", "status", "b", "x"));
        assert!(!can("patch", "rolegrants", "", "a", "x"));
        assert!(can("get", "rolegrants", "", "a", "one"));
        assert!(!can("get", "rolegrants", "", "a", "two"));
        assert!(!can("list", "rolegrants", "", "a", ""));
        let other = UserInfo::service_account("sys", "other", None);
        let denied = authorize(
            &s,
            &other,
            &attrs("patch", "rolegrants", "status", "a", "x"),
        )
        .unwrap_err();
        assert_eq!(denied.code, 403);
        assert_eq!(
            denied.message,
            "rolegrants.uami.dev \"x\" is forbidden: User \"system:serviceaccount:sys:other\" cannot patch resource \"rolegrants/status\" in API group \"uami.dev\" in the namespace \"a\""
        );
        assert!(allowed(
            &s,
            &UserInfo::admin("admin"),
            &attrs("delete", "rolegrants", "", "a", "x")
        ));
    }
}
