//! What the `run` and `agent` commands share: the Kubernetes and Azure endpoints, the log
//! format, and how durations are written on the command line.

use std::path::PathBuf;
use std::time::Duration;

use crate::auth::imds::IMDS_ENDPOINT;
use crate::client::PUBLIC_ARM_ENDPOINT;
use crate::http::AzureCa;
use uami_telemetry::logging::LogFormat;

/// Arguments of both `run` and `agent`.
#[derive(clap::Args, Clone, Debug)]
pub struct SharedArgs {
    /// Kubeconfig to use; in-cluster configuration when unset.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// Azure Resource Manager endpoint (the controller's calls, the agent's access checks).
    #[arg(long, env = "UAMI_ARM_ENDPOINT", default_value = PUBLIC_ARM_ENDPOINT)]
    pub arm_endpoint: url::Url,

    /// IMDS endpoint of this VM (the agent's tokens, and the controller's in the
    /// managed-identity credential mode).
    #[arg(long, env = "UAMI_IMDS_ENDPOINT", default_value = IMDS_ENDPOINT)]
    pub imds_endpoint: url::Url,

    /// A PEM file of certificate authorities trusted for ARM and Entra ID besides the system's:
    /// for a private endpoint with a certificate of its own authority, such as the emulator's
    /// (`uami-controller emulator --ca-out FILE`). Leave unset with Azure.
    #[arg(long, env = "UAMI_AZURE_CA_FILE", value_name = "FILE")]
    pub azure_ca_file: Option<PathBuf>,

    /// Blob Storage's endpoint for access checks of Blob data roles (the agent's of VM bindings,
    /// the controller's token check of service account bindings), `{account}` standing for the
    /// storage account (another cloud, or the emulator's `.../_data/blob/{account}`).
    #[arg(long, env = "UAMI_BLOB_ENDPOINT", default_value = crate::client::PUBLIC_BLOB_ENDPOINT)]
    pub blob_endpoint: String,

    /// Key Vault's endpoint for access checks of Key Vault data roles (by the agent and the
    /// controller, as `--blob-endpoint`), `{vault}` standing for the vault (another cloud, or
    /// the emulator's `.../_data/vault/{vault}`).
    #[arg(long, env = "UAMI_KEYVAULT_ENDPOINT", default_value = crate::client::PUBLIC_KEY_VAULT_ENDPOINT)]
    pub keyvault_endpoint: String,

    /// Log format.
    #[arg(long, value_enum, env = "UAMI_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
}

impl SharedArgs {
    /// The data planes of `--blob-endpoint` and `--keyvault-endpoint`.
    pub fn data_planes(&self) -> crate::DataPlanes {
        crate::DataPlanes {
            blob: self.blob_endpoint.clone(),
            key_vault: self.keyvault_endpoint.clone(),
        }
    }

    /// The certificate authorities of `--azure-ca-file`, none when it is unset.
    pub fn azure_ca(&self) -> Result<AzureCa, String> {
        match &self.azure_ca_file {
            Some(path) => AzureCa::from_file(path).map_err(|e| format!("--azure-ca-file {e}")),
            None => Ok(AzureCa::default()),
        }
    }
}

/// Parse a duration such as `90s`, `10m`, `1h30m` or `250ms` (jiff's friendly format; ISO 8601
/// such as `PT10M` too), or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return s
            .parse::<f64>()
            .ok()
            .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
            .ok_or_else(|| format!("{s:?} is not a number of seconds"));
    }
    let d: jiff::SignedDuration = s
        .parse()
        .map_err(|_| format!("{s:?} is not a duration such as 30s, 10m or 1h"))?;
    Duration::try_from(d).map_err(|_| format!("{s:?} is not a positive duration"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_the_forms_the_docs_and_chart_use() {
        for (text, want) in [
            ("90", Duration::from_secs(90)),
            ("0s", Duration::ZERO),
            ("15s", Duration::from_secs(15)),
            ("10m", Duration::from_secs(600)),
            ("1h", Duration::from_secs(3600)),
            ("1h30m", Duration::from_secs(5400)),
            ("250ms", Duration::from_millis(250)),
            ("1.5", Duration::from_millis(1500)),
            (" 60s ", Duration::from_secs(60)),
            ("PT10M", Duration::from_secs(600)),
        ] {
            assert_eq!(parse_duration(text), Ok(want), "{text:?}");
        }
        for bad in ["", "10 parsecs", "-5s", "1..2", "s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }
}
