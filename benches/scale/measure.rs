//! What the bench reads while a scenario runs: how many objects show a condition, the
//! controller's memory and CPU from `/proc`, ARM's request counts and the controller's requests
//! to the sandbox.

use std::time::{Duration, Instant};

use kube::api::{Api, ListParams};
use uami_api::conditions::is_true;
use uami_api::{IdentityBinding, RoleGrant, UserAssignedIdentity};
use uami_emulator::Emulator;
use uami_kube::status::Reported;
use uami_sandbox::Sandbox;

use super::NS;

/// How many of `items` show `condition` True.
pub fn with_true<K: Reported>(items: &[K], condition: &str) -> usize {
    items
        .iter()
        .filter(|o| is_true(o.conditions(), condition))
        .count()
}

/// How many objects of `K` in the bench namespace show `condition` True.
pub async fn count_true<K: Reported>(client: &kube::Client, condition: &str) -> usize {
    let api: Api<K> = Api::namespaced(client.clone(), NS);
    with_true(
        &api.list(&ListParams::default()).await.unwrap().items,
        condition,
    )
}

pub async fn converged(sb: &Sandbox, with_grants: bool, with_bindings: bool) -> usize {
    let client = sb.client();
    let mut n = count_true::<UserAssignedIdentity>(&client, "Ready").await;
    if with_grants {
        n += count_true::<RoleGrant>(&client, "Ready").await;
    }
    if with_bindings {
        n += count_true::<IdentityBinding>(&client, "Assigned").await;
    }
    n
}

/// Wait until `want` objects have converged or the deadline passes; returns how many did.
pub async fn wait_converged(
    sb: &Sandbox,
    grants: bool,
    bindings: bool,
    want: usize,
    deadline: Instant,
) -> usize {
    loop {
        let n = converged(sb, grants, bindings).await;
        if n >= want || Instant::now() > deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// CPU time (user and system) the process has used, in seconds: fields 14 and 15 of
/// `/proc/<pid>/stat`, in clock ticks of 1/100 s (Linux's `USER_HZ`).
pub fn proc_cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // The command name may hold spaces: count the fields after its closing parenthesis, where
    // the state is the first.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (ticks(11) + ticks(12)) as f64 / 100.0
}

pub fn arm_counts(em: &Emulator) -> (u64, u64, u64, u64) {
    let c = em.counts();
    let throttled =
        c.0.iter()
            .filter(|((o, s), _)| !o.starts_with("Aad") && !o.starts_with("Imds") && *s == 429)
            .map(|(_, n)| n)
            .sum();
    (
        c.reads(),
        c.writes(),
        throttled,
        c.total("VirtualMachines_Update"),
    )
}

pub fn controller_requests(sb: &Sandbox) -> usize {
    sb.audit().iter().filter(|a| a.user == "controller").count()
}
