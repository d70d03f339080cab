//! ARM as the emulator's administrator sees it, and an ARM client with a fixed token.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::Method;
use reqwest::header::HeaderMap;
use secrecy::SecretString;
use serde_json::{Value, json};
use uami_azure::auth::{AccessToken, AuthError, TokenCredential};
use uami_azure::{ArmClient, ArmClientOptions};
use uami_emulator::Emulator;
use uami_emulator::world::TUTORIAL_SUBSCRIPTION as SUB;

pub const READER_GUID: &str = "acdd72a7-3385-48ef-bd42-f606fba81ae7";

/// An emulator of the tutorial's world, edited by `edit`.
pub async fn tutorial_emulator(edit: impl FnOnce(&mut uami_emulator::World)) -> Emulator {
    let mut world = uami_emulator::World::tutorial().unwrap();
    edit(&mut world);
    uami_emulator::start(world).await.unwrap()
}

/// The path (with api-version) of identity `name` in DevTest.
pub fn identity_path(name: &str) -> String {
    format!(
        "/subscriptions/{SUB}/resourceGroups/DevTest/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{name}?api-version=2023-01-31"
    )
}

/// The path (with api-version) of virtual machine `name` in DevTest.
pub fn vm_path(name: &str) -> String {
    format!(
        "/subscriptions/{SUB}/resourceGroups/DevTest/providers/Microsoft.Compute/virtualMachines/{name}?api-version=2024-11-01"
    )
}

/// The path (with api-version) of a role assignment named by a fresh GUID on `scope`.
pub fn new_assignment_path(scope: &str) -> String {
    format!(
        "{scope}/providers/Microsoft.Authorization/roleAssignments/{}?api-version=2022-04-01",
        uuid::Uuid::new_v4()
    )
}

/// The body of a role assignment of Reader to service principal `principal`.
pub fn reader_assignment(principal: &str) -> Value {
    json!({"properties": {
        "roleDefinitionId": format!("/subscriptions/{SUB}/providers/Microsoft.Authorization/roleDefinitions/{READER_GUID}"),
        "principalId": principal, "principalType": "ServicePrincipal"}})
}

/// ARM as the emulator's administrator.
pub struct Admin {
    pub http: reqwest::Client,
    /// The ARM endpoint without its trailing `/`.
    pub base: String,
    pub token: String,
}

impl Admin {
    pub fn of(emulator: &Emulator) -> Self {
        Self::with_token(emulator, emulator.admin_token())
    }

    /// ARM as the holder of `token`.
    pub fn with_token(emulator: &Emulator, token: String) -> Self {
        Self {
            http: super::emulator_http(emulator),
            base: emulator
                .arm_endpoint()
                .to_string()
                .trim_end_matches('/')
                .to_string(),
            token,
        }
    }

    /// The URL of `path` (an absolute URL stays as it is).
    pub fn url(&self, path: &str) -> String {
        if path.starts_with("http") {
            path.to_string()
        } else {
            format!("{}/{}", self.base, path.trim_start_matches('/'))
        }
    }

    /// One request: the status, the headers and the JSON body (`null` when there is none).
    pub async fn try_send(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> reqwest::Result<(u16, HeaderMap, Value)> {
        let mut req = self
            .http
            .request(method, self.url(path))
            .bearer_auth(&self.token);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.bytes().await?;
        Ok((
            status,
            headers,
            serde_json::from_slice(&body).unwrap_or(Value::Null),
        ))
    }

    /// One request that must get an answer.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> (u16, HeaderMap, Value) {
        self.try_send(method, path, body, headers).await.unwrap()
    }

    /// A PUT of `body` that must get an answer.
    pub async fn put(&self, path: &str, body: Value) -> (u16, HeaderMap, Value) {
        self.send(Method::PUT, path, Some(body), &[]).await
    }

    /// A PATCH of `body` that must get an answer.
    pub async fn patch(&self, path: &str, body: Value) -> (u16, HeaderMap, Value) {
        self.send(Method::PATCH, path, Some(body), &[]).await
    }

    /// A GET that must get an answer: its status and body.
    pub async fn answer(&self, path: &str) -> (u16, Value) {
        let (status, _, body) = self.send(Method::GET, path, None, &[]).await;
        (status, body)
    }

    /// The status of a GET.
    pub async fn get_status(&self, path: &str) -> u16 {
        self.send(Method::GET, path, None, &[]).await.0
    }

    /// The body of a GET.
    pub async fn get(&self, path: &str) -> Value {
        self.send(Method::GET, path, None, &[]).await.2
    }

    /// Create identity `name` in DevTest with `tags`.
    pub async fn put_identity(&self, name: &str, tags: Value) -> Value {
        let (s, _, v) = self
            .send(
                Method::PUT,
                &identity_path(name),
                Some(json!({"location": "eastus", "tags": tags})),
                &[],
            )
            .await;
        assert!(s == 200 || s == 201, "{s} {v}");
        v
    }

    /// Delete identity `name` out of band and create it again with the same tags (a script
    /// restoring it); the new identity as ARM answers it.
    pub async fn recreate_identity(&self, name: &str) -> Value {
        let tags = self.identity_tags(name).await.unwrap();
        let (status, _, _) = self
            .send(Method::DELETE, &identity_path(name), None, &[])
            .await;
        assert_eq!(status, 200);
        self.put_identity(name, tags).await
    }

    /// The identity's tags, `None` when it does not exist.
    pub async fn identity_tags(&self, name: &str) -> Option<Value> {
        let (s, _, v) = self
            .send(Method::GET, &identity_path(name), None, &[])
            .await;
        (s == 200).then(|| v["tags"].clone())
    }

    pub async fn assignment_exists(&self, id: &str) -> bool {
        self.get_status(&format!("{id}?api-version=2022-04-01"))
            .await
            == 200
    }

    /// Grant Reader on `scope` to `principal`; the assignment's id.
    pub async fn create_assignment(&self, scope: &str, principal: &str) -> String {
        let path = new_assignment_path(scope);
        let (s, _, v) = self
            .send(Method::PUT, &path, Some(reader_assignment(principal)), &[])
            .await;
        assert_eq!(s, 201, "{v}");
        path.split('?').next().unwrap().to_string()
    }

    /// PATCH virtual machine `name` with `body`.
    pub async fn patch_vm(&self, name: &str, body: Value) -> (u16, HeaderMap, Value) {
        self.send(Method::PATCH, &vm_path(name), Some(body), &[])
            .await
    }

    /// Poll the `Azure-AsyncOperation` of an answer until the operation ends (30 s at most); its
    /// last status body.
    pub async fn wait_operation(&self, headers: &HeaderMap) -> Value {
        let url = headers["azure-asyncoperation"]
            .to_str()
            .unwrap()
            .to_string();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            assert!(
                std::time::Instant::now() < deadline,
                "the operation did not end within 30 s"
            );
            let (_, _, v) = self.send(Method::GET, &url, None, &[]).await;
            if v["status"] != "InProgress" {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Poll the `Azure-AsyncOperation` of an answer at most `polls` times, without pause, until
    /// the operation ends; its last status body.
    pub async fn poll_operation(&self, headers: &HeaderMap, polls: usize) -> Value {
        let url = headers["azure-asyncoperation"].to_str().unwrap();
        let mut last = Value::Null;
        for _ in 0..polls {
            last = self.get(url).await;
            if last["status"] != "InProgress" {
                break;
            }
        }
        last
    }

    /// Assign `identity_id` to virtual machine `vm` outside the controller, and wait for the
    /// operation to succeed.
    pub async fn assign_to_vm(&self, vm: &str, identity_id: &str) {
        let (s, h, v) = self
            .patch_vm(
                vm,
                json!({"identity": {"type": "UserAssigned", "userAssignedIdentities": {identity_id: {}}}}),
            )
            .await;
        assert!(s == 200 || s == 202, "{s} {v}");
        assert_eq!(self.wait_operation(&h).await["status"], "Succeeded");
    }
}

/// A fixed bearer token (the emulator's administrator's, or a principal's).
pub struct Fixed(pub String);

#[async_trait]
impl TokenCredential for Fixed {
    async fn get_token(&self, _: &str) -> Result<AccessToken, AuthError> {
        Ok(AccessToken {
            token: SecretString::from(self.0.clone()),
            expires_on: jiff::Timestamp::now() + jiff::SignedDuration::from_secs(3600),
        })
    }
}

/// The controller's ARM client against the emulator, with a fixed token.
pub fn arm_client(emulator: &Emulator, token: String) -> ArmClient {
    ArmClient::new(
        super::emulator_http(emulator),
        ArmClientOptions::new(emulator.arm_endpoint()),
        Arc::new(Fixed(token)),
        None,
    )
}
