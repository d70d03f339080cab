//! The admin HTTP server: `/metrics` (Prometheus text), `/healthz` (the process serves) and
//! `/readyz` (caches synced and the component ready to work).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use parking_lot::Mutex;
use prometheus_client::registry::Registry;

/// What the admin endpoints serve.
#[derive(Clone)]
pub struct AdminState {
    /// The metrics registry.
    pub registry: Arc<Mutex<Registry>>,
    /// Set once the component is ready.
    pub ready: Arc<AtomicBool>,
}

impl AdminState {
    /// A fresh state around `registry`, not ready yet.
    pub fn new(registry: Registry) -> Self {
        Self {
            registry: Arc::new(Mutex::new(registry)),
            ready: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Mark ready or not ready.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }
}

/// The admin router.
pub fn app(state: AdminState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    let mut body = String::new();
    let encoded = {
        let registry = state.registry.lock();
        prometheus_client::encoding::text::encode(&mut body, &registry)
    };
    match encoded {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    if state.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

/// Serve the admin router on `addr` until `shutdown` resolves; returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    state: AdminState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app(state))
            .with_graceful_shutdown(shutdown)
            .await;
    });
    Ok(local)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    #[tokio::test]
    async fn readyz_follows_state_and_metrics_encode() {
        let mut registry = Registry::default();
        let m = crate::metrics::ReconcileMetrics::register(&mut registry);
        m.observe("RoleGrant", "success", std::time::Duration::from_millis(3));
        let state = AdminState::new(registry);
        let get = |path: &str| Request::get(path).body(Body::empty()).unwrap();
        let r = app(state.clone()).oneshot(get("/readyz")).await.unwrap();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        state.set_ready(true);
        let r = app(state.clone()).oneshot(get("/readyz")).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let r = app(state).oneshot(get("/metrics")).await.unwrap();
        let body = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
        let text = String::from_utf8(body.to_vec()).unwrap();
        assert!(
            text.contains(r#"uami_reconciles_total{kind="RoleGrant",result="success"} 1"#),
            "{text}"
        );
    }
}
