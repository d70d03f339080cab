//! The one HTTP client shape of ARM, Entra ID and IMDS requests: timeouts, pooling, a
//! `User-Agent`, and the certificate authorities trusted besides the system's.

use std::time::Duration;

/// Certificate authorities that the clients of ARM, Entra ID and IMDS trust besides the
/// system's roots (`--azure-ca-file`): for a private endpoint that serves a certificate of its
/// own authority, such as the emulator. Empty with Azure, whose certificates chain to public
/// roots.
#[derive(Clone, Debug, Default)]
pub struct AzureCa(Vec<reqwest::Certificate>);

impl AzureCa {
    /// The certificates of a PEM text (one or more `BEGIN CERTIFICATE` blocks).
    pub fn from_pem(pem: &str) -> Result<Self, String> {
        let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
            .map_err(|e| format!("not a PEM certificate bundle: {e}"))?;
        if certs.is_empty() {
            return Err("no PEM certificate (-----BEGIN CERTIFICATE-----)".into());
        }
        Ok(Self(certs))
    }

    /// The certificates of a PEM file.
    pub fn from_file(path: &std::path::Path) -> Result<Self, String> {
        let pem = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::from_pem(&pem).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Whether no authority is added.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The `User-Agent` of the controller's requests.
pub fn user_agent(instance: Option<&str>) -> String {
    let version = env!("CARGO_PKG_VERSION");
    match instance {
        Some(i) => format!("uami-controller/{version} ({i})"),
        None => format!("uami-controller/{version}"),
    }
}

/// One shared HTTP client with timeouts, for ARM, Entra ID and IMDS, trusting the system's
/// roots and `ca`.
pub fn http_client(ca: &AzureCa) -> reqwest::Client {
    http_client_with(&user_agent(None), Duration::from_secs(60), ca)
}

/// [`http_client`] with a `User-Agent` and a request timeout.
pub fn http_client_with(user_agent: &str, timeout: Duration, ca: &AzureCa) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .user_agent(user_agent)
        .connect_timeout(Duration::from_secs(10).min(timeout))
        .timeout(timeout)
        .pool_idle_timeout(Duration::from_secs(90));
    if !ca.is_empty() {
        builder = builder.tls_certs_merge(ca.0.iter().cloned());
    }
    builder.build().unwrap_or_else(|e| {
        // Only a TLS backend that cannot load its roots fails here; every request then fails
        // with that backend's error, which names the cause.
        tracing::error!(error = %e, "cannot build the HTTP client; using the defaults");
        reqwest::Client::default()
    })
}
