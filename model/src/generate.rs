//! Generation of whole prompt sets: the parameters and completions, and [`generate`], which
//! runs them through the [`crate::engine`] (continuous batching over a slot KV cache).

use crate::backend::ModelBackend;
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::engine::{Engine, EngineLimits, Request, check_params};
use crate::error::{Error, Result};
use crate::model::Model;
use crate::sampling::SamplingParams;

/// What to generate for a batch of prompts.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerationParams {
    pub sampling: SamplingParams,
    pub max_new_tokens: usize,
    /// Samples per prompt.
    pub n: usize,
    /// Tokens that end a completion (the stop token is kept as its last token).
    pub stop_token_ids: Vec<u32>,
    /// Also report the `top_logprobs` most likely tokens at each position, with their raw
    /// log-probabilities (0: none; costs one more device read per step when set).
    pub top_logprobs: usize,
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

/// Like [`generate`], with one seed per prompt. All prompts run in one continuous batch.
pub fn generate_seeded<B: ModelBackend>(
    model: &Model<B>,
    prompts: &[Vec<u32>],
    seeds: &[u64],
    params: &GenerationParams,
) -> Result<Vec<Completion>> {
    let limits = EngineLimits {
        max_batch_rows: (prompts.len() * params.n).max(1),
        ..EngineLimits::default()
    };
    generate_with(model, prompts, seeds, params, limits)
}

/// Like [`generate_seeded`], within the engine's `limits`.
pub fn generate_with<B: ModelBackend>(
    model: &Model<B>,
    prompts: &[Vec<u32>],
    seeds: &[u64],
    params: &GenerationParams,
    limits: EngineLimits,
) -> Result<Vec<Completion>> {
    check_params(params)?;
    validate(model, prompts, seeds)?;
    let mut engine = Engine::new(model, limits)?;
    for (prompt, &seed) in prompts.iter().zip(seeds) {
        engine.submit(Request {
            prompt: prompt.clone(),
            params: params.clone(),
            seed,
        })?;
    }
    // Request ids are the prompt indices.
    let mut completions = engine.run()?;
    completions.sort_by_key(|c| (c.prompt_index, c.sample_index));
    Ok(completions)
}

/// What the engine cannot tell: the seeds match the prompts, and which prompt is bad (the
/// engine checks the model itself).
fn validate<B: ModelBackend>(model: &Model<B>, prompts: &[Vec<u32>], seeds: &[u64]) -> Result<()> {
    if seeds.len() != prompts.len() {
        return Err(Error::InvalidInput(format!(
            "{} seeds for {} prompts",
            seeds.len(),
            prompts.len()
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
