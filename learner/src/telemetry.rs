//! The learner role's Prometheus series (`grlo_learner_*`): where each step's time goes, the
//! weight version it publishes, the step's reward and KL, and the trajectories it takes in.

use std::time::Duration;

use grlo_proto::metrics::prometheus::{Gauge, GaugeVec, IntCounter, IntGauge};
use grlo_proto::metrics::{Metrics, Phases};

#[derive(Clone)]
pub struct LearnerMetrics {
    pub registry: Metrics,
    /// Seconds per phase of a step: wait (for the step's trajectories), train, checkpoint,
    /// publish.
    phases: Phases,
    steps: IntCounter,
    pub weight_version: IntGauge,
    reward_mean: Gauge,
    response_len_mean: Gauge,
    approx_kl: Gauge,
    /// The newest validation's metrics (`val/...` keys), by name.
    validation: GaugeVec,
    pub trajectories_received: IntCounter,
    /// Trajectories spooled for the next step (a queue depth).
    pub buffered_trajectories: IntGauge,
}

impl Default for LearnerMetrics {
    fn default() -> Self {
        let m = Metrics::new("learner");
        LearnerMetrics {
            phases: m.phases(
                "step_phase_seconds",
                "Time of each phase of a training step: wait, train, checkpoint, publish",
            ),
            steps: m.counter("steps_total", "Training steps completed"),
            weight_version: m.int_gauge("weight_version", "The newest weight version published"),
            reward_mean: m.gauge("reward_mean", "Mean reward of the last step's trajectories"),
            response_len_mean: m.gauge(
                "response_length_tokens",
                "Mean response length of the last step, in tokens",
            ),
            approx_kl: m.gauge(
                "approx_kl",
                "Approximate KL of the last step's policy update",
            ),
            validation: m.gauge_vec(
                "validation",
                "The newest validation's metrics (trainer.test_freq), by metrics.jsonl key",
                &["metric"],
            ),
            trajectories_received: m.counter(
                "trajectories_received_total",
                "Trajectories received from actors and spooled",
            ),
            buffered_trajectories: m.int_gauge(
                "buffered_trajectories",
                "Trajectories spooled for the next step",
            ),
            registry: m,
        }
    }
}

impl LearnerMetrics {
    pub fn phase(&self, phase: &str, time: Duration) {
        self.phases.record(phase, time);
    }

    /// A finished step and its metrics line (a JSON object).
    pub fn step(&self, metrics: &serde_json::Value) {
        self.steps.inc();
        let number = |key: &str| metrics.get(key).and_then(serde_json::Value::as_f64);
        for (gauge, key) in [
            (&self.reward_mean, "reward_mean"),
            (&self.response_len_mean, "response_len_mean"),
            (&self.approx_kl, "approx_kl"),
        ] {
            if let Some(value) = number(key) {
                gauge.set(value);
            }
        }
        self.validation_metrics(metrics);
    }

    /// A validation's `val/...` metrics (of a step, or of step 0 before training).
    pub fn validation_metrics(&self, metrics: &serde_json::Value) {
        let Some(metrics) = metrics.as_object() else {
            return;
        };
        for (key, value) in metrics {
            if let (true, Some(value)) = (key.starts_with("val/"), value.as_f64()) {
                self.validation
                    .with_label_values(&[key.as_str()])
                    .set(value);
            }
        }
    }
}
