//! Dynamic batching: one task owns the queue of model items. It takes whatever has arrived,
//! waits up to the batch window for more while the batch fits the token budget, hands the
//! batch to the model thread and answers each request with its own scores.
//!
//! Requests are never split: a batch is whole requests in arrival order, and its cost is
//! counted as the reward model pays it, padding included (rows × longest row). A request
//! whose items alone go past the budget is scored by itself (in several forwards).

use std::sync::Arc;
use std::time::{Duration, Instant};

use grlo_proto::status::Failure;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tracing::{debug, info};

use crate::scorer::Scorer;
use crate::stats::{QueueSlot, Stats};

/// The model items of one request, encoded, waiting for their scores.
#[derive(Debug)]
pub(crate) struct Job {
    /// Token ids of each model item, in the request's order.
    pub ids: Vec<Vec<u32>>,
    pub reply: oneshot::Sender<Result<Vec<f32>, Status>>,
    /// The request's room in the queue, given back once it is answered.
    pub slot: QueueSlot,
    pub queued_at: Instant,
}

impl Job {
    fn longest(&self) -> usize {
        self.ids.iter().map(Vec::len).max().unwrap_or(0)
    }
}

/// How batches are formed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BatchPolicy {
    pub batch_tokens: usize,
    pub window: Duration,
}

/// Whole requests gathered for one model call.
#[derive(Debug, Default)]
struct Batch {
    jobs: Vec<Job>,
    rows: usize,
    longest: usize,
}

impl Batch {
    /// The padded token cost of the batch with `job` added.
    fn cost_with(&self, job: &Job) -> usize {
        (self.rows + job.ids.len()) * self.longest.max(job.longest())
    }

    /// Whether `job` joins without going past the budget (a first job always does).
    fn fits(&self, job: &Job, budget: usize) -> bool {
        self.jobs.is_empty() || self.cost_with(job) <= budget
    }

    fn push(&mut self, job: Job) {
        self.rows += job.ids.len();
        self.longest = self.longest.max(job.longest());
        self.jobs.push(job);
    }
}

/// Runs the batching loop until the queue is closed and empty. `stop` (the server's shutdown)
/// cuts batch windows short; `closing` (the gRPC server has returned) closes the queue, whose
/// remaining requests are still answered.
pub(crate) async fn run(
    mut queue: mpsc::Receiver<Job>,
    scorer: Scorer,
    policy: BatchPolicy,
    stats: Arc<Stats>,
    stop: CancellationToken,
    closing: CancellationToken,
) {
    let mut carried: Option<Job> = None;
    let mut closed = false;
    loop {
        let first = match carried.take() {
            Some(job) => job,
            None => tokio::select! {
                biased;
                job = queue.recv() => match job {
                    Some(job) => job,
                    None => break,
                },
                () = closing.cancelled(), if !closed => {
                    queue.close();
                    closed = true;
                    continue;
                }
            },
        };
        let mut batch = Batch::default();
        if first.reply.is_closed() {
            continue;
        }
        batch.push(first);
        let deadline = tokio::time::Instant::now() + policy.window;
        loop {
            // Waiting is pointless once the server is stopping: answer what is here.
            let next = if stop.is_cancelled() {
                queue.try_recv().ok()
            } else {
                tokio::select! {
                    biased;
                    job = queue.recv() => job,
                    () = tokio::time::sleep_until(deadline) => None,
                    () = stop.cancelled() => queue.try_recv().ok(),
                }
            };
            let Some(job) = next else { break };
            if job.reply.is_closed() {
                debug!("dropping a request whose client went away");
                continue;
            }
            if batch.fits(&job, policy.batch_tokens) {
                batch.push(job);
            } else {
                carried = Some(job);
                break;
            }
        }
        score_batch(batch, &scorer, &stats).await;
    }
}

/// Scores a batch on the model thread and answers each of its requests.
async fn score_batch(mut batch: Batch, scorer: &Scorer, stats: &Stats) {
    let started = Instant::now();
    let waited_ms = batch
        .jobs
        .iter()
        .map(|job| started.duration_since(job.queued_at))
        .max()
        .unwrap_or_default()
        .as_secs_f64()
        * 1e3;
    let tokens: usize = batch.jobs.iter().flat_map(|j| &j.ids).map(Vec::len).sum();
    let counts: Vec<usize> = batch.jobs.iter().map(|job| job.ids.len()).collect();
    let ids: Vec<Vec<u32>> = batch
        .jobs
        .iter_mut()
        .flat_map(|job| std::mem::take(&mut job.ids))
        .collect();
    stats.record_batch(ids.len());
    let result = scorer.score(ids).await;
    info!(
        requests = batch.jobs.len(),
        items = batch.rows,
        tokens,
        padded_tokens = batch.rows * batch.longest,
        waited_ms,
        score_ms = started.elapsed().as_secs_f64() * 1e3,
        "batch scored"
    );
    match result {
        Ok(scores) => {
            let mut scores = scores.into_iter();
            for (job, count) in batch.jobs.into_iter().zip(counts) {
                let Job { reply, slot, .. } = job;
                let _ = reply.send(Ok(scores.by_ref().take(count).collect()));
                // The request leaves the queue once answered.
                drop(slot);
            }
        }
        Err(message) => {
            let status = Failure::Internal.status(format!("reward model batch failed: {message}"));
            for job in batch.jobs {
                let _ = job.reply.send(Err(status.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(stats: &Arc<Stats>, lengths: &[usize]) -> Job {
        let (reply, _) = oneshot::channel();
        Job {
            ids: lengths.iter().map(|&n| vec![0; n]).collect(),
            reply,
            slot: stats.admit(lengths.len(), usize::MAX).unwrap(),
            queued_at: Instant::now(),
        }
    }

    #[test]
    fn batches_are_bounded_by_their_padded_cost() {
        let stats = Arc::new(Stats::default());
        let mut batch = Batch::default();
        let big = job(&stats, &[100, 10]);
        assert!(batch.fits(&big, 50), "a first request always fits");
        batch.push(big);
        assert_eq!(batch.cost_with(&job(&stats, &[1])), 300);
        assert!(batch.fits(&job(&stats, &[1]), 300));
        assert!(!batch.fits(&job(&stats, &[1]), 299));
        let mut batch = Batch::default();
        batch.push(job(&stats, &[4, 4]));
        assert!(batch.fits(&job(&stats, &[4, 4]), 16));
        assert!(batch.fits(&job(&stats, &[5]), 15), "3 rows of 5");
        assert!(!batch.fits(&job(&stats, &[5]), 14));
    }
}
