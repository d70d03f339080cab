//! The agent's configuration: one clap struct with environment fallbacks.

use std::net::SocketAddr;
use std::time::Duration;

use uami_azure::cli::{SharedArgs, parse_duration};

/// `uami-controller agent`: obtain tokens through IMDS for the identities bound to this VM and
/// verify their access.
#[derive(clap::Args, Clone, Debug)]
pub struct AgentArgs {
    /// The endpoints and log format the controller takes too.
    #[command(flatten)]
    pub shared: SharedArgs,

    /// How often every binding of this VM is checked, besides changes.
    #[arg(long, env = "UAMI_AGENT_INTERVAL", default_value = "60s", value_parser = parse_duration)]
    pub interval: Duration,

    /// Renew a cached token this long before it expires (at most half its lifetime).
    #[arg(long, env = "UAMI_AGENT_REFRESH_MARGIN", default_value = "5m", value_parser = parse_duration)]
    pub refresh_margin: Duration,

    /// How long IMDS may not know an identity the controller reports assigned before the
    /// binding says so (`IdentityNotAssigned`); until then it waits, as an assignment takes a
    /// while to reach IMDS.
    #[arg(long, env = "UAMI_AGENT_ASSIGNMENT_PROPAGATION", default_value = "2m", value_parser = parse_duration)]
    pub assignment_propagation: Duration,

    /// Address of the admin server (`/metrics`, `/healthz`, `/readyz`).
    #[arg(long, env = "UAMI_ADMIN_LISTEN", default_value = "127.0.0.1:8081")]
    pub admin_listen: SocketAddr,
}
