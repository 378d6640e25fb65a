//! The grlo coordinator: the control plane of the distributed service. It owns the jobs and
//! their dataset cursors, hands rollout tasks to actors as leases with deadlines, tracks the
//! weight version of every job, accrues device-hours per job and role and stops a job that
//! spends its budget, and keeps all of it in an embedded database so a restart loses nothing.

pub mod db;
pub mod records;
pub mod service;
pub mod state;

use std::path::PathBuf;

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
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_serving::<CoordinatorServer<CoordinatorService>>()
        .await;
    let address = listener.local_addr()?;
    tracing::info!(%address, data_dir = %config.data_dir.display(), "coordinator serving");
    tonic::transport::Server::builder()
        .add_service(health)
        .add_service(CoordinatorServer::new(CoordinatorService { state: handle }))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            shutdown.cancelled_owned(),
        )
        .await?;
    tracing::info!("coordinator stopped");
    Ok(())
}
