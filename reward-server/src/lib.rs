//! The grlo reward server: scores conversations for the actors of a job with a Bradley–Terry
//! reward model under dynamic batching, and with rule verifiers for items of style `rule`,
//! behind the `grlo.v1.RewardServer` gRPC service (plus the standard gRPC health service).
//!
//! How a `Score` request goes:
//!
//! 1. Its handler checks it (non-empty, at most `max_request_items` items of at most
//!    `max_item_bytes`, styles `model` or `rule`, rule items with a ground truth, model items
//!    with a prompt) and answers INVALID_ARGUMENT naming the first item and field at fault.
//!    Model items sent to a server without a reward model are FAILED_PRECONDITION; while the
//!    model loads they are UNAVAILABLE.
//! 2. It reserves room for its model items in the queue — at most `max_queue_items` model
//!    items are queued or being scored at once — or answers RESOURCE_EXHAUSTED at once, so
//!    memory stays bounded however many actors call.
//! 3. On the blocking pool, it scores its rule items with the verifiers and renders its model
//!    items with the reward model's chat template into token ids.
//! 4. It sends the token ids to the one batching task (a bounded `mpsc`, a `oneshot` for the
//!    reply), which gathers whole requests for up to `batch_window` and up to `batch_tokens`
//!    (rows × longest row), runs the reward model on its own thread, and answers each request.
//!
//! A request's `job_id` is not used yet: a reward server serves one reward model, and every
//! job that calls it is scored by that model.
//!
//! [`run`] serves until its shutdown token is cancelled, then stops taking connections,
//! answers every request it already took (a batch window in progress is cut short) and
//! returns.

mod batcher;
pub mod config;
pub mod error;
mod request;
mod scorer;
mod service;
pub mod stats;
pub mod worker;

use grlo_model::backend::ModelBackend;
use std::sync::{Arc, OnceLock};

use grlo_proto::v1::reward_server_server::RewardServerServer;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tracing::{info, warn};

pub use config::RewardServerConfig;
pub use error::{Result, RewardServerError};
pub use stats::Stats;

use crate::batcher::BatchPolicy;
use crate::request::Limits;
use crate::scorer::Encoder;
use crate::service::{ModelQueue, ScoreService};

/// The gRPC name of the scoring service, as the health service reports it.
pub const SERVICE_NAME: &str = <RewardServerServer<ScoreService> as NamedService>::NAME;

/// Serves the reward server on `listener` with the CPU backend until `shutdown` is cancelled.
pub async fn run(
    config: RewardServerConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<()> {
    serve::<grlo_model::backend::Cpu>(
        config,
        Default::default(),
        listener,
        shutdown,
        Arc::default(),
    )
    .await
}

/// Serves the reward server with the reward model on `device` of backend `B`, counting into
/// `stats`, until `shutdown` is cancelled; then answers the requests already taken and
/// returns. Health reports NOT_SERVING while the model loads, SERVING once it has loaded.
/// A model that fails to load stops the server with [`RewardServerError::ModelLoad`].
pub async fn serve<B: ModelBackend>(
    config: RewardServerConfig,
    device: B::Device,
    listener: TcpListener,
    shutdown: CancellationToken,
    stats: Arc<Stats>,
) -> Result<()> {
    let open = Serving {
        stats,
        ..Serving::default()
    };
    serve_with::<B>(config, device, listener, shutdown, open).await
}

/// What a server shares with its surroundings: who may call it and over what, where it
/// counts, and where its per-call metrics go.
#[derive(Clone, Default)]
pub struct Serving {
    pub security: grlo_proto::security::ServerSecurity,
    pub stats: Arc<Stats>,
    pub rpc: Option<grlo_proto::metrics::RpcMetrics>,
}

/// [`serve`] with TLS, bearer tokens and metrics as `serving` says.
pub async fn serve_with<B: ModelBackend>(
    config: RewardServerConfig,
    device: B::Device,
    listener: TcpListener,
    shutdown: CancellationToken,
    serving: Serving,
) -> Result<()> {
    let Serving {
        security,
        stats,
        rpc,
    } = serving;
    config.validate()?;
    let address = listener
        .local_addr()
        .map_or_else(|_| "an unknown address".into(), |a| a.to_string());
    info!(%address, ?config, "reward server starting");

    let (health, health_service) = tonic_health::server::health_reporter();
    // Stops the gRPC server: the caller's shutdown, or a model that failed to load.
    let stop = shutdown.child_token();
    // The gRPC server has returned: no handler is left, the queue can close.
    let closing = CancellationToken::new();
    let mut model = None;
    let mut background = None;
    if let Some(location) = &config.model {
        set_status(&health, ServingStatus::NotServing).await;
        let (scorer, loaded, thread) = scorer::spawn::<B>(
            location.clone(),
            config.max_length,
            config.batch_tokens,
            device,
        )?;
        let encoder = Arc::new(OnceLock::new());
        let (jobs, queue) = mpsc::channel(config.max_queue_items);
        let policy = BatchPolicy {
            batch_tokens: config.batch_tokens,
            window: config.batch_window,
        };
        let batcher = tokio::spawn(batcher::run(
            queue,
            scorer,
            policy,
            Arc::clone(&stats),
            stop.clone(),
            closing.clone(),
        ));
        let loader = tokio::spawn(watch_loading(
            loaded,
            Arc::clone(&encoder),
            health.clone(),
            stop.clone(),
        ));
        model = Some(ModelQueue {
            encoder,
            jobs,
            max_queue_items: config.max_queue_items,
        });
        background = Some((batcher, loader, thread));
    } else {
        set_status(&health, ServingStatus::Serving).await;
    }
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let service = ScoreService {
        limits: Limits {
            max_request_items: config.max_request_items,
            max_item_bytes: config.max_item_bytes,
        },
        model,
        stats,
        cpu: Arc::new(Semaphore::new(cpus)),
    };

    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let stopped = {
        let (stop, health) = (stop.clone(), health.clone());
        async move {
            stop.cancelled().await;
            info!("reward server stopping: answering the requests already taken");
            set_status(&health, ServingStatus::NotServing).await;
        }
    };
    let mut builder = security
        .builder(rpc)
        .map_err(|e| RewardServerError::Config(e.to_string()))?;
    let reflection = grlo_proto::reflection::services(&["grlo.v1.RewardServer"]);
    let served = builder
        .add_service(health_service)
        .add_service(reflection.0)
        .add_service(reflection.1)
        .add_service(
            RewardServerServer::new(service).max_decoding_message_size(config.max_request_bytes),
        )
        .serve_with_incoming_shutdown(incoming, stopped)
        .await;
    stop.cancel();
    closing.cancel();

    let mut outcome = served.map_err(|error| RewardServerError::Serve {
        address: address.clone(),
        error,
    });
    if let Some((batcher, loader, thread)) = background {
        batcher
            .await
            .map_err(|e| RewardServerError::Internal(format!("batching task: {e}")))?;
        let loading = loader
            .await
            .map_err(|e| RewardServerError::Internal(format!("model loading task: {e}")))?;
        match loading {
            Loading::Loaded => {
                // The batcher dropped the model thread's queue: it ends after its last batch.
                tokio::task::spawn_blocking(move || thread.join())
                    .await
                    .map_err(|e| RewardServerError::Internal(e.to_string()))?
                    .map_err(|_| {
                        RewardServerError::Internal("the reward model thread panicked".into())
                    })?;
            }
            Loading::Failed(error) => outcome = Err(error),
            Loading::Abandoned => {
                warn!("stopped while the reward model was loading; its thread ends once loaded");
            }
        }
    }
    if outcome.is_ok() {
        info!(%address, "reward server stopped");
    }
    outcome
}

/// How loading the reward model ended.
enum Loading {
    Loaded,
    Failed(RewardServerError),
    /// The server stopped first.
    Abandoned,
}

/// Waits for the model thread to load; then the handlers get the encoder and health says
/// SERVING, or the server stops.
async fn watch_loading(
    loaded: tokio::sync::oneshot::Receiver<scorer::Loaded>,
    encoder: Arc<OnceLock<Result<Arc<Encoder>, String>>>,
    health: HealthReporter,
    stop: CancellationToken,
) -> Loading {
    tokio::select! {
        biased;
        () = stop.cancelled() => Loading::Abandoned,
        result = loaded => {
            let result = result.unwrap_or_else(|_| {
                Err(RewardServerError::Internal(
                    "the reward model thread stopped while loading".into(),
                ))
            });
            match result {
                Ok(loaded) => {
                    let _ = encoder.set(Ok(Arc::new(loaded)));
                    set_status(&health, ServingStatus::Serving).await;
                    Loading::Loaded
                }
                Err(error) => {
                    let _ = encoder.set(Err(error.to_string()));
                    stop.cancel();
                    Loading::Failed(error)
                }
            }
        }
    }
}

/// Sets the health of the server as a whole and of the scoring service.
async fn set_status(health: &HealthReporter, status: ServingStatus) {
    health.set_service_status("", status).await;
    health.set_service_status(SERVICE_NAME, status).await;
}
