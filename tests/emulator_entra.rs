//! The emulator's ARM and Entra ID as an unmodified Azure client meets them: HTTPS that only a
//! client trusting the emulator's certificate authority accepts (IMDS stays plain HTTP), the
//! discovery documents MSAL reads before its first token request (v2.0 and v1 OpenID
//! configuration, instance discovery, keys), and the token endpoint's error bodies as Entra ID
//! writes them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use base64::Engine as _;
use serde_json::{Value, json};
use support::{controller_sign_in, emulator_http};
use uami_emulator::{self as emulator, Emulator, World, world};

const TENANT: &str = world::TUTORIAL_TENANT;

async fn start() -> Emulator {
    emulator::start(World::tutorial().unwrap()).await.unwrap()
}

async fn get(http: &reqwest::Client, url: &str) -> (u16, Value) {
    let r = http.get(url).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

/// The emulator's base URL with its host written `host` (same port).
fn base_as(emu: &Emulator, host: &str) -> String {
    let port = emu.arm_endpoint().port().unwrap();
    format!("https://{host}:{port}")
}

#[tokio::test]
async fn arm_and_entra_are_https_that_only_the_emulators_authority_vouches_for() {
    let emu = start().await;
    assert_eq!(emu.arm_endpoint().scheme(), "https");
    assert_eq!(emu.authority_host(), emu.arm_endpoint(), "one listener");
    let pem = emu.ca_pem().unwrap();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
    let config = format!("{TENANT}/v2.0/.well-known/openid-configuration");

    // A client with only the system's roots refuses the certificate.
    let err = reqwest::Client::new()
        .get(format!("{}{config}", emu.authority_host()))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_connect(), "{err:?}");

    // Trusting the authority, every loopback name the certificate covers works.
    let http = emulator_http(&emu);
    for host in ["127.0.0.1", "localhost"] {
        let (status, v) = get(&http, &format!("{}/{config}", base_as(&emu, host))).await;
        assert_eq!(status, 200, "{host}: {v}");
        assert_eq!(
            v["issuer"],
            format!("{}/{TENANT}/v2.0", base_as(&emu, host)),
            "the documents name the host the caller named"
        );
    }

    // Plain HTTP on the TLS port is not answered as HTTP.
    let plain = format!("http://{}/{config}", emu.arm_endpoint().authority());
    match reqwest::Client::new().get(plain).send().await {
        Err(_) => {}
        Ok(r) => assert_ne!(r.status().as_u16(), 200),
    }

    // IMDS stays plain HTTP on a link-local address in Azure, and here.
    let imds = emu.imds_endpoint("myVM").unwrap();
    assert_eq!(imds.scheme(), "http");
    let r = reqwest::Client::new()
        .get(format!(
            "{imds}metadata/instance/compute?api-version=2021-02-01"
        ))
        .header("Metadata", "true")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    emu.shutdown().await;
}

#[tokio::test]
async fn plain_http_only_when_the_world_asks_for_it() {
    let mut w = World::tutorial().unwrap();
    w.plain_http = true;
    let emu = emulator::start(w).await.unwrap();
    assert_eq!(emu.arm_endpoint().scheme(), "http");
    assert_eq!(emu.ca_pem(), None);
    let (status, v) = get(
        &reqwest::Client::new(),
        &format!(
            "{}{TENANT}/v2.0/.well-known/openid-configuration",
            emu.authority_host()
        ),
    )
    .await;
    assert_eq!(status, 200);
    assert!(v["issuer"].as_str().unwrap().starts_with("http://"), "{v}");
    emu.shutdown().await;
}

/// The OpenID configuration of `TENANT` at `{base}/{TENANT}/{version}.well-known/...`, which
/// names `issuer`, the token and authorization endpoints (`{oauth2}token`, `{oauth2}authorize`)
/// and the key set `jwks_uri`.
async fn tenant_configuration(
    http: &reqwest::Client,
    base: &str,
    [version, issuer, oauth2, jwks_uri]: [&str; 4],
) -> Value {
    let url = format!("{base}/{TENANT}/{version}.well-known/openid-configuration");
    let (status, config) = get(http, &url).await;
    assert_eq!(status, 200, "{config}");
    assert_eq!(config["issuer"], issuer, "{config}");
    let endpoint = |name: &str| format!("{oauth2}{name}");
    assert_eq!(config["token_endpoint"], endpoint("token"), "{config}");
    assert_eq!(
        config["authorization_endpoint"],
        endpoint("authorize"),
        "{config}"
    );
    assert_eq!(config["jwks_uri"], jwks_uri, "{config}");
    config
}

/// A federated assertion, valid for ten minutes, that no credential trusts.
fn unmatched_assertion() -> String {
    let now = jiff::Timestamp::now().as_second();
    unsigned_rs256(json!({
        "iss": "https://issuer.example.test",
        "sub": "system:serviceaccount:nobody:nothing",
        "aud": "api://AzureADTokenExchange",
        "iat": now, "nbf": now, "exp": now + 600,
    }))
}

/// The emulator, a client that trusts it, and its Entra ID's base URL (no trailing `/`).
async fn started() -> (Emulator, reqwest::Client, String) {
    let emu = start().await;
    let http = emulator_http(&emu);
    let base = emu
        .authority_host()
        .as_str()
        .trim_end_matches('/')
        .to_string();
    (emu, http, base)
}

#[tokio::test]
async fn openid_configuration_as_entra_publishes_it() {
    let (emu, http, base) = started().await;
    let base = base.as_str();

    let v2 = tenant_configuration(
        &http,
        base,
        [
            "v2.0/",
            &format!("{base}/{TENANT}/v2.0"),
            &format!("{base}/{TENANT}/oauth2/v2.0/"),
            &format!("{base}/{TENANT}/discovery/v2.0/keys"),
        ],
    )
    .await;
    assert_eq!(
        v2["response_types_supported"],
        json!(["code", "id_token", "code id_token", "id_token token"])
    );
    assert_eq!(v2["subject_types_supported"], json!(["pairwise"]));
    assert_eq!(
        v2["id_token_signing_alg_values_supported"],
        json!(["RS256"])
    );
    assert_eq!(
        v2["token_endpoint_auth_methods_supported"],
        json!([
            "client_secret_post",
            "private_key_jwt",
            "client_secret_basic"
        ])
    );
    assert_eq!(v2["tenant_region_scope"], "NA");
    assert_eq!(v2["cloud_instance_name"], "microsoftonline.com");

    // The token endpoint it names is the one that answers client credentials.
    let r = controller_sign_in(&http, v2["token_endpoint"].as_str().unwrap()).await;
    assert_eq!(r.status(), 200);
    // Its key set is served (empty: the emulator's tokens are signed with a key only it holds).
    let (status, keys) = get(&http, v2["jwks_uri"].as_str().unwrap()).await;
    assert_eq!((status, keys), (200, json!({"keys": []})));

    let issuer = format!("https://sts.windows.net/{TENANT}/");
    let oauth2 = format!("{base}/{TENANT}/oauth2/");
    let jwks = format!("{base}/common/discovery/keys");
    let v1 = tenant_configuration(&http, base, ["", &issuer, &oauth2, &jwks]).await;
    let (status, _) = get(&http, v1["jwks_uri"].as_str().unwrap()).await;
    assert_eq!(status, 200);

    // The multi-tenant authorities carry the issuer template.
    let (status, common) = get(
        &http,
        &format!("{base}/common/v2.0/.well-known/openid-configuration"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(common["issuer"], format!("{base}/{{tenantid}}/v2.0"));
    assert_eq!(
        common["token_endpoint"],
        format!("{base}/common/oauth2/v2.0/token")
    );
    assert_eq!(common["tenant_region_scope"], Value::Null);

    // An unknown tenant is AADSTS90002, in Entra ID's error body.
    let other = "11111111-2222-3333-4444-555555555555";
    for path in [
        format!("{other}/v2.0/.well-known/openid-configuration"),
        format!("{other}/.well-known/openid-configuration"),
    ] {
        let (status, v) = get(&http, &format!("{base}/{path}")).await;
        assert_eq!(status, 400, "{path}: {v}");
        assert_entra_error(&v, "invalid_tenant", 90002);
        assert!(
            v["error_description"]
                .as_str()
                .unwrap()
                .contains(&format!("Tenant '{other}' not found")),
            "{v}"
        );
    }
    emu.shutdown().await;
}

#[tokio::test]
async fn instance_discovery_names_the_tenant_document_and_the_hosts_aliases() {
    let (emu, http, base) = started().await;
    let base = base.as_str();
    let host = emu.arm_endpoint().authority().to_string();
    let discover = |authorize: String| {
        let http = http.clone();
        let url = format!("{base}/common/discovery/instance");
        async move {
            let r = http
                .get(url)
                .query(&[
                    ("api-version", "1.1"),
                    ("authorization_endpoint", authorize.as_str()),
                ])
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap())
        }
    };

    let (status, v) = discover(format!("{base}/{TENANT}/oauth2/v2.0/authorize")).await;
    assert_eq!(status, 200, "{v}");
    let document = v["tenant_discovery_endpoint"].as_str().unwrap();
    assert_eq!(
        document,
        format!("{base}/{TENANT}/v2.0/.well-known/openid-configuration")
    );
    assert_eq!(v["api-version"], "1.1");
    assert_eq!(
        v["metadata"],
        json!([{"preferred_network": host, "preferred_cache": host, "aliases": [host]}])
    );
    // The document it names is served.
    let (status, config) = get(&http, document).await;
    assert_eq!(status, 200);
    assert_eq!(config["issuer"], format!("{base}/{TENANT}/v2.0"));

    // A v1 authorization endpoint names the v1 document.
    let (_, v) = discover(format!("{base}/{TENANT}/oauth2/authorize")).await;
    assert_eq!(
        v["tenant_discovery_endpoint"],
        format!("{base}/{TENANT}/.well-known/openid-configuration")
    );

    // Another host is not an instance this authority vouches for.
    let (status, v) =
        discover("https://login.example.test/common/oauth2/v2.0/authorize".into()).await;
    assert_eq!(status, 400, "{v}");
    assert_entra_error(&v, "invalid_instance", 50049);
    emu.shutdown().await;
}

/// A JWT signed (in its header) with RS256 whose signature is never reached: Entra ID matches the
/// assertion's issuer, subject and audience to a federated credential before it fetches keys.
fn unsigned_rs256(claims: Value) -> String {
    let b64 = |v: &Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    };
    format!(
        "{}.{}.c2ln",
        b64(&json!({"alg": "RS256", "typ": "JWT", "kid": "k"})),
        b64(&claims)
    )
}

/// Entra ID's error body: `error`, `error_description` starting with the AADSTS code and ending
/// with the trace, correlation and time, `error_codes`, `timestamp`, `trace_id`,
/// `correlation_id` and `error_uri`.
fn assert_entra_error(v: &Value, error: &str, code: u32) {
    assert_eq!(v["error"], error, "{v}");
    let description = v["error_description"].as_str().unwrap();
    assert!(
        description.starts_with(&format!("AADSTS{code}: ")),
        "{description}"
    );
    assert_eq!(v["error_codes"], json!([code]), "{v}");
    assert_eq!(
        v["error_uri"],
        format!("https://login.microsoftonline.com/error?code={code}")
    );
    let trace = v["trace_id"].as_str().unwrap();
    let correlation = v["correlation_id"].as_str().unwrap();
    let timestamp = v["timestamp"].as_str().unwrap();
    assert!(uuid::Uuid::parse_str(trace).is_ok(), "{v}");
    assert!(uuid::Uuid::parse_str(correlation).is_ok(), "{v}");
    // "2024-05-01 12:34:56Z", as Entra ID writes it.
    assert_eq!(timestamp.len(), 20, "{timestamp}");
    assert!(
        jiff::civil::DateTime::strptime("%Y-%m-%d %H:%M:%SZ", timestamp).is_ok(),
        "{timestamp}"
    );
    assert!(
        description.ends_with(&format!(
            "\r\nTrace ID: {trace}\r\nCorrelation ID: {correlation}\r\nTimestamp: {timestamp}"
        )),
        "{description}"
    );
}

#[tokio::test]
async fn token_errors_as_entra_writes_them() {
    let emu = start().await;
    let http = emulator_http(&emu);
    let token = |tenant: &str, form: Vec<(&'static str, String)>, request_id: Option<&str>| {
        let mut req = http
            .post(format!(
                "{}{tenant}/oauth2/v2.0/token",
                emu.authority_host()
            ))
            .form(&form);
        if let Some(id) = request_id {
            req = req.header("client-request-id", id);
        }
        async move {
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap())
        }
    };
    let base = |client_id: &str| {
        vec![
            ("grant_type", "client_credentials".to_string()),
            ("client_id", client_id.to_string()),
            ("scope", "https://management.azure.com/.default".to_string()),
        ]
    };
    let controller = world::TUTORIAL_CONTROLLER_CLIENT_ID;

    // A wrong client secret: 401 invalid_client, AADSTS7000215; the caller's request id comes
    // back as the correlation id.
    let request_id = "6f1a3c1e-8d2b-4a57-9c1e-2b3d4e5f6a7b";
    let mut form = base(controller);
    form.push(("client_secret", "wrong".into()));
    let (status, v) = token(TENANT, form, Some(request_id)).await;
    assert_eq!(status, 401, "{v}");
    assert_entra_error(&v, "invalid_client", 7000215);
    assert_eq!(v["correlation_id"], request_id);
    assert!(!v.to_string().contains("wrong"), "the secret is not echoed");

    // An unknown client: 400 unauthorized_client, AADSTS700016, naming the client and tenant.
    let ghost = "99999999-8888-7777-6666-555555555555";
    let mut form = base(ghost);
    form.push(("client_secret", "x".into()));
    let (status, v) = token(TENANT, form, None).await;
    assert_eq!(status, 400, "{v}");
    assert_entra_error(&v, "unauthorized_client", 700016);
    let description = v["error_description"].as_str().unwrap();
    assert!(
        description.contains(&format!("Application with identifier '{ghost}'"))
            && description.contains(TENANT),
        "{description}"
    );

    // An unknown tenant: AADSTS90002.
    let mut form = base(controller);
    form.push(("client_secret", world::TUTORIAL_CONTROLLER_SECRET.into()));
    let (status, v) = token("11111111-2222-3333-4444-555555555555", form, None).await;
    assert_eq!(status, 400, "{v}");
    assert_entra_error(&v, "invalid_request", 90002);

    // A federated assertion that matches none of the client's credentials: AADSTS70021, naming
    // what it presented.
    let assertion = unmatched_assertion();
    let mut form = base(controller);
    form.push((
        "client_assertion_type",
        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".into(),
    ));
    form.push(("client_assertion", assertion.clone()));
    let (status, v) = token(TENANT, form, None).await;
    assert_eq!(status, 400, "{v}");
    assert_entra_error(&v, "invalid_request", 70021);
    let description = v["error_description"].as_str().unwrap();
    assert!(
        description.contains("No matching federated identity record found")
            && description.contains("Assertion Subject: 'system:serviceaccount:nobody:nothing'"),
        "{description}"
    );
    assert!(
        !v.to_string().contains(&assertion),
        "the assertion is not echoed"
    );
    emu.shutdown().await;
}

/// The controller's own credentials (`azure_identity`'s, over the controller's HTTP client) meet
/// the emulator's Entra ID: a client secret and a federated token file get tokens; a wrong secret
/// is Entra ID's AADSTS7000215 in the error, and a client that does not trust the emulator's
/// authority is told so; neither error shows the secret.
#[tokio::test]
async fn the_controllers_credentials_sign_in_and_report_refusals_without_secrets() {
    use secrecy::{ExposeSecret, SecretString};
    use std::time::Duration;
    use uami_azure::auth::{CredentialConfig, build_credential, decode_claims};
    use uami_azure::http::{AzureCa, http_client};

    let emu = start().await;
    let trusted = http_client(&AzureCa::from_pem(emu.ca_pem().unwrap()).unwrap());
    let scope = "https://management.azure.com/.default";
    let secret = |s: &str| CredentialConfig::ClientSecret {
        authority_host: emu.authority_host(),
        tenant_id: TENANT.into(),
        client_id: world::TUTORIAL_CONTROLLER_CLIENT_ID.into(),
        client_secret: SecretString::from(s.to_string()),
    };
    let margin = Duration::from_secs(300);

    let good = build_credential(
        secret(world::TUTORIAL_CONTROLLER_SECRET),
        trusted.clone(),
        margin,
    );
    let token = good.get_token(scope).await.unwrap();
    let claims = decode_claims(&token.token).unwrap();
    assert_eq!(claims.tid.as_deref(), Some(TENANT));
    assert_eq!(
        claims.appid.as_deref(),
        Some(world::TUTORIAL_CONTROLLER_CLIENT_ID)
    );
    assert!(token.expires_on > jiff::Timestamp::now());
    assert!(!format!("{token:?} {token}").contains(token.token.expose_secret()));

    let wrong_secret = "wrong-secret-7f3a";
    let bad = build_credential(secret(wrong_secret), trusted.clone(), margin);
    let e = bad.get_token(scope).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "token request rejected by Entra ID: HTTP 401, error invalid_client, AADSTS7000215"
    );
    assert!(!format!("{e:?}").contains(wrong_secret));

    let untrusted = build_credential(
        secret(world::TUTORIAL_CONTROLLER_SECRET),
        reqwest::Client::new(),
        margin,
    );
    let e = untrusted.get_token(scope).await.unwrap_err().to_string();
    assert!(
        e.starts_with("token endpoint unreachable: ") && e.contains("certificate"),
        "{e}"
    );
    assert!(!e.contains(world::TUTORIAL_CONTROLLER_SECRET), "{e}");

    // Workload identity: a federated token that matches none of the client's credentials is
    // refused with AADSTS70021; a missing file names the file.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    let assertion = unmatched_assertion();
    std::fs::write(&file, &assertion).unwrap();
    let wi = build_credential(
        CredentialConfig::WorkloadIdentity {
            authority_host: emu.authority_host(),
            tenant_id: TENANT.into(),
            client_id: world::TUTORIAL_CONTROLLER_CLIENT_ID.into(),
            token_file: file.clone(),
        },
        trusted.clone(),
        margin,
    );
    let e = wi.get_token(scope).await.unwrap_err();
    assert!(e.to_string().ends_with("AADSTS70021"), "{e}");
    assert!(!format!("{e:?}").contains(&assertion));
    std::fs::remove_file(&file).unwrap();
    let e = wi.get_token(scope).await.unwrap_err().to_string();
    assert!(
        e.starts_with("cannot read the federated token file") && e.contains("token"),
        "{e}"
    );
    emu.shutdown().await;
}
