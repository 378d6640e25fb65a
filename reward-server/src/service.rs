//! The `grlo.v1.RewardServer` gRPC service. A handler checks its request, reserves room in
//! the queue for its model items (or refuses at once), scores rule items and encodes model
//! items on the blocking pool, then waits for the batching task to answer.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use grlo_learner::reward::code;
use grlo_proto::status::Failure;
use grlo_proto::v1::reward_server_server::RewardServer;
use grlo_proto::v1::{ScoreItem, ScoreRequest, ScoreResponse};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tonic::{Request, Response, Status};
use tracing::{debug, instrument};

use crate::batcher::Job;
use crate::request::{self, Limits, Style};
use crate::scorer::Encoder;
use crate::stats::Stats;

/// The reward model as the handlers see it: its encoder once loaded, and the queue.
#[derive(Debug)]
pub(crate) struct ModelQueue {
    /// Set once the model thread has finished loading: the encoder, or why loading failed.
    pub encoder: Arc<OnceLock<Result<Arc<Encoder>, String>>>,
    pub jobs: mpsc::Sender<Job>,
    pub max_queue_items: usize,
}

/// The handlers' shared state (tonic shares one value between all connections).
#[derive(Debug)]
pub(crate) struct ScoreService {
    pub limits: Limits,
    /// `None`: no reward model is configured (rule verifiers only).
    pub model: Option<ModelQueue>,
    pub stats: Arc<Stats>,
    /// Bounds the CPU work (verifiers, chat templates, tokenizing) running at once.
    pub cpu: Arc<Semaphore>,
}

/// A request's items, scored by the verifiers where they could be, and the rest encoded.
struct Prepared {
    scores: Vec<f32>,
    /// Indices of the model items in the request, and their token ids.
    model_indices: Vec<usize>,
    model_ids: Vec<Vec<u32>>,
}

#[tonic::async_trait]
impl RewardServer for ScoreService {
    /// Scores the items of one request, in order. `job_id` is not used yet: a reward server
    /// serves one reward model, whichever job asks.
    #[instrument(skip(self, request), fields(job_id = %request.get_ref().job_id, items = request.get_ref().items.len()))]
    async fn score(
        &self,
        request: Request<ScoreRequest>,
    ) -> Result<Response<ScoreResponse>, Status> {
        let request = request.into_inner();
        let styles = request::validate(&request, self.limits)?;
        let model_items = styles.iter().filter(|&&s| s == Style::Model).count();
        let rule_items = styles.len() - model_items;

        // Everything that can refuse the request does so before any work is done for it.
        let mut queued = None;
        if model_items > 0 {
            let model = self.model.as_ref().ok_or_else(|| no_model(&styles))?;
            let encoder = match model.encoder.get() {
                None => {
                    return Err(Failure::Unavailable.status(
                        "the reward model is still loading: retry when the health service reports SERVING",
                    ));
                }
                Some(Err(_)) => {
                    return Err(Failure::Unavailable.status("the reward model failed to load"));
                }
                Some(Ok(encoder)) => Arc::clone(encoder),
            };
            let slot = self
                .stats
                .admit(model_items, model.max_queue_items)
                .ok_or_else(|| busy(model_items, model.max_queue_items, &self.stats))?;
            let permit = model.jobs.try_reserve().map_err(|error| match error {
                TrySendError::Full(()) => {
                    self.stats.refused();
                    busy(model_items, model.max_queue_items, &self.stats)
                }
                TrySendError::Closed(()) => {
                    Failure::Unavailable.status("the reward server is shutting down")
                }
            })?;
            queued = Some((encoder, slot, permit));
        }

        let encoder = queued.as_ref().map(|(encoder, _, _)| Arc::clone(encoder));
        let cpu = self
            .cpu
            .acquire()
            .await
            .map_err(|_| Failure::Unavailable.status("the reward server is shutting down"))?;
        let prepared = tokio::task::spawn_blocking(move || {
            prepare(request.items, &styles, encoder.as_deref())
        })
        .await
        .map_err(|error| Failure::Internal.status(format!("scoring task failed: {error}")))??;
        drop(cpu);
        self.stats.record_rule_items(rule_items);

        let Prepared {
            mut scores,
            model_indices,
            model_ids,
        } = prepared;
        if let Some((_, slot, permit)) = queued {
            let (reply, answer) = oneshot::channel();
            permit.send(Job {
                ids: model_ids,
                reply,
                slot,
                queued_at: Instant::now(),
            });
            let model_scores = answer.await.map_err(|_| {
                Failure::Unavailable.status("the reward server stopped before scoring")
            })??;
            for (i, score) in model_indices.into_iter().zip(model_scores) {
                scores[i] = score;
            }
        }
        debug!(model_items, rule_items, "request scored");
        Ok(Response::new(ScoreResponse { scores }))
    }
}

/// Scores rule items and encodes model items (CPU work, on the blocking pool). An item the
/// reward model's chat template cannot render is INVALID_ARGUMENT naming it.
fn prepare(
    items: Vec<ScoreItem>,
    styles: &[Style],
    encoder: Option<&Encoder>,
) -> Result<Prepared, Status> {
    let mut prepared = Prepared {
        scores: vec![0.0; items.len()],
        model_indices: Vec::new(),
        model_ids: Vec::new(),
    };
    let mut code_items = Vec::new();
    for (i, (item, &style)) in items.into_iter().zip(styles).enumerate() {
        match (style, encoder) {
            (Style::Rule, _) => prepared.scores[i] = request::rule_score(&item),
            (Style::Code, _) => code_items.push((i, item)),
            (Style::Model, Some(encoder)) => {
                let ids = encoder
                    .encode(&request::conversation(item))
                    .map_err(|message| {
                        Failure::InvalidArgument.status(format!("items[{i}]: {message}"))
                    })?;
                prepared.model_indices.push(i);
                prepared.model_ids.push(ids);
            }
            (Style::Model, None) => {
                return Err(Failure::Internal.status(format!(
                    "items[{i}] has style model but no encoder was passed"
                )));
            }
        }
    }
    if !code_items.is_empty() {
        let pairs: Vec<(&str, &str)> = code_items
            .iter()
            .map(|(_, item)| (item.response.as_str(), item.ground_truth.as_str()))
            .collect();
        let rewards = code::code_rewards(&pairs).map_err(|e| {
            Failure::FailedPrecondition
                .status(format!("this reward server cannot score code items: {e}"))
        })?;
        for ((i, _), reward) in code_items.iter().zip(rewards) {
            prepared.scores[*i] = reward;
        }
    }
    Ok(prepared)
}

/// FAILED_PRECONDITION for model items sent to a server without a reward model.
fn no_model(styles: &[Style]) -> Status {
    let first = styles.iter().position(|&s| s == Style::Model).unwrap_or(0);
    Failure::FailedPrecondition.status(format!(
        "this reward server has no reward model: items[{first}] has style \"model\"; start it with --model or send only style \"rule\" items"
    ))
}

/// RESOURCE_EXHAUSTED: the queue has no room for the request's model items.
fn busy(items: usize, limit: usize, stats: &Stats) -> Status {
    Failure::Busy.status(format!(
        "the reward server's queue is full ({} of {limit} model items queued, this request has {items}): retry later",
        stats.queued_items()
    ))
}
