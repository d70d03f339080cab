//! Entra ID's token endpoint validating federated assertions: for identities, for the
//! controller's own service-account token, and from an HTTPS issuer trusted through the world.

use super::*;

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
    let claims = access_token_claims(&v);
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
    let claims = access_token_claims(&v);
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
    let claims = access_token_claims(&v);
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
