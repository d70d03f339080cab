//! The local world of workload identity: the sandbox's TokenRequest subresource and OIDC
//! discovery, the emulator's federated identity credentials (Azure's rules included), and its
//! Entra ID token endpoint validating federated assertions as Entra ID does.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

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
    let jwks: jsonwebtoken::jwk::JwkSet = http
        .get(config["jwks_uri"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
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

/// A stand-alone OIDC issuer over plain HTTP on loopback, whose key the test holds.
async fn test_issuer() -> (std::sync::Arc<Issuer>, String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let issuer = std::sync::Arc::new(Issuer::generate(&url).unwrap());
    let (i1, i2) = (issuer.clone(), issuer.clone());
    let app = axum::Router::new()
        .route(
            "/.well-known/openid-configuration",
            axum::routing::get(move || {
                let i = i1.clone();
                async move { axum::Json(i.openid_configuration()) }
            }),
        )
        .route(
            "/openid/v1/jwks",
            axum::routing::get(move || {
                let i = i2.clone();
                async move { axum::Json(i.jwks()) }
            }),
        );
    let h = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (issuer, url, h)
}

#[tokio::test]
async fn entra_validates_federated_assertions_for_identities() {
    let sb = sandbox().await;
    service_account(&sb, "team-a", "app").await;
    service_account(&sb, "team-a", "other").await;
    let issuer = sb.oidc_issuer();
    let az = Azure::start(|_| {}).await;
    let (client_id, principal_id) = az.identity("wi-id").await;
    let (s, v) = az
        .put_fic(
            "wi-id",
            "team-a-app",
            &issuer,
            "system:serviceaccount:team-a:app",
        )
        .await;
    assert_eq!(s, 201, "{v}");

    // A token of the trusted service account is exchanged for one of the identity.
    let token = sa_token(&sb, "team-a", "app", 600).await.unwrap();
    let (s, v) = az.exchange(&client_id, &token).await;
    assert_eq!(s, 200, "{v}");
    let claims =
        jsonwebtoken::dangerous::insecure_decode::<Value>(v["access_token"].as_str().unwrap())
            .unwrap()
            .claims;
    assert_eq!(claims["oid"], principal_id.as_str());
    assert_eq!(claims["appid"], client_id.as_str());
    assert_eq!(claims["tid"], az.emu.tenant_id().as_str());
    // That token is good for ARM (and, without a role, refused by RBAC rather than by sign-in).
    let r = az
        .http
        .get(format!(
            "{}subscriptions/{SUB}/resourceGroups/DevTest?api-version=2024-03-01",
            az.emu.arm_endpoint()
        ))
        .bearer_auth(v["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    // Another service account of the same cluster: no matching credential.
    let other = sa_token(&sb, "team-a", "other", 600).await.unwrap();
    let (s, v) = az.exchange(&client_id, &other).await;
    assert_eq!((s, aadsts(&v)), (400, 70021), "{v}");
    assert!(
        v["error_description"]
            .as_str()
            .unwrap()
            .contains("AADSTS70021")
    );

    // A forged token: the same claims and key id, signed with another key.
    let header = jsonwebtoken::decode_header(&token).unwrap();
    let claims: Value = jsonwebtoken::dangerous::insecure_decode_claims(&token).unwrap();
    let forger = Issuer::generate(&issuer).unwrap();
    let forged = {
        let t = forger.sign(&claims).unwrap();
        // Put the real key id in the header, so only the signature differs.
        let mut parts: Vec<String> = t.split('.').map(str::to_string).collect();
        let mut h: Value = serde_json::from_slice(
            &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, &parts[0])
                .unwrap(),
        )
        .unwrap();
        h["kid"] = json!(header.kid.clone().unwrap());
        parts[0] = base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            serde_json::to_vec(&h).unwrap(),
        );
        parts.join(".")
    };
    let (s, v) = az.exchange(&client_id, &forged).await;
    assert_eq!((s, aadsts(&v)), (401, 700027), "{v}");
    // Forged without a key id (any published key must verify it): refused.
    let (s, v) = az
        .exchange(&client_id, &forger.sign(&claims).unwrap())
        .await;
    assert_eq!((s, aadsts(&v)), (401, 700027), "{v}");
    // Unsigned (`alg: none`).
    let b64 = |v: &Value| {
        base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            serde_json::to_vec(v).unwrap(),
        )
    };
    let unsigned = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&claims)
    );
    let (s, v) = az.exchange(&client_id, &unsigned).await;
    assert_eq!((s, aadsts(&v)), (400, 50027), "{v}");
    // Symmetric (HS256 with a guessable secret).
    let hs = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(b"cluster-key"),
    )
    .unwrap();
    let (s, v) = az.exchange(&client_id, &hs).await;
    assert_eq!((s, aadsts(&v)), (401, 700027), "{v}");
    // A tampered payload (the subject changed) under the original signature.
    let mut tampered_claims = claims.clone();
    tampered_claims["kubernetes.io"]["namespace"] = json!("team-b");
    let parts: Vec<&str> = token.split('.').collect();
    let tampered = format!("{}.{}.{}", parts[0], b64(&tampered_claims), parts[2]);
    let (s, v) = az.exchange(&client_id, &tampered).await;
    assert_eq!((s, aadsts(&v)), (401, 700027), "{v}");

    // Expired or not yet valid, from an issuer whose key the test holds.
    let (own, url, server) = test_issuer().await;
    assert_eq!(az.put_fic("wi-id", "own", &url, "ci:job").await.0, 201);
    let now = jiff::Timestamp::now().as_second();
    let mint = |exp: i64, nbf: i64| {
        own.sign(&json!({"iss": url, "sub": "ci:job", "aud": [EXCHANGE], "exp": exp, "nbf": nbf, "iat": nbf}))
            .unwrap()
    };
    let (s, v) = az.exchange(&client_id, &mint(now + 600, now - 5)).await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = az.exchange(&client_id, &mint(now - 60, now - 700)).await;
    assert_eq!((s, aadsts(&v)), (400, 700024), "{v}");
    let (s, v) = az.exchange(&client_id, &mint(now + 1200, now + 600)).await;
    assert_eq!((s, aadsts(&v)), (400, 700024), "{v}");
    server.abort();

    // Nothing of an assertion is recorded.
    let journal = serde_json::to_string(&az.emu.journal()).unwrap();
    assert!(!journal.contains(&token) && !journal.contains(&forged));
    sb.shutdown().await;
}

#[tokio::test]
async fn the_controller_signs_in_with_its_own_service_account_token() {
    let sb = sandbox().await;
    service_account(&sb, "uami-system", "uami-controller").await;
    let issuer = sb.oidc_issuer();
    let az = Azure::start(|w| {
        w.service_principals[0].federated_credentials[0].issuer = issuer.clone();
    })
    .await;
    let token = sa_token(&sb, "uami-system", "uami-controller", 3600)
        .await
        .unwrap();
    let (s, v) = az.exchange(TUTORIAL_CONTROLLER_CLIENT_ID, &token).await;
    assert_eq!(s, 200, "{v}");
    let claims =
        jsonwebtoken::dangerous::insecure_decode::<Value>(v["access_token"].as_str().unwrap())
            .unwrap()
            .claims;
    for c in ["aud", "iss", "tid", "oid", "appid", "iat", "nbf", "exp"] {
        assert!(claims.get(c).is_some(), "claim {c}: {claims}");
    }
    // The service principal's credential is checked as strictly as an identity's: a token
    // signed with another key is refused.
    let forged = Issuer::generate(&issuer)
        .unwrap()
        .sign(&jsonwebtoken::dangerous::insecure_decode_claims::<Value>(&token).unwrap())
        .unwrap();
    let (s, v) = az.exchange(TUTORIAL_CONTROLLER_CLIENT_ID, &forged).await;
    assert_eq!((s, aadsts(&v)), (401, 700027), "{v}");
    // A client secret that is wrong is refused; ARM refuses a missing or foreign token.
    let (status, _) = az
        .token(TUTORIAL_CONTROLLER_CLIENT_ID, &[("client_secret", "wrong")])
        .await;
    assert_eq!(status, 401);
    let rg = format!(
        "{}subscriptions/{SUB}/resourceGroups/DevTest?api-version=2024-03-01",
        az.emu.arm_endpoint()
    );
    assert_eq!(az.http.get(&rg).send().await.unwrap().status(), 401);
    assert_eq!(
        az.http
            .get(&rg)
            .bearer_auth("not.a.token")
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    sb.shutdown().await;
}

/// An OIDC issuer over HTTPS on loopback with a self-signed certificate: its URL, the
/// certificate (PEM) and the issuer, whose key the test holds.
async fn https_issuer() -> (
    std::sync::Arc<Issuer>,
    String,
    String,
    tokio_util::sync::CancellationToken,
) {
    let stop = tokio_util::sync::CancellationToken::new();
    // The port is known once the listener is bound, and the issuer URL must name it: serve a
    // router that answers from a cell filled right after.
    let cell: std::sync::Arc<std::sync::OnceLock<std::sync::Arc<Issuer>>> = Default::default();
    let (c1, c2) = (cell.clone(), cell.clone());
    let app = axum::Router::new()
        .route(
            "/.well-known/openid-configuration",
            axum::routing::get(move || {
                let i = c1.get().unwrap().clone();
                async move { axum::Json(i.openid_configuration()) }
            }),
        )
        .route(
            "/openid/v1/jwks",
            axum::routing::get(move || {
                let i = c2.get().unwrap().clone();
                async move { axum::Json(i.jwks()) }
            }),
        );
    let https = sandbox::tls::serve(([127, 0, 0, 1], 0).into(), app, stop.clone())
        .await
        .unwrap();
    let url = format!("https://{}", https.addr);
    let issuer = std::sync::Arc::new(Issuer::generate(&url).unwrap());
    cell.set(issuer.clone()).ok().unwrap();
    (issuer, url, https.ca_pem, stop)
}

#[tokio::test]
async fn an_https_issuer_with_its_own_certificate_is_trusted_through_the_world() {
    let (issuer, url, ca_pem, stop) = https_issuer().await;
    let now = jiff::Timestamp::now().as_second();
    let assertion = issuer
        .sign(&json!({"iss": url, "sub": "ci:job", "aud": [EXCHANGE], "exp": now + 600, "nbf": now - 5, "iat": now - 5}))
        .unwrap();
    // Without the certificate: the issuer's keys cannot be fetched (TLS), as Entra ID answers
    // for an unreachable issuer.
    let az = Azure::start(|_| {}).await;
    let (client_id, _) = az.identity("wi-id").await;
    assert_eq!(az.put_fic("wi-id", "ci-job", &url, "ci:job").await.0, 201);
    let (s, v) = az.exchange(&client_id, &assertion).await;
    assert_eq!((s, aadsts(&v)), (401, 50166), "{v}");
    // With it in the world's oidcIssuerCaPems: the exchange succeeds.
    let pem = ca_pem.clone();
    let az = Azure::start(move |w| w.oidc_issuer_ca_pems.push(pem)).await;
    let (client_id, principal_id) = az.identity("wi-id").await;
    assert_eq!(az.put_fic("wi-id", "ci-job", &url, "ci:job").await.0, 201);
    let (s, v) = az.exchange(&client_id, &assertion).await;
    assert_eq!(s, 200, "{v}");
    let claims =
        jsonwebtoken::dangerous::insecure_decode::<Value>(v["access_token"].as_str().unwrap())
            .unwrap()
            .claims;
    assert_eq!(claims["oid"], principal_id.as_str());
    // A world entry that holds no certificate is refused at start.
    let mut w = World::tutorial().unwrap();
    w.oidc_issuer_ca_pems.push("not a certificate".into());
    let err = emulator::start(w).await.err().unwrap().to_string();
    assert!(err.contains("oidcIssuerCaPems[0]"), "{err}");
    // The world file spells it oidcIssuerCaPems.
    let yaml = format!(
        "tenantId: {}\nsubscriptions: []\noidcIssuerCaPems:\n- |\n{}",
        uami_emulator::world::TUTORIAL_TENANT,
        ca_pem
            .lines()
            .map(|l| format!("  {l}\n"))
            .collect::<String>()
    );
    let w = World::from_yaml_str(&yaml).unwrap();
    assert_eq!(w.oidc_issuer_ca_pems.len(), 1);
    stop.cancel();
}
