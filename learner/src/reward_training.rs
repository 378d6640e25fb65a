//! Reward models from preference pairs: the Bradley–Terry fit behind `grlo rm train`, and the
//! synthetic "cheerful" preference the default job's reward model is trained on
//! (`grlo rm make-pairs`).

use grlo_model::backend::ModelAutodiffBackend;
use std::path::{Path, PathBuf};

use burn::module::AutodiffModule;
use burn::optim::GradientsParams;
use burn::tensor::{ElementConversion, Tensor};
use grlo_model::pretrained::copy_auxiliary_files;
use grlo_model::{ChatMessage, HeadKind, Pretrained, StoredDtype};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::config::{LrSchedule, OptimSection};
use crate::data::PromptRecord;
use crate::error::{LearnerError, Result};
use crate::loss::bradley_terry_loss;
use crate::optim::AdamW;
use crate::reward::RewardModel;

/// The words the synthetic preference likes. A response with more of them is preferred.
pub const CHEERFUL_WORDS: [&str; 10] = [
    "fun",
    "great",
    "happy",
    "thanks",
    "yes",
    "love",
    "nice",
    "best",
    "glad",
    "wonderful",
];

/// One preference: two responses to a prompt, the first preferred.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PreferencePair {
    pub prompt: Vec<ChatMessage>,
    pub chosen: String,
    pub rejected: String,
}

/// Pairs for the default job's reward model: for each pair, two responses made of words of
/// the prompt itself, where the chosen one holds more cheerful words (from
/// [`CHEERFUL_WORDS`]) than the rejected one; lengths are drawn independently so that length
/// says nothing about preference.
pub fn make_cheerful_pairs(
    records: &[PromptRecord],
    count: usize,
    seed: u64,
) -> Vec<PreferencePair> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut below = |n: usize| (rng.next_u64() % n.max(1) as u64) as usize;
    let mut pairs = Vec::with_capacity(count);
    for i in 0..count {
        let record = &records[i % records.len()];
        let words: Vec<&str> = record
            .messages
            .iter()
            .flat_map(|m| m.content.split_whitespace())
            .filter(|w| w.chars().all(char::is_alphabetic))
            .collect();
        let words = if words.is_empty() {
            vec!["well"]
        } else {
            words
        };
        let more = 1 + below(4);
        let fewer = below(more);
        let mut response = |cheerful: usize| {
            let length = 6 + below(11);
            let mut out: Vec<&str> = (0..length).map(|_| words[below(words.len())]).collect();
            for _ in 0..cheerful {
                let position = below(out.len() + 1);
                out.insert(position, CHEERFUL_WORDS[below(CHEERFUL_WORDS.len())]);
            }
            out.join(" ")
        };
        let chosen = response(more);
        let rejected = response(fewer);
        pairs.push(PreferencePair {
            prompt: record.messages.clone(),
            chosen,
            rejected,
        });
    }
    pairs
}

/// How to fit a reward model.
#[derive(Clone, Debug)]
pub struct RewardTrainConfig {
    /// The initial sequence classifier (or any checkpoint of the family: its decoder gets a
    /// fresh one-label score head).
    pub model: String,
    pub pairs: PathBuf,
    pub out: PathBuf,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub weight_decay: f64,
    /// Fraction of pairs held out for the pairwise accuracy.
    pub eval_fraction: f64,
    pub max_length: usize,
    pub seed: u64,
}

/// What `grlo rm train` reports.
#[derive(Clone, Debug, Serialize)]
pub struct RewardTrainReport {
    pub train_pairs: usize,
    pub eval_pairs: usize,
    pub epochs: usize,
    pub updates: usize,
    /// Held-out pairwise accuracy (chosen scored above rejected) before and after training.
    pub eval_accuracy_before: f64,
    pub eval_accuracy: f64,
    pub final_train_loss: f64,
    pub out: PathBuf,
}

/// Reads preference pairs (JSONL: `prompt` as a message list or a string, `chosen`,
/// `rejected`), naming the file and line of a bad one.
pub fn read_pairs(path: &Path) -> Result<Vec<PreferencePair>> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Prompt {
        Text(String),
        Messages(Vec<ChatMessage>),
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Line {
        prompt: Prompt,
        chosen: String,
        rejected: String,
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| LearnerError::Invalid(format!("failed to read {}: {e}", path.display())))?;
    let mut pairs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let parsed: Line = serde_json::from_str(line)
            .map_err(|e| LearnerError::Invalid(format!("{}:{}: {e}", path.display(), i + 1)))?;
        let prompt = match parsed.prompt {
            Prompt::Text(text) => vec![ChatMessage::user(text)],
            Prompt::Messages(messages) => messages,
        };
        pairs.push(PreferencePair {
            prompt,
            chosen: parsed.chosen,
            rejected: parsed.rejected,
        });
    }
    if pairs.is_empty() {
        return Err(LearnerError::Invalid(format!(
            "{} holds no preference pairs",
            path.display()
        )));
    }
    Ok(pairs)
}

fn conversation(prompt: &[ChatMessage], response: &str) -> Vec<ChatMessage> {
    let mut messages = prompt.to_vec();
    messages.push(ChatMessage::assistant(response));
    messages
}

/// Fits a sequence classifier to preference pairs with the Bradley–Terry loss
/// `-log σ(r(chosen) - r(rejected))` and saves it in the Hugging Face layout.
pub fn train_reward_model<A: ModelAutodiffBackend>(
    config: &RewardTrainConfig,
    device: &A::Device,
) -> Result<RewardTrainReport> {
    let mut pairs = read_pairs(&config.pairs)?;
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    shuffle(&mut pairs, &mut rng);
    let eval_count = ((pairs.len() as f64) * config.eval_fraction).round() as usize;
    let eval_count = eval_count.min(pairs.len().saturating_sub(1));
    let (eval, train) = pairs.split_at(eval_count);

    let dir = grlo_model::store::Location::parse(&config.model)?
        .materialize(&grlo_model::store::default_cache_root())?;
    let initial = Pretrained::<A>::load(dir.to_str().unwrap_or_default(), device)?;
    let head = HeadKind::SequenceClassification { num_labels: 1 };
    let mut model = if initial.model.config.head == head {
        initial.model.clone()
    } else {
        grlo_model::Model::<A>::load_with_head(&dir, head, config.seed, device)?
    };
    let tokenizer = initial.tokenizer()?.clone();
    let encode = |pair: &PreferencePair| -> Result<(Vec<u32>, Vec<u32>)> {
        let cut = |mut ids: Vec<u32>| {
            if ids.len() > config.max_length {
                ids.drain(..ids.len() - config.max_length);
            }
            ids
        };
        Ok((
            cut(tokenizer.encode_chat(&conversation(&pair.prompt, &pair.chosen), false)?),
            cut(tokenizer.encode_chat(&conversation(&pair.prompt, &pair.rejected), false)?),
        ))
    };
    let train: Vec<(Vec<u32>, Vec<u32>)> = train.iter().map(encode).collect::<Result<_>>()?;
    let eval: Vec<(Vec<u32>, Vec<u32>)> = eval.iter().map(encode).collect::<Result<_>>()?;

    let accuracy = |model: &grlo_model::Model<A::InnerBackend>| -> Result<f64> {
        if eval.is_empty() {
            return Ok(f64::NAN);
        }
        let scorer = RewardModel::from_pretrained(
            Pretrained {
                model: model.clone(),
                tokenizer: Some(tokenizer.clone()),
                dir: dir.clone(),
            },
            config.max_length,
            16384,
        );
        let chosen: Vec<Vec<u32>> = eval.iter().map(|p| p.0.clone()).collect();
        let rejected: Vec<Vec<u32>> = eval.iter().map(|p| p.1.clone()).collect();
        let (c, r) = (scorer.score_ids(&chosen)?, scorer.score_ids(&rejected)?);
        Ok(c.iter().zip(&r).filter(|(c, r)| c > r).count() as f64 / eval.len() as f64)
    };
    let eval_accuracy_before = accuracy(&model.valid())?;

    let mut optim = AdamW::<A::InnerBackend>::new(OptimSection {
        lr: config.lr,
        weight_decay: config.weight_decay,
        betas: [0.9, 0.999],
        eps: 1e-8,
        grad_clip: 1.0,
        schedule: LrSchedule::default(),
    });
    let mut order: Vec<usize> = (0..train.len()).collect();
    let (mut updates, mut last_losses) = (0, Vec::new());
    for epoch in 0..config.epochs {
        shuffle(&mut order, &mut rng);
        for batch in order.chunks(config.batch_size.max(1)) {
            let mut rows: Vec<Vec<u32>> = batch.iter().map(|&i| train[i].0.clone()).collect();
            rows.extend(batch.iter().map(|&i| train[i].1.clone()));
            let scores: Tensor<A, 2> = model.score_sequences(&rows)?; // [2 * batch, 1]
            let n = batch.len();
            let chosen = scores.clone().narrow(0, 0, n).reshape([n]);
            let rejected = scores.narrow(0, n, n).reshape([n]);
            let loss = bradley_terry_loss(chosen, rejected);
            let value = loss.clone().into_scalar().elem::<f64>();
            if !value.is_finite() {
                return Err(LearnerError::Invalid(format!(
                    "reward-model loss is {value} in epoch {epoch}"
                )));
            }
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            let norm = AdamW::<A::InnerBackend>::grad_norm(&model, &grads);
            model = optim.update(model, grads, config.lr, norm);
            updates += 1;
            last_losses.push(value);
            if last_losses.len() > 20 {
                last_losses.remove(0);
            }
        }
        tracing::info!(
            epoch,
            loss = last_losses.last().copied().unwrap_or(f64::NAN),
            "reward model epoch done"
        );
    }
    let trained = model.valid();
    let eval_accuracy = accuracy(&trained)?;
    trained.save(&config.out, StoredDtype::F32, 5_000_000_000)?;
    copy_auxiliary_files(&dir, &config.out)?;
    Ok(RewardTrainReport {
        train_pairs: train.len(),
        eval_pairs: eval.len(),
        epochs: config.epochs,
        updates,
        eval_accuracy_before,
        eval_accuracy,
        final_train_loss: last_losses.iter().sum::<f64>() / last_losses.len().max(1) as f64,
        out: config.out.clone(),
    })
}

/// Fisher–Yates with the run's generator (deterministic on every platform).
fn shuffle<T>(items: &mut [T], rng: &mut ChaCha8Rng) {
    for i in (1..items.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}
