//! Experiment tracking, `trainer.logger` (verl's key and names): every line of
//! `metrics.jsonl` (always written, `jsonl`) also goes to the console, to TensorBoard event
//! files under `RUN_DIR/tensorboard/` and to an MLflow tracking server, as configured.
//!
//! A backend that fails never stops training: the failure is logged and counted, and the
//! run's `tracking.json` (and its summary) says so at the end. MLflow is sent to from a
//! thread of its own through a bounded queue, so a slow or silent server costs a step nothing.

mod mlflow;
mod tensorboard;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::TrainConfig;
use crate::error::{LearnerError, Result};

pub use mlflow::MlflowSink;
pub use tensorboard::EventWriter;

/// One of `trainer.logger`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Logger {
    /// Each step's metrics as one log line (target `grlo::console`).
    Console,
    /// `RUN_DIR/metrics.jsonl`: always written, whether listed or not.
    Jsonl,
    /// TensorBoard event files in `RUN_DIR/tensorboard/`.
    Tensorboard,
    /// An MLflow tracking server: `trainer.mlflow_uri`, else `$MLFLOW_TRACKING_URI`.
    Mlflow,
}

/// How the run ended, for the backends that record it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunEnd {
    /// Every step trained.
    Finished,
    /// The job stopped early (cancelled, out of budget).
    Stopped,
}

/// What one backend did over this process's part of the run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BackendReport {
    /// Steps (metric lines) delivered.
    pub logged: usize,
    /// Sends that failed (each a step's metrics, the run's setup or its end) and were dropped.
    pub failures: usize,
    /// The newest failure's message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl BackendReport {
    pub(crate) fn failed(&mut self, error: String) {
        self.failures += 1;
        self.last_error = Some(error);
    }
}

/// The trackers of one run.
pub struct Tracking {
    console: bool,
    tensorboard: Option<(EventWriter, BackendReport)>,
    mlflow: Option<MlflowSink>,
    run_dir: PathBuf,
}

impl Tracking {
    /// Opens the configured backends for the run in `run_dir` (a fresh or resumed run). Only
    /// a TensorBoard directory that cannot be made is an error; an MLflow server that is not
    /// configured here, or down, is logged and counted, and training goes on.
    pub fn open(config: &TrainConfig, run_dir: &Path) -> Result<Self> {
        let loggers = &config.trainer.logger;
        let tensorboard = if loggers.contains(&Logger::Tensorboard) {
            let dir = run_dir.join("tensorboard");
            let mut writer = EventWriter::create(&dir).map_err(|e| {
                LearnerError::Invalid(format!(
                    "trainer.logger: cannot create TensorBoard's event file in {}: {e}",
                    dir.display()
                ))
            })?;
            let mut report = BackendReport::default();
            let resolved = toml::to_string_pretty(config).expect("a config serialises");
            if let Err(e) = writer.text(0, "config", &format!("```toml\n{resolved}\n```")) {
                report.failed(format!("the config: {e}"));
            }
            Some((writer, report))
        } else {
            None
        };
        let mlflow = loggers
            .contains(&Logger::Mlflow)
            .then(|| match mlflow_uri(config) {
                Some(uri) => match mlflow::RunSpec::new(&uri, config, run_dir) {
                    Ok(spec) => MlflowSink::start(spec),
                    Err(e) => MlflowSink::unusable(e.to_string()),
                },
                None => MlflowSink::unusable(
                    "trainer.logger names mlflow but this learner has no tracking server: set \
                     trainer.mlflow_uri or MLFLOW_TRACKING_URI"
                        .into(),
                ),
            });
        Ok(Tracking {
            console: loggers.contains(&Logger::Console),
            tensorboard,
            mlflow,
            run_dir: run_dir.to_path_buf(),
        })
    }

    /// No backend but `metrics.jsonl` (tests that build a trainer by hand).
    pub fn none(run_dir: &Path) -> Self {
        Tracking {
            console: false,
            tensorboard: None,
            mlflow: None,
            run_dir: run_dir.to_path_buf(),
        }
    }

    /// Sends one `metrics.jsonl` line (its numbers; the `step` key gives the step).
    pub fn log(&mut self, line: &Value) {
        let step = line["step"].as_u64().unwrap_or(0);
        let scalars = scalars(line);
        if self.console {
            let text: Vec<String> = scalars
                .iter()
                .map(|(key, value)| format!("{key}={value:.6}"))
                .collect();
            tracing::info!(target: "grlo::console", "step {step}: {}", text.join(" "));
        }
        if let Some((writer, report)) = &mut self.tensorboard {
            match writer.scalars(step, &scalars) {
                Ok(()) => report.logged += 1,
                Err(e) => {
                    if report.failures == 0 {
                        tracing::warn!(error = %e, "TensorBoard: cannot write step {step}");
                    }
                    report.failed(format!("step {step}: {e}"));
                }
            }
        }
        if let Some(mlflow) = &mut self.mlflow {
            mlflow.log(step, scalars);
        }
    }

    /// Ends the run: MLflow's run is marked ended with the summary, the queue drained (for a
    /// bounded time), and `RUN_DIR/tracking.json` written with each backend's report.
    pub fn finish(&mut self, end: RunEnd, summary: &Value) -> BTreeMap<String, BackendReport> {
        if let Some(mlflow) = &mut self.mlflow {
            mlflow.finish(end, summary);
        }
        let reports = self.reports();
        for (name, report) in &reports {
            if report.failures > 0 {
                tracing::warn!(backend = %name, failures = report.failures,
                    last_error = report.last_error.as_deref().unwrap_or(""),
                    "experiment tracking lost data during the run");
            }
        }
        if !reports.is_empty() {
            let path = self.run_dir.join("tracking.json");
            let text = serde_json::to_string_pretty(&reports).expect("reports serialise");
            if let Err(e) = std::fs::write(&path, text) {
                tracing::warn!(path = %path.display(), error = %e, "cannot write the tracking report");
            }
        }
        reports
    }

    /// Each backend's report so far (console and jsonl report nothing).
    pub fn reports(&self) -> BTreeMap<String, BackendReport> {
        let mut reports = BTreeMap::new();
        if let Some((_, report)) = &self.tensorboard {
            reports.insert("tensorboard".to_string(), report.clone());
        }
        if let Some(mlflow) = &self.mlflow {
            reports.insert("mlflow".to_string(), mlflow.report());
        }
        reports
    }
}

/// The MLflow server: `trainer.mlflow_uri`, else `$MLFLOW_TRACKING_URI`.
pub fn mlflow_uri(config: &TrainConfig) -> Option<String> {
    config
        .trainer
        .mlflow_uri
        .clone()
        .or_else(|| std::env::var("MLFLOW_TRACKING_URI").ok())
        .filter(|u| !u.trim().is_empty())
}

/// The numbers of a metrics line, by key, without `step`; nested objects flattened with `/`.
pub fn scalars(line: &Value) -> BTreeMap<String, f64> {
    fn walk(prefix: &str, value: &Value, out: &mut BTreeMap<String, f64>) {
        match value {
            Value::Number(n) => {
                if let Some(v) = n.as_f64().filter(|v| v.is_finite()) {
                    out.insert(prefix.to_string(), v);
                }
            }
            Value::Object(map) => {
                for (key, inner) in map {
                    let key = if prefix.is_empty() {
                        key.clone()
                    } else {
                        format!("{prefix}/{key}")
                    };
                    walk(&key, inner, out);
                }
            }
            _ => {}
        }
    }
    let mut out = BTreeMap::new();
    walk("", line, &mut out);
    out.remove("step");
    out
}

/// The resolved config as `section.key` → value text (MLflow's params).
pub fn flatten_config(config: &TrainConfig) -> BTreeMap<String, String> {
    fn walk(prefix: &str, value: &Value, out: &mut BTreeMap<String, String>) {
        match value {
            Value::Object(map) => {
                for (key, inner) in map {
                    let key = if prefix.is_empty() {
                        key.clone()
                    } else {
                        format!("{prefix}.{key}")
                    };
                    walk(&key, inner, out);
                }
            }
            Value::Null => {}
            Value::String(s) => {
                out.insert(prefix.to_string(), s.clone());
            }
            other => {
                out.insert(prefix.to_string(), other.to_string());
            }
        }
    }
    let mut out = BTreeMap::new();
    let value = serde_json::to_value(config).expect("a config serialises");
    walk("", &value, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_metrics_line_gives_its_finite_numbers_without_the_step() {
        let line = json!({"step": 3, "epoch": 0, "reward_mean": -1.5, "rejected": null,
            "note": "x", "timing": {"generate": 2.0}, "val/gsm8k/accuracy": 0.25});
        let got = scalars(&line);
        let want: BTreeMap<String, f64> = [
            ("epoch", 0.0),
            ("reward_mean", -1.5),
            ("timing/generate", 2.0),
            ("val/gsm8k/accuracy", 0.25),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn the_config_flattens_to_dotted_keys() {
        let text = "[model]\npolicy = \"p\"\n[data]\ntrain_files = [\"t.jsonl\"]\n";
        let config = TrainConfig::from_toml(text, "t.toml", Path::new("/base")).unwrap();
        let params = flatten_config(&config);
        assert_eq!(params["trainer.seed"], config.trainer.seed.to_string());
        assert_eq!(params["trainer.run_dir"], config.trainer.run_dir);
        assert!(params.keys().all(|k| !k.is_empty() && !k.starts_with('.')));
    }
}
