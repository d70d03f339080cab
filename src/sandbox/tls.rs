//! The HTTPS port. kubectl sends credentials (bearer tokens) only over TLS, so a service
//! account's kubeconfig points here: the same API as the plain-HTTP port, behind a certificate
//! made at start for `127.0.0.1` and `localhost` (the kubeconfig carries it as the certificate
//! authority).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use tokio_util::sync::CancellationToken;

use super::SandboxError;

/// A running HTTPS listener.
pub struct Https {
    /// Bound address.
    pub addr: SocketAddr,
    /// The certificate (PEM), which is its own authority.
    pub ca_pem: String,
    /// The accept loop.
    pub task: tokio::task::JoinHandle<()>,
}

/// Serve `router` over TLS on `listen` until `stop`.
pub async fn serve(
    listen: SocketAddr,
    router: Router,
    stop: CancellationToken,
) -> Result<Https, SandboxError> {
    let bad = |e: String| SandboxError::Input(format!("TLS: {e}"));
    let certified =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .map_err(|e| bad(e.to_string()))?;
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| bad(e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(vec![certified.cert.der().clone()], key)
    .map_err(|e| bad(e.to_string()))?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| SandboxError::Bind {
            addr: listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| SandboxError::Bind {
        addr: listen,
        source,
    })?;
    let task = tokio::spawn(async move {
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
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service);
                tokio::select! {
                    _ = conn => {}
                    _ = stop.cancelled() => {}
                }
            });
        }
    });
    Ok(Https {
        addr,
        ca_pem: certified.cert.pem(),
        task,
    })
}
