//! The Kubernetes API the stack runs against: the embedded sandbox, or an external API server
//! (a real kube-apiserver reached through a kubeconfig). Everything the stack does to a cluster
//! (install objects, clients for users and service accounts, the OIDC issuer) goes through
//! [`Cluster`], so the controller and the agents run the same way on both.

use std::time::Duration;

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use serde_json::{Value, json};

use super::stack::StackError;
use uami_sandbox::Sandbox;

/// The field manager of what the stack installs.
const MANAGER: &str = "uami-demo";

/// A Kubernetes API server the stack does not own: its administrator's client configuration and
/// the issuer of its service account tokens.
#[derive(Clone)]
pub struct External {
    config: kube::Config,
    issuer: String,
}

impl std::fmt::Debug for External {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("External")
            .field("server", &self.config.cluster_url.to_string())
            .field("issuer", &self.issuer)
            .finish()
    }
}

impl External {
    /// An API server reached with `config` (a cluster administrator: `system:masters`, or a user
    /// allowed to impersonate), whose service account tokens carry `issuer`.
    pub fn new(config: kube::Config, issuer: impl Into<String>) -> Self {
        Self {
            config,
            issuer: issuer.into(),
        }
    }

    /// The administrator's client configuration.
    pub fn config(&self) -> &kube::Config {
        &self.config
    }

    fn client_of(config: kube::Config) -> Result<kube::Client, StackError> {
        kube::Client::try_from(config).map_err(StackError::Kube)
    }

    /// The same server with `token` as the only credential.
    pub fn config_with_token(&self, token: String) -> kube::Config {
        let mut config = self.config.clone();
        config.auth_info = kube::config::AuthInfo {
            token: Some(secrecy::SecretString::from(token)),
            ..kube::config::AuthInfo::default()
        };
        config
    }

    /// A token of service account `namespace`/`name` from the API server's TokenRequest; with
    /// `node`, bound to a pod of that service account on that node (the Node and the Pod are
    /// created when missing; nothing runs them), as a DaemonSet pod's projected token is, so the
    /// API server puts the node's name into the user's extra fields.
    pub async fn service_account_token(
        &self,
        namespace: &str,
        name: &str,
        node: Option<&str>,
    ) -> Result<String, StackError> {
        let admin = Self::client_of(self.config.clone())?;
        let pp = PatchParams::apply(MANAGER).force();
        let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(admin.clone());
        if namespaces.get_opt(namespace).await?.is_none() {
            let ns =
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}});
            namespaces.patch(namespace, &pp, &Patch::Apply(&ns)).await?;
        }
        let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), namespace);
        if sas.get_opt(name).await?.is_none() {
            let sa =
                json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}});
            sas.patch(name, &pp, &Patch::Apply(&sa)).await?;
        }
        let bound = match node {
            None => None,
            Some(node) => {
                let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(admin.clone());
                let n = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}});
                nodes.patch(node, &pp, &Patch::Apply(&n)).await?;
                let pods: Api<Pod> = Api::namespaced(admin.clone(), namespace);
                let pod_name = format!("{name}-{node}");
                let pod = json!({
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": pod_name, "labels": {"app.kubernetes.io/name": name}},
                    "spec": {
                        "nodeName": node,
                        "serviceAccountName": name,
                        "containers": [{"name": "agent", "image": "uami-controller"}],
                    },
                });
                let pod = match pods.get_opt(&pod_name).await? {
                    Some(p) => p,
                    None => {
                        pods.create(
                            &PostParams::default(),
                            &serde_json::from_value(pod)
                                .map_err(|e| StackError::Input(e.to_string()))?,
                        )
                        .await?
                    }
                };
                Some(BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: pod.metadata.name.clone(),
                    uid: pod.metadata.uid.clone(),
                })
            }
        };
        let request = TokenRequest {
            spec: TokenRequestSpec {
                bound_object_ref: bound,
                expiration_seconds: Some(3 * 3600),
                ..TokenRequestSpec::default()
            },
            ..TokenRequest::default()
        };
        let answer = sas
            .create_token_request(name, &PostParams::default(), &request)
            .await?;
        answer
            .status
            .map(|s| s.token)
            .ok_or_else(|| StackError::Input(format!("no token for {namespace}/{name}")))
    }
}

/// Namespaces [`External::reset`] keeps.
const KEPT_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public", "kube-node-lease"];
/// The label of every object the chart installs.
const CHART_LABEL: &str = "app.kubernetes.io/name=uami-controller";

impl External {
    /// Bring the server back to what a stack starts from, so that stacks can take turns on one
    /// server: every object of the project's kinds loses its finalizers and is deleted, the
    /// cluster-scoped objects of the chart go, and every namespace but the system ones and
    /// `default` is deleted and waited for (60 s at most). Run with no controller of a stack
    /// left running.
    pub async fn reset(&self) -> Result<(), StackError> {
        use k8s_openapi::api::admissionregistration::v1::{
            ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
        };
        use k8s_openapi::api::coordination::v1::Lease;
        use k8s_openapi::api::core::v1::Namespace;
        use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
        use kube::api::{DeleteParams, ListParams};
        use uami_api::{GrantPolicy, IdentityBinding, RoleGrant, UserAssignedIdentity};

        let client = Self::client_of(self.config.clone())?;
        strip_and_delete::<IdentityBinding>(&client).await?;
        strip_and_delete::<RoleGrant>(&client).await?;
        strip_and_delete::<UserAssignedIdentity>(&client).await?;
        strip_and_delete::<GrantPolicy>(&client).await?;
        strip_and_delete::<Lease>(&client).await?;
        let chart = ListParams::default().labels(CHART_LABEL);
        delete_selected::<ClusterRole>(&client, &chart).await?;
        delete_selected::<ClusterRoleBinding>(&client, &chart).await?;
        delete_selected::<ValidatingAdmissionPolicyBinding>(&client, &chart).await?;
        delete_selected::<ValidatingAdmissionPolicy>(&client, &chart).await?;
        let dp = DeleteParams::default();
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let doomed = |n: &Namespace| {
            let name = n.metadata.name.as_deref().unwrap_or_default();
            !KEPT_NAMESPACES.contains(&name)
        };
        // Pods on nodes without a kubelet never finish a graceful deletion: remove them at once.
        let pods: Api<Pod> = Api::all(client.clone());
        let now = DeleteParams {
            grace_period_seconds: Some(0),
            ..DeleteParams::default()
        };
        for pod in pods.list(&ListParams::default()).await?.items {
            let (Some(ns), Some(name)) = (pod.metadata.namespace, pod.metadata.name) else {
                continue;
            };
            if !KEPT_NAMESPACES.contains(&ns.as_str()) {
                let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
                ignore_gone(api.delete(&name, &now).await.map(|_| ()))?;
            }
        }
        for ns in namespaces
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .filter(|n| doomed(n))
        {
            if ns.metadata.deletion_timestamp.is_none() {
                let name = ns.metadata.name.as_deref().unwrap_or_default();
                ignore_gone(namespaces.delete(name, &dp).await.map(|_| ()))?;
            }
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let left: Vec<String> = namespaces
                .list(&ListParams::default())
                .await?
                .items
                .iter()
                .filter(|n| doomed(n))
                .filter_map(|n| n.metadata.name.clone())
                .collect();
            if left.is_empty() {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(StackError::Input(format!(
                    "namespaces still terminating after 60 s: {left:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// Delete every cluster-scoped `K` that `selected` selects.
async fn delete_selected<K>(
    client: &kube::Client,
    selected: &kube::api::ListParams,
) -> Result<(), kube::Error>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let dp = kube::api::DeleteParams::default();
    Api::<K>::all(client.clone())
        .delete_collection(&dp, selected)
        .await?;
    Ok(())
}

/// Remove every object of kind `K`: finalizers first, so nothing waits for a controller.
async fn strip_and_delete<K>(client: &kube::Client) -> Result<(), StackError>
where
    K: kube::Resource<DynamicType = ()>,
{
    use kube::api::{ApiResource, DeleteParams, ListParams};
    let ar = ApiResource::erase::<K>(&());
    let all: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    let items = match all.list(&ListParams::default()).await {
        Ok(list) => list.items,
        // The kind is not served (yet): nothing to remove.
        Err(kube::Error::Api(e)) if e.code == 404 => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    for item in items {
        let name = item.metadata.name.clone().unwrap_or_default();
        let api: Api<DynamicObject> = match &item.metadata.namespace {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
            None => all.clone(),
        };
        if item
            .metadata
            .finalizers
            .as_ref()
            .is_some_and(|f| !f.is_empty())
        {
            let strip = json!({"metadata": {"finalizers": null}});
            ignore_gone(
                api.patch(&name, &PatchParams::default(), &Patch::Merge(&strip))
                    .await
                    .map(|_| ()),
            )?;
        }
        ignore_gone(
            api.delete(&name, &DeleteParams::default())
                .await
                .map(|_| ()),
        )?;
    }
    Ok(())
}

/// A 404 (already gone) is success.
fn ignore_gone(r: Result<(), kube::Error>) -> Result<(), StackError> {
    match r {
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        other => Ok(other?),
    }
}

/// The Kubernetes API of a stack.
pub enum Cluster {
    /// The embedded sandbox, owned by the stack.
    Sandbox(Box<Sandbox>),
    /// An API server the stack only uses.
    External(Box<External>),
}

impl Cluster {
    /// The sandbox, when the stack runs on it.
    pub fn sandbox(&self) -> Option<&Sandbox> {
        match self {
            Self::Sandbox(sb) => Some(sb),
            Self::External(_) => None,
        }
    }

    /// An administrator's client.
    pub fn client(&self) -> Result<kube::Client, StackError> {
        match self {
            Self::Sandbox(sb) => Ok(sb.client()),
            Self::External(x) => External::client_of(x.config.clone()),
        }
    }

    /// A client as the administrator `user` (on an external server, the administrator
    /// impersonating `user` in `system:masters`).
    pub fn client_as(&self, user: &str) -> Result<kube::Client, StackError> {
        match self {
            Self::Sandbox(sb) => Ok(sb.client_as(user)?),
            Self::External(_) => self.client_for_user(user, &["system:masters"]),
        }
    }

    /// A client as the user `user` in `groups` (and `system:authenticated`), authorized by RBAC
    /// like any user of the cluster (on an external server, the administrator impersonating
    /// them).
    pub fn client_for_user(&self, user: &str, groups: &[&str]) -> Result<kube::Client, StackError> {
        let mut all: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        all.push("system:authenticated".into());
        match self {
            Self::Sandbox(sb) => {
                let info = uami_sandbox::UserInfo {
                    username: user.to_string(),
                    groups: all,
                    ..uami_sandbox::UserInfo::default()
                };
                Ok(sb.client_with_token(sb.token_for(info))?)
            }
            Self::External(x) => {
                let mut config = x.config.clone();
                config.auth_info.impersonate = Some(user.to_string());
                config.auth_info.impersonate_groups = Some(all);
                External::client_of(config)
            }
        }
    }

    /// A client as service account `namespace`/`name`, authorized by RBAC; with `node`, its
    /// token is bound to a pod on that node.
    pub async fn client_for_service_account(
        &self,
        namespace: &str,
        name: &str,
        node: Option<&str>,
    ) -> Result<kube::Client, StackError> {
        match self {
            Self::Sandbox(sb) => Ok(sb.client_for_service_account(namespace, name, node)?),
            Self::External(x) => {
                let token = x.service_account_token(namespace, name, node).await?;
                External::client_of(x.config_with_token(token))
            }
        }
    }

    /// A kubeconfig (YAML) for the administrator `user` (see [`Cluster::client_as`]), for a
    /// process of its own.
    pub fn admin_kubeconfig(&self, user: &str) -> Result<String, StackError> {
        match self {
            Self::Sandbox(sb) => Ok(sb.kubeconfig_yaml(user)),
            Self::External(x) => {
                use secrecy::ExposeSecret;
                let token = x
                    .config
                    .auth_info
                    .token
                    .as_ref()
                    .map(|t| t.expose_secret().to_string())
                    .ok_or_else(|| {
                        StackError::Input("the external server's administrator has no token".into())
                    })?;
                let mut yaml = kubeconfig_yaml(&x.config, "admin", "default", &token);
                yaml.push_str(&format!(
                    "    as: {user}\n    as-groups: [\"system:masters\", \"system:authenticated\"]\n"
                ));
                Ok(yaml)
            }
        }
    }

    /// The issuer (`iss`) of the cluster's service account tokens.
    pub fn oidc_issuer(&self) -> String {
        match self {
            Self::Sandbox(sb) => sb.oidc_issuer(),
            Self::External(x) => x.issuer.clone(),
        }
    }

    /// Install `objects` as an administrator: the sandbox stores them directly; an external
    /// server gets a forced server-side apply of each, and CRDs are waited for until they are
    /// established.
    pub async fn install(&self, objects: Vec<Value>) -> Result<(), StackError> {
        match self {
            Self::Sandbox(sb) => Ok(sb.install(objects)?),
            Self::External(_) => {
                let client = self.client()?;
                for v in &objects {
                    apply_value(&client, v).await?;
                }
                for v in objects
                    .iter()
                    .filter(|v| v["kind"] == "CustomResourceDefinition")
                {
                    wait_established(&client, v["metadata"]["name"].as_str().unwrap_or_default())
                        .await?;
                }
                Ok(())
            }
        }
    }

    /// Stop what the stack owns (the sandbox; an external server goes on).
    pub async fn shutdown(self) {
        if let Self::Sandbox(sb) = self {
            sb.shutdown().await;
        }
    }
}

/// A kubeconfig for `config`'s server and CA with `token` as `user`.
fn kubeconfig_yaml(config: &kube::Config, user: &str, namespace: &str, token: &str) -> String {
    let server = config.cluster_url.to_string();
    // Every certificate of the configured authority (a server's self-made chain names its own
    // authority after the serving certificate), as PEM with lines of 64 characters.
    let ca = config.root_cert.as_ref().map(|certs| {
        let pem: String = certs
            .iter()
            .map(|der| {
                let body = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, der);
                let lines: Vec<&str> = body
                    .as_bytes()
                    .chunks(64)
                    .filter_map(|c| std::str::from_utf8(c).ok())
                    .collect();
                format!(
                    "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
                    lines.join("\n")
                )
            })
            .collect();
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, pem)
    });
    let ca_line = ca
        .map(|c| format!("    certificate-authority-data: {c}\n"))
        .unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: cluster\n  cluster:\n    server: {}\n{ca_line}contexts:\n- name: cluster\n  context:\n    cluster: cluster\n    user: {user}\n    namespace: {namespace}\ncurrent-context: cluster\nusers:\n- name: {user}\n  user:\n    token: {token}\n",
        server.trim_end_matches('/'),
    )
}

/// Server-side apply (forced) of one object, as `kubectl apply --server-side --force-conflicts`.
pub async fn apply_value(client: &kube::Client, v: &Value) -> Result<DynamicObject, StackError> {
    let obj: DynamicObject =
        serde_json::from_value(v.clone()).map_err(|e| StackError::Input(e.to_string()))?;
    let tm = obj
        .types
        .clone()
        .ok_or_else(|| StackError::Input("an object without apiVersion/kind".into()))?;
    let gvk = GroupVersionKind::try_from(&tm).map_err(|e| StackError::Input(e.to_string()))?;
    let (ar, caps) = kube::discovery::pinned_kind(client, &gvk).await?;
    let name = obj.metadata.name.clone().unwrap_or_default();
    let api: Api<DynamicObject> = match (caps.scope, obj.metadata.namespace.as_deref()) {
        (kube::discovery::Scope::Namespaced, Some(ns)) => {
            Api::namespaced_with(client.clone(), ns, &ar)
        }
        (kube::discovery::Scope::Namespaced, None) => {
            Api::default_namespaced_with(client.clone(), &ar)
        }
        (kube::discovery::Scope::Cluster, _) => Api::all_with(client.clone(), &ar),
    };
    Ok(api
        .patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(v),
        )
        .await?)
}

/// Wait (30 s at most) until the CRD `name` is established.
async fn wait_established(client: &kube::Client, name: &str) -> Result<(), StackError> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let crd = crds.get(name).await?;
        let established = crd
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        if established {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(StackError::Input(format!(
                "CRD {name} not established in 30 s"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
