//! The reward model on its own thread: it loads the model there, hands the tokenizer back as
//! an [`Encoder`] for the request handlers, then scores batches of token ids one at a time.
//! Tensor work never runs on the async executor, and one thread owns the model (and its
//! device) for its whole life.

use grlo_model::backend::ModelBackend;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc;

use grlo_learner::reward::RewardModel;
use grlo_model::{ChatMessage, HeadKind, Pretrained, Tokenizer};
use tokio::sync::oneshot;
use tracing::info;

use crate::error::{Result, RewardServerError};

/// Renders conversations into the reward model's token ids, exactly as
/// [`RewardModel::encode`] does; request handlers run it (off the executor) so that token
/// counts are known before a request is queued.
#[derive(Debug)]
pub(crate) struct Encoder {
    tokenizer: Tokenizer,
    max_length: usize,
}

impl Encoder {
    /// Token ids of a conversation in the reward model's template (no generation prompt), cut
    /// from the left to `max_length` tokens so that the scored last token stays.
    pub fn encode(&self, conversation: &[ChatMessage]) -> Result<Vec<u32>, String> {
        let mut ids = self
            .tokenizer
            .encode_chat(conversation, false)
            .map_err(|e| e.to_string())?;
        if ids.len() > self.max_length {
            ids.drain(..ids.len() - self.max_length);
        }
        if ids.is_empty() {
            return Err("the conversation rendered to no tokens".into());
        }
        Ok(ids)
    }
}

/// One batch for the model thread: sequences to score and where the scores go.
struct ScoreJob {
    ids: Vec<Vec<u32>>,
    reply: oneshot::Sender<Result<Vec<f32>, String>>,
}

/// The sending side of the model thread; dropping it ends the thread.
#[derive(Debug)]
pub(crate) struct Scorer {
    jobs: mpsc::Sender<ScoreJob>,
}

impl Scorer {
    /// Scores sequences on the model thread (batched there by the token budget).
    pub async fn score(&self, ids: Vec<Vec<u32>>) -> Result<Vec<f32>, String> {
        let (reply, scores) = oneshot::channel();
        self.jobs
            .send(ScoreJob { ids, reply })
            .map_err(|_| "the reward model thread has stopped".to_owned())?;
        scores
            .await
            .map_err(|_| "the reward model thread stopped while scoring".to_owned())?
    }
}

/// What the model thread reports once loading is over.
pub(crate) type Loaded = Result<Encoder>;

/// Starts the model thread: it loads `location` on `device` and answers on the returned
/// receiver, then scores until the [`Scorer`] is dropped.
pub(crate) fn spawn<B: ModelBackend>(
    location: String,
    max_length: usize,
    batch_tokens: usize,
    device: B::Device,
) -> Result<(
    Scorer,
    oneshot::Receiver<Loaded>,
    std::thread::JoinHandle<()>,
)> {
    let (jobs_tx, jobs) = mpsc::channel::<ScoreJob>();
    let (loaded_tx, loaded) = oneshot::channel();
    let thread = std::thread::Builder::new()
        .name("reward-model".into())
        .spawn(move || {
            let started = std::time::Instant::now();
            let model = match load::<B>(&location, max_length, batch_tokens, &device) {
                Ok((model, encoder)) => {
                    info!(
                        model = %location,
                        load_s = started.elapsed().as_secs_f64(),
                        "reward model loaded"
                    );
                    if loaded_tx.send(Ok(encoder)).is_err() {
                        return;
                    }
                    model
                }
                Err(error) => {
                    let _ = loaded_tx.send(Err(error));
                    return;
                }
            };
            while let Ok(job) = jobs.recv() {
                let _ = job.reply.send(score(&model, &job.ids));
            }
        })
        .map_err(|error| RewardServerError::Io {
            context: "failed to start the reward model thread".into(),
            error,
        })?;
    Ok((Scorer { jobs: jobs_tx }, loaded, thread))
}

/// Loads a one-label sequence classifier with a chat template (the checks of
/// [`RewardModel::load`]), keeping a copy of its tokenizer for the handlers.
fn load<B: ModelBackend>(
    location: &str,
    max_length: usize,
    batch_tokens: usize,
    device: &B::Device,
) -> Result<(RewardModel<B>, Encoder)> {
    let failed = |message: String| RewardServerError::ModelLoad {
        location: location.to_owned(),
        message,
    };
    let pretrained = Pretrained::<B>::load(location, device).map_err(|e| failed(e.to_string()))?;
    if pretrained.model.config.head != (HeadKind::SequenceClassification { num_labels: 1 }) {
        return Err(failed(format!(
            "it is a {}, expected a sequence classifier with one label",
            pretrained.model.config.class_name()
        )));
    }
    let tokenizer = pretrained
        .tokenizer()
        .map_err(|e| failed(e.to_string()))?
        .clone();
    if tokenizer.chat_template().is_none() {
        return Err(failed(
            "it has no chat template to render conversations with".into(),
        ));
    }
    let encoder = Encoder {
        tokenizer,
        max_length,
    };
    Ok((
        RewardModel::from_pretrained(pretrained, max_length, batch_tokens),
        encoder,
    ))
}

/// Scores on this thread; a panic in the model becomes an error of this batch only (the
/// weights are read-only, so the next batch is unaffected).
fn score<B: ModelBackend>(model: &RewardModel<B>, ids: &[Vec<u32>]) -> Result<Vec<f32>, String> {
    match catch_unwind(AssertUnwindSafe(|| model.score_ids(ids))) {
        Ok(Ok(scores)) => Ok(scores),
        Ok(Err(error)) => Err(error.to_string()),
        Err(panic) => Err(grlo_proto::panic_message(&*panic)
            .unwrap_or_else(|| "the reward model panicked".into())),
    }
}
