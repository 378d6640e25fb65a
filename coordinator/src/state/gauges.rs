//! A read of the state for the metrics endpoint: counts and per-job numbers, copied out so
//! the scrape holds the state thread for as little as possible.

use std::collections::BTreeMap;

use super::State;
use crate::records::TaskState;

/// One job's numbers.
pub struct JobGauges {
    pub id: String,
    pub status: &'static str,
    pub step: u64,
    pub weight_version: u64,
    /// The newest step's mean reward, when a step has finished.
    pub reward_mean: Option<f64>,
    /// Seconds of GPU and CPU use, by kind of work.
    pub gpu_seconds: Vec<(String, f64)>,
    pub cpu_seconds: Vec<(String, f64)>,
}

/// What `/metrics` shows of the coordinator's state.
pub struct Gauges {
    pub jobs: Vec<JobGauges>,
    /// Rollout tasks by state: pending (the queue), leased, done.
    pub tasks: [(&'static str, u64); 3],
    /// Workers by (role, alive).
    pub workers: Vec<(String, bool)>,
}

impl State {
    pub fn gauges(&self) -> Gauges {
        let mut tasks = [("pending", 0), ("leased", 0), ("done", 0)];
        for task in self.tasks.values().flat_map(|job| job.values()) {
            let slot = match task.state {
                TaskState::Pending => 0,
                TaskState::Leased { .. } => 1,
                TaskState::Done => 2,
            };
            tasks[slot].1 += 1;
        }
        let jobs = self
            .jobs
            .values()
            .map(|job| JobGauges {
                id: job.id.clone(),
                status: job.status.name(),
                step: job.step,
                weight_version: job.weight_version.unwrap_or(0),
                reward_mean: serde_json::from_str::<serde_json::Value>(&job.last_metrics_json)
                    .ok()
                    .and_then(|m| m.get("reward_mean").and_then(serde_json::Value::as_f64)),
                gpu_seconds: by_kind(&job.usage.gpu_seconds, &job.usage.cpu_seconds),
                cpu_seconds: by_kind(&job.usage.cpu_seconds, &job.usage.gpu_seconds),
            })
            .collect();
        let workers = self
            .workers
            .values()
            .map(|w| (w.role.clone(), w.alive))
            .collect();
        Gauges {
            jobs,
            tasks,
            workers,
        }
    }
}

/// `seconds` by kind of work, with 0 for the kinds only `other` has: GPU and CPU series
/// exist for the same kinds, whichever devices the workers have.
fn by_kind(seconds: &BTreeMap<String, f64>, other: &BTreeMap<String, f64>) -> Vec<(String, f64)> {
    let mut all = seconds.clone();
    for kind in other.keys() {
        all.entry(kind.clone()).or_insert(0.0);
    }
    all.into_iter().collect()
}
