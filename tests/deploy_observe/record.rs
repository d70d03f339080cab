//! The tutorial's objects and the controller's metrics, and their recording for
//! `scripts/observe-screenshot.sh`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use crate::ksm;

/// The tutorial's objects as kube-state-metrics would read them.
pub async fn objects(stack: &uami::demo::stack::Stack) -> Vec<Value> {
    use kube::api::{Api, ListParams};
    use uami_api::{IdentityBinding, RoleGrant, UserAssignedIdentity};
    let mut out = Vec::new();
    let lp = ListParams::default();
    let c = stack.client();
    for o in Api::<UserAssignedIdentity>::all(c.clone())
        .list(&lp)
        .await
        .unwrap()
    {
        out.push(serde_json::to_value(o).unwrap());
    }
    for o in Api::<IdentityBinding>::all(c.clone())
        .list(&lp)
        .await
        .unwrap()
    {
        out.push(serde_json::to_value(o).unwrap());
    }
    for o in Api::<RoleGrant>::all(c).list(&lp).await.unwrap() {
        out.push(serde_json::to_value(o).unwrap());
    }
    out
}

pub fn controller_metrics(stack: &uami::demo::stack::Stack) -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &stack.registry.lock()).unwrap();
    text
}

/// With `UAMI_OBSERVE_RECORD=<file>`, every second of the run is recorded there in the
/// OpenMetrics text format with timestamps (the controller's metrics and the kube-state-metrics
/// series), for `scripts/observe-screenshot.sh`.
pub struct Recorder {
    pub frames: std::sync::Arc<parking_lot::Mutex<Vec<(i64, String)>>>,
    pub task: Option<tokio::task::JoinHandle<()>>,
}

impl Recorder {
    pub fn start(stack: std::sync::Arc<uami::demo::stack::Stack>, config: Value) -> Self {
        let frames = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
        let task = std::env::var_os("UAMI_OBSERVE_RECORD").map(|_| {
            let frames = frames.clone();
            tokio::spawn(async move {
                loop {
                    let now = jiff::Timestamp::now().as_millisecond();
                    let mut text = String::new();
                    for s in ksm::parse_exposition(&controller_metrics(&stack)) {
                        text.push_str(&ksm::exposition(&[s], Some(now)));
                    }
                    text.push_str(&ksm::exposition(
                        &ksm::evaluate(&config, &objects(&stack).await),
                        Some(now),
                    ));
                    frames.lock().push((now, text));
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            })
        });
        Self { frames, task }
    }

    pub async fn finish(self) {
        let Some(task) = self.task else { return };
        task.abort();
        let _ = task.await;
        let path = std::env::var_os("UAMI_OBSERVE_RECORD").unwrap();
        // OpenMetrics wants each family's samples together, in time order.
        let mut by_family: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (_, text) in self.frames.lock().iter() {
            for line in text.lines() {
                let name = line.split(['{', ' ']).next().unwrap().to_string();
                by_family.entry(name).or_default().push(line.to_string());
            }
        }
        let mut out = String::new();
        for (name, lines) in by_family {
            out.push_str(&format!("# TYPE {name} gauge\n"));
            for l in lines {
                // OpenMetrics timestamps are in seconds.
                let (sample, ts) = l.rsplit_once(' ').unwrap();
                let ms: i64 = ts.parse().unwrap();
                out.push_str(&format!("{sample} {}.{:03}\n", ms / 1000, ms % 1000));
            }
        }
        out.push_str("# EOF\n");
        std::fs::write(&path, out).unwrap();
        eprintln!("recorded {}", std::path::Path::new(&path).display());
    }
}
