//! The service roles: `grlo coordinator`, `grlo learner`, `grlo actor`. Each takes its
//! settings from flags or `GRLO_*` environment variables, logs with `tracing`, and stops
//! gracefully on SIGINT/SIGTERM (in-flight work is finished or handed back, then exit 0).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use tokio_util::sync::CancellationToken;

use crate::cli::security::SecurityArgs;

#[derive(Debug, Args)]
pub struct CoordinatorArgs {
    /// Address to serve on.
    #[arg(long, env = "GRLO_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// Where the coordinator keeps its database.
    #[arg(long, env = "GRLO_DATA_DIR", default_value = "coordinator-data")]
    pub data_dir: PathBuf,
    /// How often workers heartbeat (a worker silent for three intervals is considered dead).
    #[arg(long, env = "GRLO_HEARTBEAT_MS", default_value_t = 1000)]
    pub heartbeat_ms: u64,
    /// How long an actor holds a rollout task before it goes to another.
    #[arg(long, env = "GRLO_LEASE_MS", default_value_t = 120_000)]
    pub lease_ms: u64,
    /// Serve the web dashboard (and /metrics) over HTTP here.
    #[arg(long, env = "GRLO_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,
    #[command(flatten)]
    pub security: SecurityArgs,
}

#[derive(Debug, Args)]
pub struct LearnerArgs {
    /// Address to serve on.
    #[arg(long, env = "GRLO_LISTEN", default_value = "127.0.0.1:50053")]
    pub listen: SocketAddr,
    /// The coordinator's URL.
    #[arg(
        long,
        env = "GRLO_COORDINATOR",
        default_value = "http://127.0.0.1:50051"
    )]
    pub coordinator: String,
    /// The address actors reach this learner at (default: the listen address).
    #[arg(long, env = "GRLO_ADVERTISE")]
    pub advertise: Option<String>,
    /// Where each job's run directory goes.
    #[arg(long, env = "GRLO_WORK_DIR", default_value = "runs")]
    pub work_dir: PathBuf,
    /// Overrides the jobs' trainer.device (cpu, cuda, cuda:N).
    #[arg(long, env = "GRLO_DEVICE")]
    pub device: Option<String>,
    /// Accelerators to account, as KIND:COUNT (e.g. nvidia-h100:8); default: the CPU cores.
    #[arg(long, env = "GRLO_ACCELERATORS")]
    pub accelerators: Option<String>,
    #[arg(long, env = "GRLO_NAME", default_value = "")]
    pub name: String,
    /// Serve Prometheus metrics over HTTP at /metrics on this address.
    #[arg(long, env = "GRLO_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,
    #[command(flatten)]
    pub security: SecurityArgs,
}

#[derive(Debug, Args)]
pub struct ActorArgs {
    /// The coordinator's URL.
    #[arg(
        long,
        env = "GRLO_COORDINATOR",
        default_value = "http://127.0.0.1:50051"
    )]
    pub coordinator: String,
    /// Serve the gRPC health service here (for probes); an actor serves nothing else.
    #[arg(long, env = "GRLO_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Where downloaded weight versions are kept.
    #[arg(long, env = "GRLO_CACHE_DIR", default_value = "actor-cache")]
    pub cache_dir: PathBuf,
    /// cpu, cuda or cuda:N.
    #[arg(long, env = "GRLO_DEVICE", default_value = "cpu")]
    pub device: String,
    /// Accelerators to account, as KIND:COUNT (e.g. nvidia-h100:1); default: the CPU cores.
    #[arg(long, env = "GRLO_ACCELERATORS")]
    pub accelerators: Option<String>,
    #[arg(long, env = "GRLO_NAME", default_value = "")]
    pub name: String,
    /// Serve Prometheus metrics over HTTP at /metrics on this address.
    #[arg(long, env = "GRLO_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,
    #[command(flatten)]
    pub security: SecurityArgs,
}

/// `KIND:COUNT` → (kind, count); none given → the machine's CPU cores.
pub fn accelerators(text: Option<&str>) -> anyhow::Result<Vec<(String, u32)>> {
    let Some(text) = text else {
        let cores = std::thread::available_parallelism()
            .map(usize::from)
            .unwrap_or(1);
        return Ok(vec![("cpu".into(), cores as u32)]);
    };
    text.split(',')
        .map(|item| {
            let (kind, count) = item.split_once(':').with_context(|| {
                format!("accelerator \"{item}\" is not KIND:COUNT (e.g. nvidia-h100:8)")
            })?;
            let count = count
                .parse()
                .with_context(|| format!("accelerator \"{item}\": {count} is not a count"))?;
            Ok((kind.to_string(), count))
        })
        .collect()
}

/// A runtime, a shutdown token cancelled by SIGINT/SIGTERM, and `work` run until it returns.
pub fn serve<F, Fut>(work: F) -> anyhow::Result<String>
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("failed to start the async runtime")?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(cancel_on_signals(shutdown.clone()));
        work(shutdown).await
    })?;
    Ok(String::new())
}

/// Cancels `shutdown` on the first SIGINT or SIGTERM.
pub async fn cancel_on_signals(shutdown: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
    tracing::info!("stopping on a signal");
    shutdown.cancel();
}

pub fn coordinator(args: CoordinatorArgs) -> anyhow::Result<String> {
    let security = args.security.server()?;
    if security.access.worker.is_some() != security.access.admin.is_some() {
        anyhow::bail!(
            "the coordinator needs both tokens or neither: with only one, the other kind of caller could never get in (set --worker-token-file and --admin-token-file, or GRLO_WORKER_TOKEN and GRLO_ADMIN_TOKEN)"
        );
    }
    serve(|shutdown| async move {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let config = grlo_coordinator::CoordinatorConfig {
            data_dir: args.data_dir,
            settings: grlo_coordinator::Settings {
                heartbeat_interval_ms: args.heartbeat_ms,
                lease_ms: args.lease_ms,
            },
            http_listen: args.http_listen,
            security,
        };
        grlo_coordinator::run(config, listener, shutdown).await
    })
}

pub fn learner(args: LearnerArgs) -> anyhow::Result<String> {
    let accelerators = accelerators(args.accelerators.as_deref())?;
    let (security, client) = (args.security.server()?, args.security.worker_client()?);
    serve(|shutdown| async move {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let config = grlo_learner::service::LearnerServiceConfig {
            coordinator: args.coordinator,
            advertise: args.advertise,
            work_dir: args.work_dir,
            run_dir: None,
            device: args.device,
            accelerators,
            name: args.name,
            security,
            client,
            http_listen: args.http_listen,
        };
        grlo_learner::service::run(config, listener, shutdown).await
    })
}

pub fn actor(args: ActorArgs) -> anyhow::Result<String> {
    let accelerators = accelerators(args.accelerators.as_deref())?;
    let security = args.security.server()?;
    let client = args.security.worker_client()?;
    let metrics = grlo_actor::ActorMetrics::default();
    serve(|shutdown| async move {
        if let Some(address) = args.http_listen {
            let router = grlo_proto::metrics::router(metrics.registry.clone(), None);
            grlo_proto::metrics::serve_http(address, router, shutdown.clone()).await?;
        }
        if let Some(address) = args.listen {
            let listener = tokio::net::TcpListener::bind(address)
                .await
                .with_context(|| format!("cannot listen on {address}"))?;
            let (reporter, health) = tonic_health::server::health_reporter();
            let stop = shutdown.clone();
            let mut server = security.builder(None)?;
            let reflection = grlo_proto::reflection::services(&[]);
            tokio::spawn(async move {
                let _reporter = reporter; // "" reports SERVING while the actor runs
                let served = server
                    .add_service(health)
                    .add_service(reflection.0)
                    .add_service(reflection.1)
                    .serve_with_incoming_shutdown(
                        tokio_stream::wrappers::TcpListenerStream::new(listener),
                        stop.cancelled_owned(),
                    )
                    .await;
                if let Err(e) = served {
                    tracing::warn!(error = %e, "the health service stopped");
                }
            });
        }
        let config = grlo_actor::ActorConfig {
            coordinator: args.coordinator,
            cache_dir: args.cache_dir,
            device: args.device,
            accelerators,
            name: args.name,
            client,
            metrics,
        };
        grlo_actor::run(config, shutdown).await
    })
}
