//! Joining the coordinator: what every worker role (actor, learner, reward server) sends.

use std::time::Duration;

use crate::security::Transport;
use crate::v1;
use crate::v1::coordinator_client::CoordinatorClient;

/// Who a worker is: its role, where its peers reach it, what it accounts for, its name.
pub struct Registration<'a> {
    pub role: v1::Role,
    /// host:port for a reward server or learner; empty for an actor (nobody calls it).
    pub address: &'a str,
    /// (kind, count), e.g. ("nvidia-h100", 8) or ("cpu", 16).
    pub accelerators: &'a [(String, u32)],
    pub name: &'a str,
}

/// (kind, count) pairs as the protocol's accelerators.
pub fn accelerators(list: &[(String, u32)]) -> Vec<v1::Accelerator> {
    list.iter()
        .map(|(kind, count)| v1::Accelerator {
            kind: kind.clone(),
            count: *count,
        })
        .collect()
}

/// Registers with the coordinator, as `previous` again when it is not empty (after a
/// coordinator restart that forgot the worker): the worker's id and how often to heartbeat.
pub async fn register(
    client: &mut CoordinatorClient<Transport>,
    who: &Registration<'_>,
    previous: &str,
) -> Result<(String, Duration), tonic::Status> {
    let request = v1::RegisterWorkerRequest {
        role: who.role as i32,
        address: who.address.to_string(),
        accelerators: accelerators(who.accelerators),
        name: who.name.to_string(),
        previous_worker_id: previous.to_string(),
    };
    let response = client.register_worker(request).await?.into_inner();
    tracing::info!(worker = %response.worker_id, "registered with the coordinator");
    let every = Duration::from_millis(response.heartbeat_interval_ms.max(50) as u64);
    Ok((response.worker_id, every))
}
