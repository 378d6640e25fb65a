//! The grlo coordinator: the control plane of the distributed service. It owns the jobs and
//! their dataset cursors, hands rollout tasks to actors as leases with deadlines, tracks the
//! weight version of every job, accrues device-hours per job and role and stops a job that
//! spends its budget, and keeps all of it in an embedded database so a restart loses nothing.

pub mod charts;
pub mod dashboard;
pub mod db;
pub mod records;
pub mod service;
pub mod state;
pub mod telemetry;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use grlo_proto::v1::coordinator_server::CoordinatorServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use service::{CoordinatorService, StateHandle, now_ms};
pub use state::{Settings, State};

/// How the coordinator runs.
#[derive(Clone, Debug)]
pub struct CoordinatorConfig {
    /// Where the database lives.
    pub data_dir: PathBuf,
    pub settings: Settings,
    /// Serve the web dashboard (page and JSON API) over HTTP here; `None`: no dashboard.
    pub http_listen: Option<SocketAddr>,
    /// TLS and the tokens of the gRPC service; the dashboard's JSON API takes the same admin
    /// token (`Authorization: Bearer TOKEN`). Its Debug output never shows a token.
    pub security: grlo_proto::security::ServerSecurity,
}

/// Serves the Coordinator service (and gRPC health) on `listener` until `shutdown` is
/// cancelled. Every accepted change is already in the database, so stopping loses nothing.
pub async fn run(
    config: CoordinatorConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let state = State::open(&config.data_dir, config.settings)?;
    let handle = StateHandle::spawn(state);
    let (metrics, refresh) = telemetry::metrics(handle.clone());
    // The dashboard stops with the coordinator, whichever way `run` returns.
    let http_stop = shutdown.child_token();
    let _stop_http_on_return = http_stop.clone().drop_guard();
    let http = match config.http_listen {
        Some(address) => Some(
            serve_dashboard(
                address,
                handle.clone(),
                config
                    .security
                    .access
                    .admin
                    .as_ref()
                    .map(|t| t.expose().to_string()),
                grlo_proto::metrics::router(metrics.clone(), Some(refresh)),
                http_stop,
            )
            .await?,
        ),
        None => None,
    };
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_serving::<CoordinatorServer<CoordinatorService>>()
        .await;
    let reflection = grlo_proto::reflection::services(&["grlo.v1.Coordinator"]);
    let address = listener.local_addr()?;
    tracing::info!(%address, data_dir = %config.data_dir.display(), "coordinator serving");
    config
        .security
        .builder(Some(metrics.rpc()))?
        .add_service(health)
        .add_service(reflection.0)
        .add_service(reflection.1)
        .add_service(CoordinatorServer::new(CoordinatorService {
            state: handle.clone(),
        }))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            stopped_or_dead(shutdown, handle.dead(), reporter),
        )
        .await?;
    if let Some(http) = http {
        // Requests in flight finish; a client that holds its connection open does not hold
        // up the stop for long.
        let _ = tokio::time::timeout(Duration::from_secs(5), http).await;
    }
    if let Some(panic) = handle.panic_message() {
        anyhow::bail!(
            "the coordinator's state thread panicked ({panic}); every accepted change is in the \
             database: start the coordinator again"
        );
    }
    tracing::info!("coordinator stopped");
    Ok(())
}

/// Resolves when the coordinator is asked to stop, or when its state thread has died; then
/// health says NOT_SERVING, so probes and load balancers stop sending calls that would fail.
async fn stopped_or_dead(
    shutdown: CancellationToken,
    dead: CancellationToken,
    reporter: tonic_health::server::HealthReporter,
) {
    tokio::select! {
        () = shutdown.cancelled() => {}
        () = dead.cancelled() => {
            reporter
                .set_not_serving::<CoordinatorServer<CoordinatorService>>()
                .await;
            reporter
                .set_service_status("", tonic_health::ServingStatus::NotServing)
                .await;
        }
    }
}

/// Binds `address` and serves the dashboard (and `metrics`) on it until `stop` is cancelled.
async fn serve_dashboard(
    address: SocketAddr,
    state: StateHandle,
    admin_token: Option<String>,
    metrics: axum::Router,
    stop: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    tracing::info!(%address, token = admin_token.is_some(), "dashboard serving");
    let app = dashboard::router(state, admin_token).merge(metrics);
    Ok(grlo_proto::metrics::serve_http(address, app, stop).await?)
}
