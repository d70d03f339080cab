//! The agent's configuration: one clap struct with environment fallbacks.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::controller::config::parse_duration;
use crate::telemetry::logging::LogFormat;

/// `uami-controller agent`: obtain tokens through IMDS for the identities bound to this VM and
/// verify their access.
#[derive(clap::Args, Clone, Debug)]
pub struct AgentArgs {
    /// Kubeconfig to use; in-cluster configuration when unset.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// IMDS endpoint of this VM.
    #[arg(
        long,
        env = "UAMI_IMDS_ENDPOINT",
        default_value = "http://169.254.169.254"
    )]
    pub imds_endpoint: url::Url,

    /// Azure Resource Manager endpoint, for the access checks.
    #[arg(
        long,
        env = "UAMI_ARM_ENDPOINT",
        default_value = "https://management.azure.com/"
    )]
    pub arm_endpoint: url::Url,

    /// How often every binding of this VM is checked, besides changes.
    #[arg(long, env = "UAMI_AGENT_INTERVAL", default_value = "60s", value_parser = parse_duration)]
    pub interval: Duration,

    /// Renew a cached token this long before it expires (at most half its lifetime).
    #[arg(long, env = "UAMI_AGENT_REFRESH_MARGIN", default_value = "5m", value_parser = parse_duration)]
    pub refresh_margin: Duration,

    /// Address of the admin server (`/metrics`, `/healthz`, `/readyz`).
    #[arg(long, env = "UAMI_ADMIN_LISTEN", default_value = "127.0.0.1:8081")]
    pub admin_listen: SocketAddr,

    /// Log format.
    #[arg(long, value_enum, env = "UAMI_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
}
