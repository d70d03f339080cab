//! The controller's configuration: one clap struct with environment fallbacks, read once at
//! start-up. Nothing else reads the environment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use uami_azure::cli::SharedArgs;
pub use uami_azure::cli::parse_duration;

/// How the controller authenticates to Azure Resource Manager.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CredentialMode {
    /// Workload identity: a federated token file exchanged at the authority host (AKS).
    WorkloadIdentity,
    /// A service principal's client secret.
    ClientSecret,
    /// The managed identity of the node, through IMDS.
    ManagedIdentity,
}

/// `uami-controller run`: reconcile identities, bindings and grants against ARM.
#[derive(clap::Args, Clone, Debug)]
pub struct RunArgs {
    /// The endpoints and log format the agent takes too.
    #[command(flatten)]
    pub shared: SharedArgs,

    /// Audience of ARM tokens.
    #[arg(
        long,
        env = "UAMI_ARM_AUDIENCE",
        default_value = "https://management.azure.com/"
    )]
    pub arm_audience: String,

    /// Microsoft Entra authority host.
    #[arg(
        long,
        env = "AZURE_AUTHORITY_HOST",
        default_value = "https://login.microsoftonline.com/"
    )]
    pub authority_host: url::Url,

    /// How to authenticate to ARM.
    #[arg(
        long,
        value_enum,
        env = "UAMI_CREDENTIAL",
        default_value = "workload-identity"
    )]
    pub credential: CredentialMode,

    /// Tenant id of the controller's identity.
    #[arg(long, env = "AZURE_TENANT_ID", value_name = "GUID")]
    pub tenant_id: Option<String>,

    /// Client id of the controller's identity.
    #[arg(long, env = "AZURE_CLIENT_ID", value_name = "GUID")]
    pub client_id: Option<String>,

    /// File holding the client secret (client-secret mode).
    #[arg(long, env = "AZURE_CLIENT_SECRET_FILE", value_name = "FILE")]
    pub client_secret_file: Option<PathBuf>,

    /// Federated token file (workload-identity mode); re-read on every exchange.
    #[arg(long, env = "AZURE_FEDERATED_TOKEN_FILE", value_name = "FILE")]
    pub federated_token_file: Option<PathBuf>,

    /// Name of this cluster (required): identities are tagged
    /// `uami.dev-owner: <cluster>/<namespace>/<name>`, so that two clusters with the same
    /// namespaces never take over or delete each other's identities. 1-63 letters, digits, `.`,
    /// `_` or `-`.
    #[arg(long, env = "UAMI_CLUSTER_NAME", value_parser = parse_cluster_name)]
    pub cluster_name: String,

    /// The cluster's OIDC issuer URL (`az aks show --query oidcIssuerProfile.issuerUrl`), exactly
    /// as its service account tokens carry it in `iss`. Needed for service account bindings
    /// (workload identity); without it they are refused with `NoOidcIssuer`.
    #[arg(long, env = "UAMI_OIDC_ISSUER", value_name = "URL")]
    pub oidc_issuer: Option<String>,

    /// Subscription used where a spec names none.
    #[arg(long, env = "UAMI_DEFAULT_SUBSCRIPTION", value_name = "GUID")]
    pub default_subscription: Option<String>,

    /// Period of the drift check of each object (jittered by up to 10%).
    #[arg(long, env = "UAMI_RESYNC_PERIOD", default_value = "10m", value_parser = parse_duration)]
    pub resync_period: Duration,

    /// Role assignments per subscription from which RoleGrants are refused
    /// (`RoleAssignmentLimitReached`) instead of asking Azure: Azure's fixed limit, 4000, or
    /// lower to leave room for assignments made by others. Warnings start at 90% of it.
    #[arg(long, env = "UAMI_ROLE_ASSIGNMENT_LIMIT", default_value_t = crate::budget::ROLE_ASSIGNMENTS_PER_SUBSCRIPTION)]
    pub role_assignment_limit: usize,

    /// Objects reconciled at once, per kind.
    #[arg(long, env = "UAMI_CONCURRENCY", default_value_t = 4)]
    pub concurrency: u16,

    /// ARM reads per second per subscription once the remaining budget ARM reports runs low
    /// (ARM refills 25/s).
    #[arg(long, env = "UAMI_ARM_READS_FLOOR", default_value_t = 20.0)]
    pub arm_reads_floor: f64,

    /// ARM reads per second per subscription at most, while budget remains (ARM's bucket: 250).
    #[arg(long, env = "UAMI_ARM_READS_CEILING", default_value_t = 250.0)]
    pub arm_reads_ceiling: f64,

    /// ARM writes (and deletes) per second per subscription once the remaining budget ARM
    /// reports runs low (ARM refills 10/s).
    #[arg(long, env = "UAMI_ARM_WRITES_FLOOR", default_value_t = 8.0)]
    pub arm_writes_floor: f64,

    /// ARM writes (and deletes) per second per subscription at most, while budget remains
    /// (ARM's bucket: 200).
    #[arg(long, env = "UAMI_ARM_WRITES_CEILING", default_value_t = 100.0)]
    pub arm_writes_ceiling: f64,

    /// How long one ARM request may take before it is abandoned (and retried as a transport
    /// error; every write is idempotent, so a retry after a lost answer is safe).
    #[arg(long, env = "UAMI_ARM_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub arm_timeout: Duration,

    /// Address of the admin server (`/metrics`, `/healthz`, `/readyz`).
    #[arg(long, env = "UAMI_ADMIN_LISTEN", default_value = "0.0.0.0:8080")]
    pub admin_listen: SocketAddr,

    /// Elect a leader through a Lease so that only one replica reconciles.
    #[arg(long, env = "UAMI_LEADER_ELECTION", default_value_t = false)]
    pub leader_election: bool,

    /// Name of the leader Lease.
    #[arg(long, env = "UAMI_LEASE_NAME", default_value = "uami-controller")]
    pub lease_name: String,

    /// Namespace of the leader Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "uami-system")]
    pub lease_namespace: String,

    /// This replica's identity in the Lease.
    #[arg(long, env = "POD_NAME")]
    pub holder_identity: Option<String>,

    /// Lease duration.
    #[arg(long, env = "UAMI_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    pub lease_duration: Duration,
}

/// A cluster name: 1-63 ASCII letters, digits, `.`, `_` or `-`, starting with a letter or digit
/// (no `/`, which separates the parts of the owner tag).
pub fn parse_cluster_name(s: &str) -> Result<String, String> {
    let ok = (1..=63).contains(&s.len())
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?} is not a cluster name (1-63 letters, digits, '.', '_' or '-', starting with a letter or digit)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_names() {
        assert!(parse_cluster_name("aks-prod.westeurope").is_ok());
        for bad in ["", "a/b", "-x", "é", &"x".repeat(64)] {
            assert!(parse_cluster_name(bad).is_err(), "{bad:?}");
        }
    }
}
