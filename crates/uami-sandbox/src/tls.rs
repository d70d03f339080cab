//! The HTTPS port. kubectl sends credentials (bearer tokens) only over TLS, so a service
//! account's kubeconfig points here: the same API as the plain-HTTP port, behind a certificate
//! for the loopback names signed by an authority made at start (the kubeconfig carries the
//! authority as `certificate-authority-data`).

use std::net::SocketAddr;

use axum::Router;
use tokio_util::sync::CancellationToken;

use super::SandboxError;
use uami_local_tls::LocalCa;

/// A running HTTPS listener.
pub struct Https {
    /// Bound address.
    pub addr: SocketAddr,
    /// The certificate authority (PEM) of its server certificate.
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
    let ca = LocalCa::for_loopback("uami-controller sandbox CA")
        .map_err(|e| SandboxError::Input(format!("TLS: {e}")))?;
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
    let task = ca.serve(listener, router, stop);
    Ok(Https {
        addr,
        ca_pem: ca.ca_pem().to_string(),
        task,
    })
}
