//! The learner role (`grlo learner`): receives the trajectories of its job's rollout tasks over
//! gRPC, trains a step once the step's batch is complete, checkpoints, publishes the new
//! weight version to the object store and tells the coordinator.
//!
//! Each step's policy is exported once into the run directory's staging area; those files are
//! the published version and, on checkpoint steps (every `trainer.save_every` steps and the
//! last), the checkpoint's `policy/`. Checkpoints beyond `trainer.max_checkpoints_to_keep` are
//! deleted once the new one is complete and `latest` names it.
//!
//! Trajectories are spooled to disk before they are acknowledged and kept until a checkpoint
//! covers their step, so a learner killed at any point resumes from its last checkpoint and
//! trains the spooled steps after it again, on the same trajectories, to the same weights: no
//! step is lost or repeated. Steps trained again are neither recorded in `steps.jsonl` again
//! nor published or announced again (`RUN_DIR/announced` holds the newest version the
//! coordinator acknowledged).

use grlo_model::backend::ModelAutodiffBackend;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use burn::backend::Autodiff;
use grlo_proto::security::{ClientSecurity, ServerSecurity, Transport};
use grlo_proto::v1;
use grlo_proto::v1::coordinator_client::CoordinatorClient;
use grlo_proto::v1::learner_server::{Learner as LearnerRpc, LearnerServer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::TrainConfig;
use crate::checkpoint::CheckpointStore;
use crate::error::LearnerError;
use crate::telemetry::LearnerMetrics;
use crate::trainer::{Placement, StagedPolicy, Trainer, checkpoint_location};
use crate::trajectory::Trajectory;
use crate::wire::from_wire;

/// How the learner runs.
#[derive(Clone, Debug)]
pub struct LearnerServiceConfig {
    /// The coordinator's URL, e.g. `http://127.0.0.1:50051`.
    pub coordinator: String,
    /// The address actors reach this learner at (default: the listener's).
    pub advertise: Option<String>,
    /// Where each job's run directory goes (`WORK_DIR/JOB_ID`).
    pub work_dir: PathBuf,
    /// Every job's run directory is this one instead (`grlo train`, which runs one job).
    pub run_dir: Option<PathBuf>,
    /// Overrides the job's `trainer.device`.
    pub device: Option<String>,
    /// The accelerators to account (kind, count).
    pub accelerators: Vec<(String, u32)>,
    pub name: String,
    /// TLS and tokens of this learner's server.
    pub security: ServerSecurity,
    /// How it calls the coordinator.
    pub client: ClientSecurity,
    /// Serve Prometheus metrics over HTTP here.
    pub http_listen: Option<std::net::SocketAddr>,
}

/// What the gRPC service and the training thread share.
struct Shared {
    job: Mutex<Option<JobSpool>>,
    arrived: Condvar,
    /// Asks the training thread to stop; it abandons a step in progress (see
    /// `Learner::interrupt`) and publishes its last checkpoint.
    stop: Arc<AtomicBool>,
    /// The coordinator ended the job (budget, cancel): the last checkpoint is its final one.
    /// Unset when only this process is stopping (the job goes on after a restart).
    job_ended: AtomicBool,
    training: AtomicBool,
    step: AtomicU64,
    version: AtomicU64,
    /// The policy's vocabulary size once the training thread has loaded it (0 before): every
    /// token id of an arriving trajectory is checked against it.
    vocab_size: AtomicU64,
    /// A job whose training cannot go on (its thread failed or panicked, or it could not
    /// start), with the reason: reported in every heartbeat until the coordinator lets the job
    /// go, so the job fails instead of waiting forever.
    failure: Mutex<Option<(String, String)>>,
    metrics: LearnerMetrics,
}

impl Shared {
    /// Trajectories spooled for the step after the last trained one.
    fn buffered(&self) -> usize {
        let spool = self.job.lock().expect("not poisoned").clone();
        let step = self.step.load(Ordering::SeqCst);
        spool
            .map(|s| s.load(step + 1).map(|t| t.len()).unwrap_or(0))
            .unwrap_or(0)
    }
}

/// Where a job's acknowledged trajectories wait for their step.
#[derive(Clone)]
struct JobSpool {
    job_id: String,
    dir: PathBuf,
    /// Trajectories a step needs (prompts × samples).
    needed: usize,
    /// Steps up to this one are trained (their trajectories are history).
    trained: u64,
    /// The job's staleness bound: tasks are leased for steps up to `trained + 1 + staleness`.
    staleness: u64,
}

/// Every token id of trajectory `index` is below `vocab_size`.
fn check_token_ids(t: &v1::Trajectory, index: usize, vocab_size: u64) -> Result<(), String> {
    for (field, ids) in [
        ("prompt_ids", &t.prompt_ids),
        ("response_ids", &t.response_ids),
    ] {
        if let Some((position, id)) = ids
            .iter()
            .enumerate()
            .find(|(_, id)| u64::from(**id) >= vocab_size)
        {
            return Err(format!(
                "trajectories[{index}].{field}[{position}] is {id}, past the policy's \
                 vocabulary of {vocab_size}"
            ));
        }
    }
    Ok(())
}

impl JobSpool {
    fn step_dir(&self, step: u64) -> PathBuf {
        self.dir.join(format!("step-{step}"))
    }

    /// Stores a task's trajectories durably, once.
    fn store(&self, task_id: &str, step: u64, trajectories: &[Trajectory]) -> std::io::Result<()> {
        let dir = self.step_dir(step);
        let path = dir.join(format!("{task_id}.json"));
        debug_assert!(
            grlo_proto::check_plain_id("task_id", task_id).is_ok(),
            "checked at the RPC"
        );
        if path.exists() {
            return Ok(());
        }
        std::fs::create_dir_all(&dir)?;
        let bytes = serde_json::to_vec(trajectories).expect("trajectories serialise");
        grlo_model::safetensors_io::write_atomically(&path, &bytes).map_err(std::io::Error::other)
    }

    /// Deletes the spool of every step up to `step`.
    fn remove_up_to(&self, step: u64) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let spooled = name
                .to_str()
                .and_then(|n| n.strip_prefix("step-"))
                .and_then(|n| n.parse::<u64>().ok());
            if spooled.is_some_and(|s| s <= step) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }

    /// The trajectories stored for a step.
    fn load(&self, step: u64) -> std::io::Result<Vec<Trajectory>> {
        let dir = self.step_dir(step);
        let mut out = Vec::new();
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Ok(out);
        };
        for entry in entries {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "json") {
                let batch: Vec<Trajectory> = serde_json::from_slice(&std::fs::read(&path)?)
                    .map_err(std::io::Error::other)?;
                out.extend(batch);
            }
        }
        Ok(out)
    }
}

/// Serves the Learner service and works for the coordinator until `shutdown`.
pub async fn run(
    config: LearnerServiceConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let address = config.advertise.clone().unwrap_or_else(|| {
        listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default()
    });
    let shared = Arc::new(Shared {
        job: Mutex::new(None),
        arrived: Condvar::new(),
        stop: Arc::new(AtomicBool::new(false)),
        job_ended: AtomicBool::new(false),
        training: AtomicBool::new(false),
        step: AtomicU64::new(0),
        version: AtomicU64::new(0),
        vocab_size: AtomicU64::new(0),
        failure: Mutex::new(None),
        metrics: LearnerMetrics::default(),
    });
    if let Some(http) = config.http_listen {
        let refreshed = shared.clone();
        let refresh: grlo_proto::metrics::Refresh = Arc::new(move || {
            let shared = refreshed.clone();
            Box::pin(async move {
                let _ = tokio::task::spawn_blocking(move || {
                    shared
                        .metrics
                        .buffered_trajectories
                        .set(shared.buffered() as i64);
                })
                .await;
            })
        });
        let router = grlo_proto::metrics::router(shared.metrics.registry.clone(), Some(refresh));
        grlo_proto::metrics::serve_http(http, router, shutdown.clone()).await?;
    }
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_serving::<LearnerServer<LearnerService>>()
        .await;
    let reflection = grlo_proto::reflection::services(&["grlo.v1.Learner"]);
    let server = config
        .security
        .builder(Some(shared.metrics.registry.rpc()))?
        .add_service(health)
        .add_service(reflection.0)
        .add_service(reflection.1)
        .add_service(
            LearnerServer::new(LearnerService {
                shared: shared.clone(),
            })
            .max_decoding_message_size(grlo_proto::MAX_TRAJECTORY_BATCH_BYTES),
        )
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            shutdown.clone().cancelled_owned(),
        );
    tracing::info!(%address, "learner serving");
    let work = coordinate(config, address, shared.clone(), shutdown.clone());
    let (served, worked) = tokio::join!(server, work);
    shared.stop.store(true, Ordering::SeqCst);
    shared.arrived.notify_all();
    served?;
    worked
}

/// Registers, heartbeats, and runs the training thread of the job it is assigned.
async fn coordinate(
    mut config: LearnerServiceConfig,
    address: String,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut client = CoordinatorClient::new(config.client.lazy(&config.coordinator)?);
    let mut worker_id = String::new();
    let mut interval = Duration::from_millis(1000);
    // The job being trained, by (id, spec), and the jobs done with: a job given a new spec
    // (`UpdateJob`, more steps) is a new run of it, trained again.
    let mut training: Option<((String, String), std::thread::JoinHandle<()>)> = None;
    let mut finished_jobs: Vec<(String, String)> = Vec::new();
    loop {
        if let Some((job, thread)) = training.take_if(|(_, t)| t.is_finished()) {
            let _ = thread.join();
            finished_jobs.push(job);
        }
        if worker_id.is_empty() {
            match register(&mut client, &config, &address, "").await {
                Ok((id, every)) => {
                    worker_id = id;
                    interval = every;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "coordinator unreachable, retrying");
                    sleep_or_cancel(Duration::from_millis(500), &shutdown).await;
                    if shutdown.is_cancelled() {
                        break;
                    }
                    continue;
                }
            }
        }
        let activity = if shared.training.load(Ordering::SeqCst) {
            v1::Activity::Training
        } else {
            v1::Activity::Idle
        };
        let failure = shared.failure.lock().expect("not poisoned").clone();
        let job_id = match &failure {
            Some((job, _)) => job.clone(),
            None => shared
                .job
                .lock()
                .expect("not poisoned")
                .as_ref()
                .map(|j| j.job_id.clone())
                .unwrap_or_default(),
        };
        let heartbeat = client
            .heartbeat(v1::HeartbeatRequest {
                worker_id: worker_id.clone(),
                activity: activity as i32,
                weight_version: shared.version.load(Ordering::SeqCst),
                job_id,
                job_failure: failure.as_ref().map(|f| f.1.clone()).unwrap_or_default(),
            })
            .await;
        match heartbeat {
            Ok(response) => {
                let response = response.into_inner();
                if response.reregister {
                    match register(&mut client, &config, &address, &worker_id).await {
                        Ok((id, _)) => worker_id = id,
                        Err(_) => worker_id.clear(),
                    }
                }
                if response.stop {
                    shared.job_ended.store(true, Ordering::SeqCst);
                    shared.stop.store(true, Ordering::SeqCst);
                    shared.arrived.notify_all();
                }
                if let Some((failed, _)) = &failure
                    && response
                        .assignment
                        .as_ref()
                        .is_none_or(|a| &a.job_id != failed)
                {
                    // The coordinator has let the failed job go.
                    *shared.failure.lock().expect("not poisoned") = None;
                }
                if let Some(assignment) = response.assignment
                    && training.is_none()
                    && !response.stop
                    && !finished_jobs
                        .iter()
                        .any(|(id, spec)| id == &assignment.job_id && spec == &assignment.spec_toml)
                {
                    let started =
                        start_training(&config, &assignment, worker_id.clone(), shared.clone());
                    let (thread, job_config) = match started {
                        Ok(started) => started,
                        Err(e) => {
                            let reason = format!("cannot start training: {e:#}");
                            tracing::error!(job = %assignment.job_id, %reason);
                            finished_jobs
                                .push((assignment.job_id.clone(), assignment.spec_toml.clone()));
                            *shared.failure.lock().expect("not poisoned") =
                                Some((assignment.job_id, reason));
                            sleep_or_cancel(interval, &shutdown).await;
                            if shutdown.is_cancelled() {
                                break;
                            }
                            continue;
                        }
                    };
                    training = Some((
                        (assignment.job_id.clone(), assignment.spec_toml.clone()),
                        thread,
                    ));
                    // Charge every GPU the job's models occupy (policy, critic, reference).
                    let needed =
                        crate::placement::accelerators_for(&config.accelerators, &job_config);
                    if needed != config.accelerators {
                        config.accelerators = needed;
                        if let Err(status) =
                            register(&mut client, &config, &address, &worker_id).await
                        {
                            tracing::warn!(%status, "could not register the job's accelerators");
                        }
                    }
                }
            }
            Err(status) => tracing::warn!(%status, "heartbeat failed, retrying"),
        }
        sleep_or_cancel(interval, &shutdown).await;
        if shutdown.is_cancelled() {
            break;
        }
    }
    // Graceful stop: the training thread checkpoints what it has and returns.
    shared.stop.store(true, Ordering::SeqCst);
    shared.arrived.notify_all();
    if let Some((_, thread)) = training {
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
    Ok(())
}

async fn register(
    client: &mut CoordinatorClient<Transport>,
    config: &LearnerServiceConfig,
    address: &str,
    previous: &str,
) -> Result<(String, Duration), Status> {
    let who = grlo_proto::worker::Registration {
        role: v1::Role::Learner,
        address,
        accelerators: &config.accelerators,
        name: &config.name,
    };
    grlo_proto::worker::register(client, &who, previous).await
}

async fn sleep_or_cancel(duration: Duration, shutdown: &CancellationToken) {
    tokio::select! {
        _ = tokio::time::sleep(duration) => {}
        _ = shutdown.cancelled() => {}
    }
}

/// Starts the training thread of an assigned job.
fn start_training(
    config: &LearnerServiceConfig,
    assignment: &v1::Assignment,
    worker_id: String,
    shared: Arc<Shared>,
) -> anyhow::Result<(std::thread::JoinHandle<()>, TrainConfig)> {
    let mut train: TrainConfig = toml::from_str(&assignment.spec_toml)
        .map_err(|e| anyhow::anyhow!("job {} spec: {e}", assignment.job_id))?;
    let run_dir = config
        .run_dir
        .clone()
        .unwrap_or_else(|| config.work_dir.join(&assignment.job_id));
    train.trainer.run_dir = run_dir.display().to_string();
    if let Some(device) = &config.device {
        train.trainer.device = device.clone();
    }
    let spool = JobSpool {
        job_id: assignment.job_id.clone(),
        dir: run_dir.join("spool"),
        needed: train.rollout.batch_size * train.rollout.n,
        trained: 0,
        staleness: train.job.staleness,
    };
    *shared.job.lock().expect("not poisoned") = Some(spool);
    shared.stop.store(false, Ordering::SeqCst);
    shared.job_ended.store(false, Ordering::SeqCst);
    let job = TrainingJob {
        job_id: assignment.job_id.clone(),
        config: train.clone(),
        worker_id,
        coordinator: config.coordinator.clone(),
        client: config.client.clone(),
        shared,
        runtime: tokio::runtime::Handle::current(),
    };
    tracing::info!(job = %job.job_id, "training thread starting");
    let thread = std::thread::Builder::new()
        .name(format!("learner-{}", job.job_id))
        .spawn(move || {
            let job_id = job.job_id.clone();
            let shared = job.shared.clone();
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job.run()));
            let reason = match outcome {
                Ok(Ok(())) => return,
                Ok(Err(e)) => format!("{e:#}"),
                Err(panic) => format!(
                    "the training thread panicked: {}",
                    grlo_proto::panic_message(&*panic).unwrap_or_else(|| "(no message)".into())
                ),
            };
            tracing::error!(job = %job_id, error = %reason, "training stopped with an error");
            // Unless this process is only stopping (its job goes on with the next learner),
            // the job cannot go on: the coordinator is told, and fails it with the reason.
            if !shared.stop.load(Ordering::SeqCst) || shared.job_ended.load(Ordering::SeqCst) {
                *shared.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some((job_id, reason));
            }
        })?;
    Ok((thread, train))
}

/// One job's training loop, on its own thread (tensor work never runs on the executor).
struct TrainingJob {
    job_id: String,
    config: TrainConfig,
    worker_id: String,
    coordinator: String,
    client: ClientSecurity,
    shared: Arc<Shared>,
    runtime: tokio::runtime::Handle,
}

impl TrainingJob {
    fn run(self) -> anyhow::Result<()> {
        if !self.config.trains_on_cuda() {
            let placement = Placement::single(&Default::default());
            return self.train::<Autodiff<grlo_model::backend::Cpu>>(placement);
        }
        #[cfg(feature = "cuda")]
        {
            let placement = crate::placement::cuda(&self.config)?;
            self.train::<Autodiff<grlo_model::backend::Cuda>>(placement)
        }
        #[cfg(not(feature = "cuda"))]
        anyhow::bail!(
            "device {} needs a grlo built with `--features cuda`",
            self.config.policy_device()
        )
    }

    fn train<A: ModelAutodiffBackend>(self, placement: Placement<A>) -> anyhow::Result<()> {
        let config = self.config.clone();
        let run_dir = PathBuf::from(&config.trainer.run_dir);
        let location = checkpoint_location(&config);
        let resume = CheckpointStore::open(&location)?.latest()?.is_some();
        let mut trainer = Trainer::<A>::placed(config.clone(), &placement, resume)?;
        trainer.learner.interrupt = self.shared.stop.clone();
        self.shared
            .vocab_size
            .store(trainer.vocab_size() as u64, Ordering::SeqCst);
        let total = trainer.total_steps() as u64;
        let staleness = config.job.staleness;
        let save_every = config.trainer.save_every as u64;
        let per_epoch = (total / config.trainer.total_epochs.max(1) as u64).max(1);
        let checkpointed = trainer.step_index() as u64;
        let mut step = checkpointed;
        self.shared.step.store(step, Ordering::SeqCst);
        self.recover_step_record(step)?;
        self.set_trained(step, checkpointed);
        let recorded = StepRecord::last_recorded(&run_dir);
        // The newest version the coordinator has heard of. Steps after the checkpoint up to it
        // were trained before this start: they are trained again from their spool (the same
        // trajectories, so the same weights) without being published or announced again.
        let mut announced = read_announced(&run_dir);
        match announced {
            Some(newest) if newest > step => {
                self.check_spooled(step + 1, newest)?;
                tracing::info!(job = %self.job_id, checkpoint = step, newest,
                    "resuming: re-training the spooled steps after the checkpoint");
                self.shared.version.store(newest, Ordering::SeqCst);
                self.shared.metrics.weight_version.set(newest as i64);
            }
            Some(newest) if newest == step => {
                // Its weights are in the store: tell the coordinator who has them now.
                self.announce(step, String::new(), step >= total)?;
            }
            _ => {
                let staged = trainer.stage_policy()?;
                if self.publish(&trainer, &staged, step, String::new(), step >= total)? {
                    announced = Some(step);
                }
            }
        }

        let telemetry = self.shared.metrics.clone();
        if step == 0
            && recorded == 0
            && let Some(metrics) = trainer.validate_before_training()?
        {
            telemetry.validation_metrics(&metrics);
        }
        while step < total {
            let waited = Instant::now();
            let Some(trajectories) = self.wait_for_step(step + 1)? else {
                break; // asked to stop
            };
            telemetry.phase("wait", waited.elapsed());
            let trained = Instant::now();
            // Never train on a trajectory older than the staleness bound allows.
            if let Some(stale) = trajectories
                .iter()
                .find(|t| t.weight_version + staleness < step)
            {
                anyhow::bail!(
                    "a trajectory of prompt {} was generated by version {}, more than {staleness} behind step {}",
                    stale.prompt_id,
                    stale.weight_version,
                    step + 1
                );
            }
            self.shared.training.store(true, Ordering::SeqCst);
            let epoch = (step / per_epoch) as usize;
            let record = StepRecord::of(step + 1, &trajectories);
            let metrics = match trainer.train_on_trajectories(trajectories, epoch) {
                Err(LearnerError::Interrupted) => {
                    // Nothing of the step may be saved: its weights may be partly updated.
                    self.shared.training.store(false, Ordering::SeqCst);
                    tracing::info!(job = %self.job_id, step = step + 1, "step abandoned on a stop request");
                    break;
                }
                other => other?,
            };
            telemetry.phase("train", trained.elapsed());
            step += 1;
            self.shared.step.store(step, Ordering::SeqCst);
            if step > recorded {
                record.append(&run_dir)?;
            }
            let metrics = serde_json::to_value(&metrics).expect("metrics serialise");
            telemetry.step(&metrics);

            // The policy is exported once, for the checkpoint and the published version both.
            let checkpoint = step == total || (save_every > 0 && step.is_multiple_of(save_every));
            let publish = announced.is_none_or(|newest| step > newest);
            let saved = Instant::now();
            let staged = if checkpoint || publish {
                Some(trainer.stage_policy()?)
            } else {
                None
            };
            if let (true, Some(staged)) = (checkpoint, &staged) {
                trainer.checkpoint(staged)?;
            }
            telemetry.phase("checkpoint", saved.elapsed());
            self.shared.training.store(false, Ordering::SeqCst);
            let published = Instant::now();
            if let (true, Some(staged)) = (publish, &staged)
                && self.publish(&trainer, staged, step, metrics.to_string(), step >= total)?
            {
                announced = Some(step);
            }
            telemetry.phase("publish", published.elapsed());
            drop(staged);
            // A step's trajectories go once a checkpoint covers it: until then a restart
            // trains it again from them.
            let covered = trainer
                .last_checkpoint()
                .and_then(|name| name.strip_prefix("step-")?.parse().ok())
                .unwrap_or(checkpointed);
            self.set_trained(step, covered);
        }
        if step == total {
            trainer.finish_tracking(crate::tracking::RunEnd::Finished);
        }
        if step < total && self.shared.job_ended.load(Ordering::SeqCst) {
            // The job ended early (budget, cancel): the last checkpoint written is its final
            // one, and the newest version announced (the newest trained policy) its last.
            tracing::info!(job = %self.job_id, step,
                checkpoint = trainer.last_checkpoint().unwrap_or("none"),
                "job ended: the last checkpoint written is the final one");
            trainer.finish_tracking(crate::tracking::RunEnd::Stopped);
            match announced {
                Some(newest) => {
                    self.announce(newest.max(step), String::new(), true)?;
                }
                None => {
                    let staged = trainer.stage_policy()?;
                    self.publish(&trainer, &staged, step, String::new(), true)?;
                }
            }
        } else if step < total {
            // This process is stopping; a restart resumes from the last checkpoint and trains
            // the spooled steps after it again.
            tracing::info!(job = %self.job_id, step,
                checkpoint = trainer.last_checkpoint().unwrap_or("none"),
                "stopping: the last checkpoint and the spool are kept for a restart");
        }
        Ok(())
    }

    /// Steps `from..=to` were trained before this start: their whole batches must still be
    /// in the spool to train them again.
    fn check_spooled(&self, from: u64, to: u64) -> anyhow::Result<()> {
        let spool = self.shared.job.lock().expect("not poisoned").clone();
        let Some(spool) = spool else {
            return Ok(());
        };
        for step in from..=to {
            let found = spool.load(step)?.len();
            if found < spool.needed {
                anyhow::bail!(
                    "step {step} was trained after the last checkpoint (step {}) but its spool \
                     {} holds {found} of its {} trajectories: the learner's work directory must \
                     survive a restart (or set trainer.save_every = 1)",
                    from - 1,
                    spool.step_dir(step).display(),
                    spool.needed
                );
            }
        }
        Ok(())
    }

    /// A learner that died between checkpointing step `step` and recording it: the step's
    /// trajectories are still spooled, so the record is written from them.
    fn recover_step_record(&self, step: u64) -> anyhow::Result<()> {
        let run_dir = PathBuf::from(&self.config.trainer.run_dir);
        if step == 0 || StepRecord::last_recorded(&run_dir) >= step {
            return Ok(());
        }
        let spool = self.shared.job.lock().expect("not poisoned").clone();
        let Some(spool) = spool else {
            return Ok(());
        };
        let trajectories = spool.load(step)?;
        if trajectories.is_empty() {
            tracing::warn!(job = %self.job_id, step, "step {step} is checkpointed but neither recorded nor spooled");
            return Ok(());
        }
        StepRecord::of(step, &trajectories).append(&run_dir)?;
        Ok(())
    }

    /// Marks steps up to `trained` trained and drops the spool of those up to `covered` (the
    /// last checkpoint's step).
    fn set_trained(&self, trained: u64, covered: u64) {
        let mut guard = self.shared.job.lock().expect("not poisoned");
        if let Some(spool) = guard.as_mut() {
            spool.trained = trained;
            spool.remove_up_to(covered);
        }
    }

    /// Blocks until step `step` has its whole batch (or the learner is asked to stop).
    fn wait_for_step(&self, step: u64) -> anyhow::Result<Option<Vec<Trajectory>>> {
        loop {
            if self.shared.stop.load(Ordering::SeqCst) {
                return Ok(None);
            }
            // The spool is read without the lock: the RPC handlers take it on the async
            // executor, and reading a step of the paper's job parses megabytes.
            let spool = self
                .shared
                .job
                .lock()
                .expect("not poisoned")
                .clone()
                .expect("the job's spool");
            let trajectories = spool.load(step)?;
            if trajectories.len() >= spool.needed {
                return Ok(Some(trajectories));
            }
            // An arrival between the read and this wait is seen at the next timeout.
            let guard = self.shared.job.lock().expect("not poisoned");
            let _ = self
                .shared
                .arrived
                .wait_timeout(guard, Duration::from_millis(500))
                .expect("not poisoned");
        }
    }

    /// Where version `version` of this job is published.
    fn version_location(&self, version: u64) -> String {
        let base = checkpoint_location(&self.config);
        format!("{}/weights/v{version}", base.trim_end_matches('/'))
    }

    /// Publishes the staged policy as version `version` and tells the coordinator; returns
    /// whether the coordinator heard it.
    fn publish<A: ModelAutodiffBackend>(
        &self,
        trainer: &Trainer<A>,
        staged: &StagedPolicy,
        version: u64,
        metrics: String,
        finished: bool,
    ) -> anyhow::Result<bool> {
        let location = self.version_location(version);
        grlo_model::weights_store::publish_blocking(&staged.policy_dir(), &location, version)?;
        // Versions no task may use any more (older than the staleness bound allows, with one
        // spare for actors still finishing) are deleted from the store.
        let keep = trainer.learner.config.job.staleness + 2;
        if version >= keep {
            let old = self.version_location(version - keep);
            if let Err(e) = grlo_model::weights_store::remove_blocking(&old) {
                tracing::warn!(location = %old, error = %e, "could not delete an old weight version");
            }
        }
        self.announce(version, metrics, finished)
    }

    /// Tells the coordinator that version `version` is published; returns whether it heard.
    fn announce(&self, version: u64, metrics: String, finished: bool) -> anyhow::Result<bool> {
        let location = self.version_location(version);
        self.shared.version.store(version, Ordering::SeqCst);
        self.shared.metrics.weight_version.set(version as i64);
        let request = v1::PublishWeightsRequest {
            worker_id: self.worker_id.clone(),
            weights: Some(v1::WeightVersion {
                job_id: self.job_id.clone(),
                version,
                location,
            }),
            step: version,
            step_metrics_json: metrics,
            finished,
        };
        // The coordinator may be restarting: keep trying until it hears us.
        let endpoint = self.client.endpoint(&self.coordinator)?;
        let mut delay = Duration::from_millis(100);
        for attempt in 0.. {
            if attempt >= 8 && self.shared.stop.load(Ordering::SeqCst) {
                // Stopping with the coordinator away: the weights are in the store, and the
                // next start announces them.
                tracing::warn!(job = %self.job_id, version, "coordinator away while stopping: version not announced");
                return Ok(false);
            }
            let attempt = self.runtime.block_on(async {
                let channel = self.client.wrap(endpoint.connect_lazy());
                let mut client = CoordinatorClient::new(channel);
                client.publish_weights(request.clone()).await
            });
            match attempt {
                Ok(_) => break,
                Err(status)
                    if grlo_proto::status::is_retryable(&status)
                        || status.code() == tonic::Code::Unknown =>
                {
                    tracing::warn!(%status, "publishing to the coordinator failed, retrying");
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
                Err(status) => anyhow::bail!("the coordinator refused version {version}: {status}"),
            }
        }
        let run_dir = Path::new(&self.config.trainer.run_dir);
        write_announced(run_dir, version)?;
        tracing::info!(job = %self.job_id, version, "weights published");
        Ok(true)
    }
}

/// The file in the run directory that holds the newest version the coordinator acknowledged.
const ANNOUNCED: &str = "announced";

fn read_announced(run_dir: &Path) -> Option<u64> {
    std::fs::read_to_string(run_dir.join(ANNOUNCED))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn write_announced(run_dir: &Path, version: u64) -> anyhow::Result<()> {
    let path = run_dir.join(ANNOUNCED);
    if read_announced(run_dir).is_some_and(|newest| newest >= version) {
        return Ok(());
    }
    grlo_model::safetensors_io::write_atomically(&path, format!("{version}\n").as_bytes())?;
    Ok(())
}

/// What a step trained on, appended to `steps.jsonl` in the run directory: the prompt ids and
/// the weight versions that generated them (for audits and the exactly-once tests).
#[derive(serde::Serialize, serde::Deserialize)]
pub struct StepRecord {
    pub step: u64,
    pub prompt_ids: Vec<usize>,
    pub weight_versions: Vec<u64>,
}

impl StepRecord {
    fn of(step: u64, trajectories: &[Trajectory]) -> Self {
        let mut prompt_ids: Vec<usize> = trajectories.iter().map(|t| t.prompt_id).collect();
        prompt_ids.sort_unstable();
        let mut weight_versions: Vec<u64> = trajectories.iter().map(|t| t.weight_version).collect();
        weight_versions.sort_unstable();
        weight_versions.dedup();
        StepRecord {
            step,
            prompt_ids,
            weight_versions,
        }
    }

    fn append(&self, run_dir: &Path) -> std::io::Result<()> {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(run_dir.join("steps.jsonl"))?;
        let line = serde_json::to_string(self).expect("records serialise") + "\n";
        file.write_all(line.as_bytes())?;
        file.sync_all()
    }

    /// The newest step recorded in `steps.jsonl` (0 when none).
    fn last_recorded(run_dir: &Path) -> u64 {
        std::fs::read_to_string(run_dir.join("steps.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|line| serde_json::from_str::<StepRecord>(line).ok())
            .map(|record| record.step)
            .max()
            .unwrap_or(0)
    }
}

/// The Learner gRPC service: stores trajectories for the training thread.
struct LearnerService {
    shared: Arc<Shared>,
}

#[tonic::async_trait]
impl LearnerRpc for LearnerService {
    #[tracing::instrument(skip_all)]
    async fn send_trajectories(
        &self,
        request: Request<Streaming<v1::TrajectoryBatch>>,
    ) -> Result<Response<v1::SendTrajectoriesResponse>, Status> {
        let mut stream = request.into_inner();
        let mut stored = Vec::new();
        while let Some(batch) = stream.message().await? {
            let spool = self.shared.job.lock().expect("not poisoned").clone();
            let Some(spool) = spool else {
                return Err(Status::unavailable("this learner has no job yet: retry"));
            };
            if batch.job_id != spool.job_id {
                return Err(Status::failed_precondition(format!(
                    "this learner trains job {}, not {}",
                    spool.job_id, batch.job_id
                )));
            }
            if batch.task_id.is_empty() || batch.trajectories.is_empty() {
                return Err(Status::invalid_argument(
                    "a batch needs a task_id and trajectories",
                ));
            }
            grlo_proto::check_plain_id("task_id", &batch.task_id)
                .map_err(Status::invalid_argument)?;
            if batch.step == 0 {
                return Err(Status::invalid_argument(
                    "step 0 is not a step (steps count from 1)",
                ));
            }
            // No step further ahead than a lease can be (the coordinator leases up to the
            // newest version + 1 + staleness): each would be a spool directory. UNAVAILABLE, as
            // a learner that has only just restarted does not know its version yet: the sender
            // retries, and by then it does.
            let version = self.shared.version.load(Ordering::SeqCst);
            let furthest = spool.trained.max(version) + 1 + spool.staleness;
            if batch.step > furthest {
                return Err(Status::unavailable(format!(
                    "step {} is ahead of this learner (version {version}, staleness {}): retry",
                    batch.step, spool.staleness
                )));
            }
            if batch.step <= spool.trained {
                // Its step is trained already (a late duplicate): acknowledge, do not store.
                stored.push(batch.task_id);
                continue;
            }
            // A token id past the embedding would panic the training thread: refused here.
            let vocab_size = self.shared.vocab_size.load(Ordering::SeqCst);
            if vocab_size == 0 {
                return Err(Status::unavailable(
                    "this learner is loading its models: retry",
                ));
            }
            let trajectories = batch
                .trajectories
                .into_iter()
                .enumerate()
                .map(|(i, t)| {
                    check_token_ids(&t, i, vocab_size)?;
                    from_wire(t, i)
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(Status::invalid_argument)?;
            let task_id = batch.task_id.clone();
            let step = batch.step;
            let count = trajectories.len();
            tokio::task::spawn_blocking(move || spool.store(&task_id, step, &trajectories))
                .await
                .map_err(|e| Status::internal(e.to_string()))?
                .map_err(|e| grlo_proto::status::Failure::Internal.status(format!("spool: {e}")))?;
            self.shared.arrived.notify_all();
            self.shared
                .metrics
                .trajectories_received
                .inc_by(count as u64);
            stored.push(batch.task_id);
        }
        Ok(Response::new(v1::SendTrajectoriesResponse {
            task_ids: stored,
        }))
    }

    async fn status(
        &self,
        _: Request<v1::LearnerStatusRequest>,
    ) -> Result<Response<v1::LearnerStatus>, Status> {
        let spool = self.shared.job.lock().expect("not poisoned").clone();
        let step = self.shared.step.load(Ordering::SeqCst);
        let buffered = self.shared.buffered();
        Ok(Response::new(v1::LearnerStatus {
            job_id: spool.as_ref().map(|s| s.job_id.clone()).unwrap_or_default(),
            step,
            weight_version: self.shared.version.load(Ordering::SeqCst),
            buffered: buffered as u64,
            needed: spool.as_ref().map(|s| s.needed as u64).unwrap_or(0),
            training: self.shared.training.load(Ordering::SeqCst),
        }))
    }
}
