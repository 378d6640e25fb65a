//! A grlo cluster of real OS processes on 127.0.0.1 for the integration tests: a coordinator,
//! a reward server, a learner and actors, each a `grlo` child process logging to its own file,
//! driven through `grlo ctl --json` the way an operator would.

#![allow(dead_code)] // each test binary uses part of the harness

use std::collections::BTreeMap;
use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The tests of a binary share two cores: one cluster at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

pub fn exclusive() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn grlo() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_grlo"));
    command.current_dir(root()).env_remove("RUST_BACKTRACE");
    for (key, _) in std::env::vars() {
        if key.starts_with("GRLO_") {
            command.env_remove(key);
        }
    }
    command
}

/// The Python `scripts/test.sh` prepares (a venv with the `openai` client and llama.cpp's
/// `gguf` package): `$GRLO_TEST_PYTHON`, else `target/test-venv`.
pub fn test_python() -> PathBuf {
    let path = std::env::var_os("GRLO_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/test-venv/bin/python"));
    assert!(
        path.exists(),
        "{} does not exist: run the tests with `bash scripts/test.sh`, which installs the test \
         venv into target/test-venv (or point GRLO_TEST_PYTHON at a python that has openai and \
         gguf)",
        path.display()
    );
    path
}

/// A CA, and a certificate it signs for localhost and 127.0.0.1, as `ca.pem`, `cert.pem` and
/// `key.pem` in `dir`: every role serves the certificate and shows it as a client.
pub fn write_test_certificates(dir: &Path) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "grlo test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    let cert = params.signed_by(&key, &ca).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
}

/// A single-threaded tokio runtime, for a test's gRPC calls.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// The processes of one cluster; dropped, it kills them all (and prints their logs' tails
/// when the test failed).
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub coordinator_port: u16,
    pub reward_port: u16,
    pub learner_port: u16,
    pub heartbeat_ms: u64,
    pub lease_ms: u64,
    /// `--accelerators` of the workers (default: their CPU cores).
    pub accelerators: Option<String>,
    /// Where the coordinator serves its dashboard (`--http-listen`); `None`: it does not.
    pub http_port: Option<u16>,
    /// Variables set for every process, `grlo ctl` included (TLS files, tokens).
    pub env: Vec<(String, String)>,
    /// More flags for one role, by its name.
    pub extra_args: BTreeMap<String, Vec<String>>,
    /// The coordinator serves TLS: its URL is https.
    pub tls: bool,
    children: BTreeMap<String, Child>,
}

impl Cluster {
    pub fn new(heartbeat_ms: u64, lease_ms: u64) -> Self {
        Cluster {
            dir: tempfile::tempdir().expect("a temporary directory"),
            coordinator_port: free_port(),
            reward_port: free_port(),
            learner_port: free_port(),
            heartbeat_ms,
            lease_ms,
            accelerators: None,
            http_port: None,
            env: Vec::new(),
            extra_args: BTreeMap::new(),
            tls: false,
            children: BTreeMap::new(),
        }
    }

    /// Coordinator, reward server, learner and `actors` actors named a1, a2, ...
    pub fn start_all(heartbeat_ms: u64, lease_ms: u64, actors: usize) -> Self {
        Cluster::new(heartbeat_ms, lease_ms).with_roles(actors)
    }

    pub fn with_roles(mut self, actors: usize) -> Self {
        let cluster = &mut self;
        cluster.start("coordinator");
        cluster.start("reward");
        cluster.start("learner");
        for i in 1..=actors {
            cluster.start(&format!("a{i}"));
        }
        cluster.wait_for_workers(2 + actors);
        self
    }

    pub fn coordinator_url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.coordinator_port)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Starts (or restarts) one role by name: coordinator, reward, learner, or an actor.
    pub fn start(&mut self, name: &str) {
        let coordinator = self.coordinator_url();
        let mut command = grlo();
        match name {
            "coordinator" => command.args([
                "coordinator",
                "--listen",
                &format!("127.0.0.1:{}", self.coordinator_port),
                "--data-dir",
                &self.path("coordinator").display().to_string(),
                "--heartbeat-ms",
                &self.heartbeat_ms.to_string(),
                "--lease-ms",
                &self.lease_ms.to_string(),
            ]),
            "reward" => command.args([
                "reward-server",
                "--listen",
                &format!("127.0.0.1:{}", self.reward_port),
                "--coordinator",
                &coordinator,
                "--name",
                "reward",
            ]),
            "learner" => command.args([
                "learner",
                "--listen",
                &format!("127.0.0.1:{}", self.learner_port),
                "--coordinator",
                &coordinator,
                "--work-dir",
                &self.path("runs").display().to_string(),
                "--name",
                "learner",
            ]),
            actor => command.args([
                "actor",
                "--coordinator",
                &coordinator,
                "--cache-dir",
                &self.path(&format!("cache-{actor}")).display().to_string(),
                "--name",
                actor,
            ]),
        };
        if let (Some(port), "coordinator") = (self.http_port, name) {
            command.args(["--http-listen", &format!("127.0.0.1:{port}")]);
        }
        if let (Some(accelerators), false) = (&self.accelerators, name == "coordinator") {
            command.args(["--accelerators", accelerators]);
        }
        command.args(self.extra_args.get(name).into_iter().flatten());
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.path(&format!("{name}.log")))
            .expect("a log file");
        let child = command
            .stdout(log.try_clone().expect("a log handle"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("grlo starts");
        self.children.insert(name.to_string(), child);
    }

    /// `grlo serve` of `model` on `port`, named `name` (logging to `<name>.log`).
    pub fn start_serve(&mut self, name: &str, port: u16, model: &Path) {
        let mut command = grlo();
        command
            .args(["serve", "--model"])
            .arg(model)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        self.start_http_server(name, port, command);
    }

    /// Starts llama.cpp's `llama-server` (`$GRLO_LLAMA_SERVER`, else the one `scripts/test.sh`
    /// builds into `target/llama.cpp`) on `port` with a GGUF model, and waits until it is up.
    pub fn start_llama_server(&mut self, name: &str, port: u16, gguf: &Path) {
        let server = std::env::var_os("GRLO_LLAMA_SERVER")
            .map(PathBuf::from)
            .unwrap_or_else(|| root().join("target/llama.cpp/bin/llama-server"));
        assert!(
            server.exists(),
            "{} does not exist: run the tests with `bash scripts/test.sh`, which builds \
             llama.cpp's llama-server into target/llama.cpp (or point GRLO_LLAMA_SERVER at one)",
            server.display()
        );
        let mut command = Command::new(&server);
        command
            .arg("--model")
            .arg(gguf)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--threads", "1", "--parallel", "4", "--ctx-size", "8192"])
            .args(["--metrics", "--no-webui"]);
        self.start_http_server(name, port, command);
    }

    /// Spawns `command` as the role `name`, logging to `<name>.log`, and waits until it
    /// answers `GET /health` on `port` with 200.
    fn start_http_server(&mut self, name: &str, port: u16, mut command: Command) {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.path(&format!("{name}.log")))
            .expect("a log file");
        let child = command
            .stdout(log.try_clone().expect("a log handle"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{name} does not start: {e}"));
        self.children.insert(name.to_string(), child);
        let started = Instant::now();
        let listening = || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
        while !listening() || http_get(port, "/health", None).0 != 200 {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "{name} never became healthy: {}",
                std::fs::read_to_string(self.path(&format!("{name}.log"))).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL: the process dies on the spot.
    pub fn kill(&mut self, name: &str) {
        let mut child = self.children.remove(name).expect("a running role");
        child.kill().expect("kill");
        child.wait().expect("reaped");
    }

    /// SIGTERM, then the exit status (the roles stop gracefully and exit 0).
    pub fn terminate(&mut self, name: &str) -> std::process::ExitStatus {
        let mut child = self.children.remove(name).expect("a running role");
        // SAFETY: `kill` on a child we spawned and have not reaped.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "{name} ignored SIGTERM for 60 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `grlo ctl --json ARGS`, parsed; panics with stderr when it fails.
    pub fn ctl(&self, args: &[&str]) -> Value {
        let output = self.ctl_output(args);
        assert!(
            output.status.success(),
            "grlo ctl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).expect("grlo ctl --json prints JSON")
    }

    pub fn ctl_output(&self, args: &[&str]) -> std::process::Output {
        grlo()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .args(["ctl", "--coordinator", &self.coordinator_url(), "--json"])
            .args(args)
            .output()
            .expect("grlo ctl runs")
    }

    /// Submits configs/tiny.toml with `--set` overrides; the job's id.
    pub fn submit_tiny(&self, overrides: &[&str]) -> String {
        let mut args = vec!["job", "submit", "configs/tiny.toml"];
        for o in overrides {
            args.extend(["--set", o]);
        }
        let job = self.ctl(&args);
        assert_eq!(job["status"], "queued", "{job}");
        job["id"].as_str().expect("an id").to_string()
    }

    pub fn wait_for_workers(&self, count: usize) {
        self.wait_until(Duration::from_secs(60), "the workers to register", || {
            let output = self.ctl_output(&["worker", "list"]);
            if !output.status.success() {
                return None; // the coordinator is starting
            }
            let workers: Value = serde_json::from_slice(&output.stdout).ok()?;
            let alive = workers
                .as_array()?
                .iter()
                .filter(|w| w["alive"] == true)
                .count();
            (alive >= count).then_some(())
        })
    }

    /// Polls `ctl job get` until the job is in one of `statuses`.
    pub fn wait_for_status(&self, id: &str, statuses: &[&str], timeout: Duration) -> Value {
        self.wait_until(timeout, &format!("job {id} to be {statuses:?}"), || {
            let output = self.ctl_output(&["job", "get", id]);
            if !output.status.success() {
                return None; // the coordinator may be restarting
            }
            let job: Value = serde_json::from_slice(&output.stdout).ok()?;
            statuses
                .contains(&job["status"].as_str().unwrap_or(""))
                .then_some(job)
        })
    }

    /// Polls until `check` gives a value, panicking (with the logs) after `timeout`.
    pub fn wait_until<T>(
        &self,
        timeout: Duration,
        what: &str,
        mut check: impl FnMut() -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(value) = check() {
                return value;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn run_dir(&self, job: &str) -> PathBuf {
        self.path("runs").join(job)
    }

    /// The learner's record of each trained step: which prompts, from which weight versions.
    pub fn steps(&self, job: &str) -> Vec<Value> {
        read_jsonl(&self.run_dir(job).join("steps.jsonl"))
    }

    pub fn metrics(&self, job: &str) -> Vec<Value> {
        read_jsonl(&self.run_dir(job).join("metrics.jsonl"))
    }

    /// Steps 1..=total, each trained once, each on `batch` distinct prompts, no prompt used
    /// twice in the run (the tests' runs stay inside one epoch).
    pub fn assert_each_prompt_used_once(&self, job: &str, total: u64, batch: usize) {
        let steps = self.steps(job);
        let numbers: Vec<u64> = steps.iter().map(|s| s["step"].as_u64().unwrap()).collect();
        assert_eq!(
            numbers,
            (1..=total).collect::<Vec<_>>(),
            "each step trained exactly once"
        );
        let mut seen = std::collections::BTreeSet::new();
        for step in &steps {
            let ids = step["prompt_ids"].as_array().unwrap();
            assert_eq!(ids.len(), batch, "step {} batch: {step}", step["step"]);
            for id in ids {
                assert!(
                    seen.insert(id.as_u64().unwrap()),
                    "prompt {id} used twice (step {})",
                    step["step"]
                );
            }
        }
    }

    fn print_logs(&self) {
        let Ok(entries) = std::fs::read_dir(self.dir.path()) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "log") {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                eprintln!("===== {} (last 40 lines)", path.display());
                for line in &lines[lines.len().saturating_sub(40)..] {
                    eprintln!("{line}");
                }
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.children.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            self.print_logs();
        }
    }
}

pub fn read_jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

/// `grlo train` of configs/tiny.toml in one process, with the same overrides; its metrics.
pub fn single_process_metrics(dir: &Path, overrides: &[&str]) -> Vec<Value> {
    let run_dir = dir.join("single");
    let mut command = grlo();
    command.args(["train", "--config", "configs/tiny.toml"]);
    for o in overrides {
        command.args(["--set", o]);
    }
    command.args(["--set", &format!("trainer.run_dir={}", run_dir.display())]);
    let output = command.output().expect("grlo train runs");
    assert!(
        output.status.success(),
        "grlo train: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    read_jsonl(&run_dir.join("metrics.jsonl"))
}

/// One HTTP/1.1 GET on 127.0.0.1 (with `Authorization: Bearer` when given a token):
/// (status, head, body).
pub fn http_get(port: u16, path: &str, bearer: Option<&str>) -> (u16, String, String) {
    let authorization = bearer
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    http_exchange(
        port,
        &format!(
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{authorization}Connection: close\r\n\r\n"
        ),
    )
}

/// POSTs a JSON body: the status and the answer's body.
pub fn http_post_json(port: u16, path: &str, body: &Value) -> (u16, String) {
    let body = body.to_string();
    let (status, _, answer) = http_exchange(
        port,
        &format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    );
    (status, answer)
}

/// Sends one request and reads the answer to its end: status, head, body.
fn http_exchange(port: u16, request: &str) -> (u16, String, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("the port listens");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response}"));
    let (head, body) = response
        .split_once("\r\n\r\n")
        .map(|(h, b)| (h.to_string(), b.to_string()))
        .unwrap_or_default();
    (status, head, body)
}
