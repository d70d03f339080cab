//! The access tokens the emulator's Entra ID and IMDS issue and its ARM and data planes accept:
//! JWTs signed with a key made at start (HS256), with the claims Azure's tokens carry.

use crate::Inner;

/// Claims of tokens the emulator issues.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Claims {
    pub aud: String,
    pub iss: String,
    pub tid: String,
    pub oid: String,
    pub sub: String,
    pub appid: String,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
}

/// Issue a signed token for `oid` (application `appid`) and `audience`.
pub fn issue(inner: &Inner, oid: &str, appid: &str, audience: &str) -> String {
    let now = jiff::Timestamp::now().as_second();
    let tenant = &inner.world.tenant_id;
    let claims = Claims {
        aud: audience.to_string(),
        iss: format!("https://sts.windows.net/{tenant}/"),
        tid: tenant.clone(),
        oid: oid.to_string(),
        sub: oid.to_string(),
        appid: appid.to_string(),
        iat: now,
        nbf: now - 5,
        exp: now + inner.world.token_lifetime_seconds as i64,
    };
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(&inner.key),
    )
    .unwrap_or_default();
    inner.tokens.lock().push(token.clone());
    token
}

/// Verify a token the emulator issued; `Err(code, message)` in ARM's terms.
pub fn verify(inner: &Inner, token: &str) -> Result<Claims, (&'static str, String)> {
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    v.validate_aud = false;
    v.leeway = 0;
    v.set_required_spec_claims(&["exp"]);
    match jsonwebtoken::decode::<Claims>(
        token,
        &jsonwebtoken::DecodingKey::from_secret(&inner.key),
        &v,
    ) {
        Ok(d) => Ok(d.claims),
        Err(e) if matches!(e.kind(), jsonwebtoken::errors::ErrorKind::ExpiredSignature) => Err((
            "ExpiredAuthenticationToken",
            "The access token expiry UTC time is earlier than current UTC time.".into(),
        )),
        Err(_) => Err((
            "InvalidAuthenticationToken",
            "The access token is invalid.".into(),
        )),
    }
}
