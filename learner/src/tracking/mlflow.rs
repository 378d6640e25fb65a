//! An MLflow tracking server, through its REST API (`/api/2.0/mlflow/...`): the experiment
//! (`trainer.project_name`, made when missing), one run per `trainer.run_dir` (its id kept in
//! `RUN_DIR/tracking/mlflow_run_id`, so a resumed run goes on logging into the same MLflow
//! run), the resolved config as params, each step's metrics, and at the end the run's status
//! and summary as tags.
//!
//! Everything is sent from one thread of its own through a bounded queue: a step never waits
//! for the server, and a server that is down, slow or gone costs the dropped sends only,
//! counted in the backend's report.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use super::{BackendReport, RunEnd, flatten_config};
use crate::config::TrainConfig;
use crate::error::{LearnerError, Result};

/// Steps waiting for the sender thread; more are dropped (and counted) rather than held.
const QUEUE: usize = 256;
/// One request's limit: a silent server holds the sender thread this long at most.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the end of the run waits for the queue to drain and the run to be closed.
const FINISH_WAIT: Duration = Duration::from_secs(30);
/// MLflow's limits on one `runs/log-batch` (1000 entities, 100 params) and on a value.
const BATCH_METRICS: usize = 1000;
const BATCH_PARAMS: usize = 100;
const PARAM_VALUE_CHARS: usize = 6000;
const TAG_VALUE_CHARS: usize = 8000;

/// Which run to log into, and what it is made with.
pub struct RunSpec {
    /// `http(s)://host:port`, without a trailing slash.
    base: String,
    experiment: String,
    run_name: String,
    params: BTreeMap<String, String>,
    run_id_file: PathBuf,
}

impl RunSpec {
    pub fn new(uri: &str, config: &TrainConfig, run_dir: &Path) -> Result<Self> {
        let base = uri.trim().trim_end_matches('/').to_string();
        let parsed = url::Url::parse(&base).map_err(|e| {
            LearnerError::Invalid(format!("the MLflow tracking URI {uri:?} is not a URL: {e}"))
        })?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(LearnerError::Invalid(format!(
                "the MLflow tracking URI {uri:?} is not an http(s):// tracking server (grlo \
                 logs through the server's REST API; start one with `mlflow server`)"
            )));
        }
        let run_name = match config.trainer.experiment_name.as_str() {
            "" => run_dir
                .file_name()
                .map_or("grlo".into(), |n| n.to_string_lossy().into_owned()),
            name => name.to_string(),
        };
        Ok(RunSpec {
            base,
            experiment: config.trainer.project_name.clone(),
            run_name,
            params: flatten_config(config),
            run_id_file: run_dir.join("tracking").join("mlflow_run_id"),
        })
    }
}

enum Message {
    Step {
        step: u64,
        scalars: BTreeMap<String, f64>,
        time_ms: i64,
    },
    Finish {
        end: RunEnd,
        summary: Value,
        done: std::sync::mpsc::Sender<()>,
    },
}

/// The handle the trainer holds; the sending happens on its thread.
pub struct MlflowSink {
    queue: Option<SyncSender<Message>>,
    report: Arc<Mutex<BackendReport>>,
    finished: bool,
}

impl MlflowSink {
    pub fn start(spec: RunSpec) -> Self {
        let (queue, messages) = sync_channel(QUEUE);
        let report = Arc::new(Mutex::new(BackendReport::default()));
        let shared = report.clone();
        let spawned = std::thread::Builder::new()
            .name("mlflow".into())
            .spawn(move || Sender::new(spec, shared).run(messages));
        if let Err(e) = spawned {
            report
                .lock()
                .expect("not poisoned")
                .failed(format!("cannot start the sender thread: {e}"));
        }
        MlflowSink {
            queue: Some(queue),
            report,
            finished: false,
        }
    }

    /// A sink that sends nothing: MLflow cannot be used (`error` says why, logged once and
    /// counted as a failure).
    pub fn unusable(error: String) -> Self {
        tracing::error!(error = %error, "MLflow: nothing will be logged there (training goes on)");
        let mut report = BackendReport::default();
        report.failed(error);
        MlflowSink {
            queue: None,
            report: Arc::new(Mutex::new(report)),
            finished: false,
        }
    }

    pub fn log(&mut self, step: u64, scalars: BTreeMap<String, f64>) {
        let Some(queue) = &self.queue else { return };
        let message = Message::Step {
            step,
            scalars,
            time_ms: now_ms(),
        };
        let problem = match queue.try_send(message) {
            Ok(()) => return,
            Err(TrySendError::Full(_)) => "the queue is full (the server is slow or silent)",
            Err(TrySendError::Disconnected(_)) => "the sender thread has stopped",
        };
        self.report
            .lock()
            .expect("not poisoned")
            .failed(format!("step {step} dropped: {problem}"));
    }

    /// Closes the run and waits (up to [`FINISH_WAIT`]) for everything queued to be sent.
    pub fn finish(&mut self, end: RunEnd, summary: &Value) {
        if self.finished {
            return;
        }
        self.finished = true;
        let Some(queue) = self.queue.take() else {
            return;
        };
        let (done, finished) = std::sync::mpsc::channel();
        let message = Message::Finish {
            end,
            summary: summary.clone(),
            done,
        };
        if queue.send(message).is_err() || finished.recv_timeout(FINISH_WAIT).is_err() {
            self.report.lock().expect("not poisoned").failed(format!(
                "the run's end was not recorded within {} s",
                FINISH_WAIT.as_secs()
            ));
        }
    }

    pub fn report(&self) -> BackendReport {
        self.report.lock().expect("not poisoned").clone()
    }
}

/// The sender thread's state.
struct Sender {
    spec: RunSpec,
    client: Option<reqwest::blocking::Client>,
    run_id: Option<String>,
    report: Arc<Mutex<BackendReport>>,
}

impl Sender {
    fn new(spec: RunSpec, report: Arc<Mutex<BackendReport>>) -> Self {
        Sender {
            spec,
            client: None,
            run_id: None,
            report,
        }
    }

    fn run(mut self, messages: Receiver<Message>) {
        for message in messages {
            match message {
                Message::Step {
                    step,
                    scalars,
                    time_ms,
                } => match self.log_step(step, &scalars, time_ms) {
                    Ok(()) => self.report.lock().expect("not poisoned").logged += 1,
                    Err(e) => self.fail(format!("step {step}: {e}")),
                },
                Message::Finish { end, summary, done } => {
                    if let Err(e) = self.end_run(end, &summary) {
                        self.fail(format!("the run's end: {e}"));
                    }
                    let _ = done.send(());
                    return;
                }
            }
        }
    }

    fn fail(&self, error: String) {
        let mut report = self.report.lock().expect("not poisoned");
        if report.failures == 0 {
            tracing::warn!(server = %self.spec.base, error = %error,
                "MLflow: a send failed (training goes on; failures are counted)");
        }
        report.failed(error);
    }

    fn log_step(
        &mut self,
        step: u64,
        scalars: &BTreeMap<String, f64>,
        time_ms: i64,
    ) -> std::result::Result<(), String> {
        let run_id = self.run_id()?;
        let metrics: Vec<Value> = scalars
            .iter()
            .map(|(key, value)| {
                json!({"key": metric_key(key), "value": value, "timestamp": time_ms, "step": step})
            })
            .collect();
        for chunk in metrics.chunks(BATCH_METRICS) {
            self.post(
                "runs/log-batch",
                &json!({"run_id": run_id, "metrics": chunk}),
            )?;
        }
        Ok(())
    }

    fn end_run(&mut self, end: RunEnd, summary: &Value) -> std::result::Result<(), String> {
        let run_id = self.run_id()?;
        let mut tags = vec![
            json!({"key": "grlo.summary", "value": clip(&summary.to_string(), TAG_VALUE_CHARS)}),
        ];
        if let Value::Object(map) = summary {
            for (key, value) in map {
                if !value.is_null() && !value.is_object() {
                    let text = value
                        .as_str()
                        .map_or_else(|| value.to_string(), String::from);
                    tags.push(json!({"key": format!("summary.{key}"), "value": clip(&text, TAG_VALUE_CHARS)}));
                }
            }
        }
        self.post("runs/log-batch", &json!({"run_id": run_id, "tags": tags}))?;
        let status = match end {
            RunEnd::Finished => "FINISHED",
            RunEnd::Stopped => "KILLED",
        };
        self.post(
            "runs/update",
            &json!({"run_id": run_id, "status": status, "end_time": now_ms()}),
        )?;
        Ok(())
    }

    /// The run to log into: the one this run directory made before (still on the server),
    /// else a new one in the experiment, with the config as its params.
    fn run_id(&mut self) -> std::result::Result<String, String> {
        if let Some(id) = &self.run_id {
            return Ok(id.clone());
        }
        if let Ok(text) = std::fs::read_to_string(&self.spec.run_id_file) {
            let id = text.trim().to_string();
            let found = self.get("runs/get", &[("run_id", id.as_str())])?;
            if found.is_some() {
                self.post("runs/update", &json!({"run_id": id, "status": "RUNNING"}))?;
                self.run_id = Some(id.clone());
                return Ok(id);
            }
        }
        let experiment_id = self.experiment_id()?;
        let created = self.post(
            "runs/create",
            &json!({
                "experiment_id": experiment_id,
                "run_name": self.spec.run_name,
                "start_time": now_ms(),
                "tags": [{"key": "mlflow.source.name", "value": "grlo"}],
            }),
        )?;
        let id = created["run"]["info"]["run_id"]
            .as_str()
            .ok_or_else(|| format!("runs/create answered without a run id: {created}"))?
            .to_string();
        self.run_id = Some(id.clone());
        if let Some(dir) = self.spec.run_id_file.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        if let Err(e) = std::fs::write(&self.spec.run_id_file, &id) {
            tracing::warn!(path = %self.spec.run_id_file.display(), error = %e,
                "cannot keep the MLflow run id: a resumed run will log into a new MLflow run");
        }
        let params: Vec<Value> = self
            .spec
            .params
            .iter()
            .map(|(key, value)| json!({"key": key, "value": clip(value, PARAM_VALUE_CHARS)}))
            .collect();
        for chunk in params.chunks(BATCH_PARAMS) {
            self.post("runs/log-batch", &json!({"run_id": id, "params": chunk}))?;
        }
        Ok(id)
    }

    fn experiment_id(&mut self) -> std::result::Result<String, String> {
        let name = self.spec.experiment.clone();
        let by_name = |sender: &mut Self| {
            sender
                .get(
                    "experiments/get-by-name",
                    &[("experiment_name", name.as_str())],
                )
                .map(|found| {
                    found.and_then(|v| v["experiment"]["experiment_id"].as_str().map(String::from))
                })
        };
        if let Some(id) = by_name(self)? {
            return Ok(id);
        }
        match self.post("experiments/create", &json!({"name": name})) {
            Ok(created) => created["experiment_id"]
                .as_str()
                .map(String::from)
                .ok_or_else(|| format!("experiments/create answered without an id: {created}")),
            // Made meanwhile by another run.
            Err(e) if e.contains("RESOURCE_ALREADY_EXISTS") => by_name(self)?.ok_or(e),
            Err(e) => Err(e),
        }
    }

    fn client(&mut self) -> std::result::Result<reqwest::blocking::Client, String> {
        if let Some(client) = &self.client {
            return Ok(client.clone());
        }
        let client = reqwest::blocking::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| format!("cannot make an HTTP client: {e}"))?;
        self.client = Some(client.clone());
        Ok(client)
    }

    fn url(&self, route: &str) -> String {
        format!("{}/api/2.0/mlflow/{route}", self.spec.base)
    }

    fn post(&mut self, route: &str, body: &Value) -> std::result::Result<Value, String> {
        let client = self.client()?;
        let response = client.post(self.url(route)).json(body).send();
        answer(route, response).and_then(|found| {
            found.ok_or_else(|| format!("POST {route}: 404 from {}", self.spec.base))
        })
    }

    /// A GET; `None` when the thing asked for does not exist.
    fn get(
        &mut self,
        route: &str,
        query: &[(&str, &str)],
    ) -> std::result::Result<Option<Value>, String> {
        let client = self.client()?;
        let response = client.get(self.url(route)).query(query).send();
        answer(route, response)
    }
}

/// A response's JSON, `None` for MLflow's "does not exist", or the error as one line.
fn answer(
    route: &str,
    response: reqwest::Result<reqwest::blocking::Response>,
) -> std::result::Result<Option<Value>, String> {
    let response = response.map_err(|e| format!("{route}: {e}"))?;
    let status = response.status();
    let body: Value = response.json().unwrap_or(Value::Null);
    if status.is_success() {
        return Ok(Some(body));
    }
    let code = body["error_code"].as_str().unwrap_or("");
    if status == reqwest::StatusCode::NOT_FOUND || code == "RESOURCE_DOES_NOT_EXIST" {
        return Ok(None);
    }
    let message = body["message"].as_str().unwrap_or("");
    Err(format!("{route}: {status} {code} {message}")
        .trim()
        .to_string())
}

/// A metric key as MLflow takes it: letters, digits and `_-. :/` only, so `pass@1` is sent
/// as `pass_at_1` and any other character as `_`.
pub fn metric_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for c in key.chars() {
        match c {
            '@' => out.push_str("_at_"),
            c if c.is_alphanumeric() || "_-. :/".contains(c) => out.push(c),
            _ => out.push('_'),
        }
    }
    out
}

/// `text` cut to `limit` characters (MLflow refuses longer values).
fn clip(text: &str, limit: usize) -> String {
    if text.chars().count() <= limit {
        return text.to_string();
    }
    let mut cut: String = text.chars().take(limit - 1).collect();
    cut.push('…');
    cut
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_keys_keep_what_mlflow_allows() {
        assert_eq!(metric_key("val/gsm8k/accuracy"), "val/gsm8k/accuracy");
        assert_eq!(
            metric_key("val/humaneval/pass@1"),
            "val/humaneval/pass_at_1"
        );
        assert_eq!(metric_key("a+b[0]"), "a_b_0_");
    }

    #[test]
    fn long_values_are_cut_to_the_limit() {
        assert_eq!(clip("abc", 5), "abc");
        let cut = clip(&"x".repeat(7000), PARAM_VALUE_CHARS);
        assert_eq!(cut.chars().count(), PARAM_VALUE_CHARS);
        assert!(cut.ends_with('…'));
    }

    /// A server that is not there: every send is counted as failed, none blocks the caller,
    /// and the end of the run comes back.
    #[test]
    fn a_server_that_is_down_costs_counted_failures_only() {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port(); // bound and dropped: nothing listens there now
        let spec = RunSpec {
            base: format!("http://127.0.0.1:{port}"),
            experiment: "grlo".into(),
            run_name: "down".into(),
            params: BTreeMap::new(),
            run_id_file: dir.path().join("tracking/mlflow_run_id"),
        };
        let mut sink = MlflowSink::start(spec);
        for step in 1..=3 {
            sink.log(
                step,
                [("reward_mean".to_string(), 1.0)].into_iter().collect(),
            );
        }
        sink.finish(RunEnd::Finished, &json!({"steps": 3}));
        let report = sink.report();
        assert_eq!((report.logged, report.failures), (0, 4), "{report:?}");
        assert!(report.last_error.unwrap().contains("the run's end"));
    }
}
