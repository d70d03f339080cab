//! The local world of workload identity: the sandbox's TokenRequest subresource and OIDC
//! discovery, the emulator's federated identity credentials (Azure's rules included), and its
//! Entra ID token endpoint validating federated assertions as Entra ID does.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

#[path = "workload_identity_local/entra.rs"]
mod entra;

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::Api;
use kube::api::PostParams;
use serde_json::{Value, json};
use support::arm::Admin;
use support::get_json;
use uami_emulator::world::{TUTORIAL_CONTROLLER_CLIENT_ID, TUTORIAL_SUBSCRIPTION as SUB};
use uami_emulator::{self as emulator, Emulator, Faults, World};
use uami_sandbox::serviceaccount::Issuer;
use uami_sandbox::{self as sandbox, Sandbox, SandboxOptions};

const EXCHANGE: &str = "api://AzureADTokenExchange";

async fn sandbox() -> Sandbox {
    sandbox::start(SandboxOptions::default()).await.unwrap()
}

async fn service_account(sb: &Sandbox, ns: &str, name: &str) {
    // The namespace may exist already.
    let _ = sb.install(vec![
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
    ]);
    let api: Api<ServiceAccount> = Api::namespaced(sb.client(), ns);
    api.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": name}})).unwrap(),
    )
    .await
    .unwrap();
}

async fn sa_token(sb: &Sandbox, ns: &str, name: &str, seconds: i64) -> kube::Result<String> {
    let api: Api<ServiceAccount> = Api::namespaced(sb.client(), ns);
    let tr = api
        .create_token_request(
            name,
            &PostParams::default(),
            &TokenRequest {
                spec: TokenRequestSpec {
                    audiences: vec![EXCHANGE.into()],
                    expiration_seconds: Some(seconds),
                    ..TokenRequestSpec::default()
                },
                ..TokenRequest::default()
            },
        )
        .await?;
    Ok(tr.status.unwrap().token)
}

#[tokio::test]
async fn sandbox_serves_token_requests_and_oidc_discovery() {
    let sb = sandbox().await;
    service_account(&sb, "team-a", "app").await;
    let token = sa_token(&sb, "team-a", "app", 600).await.unwrap();
    let http = reqwest::Client::new();
    let issuer = sb.oidc_issuer();
    let config = get_json(&http, &format!("{issuer}/.well-known/openid-configuration")).await;
    assert_eq!(config["issuer"], issuer.as_str());
    let jwks: jsonwebtoken::jwk::JwkSet =
        serde_json::from_value(get_json(&http, config["jwks_uri"].as_str().unwrap()).await)
            .unwrap();
    let header = jsonwebtoken::decode_header(&token).unwrap();
    let key =
        jsonwebtoken::DecodingKey::from_jwk(jwks.find(header.kid.as_deref().unwrap()).unwrap())
            .unwrap();
    let mut v = jsonwebtoken::Validation::new(header.alg);
    v.set_audience(&[EXCHANGE]);
    v.set_issuer(&[issuer.as_str()]);
    let claims = jsonwebtoken::decode::<Value>(&token, &key, &v)
        .unwrap()
        .claims;
    assert_eq!(claims["sub"], "system:serviceaccount:team-a:app");
    assert_eq!(claims["aud"], json!([EXCHANGE]));
    assert_eq!(claims["kubernetes.io"]["namespace"], "team-a");
    assert_eq!(claims["kubernetes.io"]["serviceaccount"]["name"], "app");
    let sa: ServiceAccount = Api::namespaced(sb.client(), "team-a")
        .get("app")
        .await
        .unwrap();
    assert_eq!(
        claims["kubernetes.io"]["serviceaccount"]["uid"],
        sa.metadata.uid.unwrap().as_str()
    );
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        600
    );
    // Less than ten minutes is refused, as kube-apiserver refuses it.
    match sa_token(&sb, "team-a", "app", 599).await {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 422, "{e:?}"),
        other => panic!("expected 422, got {other:?}"),
    }
    // No such service account.
    match sa_token(&sb, "team-a", "ghost", 600).await {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 404, "{e:?}"),
        other => panic!("expected 404, got {other:?}"),
    }
    sb.shutdown().await;
}

struct Azure {
    emu: Emulator,
    http: reqwest::Client,
    arm: Admin,
}

const IDS: &str =
    "/resourceGroups/DevTest/providers/Microsoft.ManagedIdentity/userAssignedIdentities";

impl Azure {
    async fn start(configure: impl FnOnce(&mut World)) -> Self {
        let mut w = World::tutorial().unwrap();
        configure(&mut w);
        let emu = emulator::start(w).await.unwrap();
        let arm = Admin::of(&emu);
        Self {
            http: support::emulator_http(&emu),
            emu,
            arm,
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let path = format!(
            "/subscriptions/{SUB}{path}{}api-version=2023-01-31",
            if path.contains('?') { "&" } else { "?" }
        );
        let (s, _, v) = self.arm.send(method, &path, body, &[]).await;
        (s, v)
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }

    /// Create an identity; its (clientId, principalId).
    async fn identity(&self, name: &str) -> (String, String) {
        let (s, v) = self
            .call(
                reqwest::Method::PUT,
                &format!("{IDS}/{name}"),
                Some(json!({"location": "eastus"})),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        (
            v["properties"]["clientId"].as_str().unwrap().into(),
            v["properties"]["principalId"].as_str().unwrap().into(),
        )
    }

    async fn put_fic(
        &self,
        identity: &str,
        fic: &str,
        issuer: &str,
        subject: &str,
    ) -> (u16, Value) {
        self.call(
            reqwest::Method::PUT,
            &format!("{IDS}/{identity}/federatedIdentityCredentials/{fic}"),
            Some(json!({"properties": {"issuer": issuer, "subject": subject, "audiences": [EXCHANGE]}})),
        )
        .await
    }

    /// Entra ID's token endpoint of the tutorial's tenant.
    fn token_url(&self) -> String {
        format!(
            "{}{}/oauth2/v2.0/token",
            self.emu.authority_host(),
            self.emu.tenant_id()
        )
    }

    /// A client-credentials token request for ARM as `client_id`, with its credential fields.
    async fn token(&self, client_id: &str, credential: &[(&str, &str)]) -> (u16, Value) {
        let mut form = vec![
            ("grant_type", "client_credentials"),
            ("client_id", client_id),
            ("scope", "https://management.azure.com/.default"),
        ];
        form.extend_from_slice(credential);
        let r = self
            .http
            .post(self.token_url())
            .form(&form)
            .send()
            .await
            .unwrap();
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(Value::Null))
    }

    async fn exchange(&self, client_id: &str, assertion: &str) -> (u16, Value) {
        let assertion_type = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
        self.token(
            client_id,
            &[
                ("client_assertion_type", assertion_type),
                ("client_assertion", assertion),
            ],
        )
        .await
    }
}

/// The claims of the access token of token response `v` (not verified).
fn access_token_claims(v: &Value) -> Value {
    let token = v["access_token"].as_str().unwrap();
    jsonwebtoken::dangerous::insecure_decode::<Value>(token)
        .unwrap()
        .claims
}

fn aadsts(v: &Value) -> u64 {
    v["error_codes"][0].as_u64().unwrap_or(0)
}

#[tokio::test]
async fn federated_identity_credentials_follow_the_msi_document_and_azure_limits() {
    let az = Azure::start(|_| {}).await;
    az.identity("wi-id").await;
    let issuer = "https://oidc.example.test/cluster/";
    let (s, v) = az
        .put_fic("wi-id", "fic-one", issuer, "system:serviceaccount:a:b")
        .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["name"], "fic-one");
    assert_eq!(v["properties"]["audiences"], json!([EXCHANGE]));
    assert!(
        v["id"]
            .as_str()
            .unwrap()
            .ends_with("/userAssignedIdentities/wi-id/federatedIdentityCredentials/fic-one")
    );
    let (s, _) = az
        .put_fic("wi-id", "fic-one", issuer, "system:serviceaccount:a:b")
        .await;
    assert_eq!(s, 200, "an unchanged PUT is an update");
    let (s, v) = az
        .get(&format!("{IDS}/wi-id/federatedIdentityCredentials/fic-one"))
        .await;
    assert_eq!(
        (s, v["properties"]["subject"].as_str()),
        (200, Some("system:serviceaccount:a:b"))
    );
    // Name rule, https issuer, unknown identity.
    assert_eq!(az.put_fic("wi-id", "-bad", issuer, "s").await.0, 400);
    assert_eq!(
        az.put_fic("wi-id", "ok1", "http://example.test/", "s")
            .await
            .0,
        400
    );
    assert_eq!(az.put_fic("ghost", "ok1", issuer, "s").await.0, 404);
    // Older api-versions have no federated credentials.
    let old = format!(
        "/subscriptions/{SUB}{IDS}/wi-id/federatedIdentityCredentials?api-version=2018-11-30"
    );
    assert_eq!(az.arm.get_status(&old).await, 400);
    // At most 20 per identity: the 21st is refused.
    for i in 2..=20 {
        let (s, v) = az
            .put_fic(
                "wi-id",
                &format!("fic-{i}"),
                issuer,
                &format!("system:serviceaccount:a:s{i}"),
            )
            .await;
        assert_eq!(s, 201, "{i}: {v}");
    }
    let (s, v) = az
        .put_fic("wi-id", "fic-21", issuer, "system:serviceaccount:a:s21")
        .await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("20"),
        "{v}"
    );
    let (s, v) = az
        .get(&format!("{IDS}/wi-id/federatedIdentityCredentials"))
        .await;
    assert_eq!((s, v["value"].as_array().unwrap().len()), (200, 20));
    // Delete: 200, then 204.
    let path = format!("{IDS}/wi-id/federatedIdentityCredentials/fic-20");
    assert_eq!(az.call(reqwest::Method::DELETE, &path, None).await.0, 200);
    assert_eq!(az.call(reqwest::Method::DELETE, &path, None).await.0, 204);
    assert_eq!(az.call(reqwest::Method::GET, &path, None).await.0, 404);
    // Two writes on one identity at once: the second is refused.
    az.emu.set_faults(Faults {
        fic_write_ms: 1500,
        ..Faults::default()
    });
    let (a, b) = tokio::join!(
        az.put_fic("wi-id", "fic-20", issuer, "system:serviceaccount:a:s20"),
        async {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            az.put_fic("wi-id", "fic-x", issuer, "system:serviceaccount:a:x")
                .await
        }
    );
    assert_eq!(a.0, 201, "{}", a.1);
    assert_eq!(b.0, 409, "{}", b.1);
    assert_eq!(
        b.1["error"]["code"],
        "ConcurrentFederatedIdentityCredentialsWritesForSingleManagedIdentity"
    );
    let c = az.emu.counts();
    assert_eq!(c.get("FederatedIdentityCredentials_CreateOrUpdate", 409), 1);
    // Deleting the identity deletes its credentials.
    az.emu.set_faults(Faults::default());
    assert_eq!(
        az.call(reqwest::Method::DELETE, &format!("{IDS}/wi-id"), None)
            .await
            .0,
        200
    );
    az.identity("wi-id").await;
    let (_, v) = az
        .get(&format!("{IDS}/wi-id/federatedIdentityCredentials"))
        .await;
    assert_eq!(v["value"], json!([]));
}
