//! The actor role's Prometheus series (`grlo_actor_*`): tasks, trajectories and tokens
//! generated, the weight version in use, and where a task's time goes.

use std::time::Duration;

use grlo_proto::metrics::prometheus::{IntCounter, IntCounterVec, IntGauge};
use grlo_proto::metrics::{Metrics, Phases};

#[derive(Clone)]
pub struct ActorMetrics {
    pub registry: Metrics,
    pub tasks: IntCounterVec,
    pub trajectories: IntCounter,
    pub tokens_generated: IntCounter,
    pub weight_version: IntGauge,
    /// Seconds per phase of a task: load (a new weight version), generate, score, deliver.
    phases: Phases,
}

impl Default for ActorMetrics {
    fn default() -> Self {
        let m = Metrics::new("actor");
        ActorMetrics {
            tasks: m.counter_vec(
                "tasks_total",
                "Rollout tasks finished, by outcome (done, failed)",
                &["outcome"],
            ),
            trajectories: m.counter("trajectories_total", "Trajectories generated and delivered"),
            tokens_generated: m.counter("generated_tokens_total", "Response tokens generated"),
            weight_version: m.int_gauge("weight_version", "The weight version loaded"),
            phases: m.phases(
                "task_phase_seconds",
                "Time of each phase of a task: load, generate, score, deliver",
            ),
            registry: m,
        }
    }
}

impl ActorMetrics {
    pub fn phase(&self, phase: &str, time: Duration) {
        self.phases.record(phase, time);
    }
}

impl std::fmt::Debug for ActorMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ActorMetrics")
    }
}
