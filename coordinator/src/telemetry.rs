//! The coordinator's Prometheus series (`grlo_coordinator_*`), read from the state at each
//! scrape: jobs by status, the task queue, workers, and per job its step, weight version,
//! reward and GPU-seconds used.

use std::collections::BTreeMap;
use std::sync::Arc;

use grlo_proto::metrics::prometheus::{GaugeVec, IntGaugeVec, Opts};
use grlo_proto::metrics::{Metrics, Refresh};

use crate::service::StateHandle;

struct Series {
    jobs: IntGaugeVec,
    tasks: IntGaugeVec,
    workers: IntGaugeVec,
    job_step: IntGaugeVec,
    weight_version: IntGaugeVec,
    reward_mean: GaugeVec,
    gpu_seconds: GaugeVec,
    cpu_seconds: GaugeVec,
}

fn int_gauges(metrics: &Metrics, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let gauges = IntGaugeVec::new(Opts::new(format!("grlo_coordinator_{name}"), help), labels)
        .expect("a valid metric name");
    metrics.adopt(gauges)
}

/// The coordinator's registry and the refresh that fills it from `state`.
pub fn metrics(state: StateHandle) -> (Metrics, Refresh) {
    let m = Metrics::new("coordinator");
    let series = Arc::new(Series {
        jobs: int_gauges(&m, "jobs", "Jobs by status", &["status"]),
        tasks: int_gauges(
            &m,
            "tasks",
            "Rollout tasks by state (pending is the queue waiting for actors)",
            &["state"],
        ),
        workers: int_gauges(
            &m,
            "workers",
            "Registered workers by role and liveness",
            &["role", "alive"],
        ),
        job_step: int_gauges(
            &m,
            "job_step",
            "Training steps a job has finished",
            &["job"],
        ),
        weight_version: int_gauges(
            &m,
            "weight_version",
            "A job's newest weight version",
            &["job"],
        ),
        reward_mean: m.gauge_vec(
            "reward_mean",
            "Mean reward of a job's newest step",
            &["job"],
        ),
        gpu_seconds: m.gauge_vec(
            "gpu_used_seconds",
            "GPU-seconds a job has used, by kind of work",
            &["job", "role"],
        ),
        cpu_seconds: m.gauge_vec(
            "cpu_used_seconds",
            "CPU-core-seconds a job has used, by kind of work",
            &["job", "role"],
        ),
    });
    let refresh: Refresh = Arc::new(move || {
        let (state, series) = (state.clone(), series.clone());
        Box::pin(async move {
            let gauges = state.call(|s| s.gauges()).await;
            series.fill(gauges);
        })
    });
    (m, refresh)
}

impl Series {
    fn fill(&self, gauges: crate::state::gauges::Gauges) {
        for vec in [
            &self.jobs,
            &self.tasks,
            &self.workers,
            &self.job_step,
            &self.weight_version,
        ] {
            vec.reset(); // jobs and workers that are gone leave no stale series
        }
        for vec in [&self.reward_mean, &self.gpu_seconds, &self.cpu_seconds] {
            vec.reset();
        }
        for (state, count) in gauges.tasks {
            self.tasks.with_label_values(&[state]).set(count as i64);
        }
        let mut workers: BTreeMap<(String, bool), i64> = BTreeMap::new();
        for key in gauges.workers {
            *workers.entry(key).or_default() += 1;
        }
        for ((role, alive), count) in workers {
            let alive = if alive { "true" } else { "false" };
            self.workers
                .with_label_values(&[role.as_str(), alive])
                .set(count);
        }
        for job in gauges.jobs {
            self.jobs.with_label_values(&[job.status]).inc();
            let id = job.id.as_str();
            self.job_step.with_label_values(&[id]).set(job.step as i64);
            self.weight_version
                .with_label_values(&[id])
                .set(job.weight_version as i64);
            if let Some(reward) = job.reward_mean {
                self.reward_mean.with_label_values(&[id]).set(reward);
            }
            for (role, seconds) in job.gpu_seconds {
                self.gpu_seconds
                    .with_label_values(&[id, role.as_str()])
                    .set(seconds);
            }
            for (role, seconds) in job.cpu_seconds {
                self.cpu_seconds
                    .with_label_values(&[id, role.as_str()])
                    .set(seconds);
            }
        }
    }
}
