//! Fault knobs: Azure's real failure modes, set in the world file and changed at run time through
//! `PUT /_emulator/faults`. Every knob has a "next N requests" form, so tests are exact, and a
//! rate form driven by a seeded random generator.

use serde::{Deserialize, Serialize};

/// The fault settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Faults {
    /// ARM's token buckets per (subscription, principal, reads|writes|deletes): reads 250 burst
    /// and 25/s, writes and deletes 200 and 10/s, all multiplied by `scale`. Off when absent.
    pub throttling: Option<Throttling>,
    /// Latency added to every ARM answer, in milliseconds.
    pub latency_ms: u64,
    /// The next N ARM requests answer 500 `InternalServerError`.
    pub server_error_next: u32,
    /// Fraction of ARM requests answering 500.
    pub server_error_rate: f64,
    /// The next N ARM requests lose their connection before a body arrives.
    pub drop_connection_next: u32,
    /// Fraction of ARM requests that lose their connection.
    pub drop_connection_rate: f64,
    /// Role assignments for an identity created less than this many seconds ago answer 400
    /// `PrincipalNotFound` (Entra replication lag).
    pub principal_not_found_seconds: f64,
    /// A VM or scale set PATCH while another is in progress answers 409
    /// `AnotherOperationInProgress`.
    pub another_operation_in_progress: bool,
    /// The next N long-running operations end `Failed` without a change.
    pub lro_fail_next: u32,
    /// The next N IMDS token requests answer 429.
    pub imds_throttle_next: u32,
    /// The next N IMDS token requests answer 410 (IMDS updating).
    pub imds_gone_next: u32,
    /// The next N IMDS token requests answer 500.
    pub imds_server_error_next: u32,
    /// Each federated identity credential write takes this many milliseconds; another write on
    /// the same identity meanwhile answers 409
    /// `ConcurrentFederatedIdentityCredentialsWritesForSingleManagedIdentity`.
    pub fic_write_ms: u64,
    /// Seed of the random generator behind the rates.
    pub seed: u64,
}

/// ARM throttling.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Throttling {
    /// Multiplies ARM's bucket sizes and refill rates (1.0 = ARM's limits).
    #[serde(default = "one")]
    pub scale: f64,
}

fn one() -> f64 {
    1.0
}

/// Bucket size and refill per second of an operation type at scale 1.
pub fn arm_limits(kind: &str) -> (f64, f64) {
    match kind {
        "reads" => (250.0, 25.0),
        _ => (200.0, 10.0),
    }
}
