//! The table of scenarios (a) to (c).

use super::{Row, Scenario, WRITE_BURST, WRITE_REFILL};

pub fn print(rows: &[Row], scenarios: &[Scenario]) {
    println!();
    println!(
        "| scenario | objects | time to Ready | lower bound | ratio | ARM reads/obj | ARM writes/obj | 429s | VM PATCHes/VM | Kubernetes requests/obj | controller RSS (peak) | controller CPU to Ready | start-up to first reconcile |"
    );
    println!(
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for r in rows {
        let o = r.objects as f64;
        let (ready, ratio) = ready_and_ratio(r.ready, r.bound);
        let patches = if r.vms == 0 {
            "n/a".into()
        } else {
            format!("{:.2}", r.patches as f64 / r.vms as f64)
        };
        println!(
            "| {} | {} | {ready} | {:.1} s | {ratio} | {:.2} | {:.2} | {} | {patches} | {:.2} | {:.1} MiB ({:.1} MiB) | {:.1} s | {} |",
            r.name,
            r.objects,
            r.bound,
            r.reads as f64 / o,
            r.writes as f64 / o,
            r.throttled,
            r.kube as f64 / o,
            r.rss_kib as f64 / 1024.0,
            r.rss_peak_kib as f64 / 1024.0,
            r.cpu_seconds,
            r.startup
                .map_or_else(|| "n/a".to_string(), |t| format!("{t:.2} s")),
        );
    }
    println!();
    for (r, s) in rows.iter().zip(scenarios) {
        println!(
            "{}: ARM throttling at {}x ARM's buckets (writes {} burst, {}/s); resync {} s; controller flags {:?}{}",
            r.name,
            s.scale,
            WRITE_BURST * s.scale,
            WRITE_REFILL * s.scale,
            s.resync.as_secs(),
            s.flags,
            if r.note.is_empty() {
                String::new()
            } else {
                format!("; {}", r.note)
            }
        );
        if let Some((reads, writes, kube)) = r.steady {
            println!(
                "{}: steady state over one resync: {writes} ARM writes, {:.2} ARM reads and {:.2} Kubernetes requests per object",
                r.name,
                reads as f64 / r.objects as f64,
                kube as f64 / r.objects as f64
            );
        }
    }
}

/// The time to Ready of a row (or "not converged") and its ratio to the lower bound `bound`.
pub fn ready_and_ratio(ready: Option<f64>, bound: f64) -> (String, String) {
    let shown = ready.map_or_else(|| "not converged".to_string(), |t| format!("{t:.1} s"));
    let ratio = match ready {
        Some(t) if bound >= 1.0 => format!("{:.2}", t / bound),
        _ => "n/a".into(),
    };
    (shown, ratio)
}
