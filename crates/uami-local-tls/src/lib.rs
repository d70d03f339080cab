//! TLS for the local servers: the sandbox's HTTPS port and the emulator's ARM and Entra ID
//! listener. A certificate authority is made at start, with a server certificate it signs for
//! the loopback names (`localhost`, `127.0.0.1`, `::1`); clients trust the authority's PEM (a
//! kubeconfig's `certificate-authority-data`, the controller's `--azure-ca-file`, curl's
//! `--cacert`, Python's `REQUESTS_CA_BUNDLE`). Nothing here knows what it serves.

use std::sync::Arc;

use axum::Router;
use tokio_util::sync::CancellationToken;

/// The names the server certificate covers.
pub const LOOPBACK_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// Why the certificates or the TLS configuration could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A key or a certificate could not be generated.
    #[error("cannot make the certificates: {0}")]
    Certificate(#[from] rcgen::Error),
    /// rustls refused the configuration.
    #[error("cannot configure TLS: {0}")]
    Config(#[from] rustls::Error),
}

/// A certificate authority made at start and the server configuration of a certificate it
/// signed for the loopback names.
#[derive(Clone)]
pub struct LocalCa {
    ca_pem: String,
    config: Arc<rustls::ServerConfig>,
}

impl std::fmt::Debug for LocalCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCa").finish_non_exhaustive()
    }
}

impl LocalCa {
    /// A new authority (named `common_name`) and a server certificate for [`LOOPBACK_NAMES`].
    /// The keys stay in memory; only the authority's certificate is ever written out.
    pub fn for_loopback(common_name: &str) -> Result<Self, TlsError> {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, KeyUsagePurpose,
        };
        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::default();
        ca.distinguished_name.push(DnType::CommonName, common_name);
        // It signs server certificates only, no intermediate authorities.
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca, ca_key);

        let server_key = KeyPair::generate()?;
        let mut server = CertificateParams::new(
            LOOPBACK_NAMES
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>(),
        )?;
        server
            .distinguished_name
            .push(DnType::CommonName, LOOPBACK_NAMES[0]);
        server.is_ca = IsCa::ExplicitNoCa;
        server.use_authority_key_identifier_extension = true;
        server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_cert = server.signed_by(&server_key, &issuer)?;

        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(server_key.serialize_der().into());
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![server_cert.der().clone(), ca_cert.der().clone()], key)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            ca_pem: ca_cert.pem(),
            config: Arc::new(config),
        })
    }

    /// The authority's certificate (PEM), what clients trust.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Serve `router` over TLS on `listener` until `stop`: each connection's handshake runs on
    /// its own task, so a client that stalls in it holds up no one else.
    pub fn serve(
        &self,
        listener: tokio::net::TcpListener,
        router: Router,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.config.clone());
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    _ = stop.cancelled() => break,
                    accepted = listener.accept() => match accepted {
                        Ok((s, _)) => s,
                        Err(_) => continue,
                    },
                };
                let acceptor = acceptor.clone();
                let router = router.clone();
                let stop = stop.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let service = hyper_util::service::TowerToHyperService::new(router);
                    let conn = hyper::server::conn::http1::Builder::new()
                        .timer(hyper_util::rt::TokioTimer::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service);
                    tokio::select! {
                        _ = conn => {}
                        _ = stop.cancelled() => {}
                    }
                });
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Serve on `addr` and GET `/` by each name with a client trusting only the system's roots
    /// and the authority.
    async fn answers(ca: &LocalCa, addr: &str, names: &[&str]) -> Vec<Result<u16, String>> {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = CancellationToken::new();
        let task = ca.serve(
            listener,
            Router::new().route("/", axum::routing::get(|| async { "ok" })),
            stop.clone(),
        );
        let trusting = reqwest::Client::builder()
            .tls_certs_merge(reqwest::Certificate::from_pem_bundle(ca.ca_pem().as_bytes()).unwrap())
            .build()
            .unwrap();
        let mut out = Vec::new();
        for name in names {
            let r = trusting.get(format!("https://{name}:{port}/")).send().await;
            out.push(r.map(|r| r.status().as_u16()).map_err(|e| format!("{e:?}")));
        }
        let untrusting = reqwest::Client::new();
        let refused = untrusting
            .get(format!("https://{}:{port}/", names[0]))
            .send()
            .await;
        assert!(
            refused.is_err(),
            "a client without the authority must refuse the server"
        );
        stop.cancel();
        let _ = task.await;
        out
    }

    #[tokio::test]
    async fn clients_trusting_the_authority_reach_every_loopback_name() {
        let ca = LocalCa::for_loopback("test CA").unwrap();
        let got = answers(&ca, "127.0.0.1:0", &["127.0.0.1", "localhost"]).await;
        assert!(got.iter().all(|r| r == &Ok(200)), "{got:?}");
        if std::net::TcpListener::bind("[::1]:0").is_ok() {
            let got = answers(&ca, "[::1]:0", &["[::1]"]).await;
            assert_eq!(got, vec![Ok(200)]);
        }
    }
}
