//! Service account tokens as kube-apiserver issues them: the `token` subresource of
//! ServiceAccounts (`POST /api/v1/namespaces/{ns}/serviceaccounts/{name}/token`, an
//! `authentication.k8s.io/v1` TokenRequest) answers a JWT signed with the sandbox's own ES256 key,
//! made at start, bound to a Pod (with its Node), a Secret or a Node when it asks; OIDC discovery (`/.well-known/openid-configuration`, `/openid/v1/jwks`) publishes
//! the public key so that a relying party (Entra ID, or the emulator standing in for it) can
//! verify the token, exactly as it does with an AKS cluster's OIDC issuer.

use serde_json::{Value, json};

/// Shortest lifetime a TokenRequest may ask for (kube-apiserver refuses less than 10 minutes).
pub const MIN_EXPIRATION_SECONDS: i64 = 600;
/// Lifetime when the request names none.
pub const DEFAULT_EXPIRATION_SECONDS: i64 = 3600;
/// Longest lifetime (`2^32` seconds, kube-apiserver's bound).
pub const MAX_EXPIRATION_SECONDS: i64 = 1 << 32;

/// The sandbox's token signer and OIDC issuer.
pub struct Issuer {
    /// The issuer URL (`iss`), the sandbox's base URL.
    pub url: String,
    kid: String,
    key: jsonwebtoken::EncodingKey,
    jwk: Value,
}

/// Why a key could not be made.
#[derive(Debug, thiserror::Error)]
#[error("cannot make the service account signing key: {0}")]
pub struct KeyError(String);

impl Issuer {
    /// A fresh P-256 key for the issuer at `url`.
    pub fn generate(url: &str) -> Result<Self, KeyError> {
        use p256::pkcs8::EncodePrivateKey;
        // A random scalar is a valid key unless it is zero or not below the group order, which
        // happens with negligible probability; draw again then.
        let secret = loop {
            let bytes: [u8; 32] = rand::random();
            if let Ok(k) = p256::SecretKey::from_slice(&bytes) {
                break k;
            }
        };
        let der = secret.to_pkcs8_der().map_err(|e| KeyError(e.to_string()))?;
        let key = jsonwebtoken::EncodingKey::from_ec_der(der.as_bytes());
        let mut jwk =
            jsonwebtoken::jwk::Jwk::from_encoding_key(&key, jsonwebtoken::Algorithm::ES256)
                .map_err(|e| KeyError(e.to_string()))?;
        let kid = uuid::Uuid::new_v4().simple().to_string();
        jwk.common.key_id = Some(kid.clone());
        jwk.common.public_key_use = Some(jsonwebtoken::jwk::PublicKeyUse::Signature);
        let jwk = serde_json::to_value(&jwk).map_err(|e| KeyError(e.to_string()))?;
        Ok(Self {
            url: url.trim_end_matches('/').to_string(),
            kid,
            key,
            jwk,
        })
    }

    /// `/.well-known/openid-configuration`.
    pub fn openid_configuration(&self) -> Value {
        json!({
            "issuer": self.url,
            "jwks_uri": format!("{}/openid/v1/jwks", self.url),
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
        })
    }

    /// `/openid/v1/jwks`.
    pub fn jwks(&self) -> Value {
        json!({"keys": [self.jwk]})
    }

    /// Sign `claims` with the issuer's key.
    pub fn sign(&self, claims: &Value) -> Result<String, KeyError> {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.key).map_err(|e| KeyError(e.to_string()))
    }
}

/// A refused TokenRequest.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// A field of the request is not valid: the field and the cause's message.
    Invalid(&'static str, String),
    /// Anything else: HTTP code, reason, message.
    Other(u16, &'static str, String),
}

/// The object a token is bound to (its `boundObjectRef`, found), as its claims name it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Bound {
    /// `pod`, `secret` or `node`.
    pub claim: &'static str,
    /// Its name.
    pub name: String,
    /// Its uid.
    pub uid: String,
    /// For a pod, the node it is on (name and uid).
    pub node: Option<(String, String)>,
}

/// The audiences and lifetime a TokenRequest asks for (defaulted), or why it is not valid.
pub fn check(issuer: &Issuer, body: &Value) -> Result<(Vec<String>, i64), Refusal> {
    let spec = &body["spec"];
    let mut audiences: Vec<String> = spec["audiences"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    if audiences.is_empty() {
        // kube-apiserver's default audience is its own issuer (`--api-audiences`).
        audiences.push(issuer.url.clone());
    }
    let seconds = match &spec["expirationSeconds"] {
        Value::Null => DEFAULT_EXPIRATION_SECONDS,
        v => v.as_i64().ok_or(Refusal::Other(
            400,
            "BadRequest",
            "spec.expirationSeconds must be an integer".to_string(),
        ))?,
    };
    if seconds < MIN_EXPIRATION_SECONDS {
        return Err(Refusal::Invalid(
            "spec.expirationSeconds",
            format!("Invalid value: {seconds}: may not specify a duration less than 10 minutes"),
        ));
    }
    if seconds > MAX_EXPIRATION_SECONDS {
        return Err(Refusal::Invalid(
            "spec.expirationSeconds",
            format!(
                "Invalid value: {seconds}: may not specify a duration larger than 2^32 seconds"
            ),
        ));
    }
    Ok((audiences, seconds))
}

/// Answer a TokenRequest for the ServiceAccount `sa` (as stored) with the request `body`, bound
/// to `bound`: the TokenRequest with `status.token` and `status.expirationTimestamp`, as
/// kube-apiserver does.
pub fn token_request(
    issuer: &Issuer,
    sa: &Value,
    body: &Value,
    bound: Option<&Bound>,
) -> Result<Value, Refusal> {
    let spec = &body["spec"];
    let ns = sa["metadata"]["namespace"].as_str().unwrap_or_default();
    let name = sa["metadata"]["name"].as_str().unwrap_or_default();
    let uid = sa["metadata"]["uid"].as_str().unwrap_or_default();
    let (audiences, seconds) = check(issuer, body)?;
    let now = jiff::Timestamp::now().as_second();
    let exp = now + seconds;
    let mut claims = json!({
        "aud": audiences,
        "exp": exp,
        "iat": now,
        "iss": issuer.url,
        "jti": uuid::Uuid::new_v4().to_string(),
        "nbf": now,
        "sub": format!("system:serviceaccount:{ns}:{name}"),
        "kubernetes.io": {
            "namespace": ns,
            "serviceaccount": {"name": name, "uid": uid},
        },
    });
    if let Some(b) = bound {
        claims["kubernetes.io"][b.claim] = json!({"name": b.name, "uid": b.uid});
        if let Some((node, node_uid)) = &b.node {
            claims["kubernetes.io"]["node"] = json!({"name": node, "uid": node_uid});
        }
    }
    let token = issuer
        .sign(&claims)
        .map_err(|e| Refusal::Other(500, "InternalError", e.to_string()))?;
    let expiration = jiff::Timestamp::from_second(exp)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default();
    let mut spec_out = spec.clone();
    if !spec_out.is_object() {
        spec_out = json!({});
    }
    spec_out["audiences"] = json!(audiences);
    spec_out["expirationSeconds"] = json!(seconds);
    Ok(json!({
        "kind": "TokenRequest",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"name": name, "namespace": ns, "creationTimestamp": null},
        "spec": spec_out,
        "status": {"token": token, "expirationTimestamp": expiration},
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa() -> Value {
        json!({"metadata": {"name": "app", "namespace": "team-a", "uid": "u-1"}})
    }

    /// A TokenRequest of `spec` for service account `team-a/app`, bound to nothing.
    fn request(issuer: &Issuer, spec: Value) -> Result<Value, Refusal> {
        token_request(issuer, &sa(), &json!({ "spec": spec }), None)
    }

    #[test]
    fn tokens_carry_the_apiserver_claims_and_verify_against_the_jwks() {
        let issuer = Issuer::generate("http://127.0.0.1:1/").unwrap();
        let out = request(
            &issuer,
            json!({"audiences": ["api://AzureADTokenExchange"], "expirationSeconds": 600}),
        )
        .unwrap();
        let token = out["status"]["token"].as_str().unwrap();
        let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_value(issuer.jwks()).unwrap();
        let header = jsonwebtoken::decode_header(token).unwrap();
        assert_eq!(header.alg, jsonwebtoken::Algorithm::ES256);
        let jwk = jwks.find(header.kid.as_deref().unwrap()).unwrap();
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
        v.set_audience(&["api://AzureADTokenExchange"]);
        v.set_issuer(&["http://127.0.0.1:1"]);
        let claims = jsonwebtoken::decode::<Value>(
            token,
            &jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap(),
            &v,
        )
        .unwrap()
        .claims;
        assert_eq!(claims["sub"], "system:serviceaccount:team-a:app");
        assert_eq!(claims["kubernetes.io"]["serviceaccount"]["uid"], "u-1");
        assert_eq!(claims["kubernetes.io"]["namespace"], "team-a");
        assert_eq!(
            claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
            600
        );
        for c in ["nbf", "jti"] {
            assert!(claims.get(c).is_some(), "{c}");
        }
        // Another issuer's key does not verify it.
        let other = Issuer::generate("http://127.0.0.1:1/").unwrap();
        let jwk: jsonwebtoken::jwk::Jwk =
            serde_json::from_value(other.jwks()["keys"][0].clone()).unwrap();
        assert!(
            jsonwebtoken::decode::<Value>(
                token,
                &jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap(),
                &v
            )
            .is_err()
        );
    }

    #[test]
    fn lifetimes_below_ten_minutes_are_refused_and_audiences_default_to_the_issuer() {
        let issuer = Issuer::generate("http://127.0.0.1:1").unwrap();
        let e = request(&issuer, json!({"expirationSeconds": 599})).unwrap_err();
        let Refusal::Invalid(field, message) = e else {
            panic!("{e:?}")
        };
        assert_eq!(field, "spec.expirationSeconds");
        assert!(message.contains("10 minutes"), "{message}");
        let out = request(&issuer, json!({})).unwrap();
        assert_eq!(out["spec"]["audiences"], json!(["http://127.0.0.1:1"]));
        assert_eq!(out["spec"]["expirationSeconds"], 3600);
    }
}
