//! `grlo train`: one job with every role in this process — a coordinator, a reward server, a
//! learner and an actor — talking gRPC over loopback, the same code paths as the distributed
//! service. Runs the embedded tiny default or a TOML job; `--resume RUN_DIR` continues a run
//! from its coordinator database and newest checkpoint.

use grlo_model::backend::ModelBackend;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use grlo_learner::TrainConfig;
use grlo_proto::v1;
use grlo_proto::v1::coordinator_client::CoordinatorClient;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::cli::ctl::status_name;
use crate::device::{DeviceArg, OnBackend, dispatch};

/// The embedded default job.
const TINY_TOML: &str = include_str!("../../configs/tiny.toml");

/// Heartbeats of the in-process roles: loopback is cheap, so react quickly.
const HEARTBEAT_MS: u64 = 200;

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// A TOML job configuration (default: the embedded configs/tiny.toml).
    #[arg(long, conflicts_with = "resume")]
    pub config: Option<PathBuf>,
    /// Continue the run in RUN_DIR from its newest checkpoint.
    #[arg(long, value_name = "RUN_DIR")]
    pub resume: Option<PathBuf>,
    /// Override a setting: `--set actor.optim.lr=1e-4` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Serve the coordinator's web dashboard over HTTP here while the job runs.
    #[arg(long, env = "GRLO_HTTP_LISTEN", value_name = "ADDRESS")]
    pub http_listen: Option<SocketAddr>,
}

pub fn run(args: TrainArgs) -> anyhow::Result<String> {
    let (config, resume) = match (&args.config, &args.resume) {
        (_, Some(run_dir)) => {
            let path = run_dir.join("config.toml");
            let config = TrainConfig::from_file(&path)
                .with_context(|| format!("{} is not a grlo run directory", run_dir.display()))?;
            (config, true)
        }
        (Some(path), None) => (TrainConfig::from_file(path)?, false),
        (None, None) => (
            TrainConfig::from_toml(TINY_TOML, "configs/tiny.toml (embedded)", &embedded_base())?,
            false,
        ),
    };
    let stored = config.clone();
    let config = config.with_overrides(&args.overrides, "the configuration")?;
    // A resumed run takes the settings that may change between runs, and refuses the others.
    let changed = if resume {
        stored.changes_on_resume(&config)?
    } else {
        Vec::new()
    };
    grlo_learner::validation::check_benchmark_data(&config)?;
    if config
        .trainer
        .logger
        .contains(&grlo_learner::tracking::Logger::Mlflow)
        && grlo_learner::tracking::mlflow_uri(&config).is_none()
    {
        bail!(
            "trainer.logger names mlflow but there is no tracking server: set trainer.mlflow_uri \
             or MLFLOW_TRACKING_URI"
        );
    }
    let device: DeviceArg = config.trainer.device.parse().map_err(anyhow::Error::msg)?;
    let run_dir = PathBuf::from(&config.trainer.run_dir);
    let database = run_dir.join("coordinator");
    if resume && !database.is_dir() {
        bail!(
            "{} has no coordinator state to resume from ({} is missing)",
            run_dir.display(),
            database.display()
        );
    }
    if !resume && database.is_dir() {
        bail!(
            "{} already holds a run: continue it with `grlo train --resume {}` or set another trainer.run_dir",
            run_dir.display(),
            run_dir.display()
        );
    }
    if !changed.is_empty() {
        update_stored_job(&database, &config)?;
        eprintln!("grlo train: resuming with {}", changed.join(", "));
    }
    let http_listen = args.http_listen;
    if let Some(address) = http_listen {
        eprintln!("grlo train: the dashboard is at http://{address}/");
    }
    let summary = dispatch(
        &device,
        InProcess {
            config,
            resume,
            http_listen,
        },
    )?;
    Ok(serde_json::to_string_pretty(&summary)?)
}

/// Gives the run's job (the last in its coordinator database) the resumed run's settings, before
/// any role starts: a finished job is queued again, to go on from its last checkpoint.
fn update_stored_job(database: &Path, config: &TrainConfig) -> anyhow::Result<()> {
    let mut state = grlo_coordinator::State::open(database, Default::default())
        .with_context(|| format!("the run's coordinator state {}", database.display()))?;
    let job = state
        .jobs()
        .last()
        .map(|job| job.id.clone())
        .context("the run's coordinator database holds no job")?;
    let spec = toml::to_string(config)?;
    state
        .update_job_spec(&job, &spec, grlo_coordinator::service::now_ms())
        .map_err(|(_, message)| anyhow::anyhow!("cannot resume job {job}: {message}"))?;
    Ok(())
}

/// Where the embedded config's relative paths point: the repository it was built from, or the
/// current directory's `configs/` when run elsewhere.
fn embedded_base() -> PathBuf {
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    if built.join("tiny").is_dir() {
        built
    } else {
        PathBuf::from("configs")
    }
}

/// The four roles of one job in this process.
struct InProcess {
    config: TrainConfig,
    resume: bool,
    http_listen: Option<SocketAddr>,
}

impl OnBackend for InProcess {
    type Output = Value;

    fn run<B: ModelBackend>(self, device: B::Device) -> anyhow::Result<Value> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("failed to start the async runtime")?;
        runtime.block_on(self.run_roles::<B>(device))
    }
}

impl InProcess {
    async fn run_roles<B: ModelBackend>(self, device: B::Device) -> anyhow::Result<Value> {
        let started = Instant::now();
        let run_dir = PathBuf::from(&self.config.trainer.run_dir);
        std::fs::create_dir_all(&run_dir)
            .with_context(|| format!("cannot create the run directory {}", run_dir.display()))?;
        let shutdown = CancellationToken::new();
        // SIGINT/SIGTERM: stop following the job; the roles then stop gracefully.
        tokio::spawn(crate::cli::roles::cancel_on_signals(shutdown.clone()));
        // The workers stop first (the learner announces its last checkpoint), the coordinator
        // last.
        let workers = CancellationToken::new();
        let control = CancellationToken::new();

        // The machine is counted once, by the learner; the other roles share it.
        let machine = crate::cli::roles::accelerators(None)?;
        let shared = vec![("cpu".to_string(), 0)];

        let listener = loopback().await?;
        let coordinator_url = format!("http://{}", listener.local_addr()?);
        let coordinator = tokio::spawn(grlo_coordinator::run(
            grlo_coordinator::CoordinatorConfig {
                data_dir: run_dir.join("coordinator"),
                settings: grlo_coordinator::Settings {
                    heartbeat_interval_ms: HEARTBEAT_MS,
                    ..Default::default()
                },
                http_listen: self.http_listen,
                security: Default::default(),
            },
            listener,
            control.clone(),
        ));

        let reward_address: SocketAddr = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
            probe.local_addr()?
        };
        let reward = tokio::spawn({
            let worker = grlo_reward_server::worker::WorkerConfig {
                coordinator: coordinator_url.clone(),
                advertise: None,
                accelerators: shared.clone(),
                name: "reward-server".into(),
                client: Default::default(),
            };
            let token = workers.clone();
            async move {
                grlo_reward_server::worker::run_for_coordinator::<B>(
                    Default::default(),
                    device,
                    reward_address,
                    worker,
                    token,
                    Default::default(),
                )
                .await
                .map_err(anyhow::Error::from)
            }
        });
        let learner = tokio::spawn(grlo_learner::service::run(
            grlo_learner::service::LearnerServiceConfig {
                coordinator: coordinator_url.clone(),
                advertise: None,
                work_dir: run_dir.clone(),
                run_dir: Some(run_dir.clone()),
                device: None,
                accelerators: machine,
                name: "learner".into(),
                security: Default::default(),
                client: Default::default(),
                http_listen: None,
            },
            loopback().await?,
            workers.clone(),
        ));
        let actor = tokio::spawn(grlo_actor::run(
            grlo_actor::ActorConfig {
                coordinator: coordinator_url.clone(),
                cache_dir: run_dir.join("actor-cache"),
                device: self.config.trainer.device.clone(),
                accelerators: shared,
                name: "actor".into(),
                client: Default::default(),
                metrics: Default::default(),
            },
            workers.clone(),
        ));

        let outcome = self.drive(&coordinator_url, &shutdown).await;
        workers.cancel();
        let mut failures = Vec::new();
        for (name, task) in [
            ("actor", actor),
            ("learner", learner),
            ("reward server", reward),
        ] {
            if let Err(e) = join(task).await {
                failures.push(format!("{name}: {e:#}"));
            }
        }
        control.cancel();
        if let Err(e) = join(coordinator).await {
            failures.push(format!("coordinator: {e:#}"));
        }
        let job = outcome?;
        if !failures.is_empty() {
            bail!("roles failed while stopping: {}", failures.join("; "));
        }
        summary(
            &job,
            &run_dir,
            &self.config,
            started.elapsed().as_secs_f64(),
        )
    }

    /// Submits the job (or finds it again when resuming) and follows it to its end.
    async fn drive(&self, url: &str, shutdown: &CancellationToken) -> anyhow::Result<v1::Job> {
        let mut client = connect(url).await?;
        let job = if self.resume {
            let jobs = client
                .list_jobs(v1::ListJobsRequest {})
                .await?
                .into_inner()
                .jobs;
            jobs.into_iter()
                .last()
                .context("the run's coordinator database holds no job")?
        } else {
            let spec_toml = toml::to_string(&self.config)?;
            client
                .submit_job(v1::SubmitJobRequest { spec_toml })
                .await
                .map_err(|s| anyhow::anyhow!("the job was refused: {}", s.message()))?
                .into_inner()
        };
        let mut stream = client
            .watch_job(v1::JobRef {
                job_id: job.id.clone(),
            })
            .await?
            .into_inner();
        let progress = Progress::new(self.config.trainer.total_steps, &self.config);
        let mut last = job;
        loop {
            let event = tokio::select! {
                event = stream.message() => event?,
                () = shutdown.cancelled() => {
                    progress.finish();
                    bail!(
                        "interrupted at step {}: continue with `grlo train --resume {}`",
                        last.step,
                        self.config.trainer.run_dir
                    );
                }
            };
            let Some(event) = event else { break };
            let Some(job) = event.job else { continue };
            progress.update(&job, &event.step_metrics_json);
            last = job;
        }
        progress.finish();
        Ok(last)
    }
}

async fn loopback() -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot listen on 127.0.0.1")
}

/// A client of the in-process coordinator at `url`, once it accepts connections (30 s at most).
pub(crate) async fn connect(url: &str) -> anyhow::Result<CoordinatorClient<Channel>> {
    let endpoint = tonic::transport::Endpoint::from_shared(url.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match endpoint.connect().await {
            Ok(channel) => return Ok(CoordinatorClient::new(channel)),
            Err(e) if Instant::now() > deadline => {
                bail!("the in-process coordinator did not come up: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

async fn join(task: JoinHandle<anyhow::Result<()>>) -> anyhow::Result<()> {
    task.await.context("the role's task panicked")?
}

/// What the run did, from the job and its metrics.jsonl.
fn summary(
    job: &v1::Job,
    run_dir: &Path,
    config: &TrainConfig,
    seconds: f64,
) -> anyhow::Result<Value> {
    let best_metric = config.trainer.best_metric.as_str();
    let metrics = std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap_or_default();
    let steps: Vec<Value> = metrics
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    let rewards: Vec<f64> = steps
        .iter()
        .filter_map(|m| m["reward_mean"].as_f64())
        .collect();
    // From the checkpoint store itself: under the run directory, or an object store.
    let checkpoint = grlo_learner::checkpoint::CheckpointStore::open(
        &grlo_learner::trainer::checkpoint_location(config),
    )
    .and_then(|store| store.latest())
    .ok()
    .flatten();
    let status = status_name(job.status);
    if status != "succeeded" {
        bail!(
            "the job ended {status} at step {}: {}",
            job.step,
            job.message
        );
    }
    Ok(json!({
        "job": job.id,
        "status": status,
        "steps": job.step,
        "first_reward_mean": rewards.first(),
        "last_reward_mean": rewards.last(),
        "best_reward_mean": rewards.iter().copied().reduce(f64::max),
        "best_step": grlo_learner::validation::best_step(&steps, best_metric)
            .map(|(step, value)| json!({"metric": best_metric, "step": step, "value": value})),
        "rejected_steps": steps.iter().filter(|m| !m["rejected"].is_null()).count(),
        // What each tracking backend of trainer.logger delivered and lost (the learner's report).
        "tracking": std::fs::read_to_string(run_dir.join("tracking.json"))
            .ok()
            .and_then(|text| serde_json::from_str::<Value>(&text).ok()),
        "run_dir": run_dir,
        "checkpoint": checkpoint,
        "seconds": seconds,
    }))
}

/// A progress bar on a terminal, a line per step otherwise.
struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    fn new(total: Option<usize>, config: &TrainConfig) -> Self {
        eprintln!(
            "grlo train: coordinator, reward server, learner and actor in one process; run directory {}",
            config.trainer.run_dir
        );
        if !std::io::stderr().is_terminal() {
            return Progress { bar: None };
        }
        let bar = ProgressBar::new(total.unwrap_or(0) as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} step {pos}/{len} [{bar:30}] {elapsed_precise} eta {eta} | {msg}",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
        Progress { bar: Some(bar) }
    }

    fn update(&self, job: &v1::Job, metrics_json: &str) {
        let Ok(metrics) = serde_json::from_str::<Value>(metrics_json) else {
            return;
        };
        let line = progress_line(&metrics);
        match &self.bar {
            Some(bar) => {
                bar.set_length(job.total_steps);
                bar.set_position(job.step);
                bar.set_message(line);
            }
            None => eprintln!("step {}/{} | {line}", job.step, job.total_steps),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}

fn progress_line(m: &Value) -> String {
    let number = |key: &str| m[key].as_f64().unwrap_or(f64::NAN);
    let mut line = format!(
        "reward {:.3} ± {:.3} | len {:.1} | kl {:.4} | clip {:.3} | {:.0} tok/s",
        number("reward_mean"),
        number("reward_std"),
        number("response_len_mean"),
        number("approx_kl"),
        number("clip_frac"),
        number("tokens_per_s"),
    );
    if let Some(value_loss) = m["value_loss"].as_f64() {
        line += &format!(" | vf {value_loss:.4}");
    }
    if let Some(reason) = m["rejected"].as_str() {
        line += &format!(" | REJECTED: {reason}");
    }
    line
}
