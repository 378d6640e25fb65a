//! `grlo serve`: an OpenAI-compatible HTTP server over the built-in engine.
//!
//! Routes: `GET /v1/models`, `POST /v1/completions`, `POST /v1/chat/completions` (the model's
//! chat template; `stream: true` as server-sent events), `GET /health`, `GET /metrics`, and
//! SGLang's `POST /update_weights_from_disk` and `GET /get_model_info`, so an actor drives
//! `grlo serve` as it drives SGLang. Every request shares the engine's continuous batch (one
//! engine thread, [`worker`]); at most `max_pending` requests are admitted at once, the rest
//! refused with 429, so memory stays bounded whatever the load.
//!
//! - [`routes`]: the completion routes and their streams.
//! - [`text`]: a sample's text as tokens arrive (stop strings, what a stream may send).
//! - [`worker`]: the engine thread.

mod answer;
mod routes;
pub mod text;
pub mod worker;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use grlo_model::backend::ModelBackend;
use grlo_model::engine::EngineLimits;
use grlo_model::{Pretrained, Tokenizer};
use grlo_proto::metrics::prometheus::{HistogramVec, IntCounter, IntCounterVec, IntGauge};
use grlo_proto::metrics::{Metrics, Refresh};
use grlo_proto::security::Access;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::openai::{
    ErrorBody, ErrorDetail, ModelCard, ModelInfo, ModelList, UpdateWeightsRequest,
    UpdateWeightsResponse,
};
use worker::{Command, Gauges};

/// How `grlo serve` runs.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// A checkpoint directory, or an object-store URL of a published weight version.
    pub model: String,
    /// The name `/v1/models` lists (requests may name any model: there is one).
    pub served_name: String,
    /// Where checkpoints given as URLs are downloaded.
    pub cache_dir: PathBuf,
    /// `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    pub limits: EngineLimits,
    /// Most samples one request may ask for (`n`).
    pub max_n: usize,
    /// Most new tokens one request may ask for (`max_tokens`).
    pub max_tokens: usize,
    /// Most requests admitted at once (running or waiting); more are refused with 429.
    pub max_pending: usize,
    /// The bearer tokens it accepts (either one); open when neither is set.
    pub access: Access,
}

/// `grlo serve`'s Prometheus series (`grlo_serve_*`).
#[derive(Clone)]
pub struct ServeMetrics {
    pub registry: Metrics,
    requests: IntCounterVec,
    seconds: HistogramVec,
    prompt_tokens: IntCounter,
    generated_tokens: IntCounter,
    running_rows: IntGauge,
    waiting_requests: IntGauge,
    cache_bytes: IntGauge,
    pending: IntGauge,
    reloads: IntCounterVec,
}

impl Default for ServeMetrics {
    fn default() -> Self {
        let m = Metrics::new("serve");
        ServeMetrics {
            requests: m.counter_vec(
                "requests_total",
                "HTTP requests, by route and status code",
                &["route", "status"],
            ),
            seconds: m.seconds_vec(
                "request_seconds",
                "Time from a request's arrival to its last byte, by route",
                &["route"],
            ),
            prompt_tokens: m.counter("prompt_tokens_total", "Prompt tokens of admitted requests"),
            generated_tokens: m.counter("generated_tokens_total", "Tokens the engine generated"),
            running_rows: m.int_gauge("running_rows", "Sequences in the engine's batch"),
            waiting_requests: m.int_gauge("waiting_requests", "Requests waiting for rows"),
            cache_bytes: m.int_gauge("kv_cache_bytes", "Bytes the KV cache has allocated"),
            pending: m.int_gauge("pending_requests", "Requests admitted and not yet answered"),
            reloads: m.counter_vec(
                "reloads_total",
                "Weight reloads, by outcome (ok, failed)",
                &["outcome"],
            ),
            registry: m,
        }
    }
}

/// What the handlers share.
struct Shared {
    config: ServeConfig,
    commands: mpsc::UnboundedSender<Command>,
    tokenizer: RwLock<Arc<Tokenizer>>,
    info: RwLock<ModelInfo>,
    context_length: usize,
    vocab_size: usize,
    pending: AtomicUsize,
    next_ticket: AtomicU64,
    gauges: Arc<Gauges>,
    metrics: ServeMetrics,
    created: u64,
}

type AppState = Arc<Shared>;

/// Loads the model, starts the engine thread and serves on `listener` until `shutdown`.
pub async fn serve(
    config: ServeConfig,
    metrics: ServeMetrics,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (commands, receiver) = mpsc::unbounded_channel();
    let gauges = Arc::new(Gauges::default());
    let start = {
        let (config, gauges) = (config.clone(), gauges.clone());
        tokio::task::spawn_blocking(move || start_engine(&config, receiver, gauges)).await??
    };
    let shared = Arc::new(Shared {
        commands,
        tokenizer: RwLock::new(Arc::new(start.tokenizer)),
        info: RwLock::new(ModelInfo {
            model_path: config.model.clone(),
            weight_version: None,
        }),
        context_length: start.context_length,
        vocab_size: start.vocab_size,
        pending: AtomicUsize::new(0),
        next_ticket: AtomicU64::new(0),
        gauges,
        metrics: metrics.clone(),
        created: unix_seconds(),
        config,
    });
    let refresh: Refresh = {
        let shared = shared.clone();
        Arc::new(move || {
            let shared = shared.clone();
            Box::pin(async move { shared.refresh_metrics() })
        })
    };
    let router = Router::new()
        .route("/v1/models", get(models))
        .route("/v1/completions", post(routes::completions))
        .route("/v1/chat/completions", post(routes::chat_completions))
        .route("/health", get(health))
        .route("/get_model_info", get(model_info))
        .route("/update_weights_from_disk", post(update_weights))
        .fallback(not_found)
        .with_state(shared.clone())
        .merge(grlo_proto::metrics::router(
            metrics.registry.clone(),
            Some(refresh),
        ));
    tracing::info!(address = %listener.local_addr()?, model = %shared.config.model, "serving the OpenAI API");
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await?;
    Ok(())
}

struct Started {
    tokenizer: Tokenizer,
    context_length: usize,
    vocab_size: usize,
}

/// Loads the model on the configured device and starts the engine thread on it.
fn start_engine(
    config: &ServeConfig,
    receiver: mpsc::UnboundedReceiver<Command>,
    gauges: Arc<Gauges>,
) -> anyhow::Result<Started> {
    match config.device.as_str() {
        "cpu" => {
            spawn_engine::<grlo_model::backend::Cpu>(config, Default::default(), receiver, gauges)
        }
        #[cfg(feature = "cuda")]
        device if device.starts_with("cuda") => {
            let device = crate::engine::cuda_device(device);
            spawn_engine::<grlo_model::backend::Cuda>(config, device, receiver, gauges)
        }
        other => anyhow::bail!("device {other} is not available in this build"),
    }
}

fn spawn_engine<B: ModelBackend>(
    config: &ServeConfig,
    device: B::Device,
    receiver: mpsc::UnboundedReceiver<Command>,
    gauges: Arc<Gauges>,
) -> anyhow::Result<Started> {
    let cache_dir = config.cache_dir.clone();
    let downloads = AtomicU64::new(0);
    let load = move |location: &str| -> anyhow::Result<Pretrained<B>> {
        let dir = if location.contains("://") {
            let dir = cache_dir.join(format!(
                "download-{}",
                downloads.fetch_add(1, Ordering::Relaxed)
            ));
            grlo_model::weights_store::fetch_verified_blocking(location, &dir)
                .map_err(|e| anyhow::anyhow!("{location}: {e}"))?;
            dir.display().to_string()
        } else {
            location.to_string()
        };
        let mut pretrained =
            Pretrained::<B>::load(&dir, &device).map_err(|e| anyhow::anyhow!("{location}: {e}"))?;
        pretrained.model = pretrained.model.for_inference();
        if pretrained.tokenizer.is_none() {
            anyhow::bail!("{location} has no tokenizer (tokenizer.json): grlo serve needs one");
        }
        Ok(pretrained)
    };
    let pretrained = load(&config.model)?;
    let tokenizer = pretrained.tokenizer()?.clone();
    let model = pretrained.model;
    let context_length = model.config.max_position_embeddings;
    let vocab_size = model.config.vocab_size;
    grlo_model::engine::Engine::new(&model, config.limits)?; // the limits are valid
    let limits = config.limits;
    std::thread::Builder::new()
        .name("grlo-serve-engine".into())
        .spawn(move || worker::run(model, limits, Box::new(load), receiver, gauges))?;
    Ok(Started {
        tokenizer,
        context_length,
        vocab_size,
    })
}

impl Shared {
    fn refresh_metrics(&self) {
        let g = &self.gauges;
        let m = &self.metrics;
        m.running_rows
            .set(g.running_rows.load(Ordering::Relaxed) as i64);
        m.waiting_requests
            .set(g.waiting_requests.load(Ordering::Relaxed) as i64);
        m.cache_bytes
            .set(g.cache_bytes.load(Ordering::Relaxed) as i64);
        m.pending.set(self.pending.load(Ordering::Relaxed) as i64);
        let generated = g.generated_tokens.load(Ordering::Relaxed) as u64;
        let counted = m.generated_tokens.get();
        if generated > counted {
            m.generated_tokens.inc_by(generated - counted);
        }
    }

    fn tokenizer(&self) -> Arc<Tokenizer> {
        self.tokenizer.read().expect("not poisoned").clone()
    }

    /// Checks the bearer token (any route but `/health` and `/metrics`).
    fn authorize(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let access = &self.config.access;
        if access.is_open() {
            return Ok(());
        }
        let offered = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer "));
        let known = |t: &Option<grlo_proto::security::Secret>, offered: &str| {
            t.as_ref().is_some_and(|t| t.matches(offered))
        };
        match offered {
            None => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "this server needs a bearer token (Authorization: Bearer <token>)",
            )),
            Some(o) if known(&access.worker, o) || known(&access.admin, o) => Ok(()),
            Some(_) => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "the bearer token is not one this server accepts",
            )),
        }
    }

    /// Admits a request, or refuses it with 429 when `max_pending` are in flight.
    fn admit(self: &Arc<Self>) -> Result<Admitted, ApiError> {
        let before = self.pending.fetch_add(1, Ordering::SeqCst);
        if before >= self.config.max_pending {
            self.pending.fetch_sub(1, Ordering::SeqCst);
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                format!(
                    "the server is busy: {before} requests in flight (--max-pending); retry later"
                ),
            )
            .code("rate_limit_exceeded"));
        }
        if self.commands.is_closed() {
            self.pending.fetch_sub(1, Ordering::SeqCst);
            return Err(ApiError::unavailable());
        }
        Ok(Admitted(self.clone()))
    }

    /// Counts a finished request.
    fn record(&self, route: &str, status: StatusCode, started: Instant) {
        self.metrics
            .requests
            .with_label_values(&[route, status.as_str()])
            .inc();
        self.metrics
            .seconds
            .with_label_values(&[route])
            .observe(started.elapsed().as_secs_f64());
    }
}

/// An admitted request: counted in `pending` until dropped.
struct Admitted(Arc<Shared>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::SeqCst);
    }
}

/// An error answered in OpenAI's shape.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    detail: ErrorDetail,
}

impl ApiError {
    fn new(status: StatusCode, kind: &str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            detail: ErrorDetail {
                message: message.into(),
                kind: kind.into(),
                param: None,
                code: None,
            },
        }
    }

    /// A 400 about the request, naming the parameter at fault.
    fn invalid(param: &str, message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message);
        if !param.is_empty() {
            e.detail.param = Some(param.into());
        }
        e
    }

    fn unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "service_unavailable",
            "the engine has stopped; this server cannot generate",
        )
    }

    fn code(mut self, code: &str) -> Self {
        self.detail.code = Some(code.into());
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(ErrorBody { error: self.detail })).into_response()
    }
}

fn unix_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn models(State(shared): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(e) = shared.authorize(&headers) {
        return e.into_response();
    }
    axum::Json(ModelList {
        object: "list".into(),
        data: vec![ModelCard {
            id: shared.config.served_name.clone(),
            object: "model".into(),
            created: shared.created,
            owned_by: "grlo".into(),
            max_model_len: Some(shared.context_length),
        }],
    })
    .into_response()
}

async fn health(State(shared): State<AppState>) -> Response {
    if shared.commands.is_closed() {
        ApiError::unavailable().into_response()
    } else {
        (StatusCode::OK, "ok").into_response()
    }
}

async fn model_info(State(shared): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(e) = shared.authorize(&headers) {
        return e.into_response();
    }
    axum::Json(shared.info.read().expect("not poisoned").clone()).into_response()
}

/// SGLang's reload: the running requests finish on the old weights, new ones wait, then the
/// checkpoint at `model_path` is served. A checkpoint that does not load leaves the old one.
async fn update_weights(
    State(shared): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let started = Instant::now();
    let answer = reload(&shared, &headers, &body).await;
    let response = match answer {
        Ok(message) => axum::Json(UpdateWeightsResponse {
            success: true,
            message,
            num_paused_requests: 0,
        })
        .into_response(),
        Err(e) if e.status == StatusCode::BAD_REQUEST => (
            StatusCode::BAD_REQUEST,
            axum::Json(UpdateWeightsResponse {
                success: false,
                message: e.detail.message,
                num_paused_requests: 0,
            }),
        )
            .into_response(),
        Err(e) => e.into_response(),
    };
    shared.record("update_weights_from_disk", response.status(), started);
    response
}

async fn reload(shared: &AppState, headers: &HeaderMap, body: &[u8]) -> Result<String, ApiError> {
    shared.authorize(headers)?;
    let request: UpdateWeightsRequest = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid("", format!("the request body: {e}")))?;
    if request.model_path.is_empty() {
        return Err(ApiError::invalid("model_path", "model_path is empty"));
    }
    let (reply, answer) = oneshot::channel();
    shared
        .commands
        .send(Command::Reload {
            location: request.model_path.clone(),
            reply,
        })
        .map_err(|_| ApiError::unavailable())?;
    let outcome = answer.await.map_err(|_| ApiError::unavailable())?;
    match outcome {
        Ok(tokenizer) => {
            if let Some(tokenizer) = tokenizer {
                *shared.tokenizer.write().expect("not poisoned") = Arc::new(tokenizer);
            }
            *shared.info.write().expect("not poisoned") = ModelInfo {
                model_path: request.model_path.clone(),
                weight_version: request.weight_version.clone(),
            };
            shared.metrics.reloads.with_label_values(&["ok"]).inc();
            Ok(format!(
                "Succeeded to update model weights from {}.",
                request.model_path
            ))
        }
        Err(message) => {
            shared.metrics.reloads.with_label_values(&["failed"]).inc();
            Err(ApiError::invalid(
                "model_path",
                format!("failed to load {}: {message}", request.model_path),
            ))
        }
    }
}

async fn not_found() -> Response {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found_error",
        "no such route (this server has /v1/models, /v1/completions, /v1/chat/completions, \
         /health, /metrics, /get_model_info and /update_weights_from_disk)",
    )
    .into_response()
}
