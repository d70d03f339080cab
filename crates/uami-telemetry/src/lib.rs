//! Observability shared by the controller and the agent: structured logs, Prometheus metrics and
//! the admin HTTP endpoints (`/metrics`, `/healthz`, `/readyz`).

pub mod admin;
pub mod logging;
pub mod metrics;
