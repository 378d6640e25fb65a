//! The reward server as a worker of a coordinator: it registers, heartbeats, and serves the
//! reward model of the job it is assigned (read from the job's spec), so a job submitted over
//! gRPC needs no reward server restarted or reconfigured. Until it is assigned, it serves the
//! rule verifiers only (and its health answers).

use grlo_model::backend::ModelBackend;
use std::net::SocketAddr;
use std::time::Duration;

use grlo_learner::TrainConfig;
use grlo_proto::v1;
use grlo_proto::v1::coordinator_client::CoordinatorClient;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::RewardServerConfig;
use crate::error::{Result, RewardServerError};

/// How the worker finds its coordinator and presents itself.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// The coordinator's URL.
    pub coordinator: String,
    /// The address actors reach this server at (default: the listen address).
    pub advertise: Option<String>,
    pub accelerators: Vec<(String, u32)>,
    pub name: String,
    /// How this server calls the coordinator (TLS, the worker token).
    pub client: grlo_proto::security::ClientSecurity,
}

/// One inner server: its model and how to stop it.
struct Running {
    model: Option<String>,
    stop: CancellationToken,
    task: JoinHandle<Result<()>>,
}

/// Serves on `listen` for the coordinator's jobs until `shutdown`, swapping the reward model
/// when the assigned job asks for another one.
pub async fn run_for_coordinator<B: ModelBackend>(
    base: RewardServerConfig,
    device: B::Device,
    listen: SocketAddr,
    worker: WorkerConfig,
    shutdown: CancellationToken,
    serving: crate::Serving,
) -> Result<()> {
    let listener = bind(listen).await?;
    let address = worker.advertise.clone().unwrap_or_else(|| {
        listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default()
    });
    let stats = serving.stats.clone();
    let mut running = start::<B>(
        &base,
        None,
        device.clone(),
        listener,
        &shutdown,
        serving.clone(),
    );

    let channel = worker.client.lazy(&worker.coordinator).map_err(|e| {
        RewardServerError::Config(format!("the coordinator {}: {e}", worker.coordinator))
    })?;
    let mut client = CoordinatorClient::new(channel);
    let mut worker_id = String::new();
    let mut interval = Duration::from_millis(1000);
    let mut calls_seen = 0;
    while !shutdown.is_cancelled() {
        if worker_id.is_empty() {
            match register(&mut client, &worker, &address, "").await {
                Ok((id, every)) => {
                    worker_id = id;
                    interval = every;
                }
                Err(status) => warn!(%status, "coordinator unreachable, retrying"),
            }
        }
        if !worker_id.is_empty() {
            let calls = stats.model_calls() + stats.rule_items();
            let activity = if calls != calls_seen {
                v1::Activity::Scoring
            } else {
                v1::Activity::Idle
            };
            calls_seen = calls;
            let beat = client
                .heartbeat(v1::HeartbeatRequest {
                    worker_id: worker_id.clone(),
                    activity: activity as i32,
                    weight_version: 0,
                    job_id: String::new(),
                    ..Default::default()
                })
                .await;
            match beat {
                Ok(response) => {
                    let response = response.into_inner();
                    if response.reregister
                        && let Ok((id, _)) =
                            register(&mut client, &worker, &address, &worker_id).await
                    {
                        worker_id = id;
                    }
                    let wanted = response
                        .assignment
                        .as_ref()
                        .and_then(|a| model_of(a, &base));
                    if let Some((model, config)) = wanted
                        && running.model.as_deref() != Some(model.as_str())
                    {
                        info!(%model, "serving the assigned job's reward model");
                        running.stop.cancel();
                        if let Ok(Err(e)) = running.task.await {
                            warn!(error = %e, "the previous reward model's server stopped with an error");
                        }
                        let listener = bind(listen_of(&address, listen)).await?;
                        running = start::<B>(
                            &config,
                            Some(model),
                            device.clone(),
                            listener,
                            &shutdown,
                            serving.clone(),
                        );
                    }
                }
                Err(status) => warn!(%status, "heartbeat failed, retrying"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.cancelled() => {}
        }
    }
    running.stop.cancel();
    running
        .task
        .await
        .map_err(|e| RewardServerError::Internal(e.to_string()))?
}

/// The reward model a job asks for, with the job's length and batch settings.
fn model_of(
    assignment: &v1::Assignment,
    base: &RewardServerConfig,
) -> Option<(String, RewardServerConfig)> {
    let spec: TrainConfig = toml::from_str(&assignment.spec_toml).ok()?;
    let model = spec.reward.model?;
    let config = RewardServerConfig {
        model: Some(model.clone()),
        max_length: spec.reward.max_length,
        batch_tokens: spec.reward.batch_tokens,
        ..base.clone()
    };
    Some((model, config))
}

fn start<B: ModelBackend>(
    config: &RewardServerConfig,
    model: Option<String>,
    device: B::Device,
    listener: TcpListener,
    shutdown: &CancellationToken,
    serving: crate::Serving,
) -> Running {
    let stop = shutdown.child_token();
    let config = RewardServerConfig {
        model: model.clone(),
        ..config.clone()
    };
    let task = tokio::spawn(crate::serve_with::<B>(
        config,
        device,
        listener,
        stop.clone(),
        serving,
    ));
    Running { model, stop, task }
}

/// The address to bind again after a model swap: the one the server was listening on.
fn listen_of(advertised: &str, listen: SocketAddr) -> SocketAddr {
    match advertised.parse::<SocketAddr>() {
        Ok(address) if listen.port() == 0 => SocketAddr::new(listen.ip(), address.port()),
        _ => listen,
    }
}

async fn bind(address: SocketAddr) -> Result<TcpListener> {
    // The previous server may still hold the port for a moment while it drains.
    let mut last = None;
    for _ in 0..50 {
        match TcpListener::bind(address).await {
            Ok(listener) => return Ok(listener),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(RewardServerError::Io {
        context: format!("cannot listen on {address}"),
        error: last.expect("tried"),
    })
}

async fn register(
    client: &mut CoordinatorClient<grlo_proto::security::Transport>,
    worker: &WorkerConfig,
    address: &str,
    previous: &str,
) -> std::result::Result<(String, Duration), tonic::Status> {
    let who = grlo_proto::worker::Registration {
        role: v1::Role::RewardServer,
        address,
        accelerators: &worker.accelerators,
        name: &worker.name,
    };
    grlo_proto::worker::register(client, &who, previous).await
}
