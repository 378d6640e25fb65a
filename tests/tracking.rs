//! Experiment tracking end to end (`trainer.logger`): a 4-step `grlo train` logs to the
//! console, to TensorBoard event files and to a real MLflow tracking server (`mlflow server`
//! from PyPI, started here on loopback), and each is read back with the tool's own reader —
//! tensorboard's `EventAccumulator` (tests/python/read_tensorboard.py) and MLflow's
//! `MlflowClient` (tests/python/read_mlflow.py) — to the values of `metrics.jsonl`. Killing
//! the MLflow server mid-run does not fail the job: the run finishes and says what was lost.
//! The readers and the server come from the venv `scripts/test.sh` installs.

mod cluster;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use cluster::{exclusive, free_port, grlo, http_get, read_jsonl, root, test_python};
use serde_json::Value;

/// A real MLflow tracking server on loopback, its store in a temporary directory; killed
/// (with its worker) when dropped.
struct MlflowServer {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl MlflowServer {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let python = test_python();
        let bin = python.parent().unwrap();
        let log = std::fs::File::create(dir.path().join("mlflow.log")).unwrap();
        let mut command = Command::new(bin.join("mlflow"));
        command
            .args(["server", "--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--workers", "1"])
            .arg("--backend-store-uri")
            .arg(format!(
                "sqlite:///{}",
                dir.path().join("mlflow.db").display()
            ))
            .arg("--default-artifact-root")
            .arg(dir.path().join("artifacts"))
            .env("MLFLOW_DISABLE_TELEMETRY", "true")
            .env("DO_NOT_TRACK", "true")
            // Without this the server also starts a job runner (about 1.7 GB more).
            .env("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
            .stdout(Stdio::null())
            .stderr(log);
        // Its own process group, so the worker it forks dies with it.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let child = command.spawn().unwrap_or_else(|e| {
            panic!("cannot start mlflow server (scripts/test.sh installs it into the venv): {e}")
        });
        let mut server = MlflowServer {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let listening = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
            if listening && http_get(port, "/health", None).0 == 200 {
                break;
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("mlflow server exited ({status}): {}", server.log());
            }
            assert!(
                Instant::now() < deadline,
                "mlflow server did not answer /health in 180 s: {}",
                server.log()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
        server
    }

    fn uri(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("mlflow.log")).unwrap_or_default()
    }

    /// SIGKILL to the server and its worker.
    fn kill(&mut self) {
        unsafe {
            libc::kill(-(self.child.id() as i32), libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

impl Drop for MlflowServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn python_json(script: &str, args: &[&str]) -> Value {
    let output = Command::new(test_python())
        .arg(root().join("tests/python").join(script))
        .args(args)
        .output()
        .expect("python runs");
    assert!(
        output.status.success(),
        "{script} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("a JSON object")
}

/// `grlo train` of the tiny job with `overrides` in `run_dir`.
fn train(run_dir: &Path, overrides: &[String]) -> Command {
    let mut command = grlo();
    command.env_remove("MLFLOW_TRACKING_URI");
    command.args([
        "train",
        "--set",
        &format!("trainer.run_dir={}", run_dir.display()),
    ]);
    for o in overrides {
        command.args(["--set", o]);
    }
    command
}

fn succeeded(output: &Output) -> Value {
    assert!(
        output.status.success(),
        "grlo train failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("the run's summary")
}

/// Every number of each metrics.jsonl line but `step`, by key: (step, value).
fn logged(lines: &[Value]) -> BTreeMap<String, Vec<(u64, f64)>> {
    let mut out: BTreeMap<String, Vec<(u64, f64)>> = BTreeMap::new();
    for line in lines {
        let step = line["step"].as_u64().unwrap();
        for (key, value) in line.as_object().unwrap() {
            if let (false, Some(v)) = (key == "step", value.as_f64()) {
                out.entry(key.clone()).or_default().push((step, v));
            }
        }
    }
    out
}

fn points(series: &Value) -> Vec<(u64, f64)> {
    series
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_u64().unwrap(), p[1].as_f64().unwrap()))
        .collect()
}

#[test]
fn a_run_logs_to_the_console_tensorboard_and_mlflow_with_the_values_of_metrics_jsonl() {
    let _one = exclusive();
    let server = MlflowServer::start();
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("tracked");
    let output = train(
        &run_dir,
        &[
            "trainer.total_steps=4".into(),
            r#"trainer.logger=["console", "tensorboard", "mlflow"]"#.into(),
            format!("trainer.mlflow_uri={}", server.uri()),
            "trainer.project_name=grlo-tracking-test".into(),
            "trainer.experiment_name=tiny-4".into(),
        ],
    )
    .output()
    .unwrap();
    let summary = succeeded(&output);
    assert_eq!(summary["tracking"]["mlflow"]["failures"], 0, "{summary}");
    assert_eq!(summary["tracking"]["mlflow"]["logged"], 4, "{summary}");
    assert_eq!(summary["tracking"]["tensorboard"]["logged"], 4, "{summary}");
    let lines = read_jsonl(&run_dir.join("metrics.jsonl"));
    assert_eq!(lines.len(), 4);
    let expected = logged(&lines);
    assert!(
        expected.contains_key("reward_mean") && expected.len() > 10,
        "{expected:?}"
    );

    // The console: one line per step with its metrics.
    let stderr = String::from_utf8_lossy(&output.stderr);
    for step in 1..=4 {
        assert!(
            stderr.contains(&format!("step {step}: ")) && stderr.contains("reward_mean="),
            "no console line of step {step}: {stderr}"
        );
    }

    // TensorBoard's own reader: every metric at every step (TensorBoard keeps f32).
    let board = python_json(
        "read_tensorboard.py",
        &[&run_dir.join("tensorboard").display().to_string()],
    );
    for (key, want) in &expected {
        let as_f32 = |p: &[(u64, f64)]| -> Vec<(u64, f32)> {
            p.iter().map(|&(s, v)| (s, v as f32)).collect()
        };
        let got = points(&board["scalars"][key]);
        assert_eq!(as_f32(&got), as_f32(want), "TensorBoard's {key}");
    }
    assert_eq!(
        board["scalars"].as_object().unwrap().len(),
        expected.len(),
        "{board}"
    );
    let config = board["text"]["config"][0].as_str().unwrap();
    assert!(
        config.contains("[trainer]") && config.contains("total_steps = 4"),
        "{config}"
    );

    // MLflow's own client: the run, its params, every metric's history, its end.
    let found = python_json("read_mlflow.py", &[&server.uri(), "grlo-tracking-test"]);
    let runs = found["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 1, "{found}");
    let run = &runs[0];
    assert_eq!(run["run_name"], "tiny-4");
    assert_eq!(run["status"], "FINISHED");
    assert_eq!(run["params"]["trainer.total_steps"], "4");
    assert_eq!(run["params"]["trainer.seed"], "42");
    assert_eq!(run["params"]["trainer.experiment_name"], "tiny-4");
    // The same doubles; serde_json's float parsing may differ from Python's in the last bit.
    for (key, want) in &expected {
        let got = points(&run["metrics"][key]);
        let close = got.len() == want.len()
            && got
                .iter()
                .zip(want)
                .all(|(g, w)| g.0 == w.0 && (g.1 - w.1).abs() <= 1e-12 * w.1.abs().max(1e-300));
        assert!(close, "MLflow's {key}: {got:?} against {want:?}");
    }
    assert_eq!(run["metrics"].as_object().unwrap().len(), expected.len());
    assert_eq!(run["tags"]["summary.steps"], "4", "{run}");
    let recorded: Value =
        serde_json::from_str(run["tags"]["grlo.summary"].as_str().unwrap()).unwrap();
    assert_eq!(recorded["last_reward_mean"], lines[3]["reward_mean"]);

    // Without the loggers: no console lines, no event files, no tracking report.
    let plain = dir.path().join("plain");
    let output = train(
        &plain,
        &[
            "trainer.total_steps=1".into(),
            r#"trainer.logger=["jsonl"]"#.into(),
        ],
    )
    .output()
    .unwrap();
    let summary = succeeded(&output);
    assert!(summary["tracking"].is_null(), "{summary}");
    assert!(!String::from_utf8_lossy(&output.stderr).contains("step 1: "));
    assert!(!plain.join("tensorboard").exists());
    assert_eq!(read_jsonl(&plain.join("metrics.jsonl")).len(), 1);
}

#[test]
fn a_tracking_server_killed_mid_run_does_not_stop_training() {
    let _one = exclusive();
    let mut server = MlflowServer::start();
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    let child = train(
        &run_dir,
        &[
            "trainer.total_steps=6".into(),
            r#"trainer.logger=["tensorboard", "mlflow"]"#.into(),
            format!("trainer.mlflow_uri={}", server.uri()),
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let metrics = run_dir.join("metrics.jsonl");
    let deadline = Instant::now() + Duration::from_secs(300);
    while read_jsonl(&metrics).is_empty() {
        assert!(Instant::now() < deadline, "no step in 300 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    server.kill();
    let summary = succeeded(&child.wait_with_output().unwrap());
    assert_eq!(summary["steps"], 6, "{summary}");
    assert_eq!(read_jsonl(&metrics).len(), 6);
    let mlflow = &summary["tracking"]["mlflow"];
    assert!(mlflow["failures"].as_u64().unwrap() >= 1, "{summary}");
    assert!(mlflow["logged"].as_u64().unwrap() < 6, "{summary}");
    assert!(mlflow["last_error"].is_string(), "{summary}");
    assert_eq!(summary["tracking"]["tensorboard"]["logged"], 6, "{summary}");
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir.join("tracking.json")).unwrap())
            .unwrap();
    assert_eq!(report["mlflow"], *mlflow);
}

#[test]
fn mlflow_without_a_server_is_refused_before_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let output = train(
        &dir.path().join("run"),
        &[r#"trainer.logger=["mlflow"]"#.into()],
    )
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success()
            && stderr.contains("trainer.mlflow_uri")
            && stderr.contains("MLFLOW_TRACKING_URI"),
        "{stderr}"
    );
    let output = train(
        &dir.path().join("run"),
        &["trainer.mlflow_uri=file:///tmp/mlruns".into()],
    )
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("trainer.mlflow_uri"),
        "{stderr}"
    );
    let output = train(
        &dir.path().join("run"),
        &[r#"trainer.logger=["wandb"]"#.into()],
    )
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("wandb") && stderr.contains("tensorboard"),
        "{stderr}"
    );
}
