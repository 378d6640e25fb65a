//! Batched generation: one prefill over left-padded prompts, then one-token decoding steps
//! against a KV cache. Rows that finish (a stop token, or the token limit) leave the batch
//! and the cache at once, so no compute is spent on them; padding that no remaining row
//! needs is cut from the front of the cache.

use crate::backend::ModelBackend;
use burn::tensor::{Int, Tensor, TensorData};
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::{KvCache, Model, TokenBatch};
use crate::sampling::{SamplingParams, choose_rows};

/// What to generate for a batch of prompts.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerationParams {
    pub sampling: SamplingParams,
    pub max_new_tokens: usize,
    /// Samples per prompt.
    pub n: usize,
    /// Tokens that end a completion (the stop token is kept as its last token).
    pub stop_token_ids: Vec<u32>,
}

/// Why a completion ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// It produced a stop token.
    Stop,
    /// It reached `max_new_tokens`.
    Length,
}

/// One generated continuation of one prompt.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Completion {
    pub prompt_index: usize,
    pub sample_index: usize,
    pub token_ids: Vec<u32>,
    /// Log-probability of each token under the raw model (the behaviour policy).
    pub logprobs: Vec<f32>,
    /// Log-probability of each token under the distribution it was sampled from.
    pub sampling_logprobs: Vec<f32>,
    pub finish_reason: FinishReason,
}

/// A row of the running batch.
struct Row {
    completion: Completion,
    rng: ChaCha8Rng,
    /// Padding positions at the front of this row's cache.
    padding: usize,
    /// Rotary position of the next token.
    position: usize,
}

/// The random stream of sample `sample` of a prompt whose seed is `seed`: independent of which
/// other prompts share the batch, so a prompt generates the same text alone or batched.
pub fn sample_rng(seed: u64, sample: usize) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(sample as u64);
    rng
}

/// The seed of prompt `index` in a request seeded with `seed`.
pub fn prompt_seed(seed: u64, index: usize) -> u64 {
    seed ^ (index as u64)
        .wrapping_add(1)
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// Generates `params.n` completions for every prompt, in prompt order, each prompt seeded
/// with [`prompt_seed`] of the sampling seed.
pub fn generate<B: ModelBackend>(
    model: &Model<B>,
    prompts: &[Vec<u32>],
    params: &GenerationParams,
) -> Result<Vec<Completion>> {
    let seeds: Vec<u64> = (0..prompts.len())
        .map(|i| prompt_seed(params.sampling.seed, i))
        .collect();
    generate_seeded(model, prompts, &seeds, params)
}

/// Like [`generate`], with one seed per prompt.
pub fn generate_seeded<B: ModelBackend>(
    model: &Model<B>,
    prompts: &[Vec<u32>],
    seeds: &[u64],
    params: &GenerationParams,
) -> Result<Vec<Completion>> {
    validate(model, prompts, seeds, params)?;
    let n = params.n;
    let mut rows: Vec<Row> = Vec::with_capacity(prompts.len() * n);
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    for (p, prompt) in prompts.iter().enumerate() {
        for s in 0..n {
            rows.push(Row {
                completion: Completion {
                    prompt_index: p,
                    sample_index: s,
                    token_ids: Vec::new(),
                    logprobs: Vec::new(),
                    sampling_logprobs: Vec::new(),
                    finish_reason: FinishReason::Length,
                },
                rng: sample_rng(seeds[p], s),
                padding: longest - prompt.len(),
                position: prompt.len(),
            });
        }
    }
    if params.max_new_tokens == 0 || prompts.is_empty() {
        return Ok(rows.into_iter().map(|r| r.completion).collect());
    }

    // Prefill every prompt once, then repeat its cache rows for its `n` samples.
    let device = model.device();
    let pad = model.config.pad_token_id.unwrap_or(0);
    let batch = TokenBatch::left_padded(prompts, pad);
    let mut cache = KvCache::new(model.layers.len());
    let hidden = model.forward_hidden(&batch, Some(&mut cache)); // [prompts * seq, hidden]
    let last: Vec<usize> = (0..prompts.len())
        .map(|p| p * batch.seq + batch.seq - 1)
        .collect();
    let logits = model.lm_logits(hidden.select(0, index_tensor::<B>(&last, &device))); // [prompts, vocab]
    let expand: Vec<usize> = (0..prompts.len() * n).map(|r| r / n).collect();
    let mut logits = logits.select(0, index_tensor::<B>(&expand, &device)); // [rows, vocab]
    if n > 1 {
        cache.select_rows(&expand);
    }

    let mut active: Vec<usize> = (0..rows.len()).collect();
    loop {
        // Choose the next token of every active row (`active` is sorted, as `rows`).
        let choices = {
            let mut rngs: Vec<&mut ChaCha8Rng> = rows
                .iter_mut()
                .enumerate()
                .filter(|(r, _)| active.binary_search(r).is_ok())
                .map(|(_, row)| &mut row.rng)
                .collect();
            choose_rows(logits, &params.sampling, &mut rngs)
        };
        let mut still_active = Vec::with_capacity(active.len());
        let mut kept = Vec::with_capacity(active.len());
        for ((slot, &r), choice) in active.iter().enumerate().zip(choices) {
            let row = &mut rows[r];
            let c = &mut row.completion;
            c.token_ids.push(choice.token);
            c.logprobs.push(choice.logprob);
            c.sampling_logprobs.push(choice.sampling_logprob);
            if params.stop_token_ids.contains(&choice.token) {
                c.finish_reason = FinishReason::Stop;
            } else if c.token_ids.len() < params.max_new_tokens {
                still_active.push(r);
                kept.push(slot);
            }
        }
        if still_active.is_empty() {
            break;
        }
        if kept.len() < active.len() {
            cache.select_rows(&kept);
            let common = still_active
                .iter()
                .map(|&r| rows[r].padding)
                .min()
                .unwrap_or(0);
            cache.drop_front(common);
            still_active.iter().for_each(|&r| rows[r].padding -= common);
        }
        active = still_active;

        // One decoding step for the rows still running.
        let step = decode_batch(&rows, &active, cache.len());
        let hidden = model.forward_hidden(&step, Some(&mut cache)); // [active, hidden]
        logits = model.lm_logits(hidden); // [active, vocab]
        for &r in &active {
            rows[r].position += 1;
        }
    }
    Ok(rows.into_iter().map(|r| r.completion).collect())
}

/// The one-token step of the active rows over `cached` cached positions.
fn decode_batch(rows: &[Row], active: &[usize], cached: usize) -> TokenBatch {
    let keys = cached + 1;
    let any_padding = active.iter().any(|&r| rows[r].padding > 0);
    let key_windows =
        any_padding.then(|| active.iter().map(|&r| (rows[r].padding, keys)).collect());
    TokenBatch {
        batch: active.len(),
        seq: 1,
        ids: active
            .iter()
            .map(|&r| *rows[r].completion.token_ids.last().expect("a chosen token"))
            .collect(),
        positions: active.iter().map(|&r| rows[r].position).collect(),
        key_windows,
        lengths: vec![1; active.len()],
    }
}

fn index_tensor<B: ModelBackend>(indices: &[usize], device: &B::Device) -> Tensor<B, 1, Int> {
    let values: Vec<i64> = indices.iter().map(|&i| i as i64).collect();
    Tensor::from_data(TensorData::new(values, [indices.len()]), device)
}

fn validate<B: ModelBackend>(
    model: &Model<B>,
    prompts: &[Vec<u32>],
    seeds: &[u64],
    params: &GenerationParams,
) -> Result<()> {
    params.sampling.validate()?;
    if params.n == 0 {
        return Err(Error::InvalidInput(
            "n (samples per prompt) must be at least 1".into(),
        ));
    }
    if seeds.len() != prompts.len() {
        return Err(Error::InvalidInput(format!(
            "{} seeds for {} prompts",
            seeds.len(),
            prompts.len()
        )));
    }
    if model.lm_head.is_none() && model.score.is_some() {
        return Err(Error::InvalidInput(format!(
            "{} cannot generate: it has a classification head, not a language-model head",
            model.config.class_name()
        )));
    }
    for (i, prompt) in prompts.iter().enumerate() {
        if prompt.is_empty() {
            return Err(Error::InvalidInput(format!("prompt {i} is empty")));
        }
        if let Err(Error::InvalidInput(message)) = model.check_ids(prompt) {
            return Err(Error::InvalidInput(format!("prompt {i}: {message}")));
        }
    }
    Ok(())
}
