//! The actor role (`grlo actor`): leases rollout tasks from the coordinator, generates the
//! responses with the task's weight version (downloaded and checked against its manifest),
//! has them scored by the reward server, streams the trajectories to the learner and reports
//! the task done. Peers that are away are retried with back-off until the task's lease ends.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use grlo_learner::rollout::{PromptTask, RolloutParams};
use grlo_learner::wire::to_wire;
use grlo_model::SamplingParams;
use grlo_proto::security::{ClientSecurity, Transport};
use grlo_proto::status::is_retryable;
use grlo_proto::v1;
use grlo_proto::v1::coordinator_client::CoordinatorClient;
use grlo_proto::v1::learner_client::LearnerClient;
use grlo_proto::v1::reward_server_client::RewardServerClient;
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;

mod engine;
pub mod openai;
pub mod serve;
pub mod telemetry;

pub use engine::{Generate, builtin, http};
use engine::{LoadedPolicy, load_policy};
pub use telemetry::ActorMetrics;

/// How the actor runs.
#[derive(Clone, Debug)]
pub struct ActorConfig {
    /// The coordinator's URL, e.g. `http://127.0.0.1:50051`.
    pub coordinator: String,
    /// Where downloaded weight versions are kept.
    pub cache_dir: PathBuf,
    /// `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// The accelerators to account (kind, count).
    pub accelerators: Vec<(String, u32)>,
    pub name: String,
    /// How it calls the coordinator, reward server and learner (TLS, the worker token).
    pub client: ClientSecurity,
    pub metrics: ActorMetrics,
}

const IDLE: u8 = 0;
const GENERATING: u8 = 1;

/// What the heartbeat task reports.
struct Status {
    worker_id: Mutex<String>,
    activity: AtomicU8,
    version: AtomicU64,
}

/// Works for the coordinator until `shutdown`; a task under way is finished first.
pub async fn run(config: ActorConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let channel = config
        .client
        .lazy(&config.coordinator)
        .map_err(|e| anyhow::anyhow!("the coordinator {}: {e}", config.coordinator))?;
    let mut coordinator = CoordinatorClient::new(channel);
    let (worker_id, interval) = match register(&mut coordinator, &config, "", &shutdown).await {
        Ok(registered) => registered,
        // Asked to stop while the coordinator was away: nothing to hand back.
        Err(_) if shutdown.is_cancelled() => return Ok(()),
        Err(e) => return Err(e),
    };
    let status = Arc::new(Status {
        worker_id: Mutex::new(worker_id),
        activity: AtomicU8::new(IDLE),
        version: AtomicU64::new(0),
    });
    let beats = tokio::spawn(heartbeats(
        coordinator.clone(),
        config.clone(),
        status.clone(),
        interval,
        shutdown.clone(),
    ));

    let mut policy: Option<LoadedPolicy> = None;
    while !shutdown.is_cancelled() {
        let worker_id = status.worker_id.lock().expect("not poisoned").clone();
        let lease = coordinator
            .lease_task(v1::LeaseTaskRequest {
                worker_id: worker_id.clone(),
            })
            .await;
        let task = match lease {
            Ok(response) => {
                let response = response.into_inner();
                match response.task {
                    Some(task) => task,
                    None => {
                        pause(
                            Duration::from_millis(response.retry_after_ms.max(50) as u64),
                            &shutdown,
                        )
                        .await;
                        continue;
                    }
                }
            }
            Err(refusal) => {
                if refusal.code() == tonic::Code::NotFound
                    && let Ok((id, _)) =
                        register(&mut coordinator, &config, &worker_id, &shutdown).await
                {
                    // The coordinator forgot us (a restart without our record): registered again.
                    *status.worker_id.lock().expect("not poisoned") = id;
                }
                tracing::debug!(status = %refusal, "no lease, retrying");
                pause(Duration::from_millis(300), &shutdown).await;
                continue;
            }
        };
        let task_id = task.task_id.clone();
        let job_id = task.job_id.clone();
        status.activity.store(GENERATING, Ordering::SeqCst);
        let outcome = work_on(&config, &task, &mut policy, &status).await;
        status.activity.store(IDLE, Ordering::SeqCst);
        let (succeeded, message) = match outcome {
            Ok(()) => {
                config.metrics.tasks.with_label_values(&["done"]).inc();
                tracing::info!(task = %task_id, job = %job_id, "task done");
                (true, String::new())
            }
            Err(e) => {
                config.metrics.tasks.with_label_values(&["failed"]).inc();
                tracing::warn!(task = %task_id, error = %format!("{e:#}"), "task failed, giving it back");
                (false, format!("{e:#}"))
            }
        };
        let complete = v1::CompleteTaskRequest {
            worker_id,
            job_id,
            task_id,
            succeeded,
            message,
        };
        // The coordinator may be restarting: the lease would expire anyway, but try a few times.
        for attempt in 0..20 {
            match coordinator.complete_task(complete.clone()).await {
                Ok(_) => break,
                Err(refusal)
                    if is_retryable(&refusal) || refusal.code() == tonic::Code::Unknown =>
                {
                    tokio::time::sleep(Duration::from_millis(100 * (attempt + 1))).await;
                }
                Err(refusal) => {
                    tracing::warn!(status = %refusal, "completing the task failed");
                    break;
                }
            }
        }
    }
    beats.abort();
    tracing::info!("actor stopped");
    Ok(())
}

async fn register(
    client: &mut CoordinatorClient<Transport>,
    config: &ActorConfig,
    previous: &str,
    shutdown: &CancellationToken,
) -> anyhow::Result<(String, Duration)> {
    let who = grlo_proto::worker::Registration {
        role: v1::Role::Actor,
        address: "",
        accelerators: &config.accelerators,
        name: &config.name,
    };
    let mut delay = Duration::from_millis(100);
    loop {
        match grlo_proto::worker::register(client, &who, previous).await {
            Ok(registered) => return Ok(registered),
            Err(status) => {
                tracing::warn!(%status, "coordinator unreachable, retrying");
                pause(delay, shutdown).await;
                if shutdown.is_cancelled() {
                    anyhow::bail!("stopped before the coordinator answered");
                }
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
}

async fn heartbeats(
    mut client: CoordinatorClient<Transport>,
    config: ActorConfig,
    status: Arc<Status>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    while !shutdown.is_cancelled() {
        let worker_id = status.worker_id.lock().expect("not poisoned").clone();
        let activity = match status.activity.load(Ordering::SeqCst) {
            GENERATING => v1::Activity::Generating,
            _ => v1::Activity::Idle,
        };
        let beat = client
            .heartbeat(v1::HeartbeatRequest {
                worker_id: worker_id.clone(),
                activity: activity as i32,
                weight_version: status.version.load(Ordering::SeqCst),
                job_id: String::new(),
                ..Default::default()
            })
            .await;
        if let Ok(response) = beat
            && response.into_inner().reregister
            && let Ok((id, _)) = register(&mut client, &config, &worker_id, &shutdown).await
        {
            *status.worker_id.lock().expect("not poisoned") = id;
        }
        pause(interval, &shutdown).await;
    }
}

async fn pause(duration: Duration, shutdown: &CancellationToken) {
    tokio::select! {
        _ = tokio::time::sleep(duration) => {}
        _ = shutdown.cancelled() => {}
    }
}

/// Generates, scores and delivers one task.
async fn work_on(
    config: &ActorConfig,
    task: &v1::RolloutTask,
    policy: &mut Option<LoadedPolicy>,
    status: &Status,
) -> anyhow::Result<()> {
    let deadline = task.deadline_unix_ms;
    let stale = policy
        .as_ref()
        .is_none_or(|p| p.job_id != task.job_id || p.version != task.weight_version);
    if stale {
        *policy = None; // free the old version first
        let (for_load, task_for_load) = (config.clone(), task.clone());
        let started = Instant::now();
        let loaded =
            tokio::task::spawn_blocking(move || load_policy(&for_load, &task_for_load)).await??;
        status.version.store(loaded.version, Ordering::SeqCst);
        config.metrics.phase("load", started.elapsed());
        config.metrics.weight_version.set(loaded.version as i64);
        *policy = Some(loaded);
    }
    let loaded = policy.take().expect("loaded above");
    let sampling = task.sampling.clone().unwrap_or_default();
    let params = RolloutParams {
        sampling: SamplingParams {
            greedy: false,
            temperature: sampling.temperature,
            top_p: sampling.top_p,
            top_k: sampling.top_k as usize,
            seed: 0,
        },
        max_new_tokens: sampling.max_new_tokens as usize,
        n: sampling.n.max(1) as usize,
        stop_token_ids: loaded.tokenizer.stop_token_ids().to_vec(),
        max_batch_rows: sampling.max_batch_rows.max(1) as usize,
        max_cache_tokens: sampling.max_cache_tokens as usize,
    };
    let tasks: Vec<PromptTask> = task
        .prompts
        .iter()
        .map(|p| PromptTask {
            prompt_id: p.prompt_id as usize,
            group: p.group as usize,
            prompt_ids: p.prompt_ids.clone(),
            seed: p.seed,
        })
        .collect();
    let version = task.weight_version;
    let started = Instant::now();
    let left = deadline
        - std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
    let until = started + Duration::from_millis(left.max(0) as u64);
    let (loaded, generated) = tokio::task::spawn_blocking(move || {
        let generated = loaded.generator.rollout(&tasks, &params, version, until);
        (loaded, generated)
    })
    .await?;
    let mut trajectories = generated?;
    config.metrics.phase("generate", started.elapsed());
    let tokens: usize = trajectories.iter().map(|t| t.response_ids.len()).sum();
    config.metrics.tokens_generated.inc_by(tokens as u64);
    let started = Instant::now();

    // Score: the prompt's messages with the decoded response, by the prompt's reward style.
    let items = trajectories
        .iter()
        .map(|t| {
            let prompt = task
                .prompts
                .iter()
                .find(|p| p.prompt_id as usize == t.prompt_id && p.group as usize == t.group)
                .expect("a trajectory answers a prompt of its task");
            Ok(v1::ScoreItem {
                prompt: prompt.messages.clone(),
                response: loaded.tokenizer.decode(&t.response_ids, true)?,
                style: prompt.reward_style.clone(),
                ground_truth: prompt.ground_truth.clone(),
                data_source: prompt.data_source.clone(),
                ability: prompt.ability.clone(),
            })
        })
        .collect::<Result<Vec<_>, grlo_model::tokenizer::TokenizerError>>()?;
    *policy = Some(loaded);
    let request = v1::ScoreRequest {
        job_id: task.job_id.clone(),
        items,
    };
    let endpoint = peer(&config.client, &task.reward_server_address)?;
    let scores = retry_until(deadline, "the reward server", || {
        let channel = config.client.wrap(endpoint.connect_lazy());
        let request = request.clone();
        async move {
            let mut client = RewardServerClient::new(channel).max_decoding_message_size(64 << 20);
            client.score(request).await.map(|r| r.into_inner().scores)
        }
    })
    .await?;
    if scores.len() != trajectories.len() {
        anyhow::bail!(
            "the reward server returned {} scores for {} responses",
            scores.len(),
            trajectories.len()
        );
    }
    for (t, score) in trajectories.iter_mut().zip(scores) {
        t.reward = Some(score);
    }
    config.metrics.phase("score", started.elapsed());
    let started = Instant::now();

    // Deliver: the learner stores them durably before it answers.
    let batch = v1::TrajectoryBatch {
        job_id: task.job_id.clone(),
        task_id: task.task_id.clone(),
        step: task.step,
        trajectories: trajectories.iter().map(to_wire).collect(),
    };
    let endpoint = peer(&config.client, &task.learner_address)?;
    retry_until(deadline, "the learner", || {
        let channel = config.client.wrap(endpoint.connect_lazy());
        let batch = batch.clone();
        async move {
            let mut client = LearnerClient::new(channel)
                .max_encoding_message_size(grlo_proto::MAX_TRAJECTORY_BATCH_BYTES);
            client
                .send_trajectories(tokio_stream_once(batch))
                .await
                .map(|r| r.into_inner())
        }
    })
    .await?;
    config.metrics.phase("deliver", started.elapsed());
    config
        .metrics
        .trajectories
        .inc_by(trajectories.len() as u64);
    Ok(())
}

fn tokio_stream_once(
    batch: v1::TrajectoryBatch,
) -> impl tonic::codegen::tokio_stream::Stream<Item = v1::TrajectoryBatch> {
    tonic::codegen::tokio_stream::iter(std::iter::once(batch))
}

/// A peer known as `host:port`, over TLS when the actor is configured for it.
fn peer(client: &ClientSecurity, address: &str) -> anyhow::Result<Endpoint> {
    if address.is_empty() {
        anyhow::bail!("the job has no peer address yet");
    }
    client
        .endpoint(address)
        .map_err(|e| anyhow::anyhow!("peer {address}: {e}"))
}

/// Calls a peer until it answers, backing off while it is away or busy, until the lease's
/// deadline.
async fn retry_until<T, F, Fut>(deadline_ms: i64, peer: &str, mut call: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let mut delay = Duration::from_millis(50);
    loop {
        match call().await {
            Ok(value) => return Ok(value),
            Err(status) if is_retryable(&status) || status.code() == tonic::Code::Unknown => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as i64)
                    .unwrap_or(0);
                if now + delay.as_millis() as i64 > deadline_ms {
                    anyhow::bail!("{peer} stayed away until the lease ended: {status}");
                }
                tracing::debug!(%status, peer, "peer away, retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(status) => anyhow::bail!("{peer} refused: {status}"),
        }
    }
}
