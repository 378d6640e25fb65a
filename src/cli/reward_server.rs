//! `grlo reward-server`: serves a reward model and the rule verifiers over gRPC until SIGINT or
//! SIGTERM, then answers the requests it already took and exits 0.
//!
//! Settings come from `--config FILE` (the keys of `RewardServerConfig`, TOML), then flags or
//! their `GRLO_*` environment variables. Once listening it prints `{"listening": ADDRESS}`; on
//! exit, one JSON object with what it served.

use grlo_model::backend::ModelBackend;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use grlo_reward_server::{RewardServerConfig, Stats};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::device::{DeviceArg, OnBackend, dispatch};

#[derive(Debug, Args)]
pub struct RewardServerArgs {
    /// Address to listen on, e.g. 0.0.0.0:50052 (port 0 picks a free one).
    #[arg(long, env = "GRLO_LISTEN")]
    pub listen: String,
    /// A TOML file of reward server settings; the flags below override it.
    #[arg(long, env = "GRLO_REWARD_CONFIG")]
    pub config: Option<PathBuf>,
    /// The reward model (a directory or an object store URL); without it only `rule` items
    /// are scored.
    #[arg(long, env = "GRLO_REWARD_MODEL")]
    pub model: Option<String>,
    /// Longest conversation scored in full, in tokens; longer ones are cut from the left
    /// [default: 8192].
    #[arg(long, env = "GRLO_REWARD_MAX_LENGTH")]
    pub max_length: Option<usize>,
    /// Token budget of one reward-model forward pass, padding included [default: 16384].
    #[arg(long, env = "GRLO_REWARD_BATCH_TOKENS")]
    pub batch_tokens: Option<usize>,
    /// How long a batch waits for more requests, in milliseconds [default: 5].
    #[arg(long, env = "GRLO_REWARD_BATCH_WINDOW_MS")]
    pub batch_window_ms: Option<u64>,
    /// Most model items queued at once; past it requests are refused with
    /// RESOURCE_EXHAUSTED [default: 4096].
    #[arg(long, env = "GRLO_REWARD_MAX_QUEUE")]
    pub max_queue: Option<usize>,
    /// Most items in one request [default: 1024].
    #[arg(long, env = "GRLO_REWARD_MAX_REQUEST_ITEMS")]
    pub max_request_items: Option<usize>,
    /// Most bytes of text in one item [default: 262144].
    #[arg(long, env = "GRLO_REWARD_MAX_ITEM_BYTES")]
    pub max_item_bytes: Option<usize>,
    /// Compute device of the reward model: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu", env = "GRLO_DEVICE")]
    pub device: DeviceArg,
    /// Work for this coordinator: register, and serve the reward model of the job it assigns.
    #[arg(long, env = "GRLO_COORDINATOR")]
    pub coordinator: Option<String>,
    /// The address actors reach this server at (default: the listen address).
    #[arg(long, env = "GRLO_ADVERTISE")]
    pub advertise: Option<String>,
    /// Accelerators to account, as KIND:COUNT; default: the CPU cores.
    #[arg(long, env = "GRLO_ACCELERATORS")]
    pub accelerators: Option<String>,
    #[arg(long, env = "GRLO_NAME", default_value = "")]
    pub name: String,
    /// Serve Prometheus metrics over HTTP at /metrics on this address.
    #[arg(long, env = "GRLO_HTTP_LISTEN")]
    pub http_listen: Option<std::net::SocketAddr>,
    #[command(flatten)]
    pub security: crate::cli::security::SecurityArgs,
}

impl RewardServerArgs {
    /// The configuration file's settings (or the defaults) with the flags applied.
    fn resolve(&self) -> anyhow::Result<RewardServerConfig> {
        let mut config = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("failed to read {}", path.display()))?;
                toml::from_str(&text).with_context(|| {
                    format!("invalid reward server settings in {}", path.display())
                })?
            }
            None => RewardServerConfig::default(),
        };
        if let Some(model) = &self.model {
            config.model = Some(model.clone());
        }
        let overrides = [
            (&mut config.max_length, self.max_length),
            (&mut config.batch_tokens, self.batch_tokens),
            (&mut config.max_queue_items, self.max_queue),
            (&mut config.max_request_items, self.max_request_items),
            (&mut config.max_item_bytes, self.max_item_bytes),
        ];
        for (field, value) in overrides {
            if let Some(value) = value {
                *field = value;
            }
        }
        if let Some(ms) = self.batch_window_ms {
            config.batch_window = Duration::from_millis(ms);
        }
        config.validate()?;
        Ok(config)
    }
}

/// Serves until SIGINT or SIGTERM; returns what it served as JSON.
pub fn run(args: RewardServerArgs) -> anyhow::Result<String> {
    let config = args.resolve()?;
    let worker = match &args.coordinator {
        Some(coordinator) => Some(grlo_reward_server::worker::WorkerConfig {
            coordinator: coordinator.clone(),
            advertise: args.advertise.clone(),
            accelerators: crate::cli::roles::accelerators(args.accelerators.as_deref())?,
            name: args.name.clone(),
            client: args.security.worker_client()?,
        }),
        None => None,
    };
    let metrics = grlo_proto::metrics::Metrics::new("reward_server");
    let serving = grlo_reward_server::Serving {
        security: args.security.server()?,
        stats: Arc::new(Stats::export(&metrics)),
        rpc: Some(metrics.rpc()),
    };
    dispatch(
        &args.device,
        Serve {
            listen: args.listen,
            config,
            worker,
            serving,
            http: args.http_listen.map(|address| (address, metrics)),
        },
    )
}

struct Serve {
    listen: String,
    config: RewardServerConfig,
    serving: grlo_reward_server::Serving,
    /// Where to serve /metrics, and the registry to serve.
    http: Option<(std::net::SocketAddr, grlo_proto::metrics::Metrics)>,
    /// Set: serve the coordinator's jobs instead of one fixed model.
    worker: Option<grlo_reward_server::worker::WorkerConfig>,
}

impl OnBackend for Serve {
    type Output = String;

    fn run<B: ModelBackend>(self, device: B::Device) -> anyhow::Result<Self::Output> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("reward-server")
            .build()
            .context("failed to start the async runtime")?;
        runtime.block_on(async move {
            let shutdown = CancellationToken::new();
            cancel_on_signals(shutdown.clone())?;
            if let Some((address, metrics)) = self.http {
                let router = grlo_proto::metrics::router(metrics, None);
                grlo_proto::metrics::serve_http(address, router, shutdown.clone()).await?;
            }
            if let Some(worker) = self.worker {
                let listen = self.listen.parse().with_context(|| {
                    format!("--listen {} is not an IP address and port", self.listen)
                })?;
                grlo_reward_server::worker::run_for_coordinator::<B>(
                    self.config,
                    device,
                    listen,
                    worker,
                    shutdown,
                    self.serving,
                )
                .await
                .context("reward server failed")?;
                return Ok(String::new());
            }
            let listener = TcpListener::bind(&self.listen)
                .await
                .with_context(|| format!("failed to listen on {}", self.listen))?;
            let address = listener.local_addr()?;
            let mut stdout = std::io::stdout().lock();
            let _ = writeln!(stdout, "{}", json!({ "listening": address }))
                .and_then(|()| stdout.flush());
            drop(stdout);
            let stats = Arc::clone(&self.serving.stats);
            let model = self.config.model.clone();
            grlo_reward_server::serve_with::<B>(
                self.config,
                device,
                listener,
                shutdown,
                self.serving,
            )
            .await
            .context("reward server failed")?;
            Ok(json!({
                "address": address,
                "model": model,
                "model_calls": stats.model_calls(),
                "model_items": stats.model_items(),
                "rule_items": stats.rule_items(),
                "refused_requests": stats.refused_requests(),
            })
            .to_string())
        })
    }
}

/// Cancels `shutdown` on the first SIGINT or SIGTERM; a second one exits at once, without
/// waiting for the requests being answered.
fn cancel_on_signals(shutdown: CancellationToken) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut interrupt = signal(SignalKind::interrupt()).context("failed to handle SIGINT")?;
        let mut terminate = signal(SignalKind::terminate()).context("failed to handle SIGTERM")?;
        tokio::spawn(async move {
            for round in 0..2 {
                let name = tokio::select! {
                    _ = interrupt.recv() => "SIGINT",
                    _ = terminate.recv() => "SIGTERM",
                };
                if round == 0 {
                    info!(
                        signal = name,
                        "shutting down: answering the requests already taken"
                    );
                    shutdown.cancel();
                } else {
                    warn!(signal = name, "second signal: exiting without draining");
                    std::process::exit(130);
                }
            }
        });
    }
    #[cfg(not(unix))]
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            shutdown.cancel();
        }
    });
    Ok(())
}
