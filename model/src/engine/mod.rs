//! The built-in generation engine: continuous batching over a preallocated KV cache.
//!
//! Requests wait in a queue; each [`Engine::step`] first admits waiting requests into free
//! rows (their prompts prefilled together, the `n` samples of a prompt sharing one prefill),
//! then chooses one token for every running row and runs one decoding step for the rows that
//! go on. A row that finishes frees its slot at once, and the next waiting request takes it
//! in the following step (continuous batching); with [`EngineLimits::continuous`] off, new
//! requests start only once the whole batch has finished (static batching, for comparison).
//!
//! A sample's tokens depend only on its prompt, its parameters and its seed: each row draws
//! from its own random stream, and attention sees only the row's own keys, so what shares the
//! batch changes nothing (up to float rounding in the matmuls).
//!
//! - [`slots`]: the slot cache the decoding steps write in place.

pub mod slots;

use std::collections::VecDeque;
use std::sync::Arc;

use burn::tensor::{Int, Tensor, TensorData};
use rand_chacha::ChaCha8Rng;

pub use slots::{SlotCache, SlotLayer, whole_cache_copies};

use crate::backend::ModelBackend;
use crate::error::{Error, Result};
use crate::generate::{Completion, FinishReason, GenerationParams, sample_rng};
use crate::model::{KvCache, Model, TokenBatch};
use crate::sampling::{Choice, SamplingParams, choose_rows};

/// How much the engine runs at once.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EngineLimits {
    /// Most rows (samples) decoded together.
    pub max_batch_rows: usize,
    /// Most KV-cache positions held: rows × the longest reserved row (a row reserves its
    /// prompt plus its `max_new_tokens`), which is what the slot cache allocates.
    pub max_cache_tokens: usize,
    /// Most prompt positions (padding included) prefilled in one forward pass.
    pub max_prefill_tokens: usize,
    /// Admit waiting requests whenever rows are free (else only into an empty batch).
    pub continuous: bool,
}

impl Default for EngineLimits {
    fn default() -> Self {
        EngineLimits {
            max_batch_rows: 256,
            max_cache_tokens: usize::MAX,
            max_prefill_tokens: 16_384,
            continuous: true,
        }
    }
}

/// One prompt to complete `params.n` times, sample `s` drawing from `sample_rng(seed, s)`.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    pub prompt: Vec<u32>,
    pub params: GenerationParams,
    pub seed: u64,
}

/// The engine's name for a submitted request (in submission order, from 0).
pub type RequestId = usize;

/// A token chosen for one sample in a step.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenEvent {
    pub request: RequestId,
    pub sample: usize,
    pub choice: Choice,
    /// Set when this token ends the sample.
    pub finished: Option<FinishReason>,
    /// The most likely tokens and their raw log-probabilities, most likely first, when the
    /// request asks for `top_logprobs`.
    pub top_logprobs: Vec<(u32, f32)>,
}

/// What one step produced: a token for every running row, and the samples that ended.
#[derive(Debug, Default)]
pub struct StepOutput {
    pub tokens: Vec<TokenEvent>,
    /// Finished samples (`prompt_index` is the request's id).
    pub finished: Vec<Completion>,
}

/// What the engine has done so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Forward passes over admitted prompts.
    pub prefill_passes: usize,
    /// Prompt tokens prefilled (without padding): a prompt counts once, whatever its `n`.
    pub prefilled_tokens: usize,
    /// Decoding steps (one token for every running row each).
    pub decode_steps: usize,
    /// Tokens generated.
    pub generated_tokens: usize,
    /// The most rows that ran at once.
    pub peak_rows: usize,
}

/// A running sample.
struct Row {
    request: RequestId,
    params: Arc<GenerationParams>,
    rng: ChaCha8Rng,
    completion: Completion,
    /// Cache positions the row may fill: its prompt and `max_new_tokens`.
    reserve: usize,
}

/// A request waiting for rows.
struct Waiting {
    id: RequestId,
    prompt: Vec<u32>,
    params: Arc<GenerationParams>,
    seed: u64,
}

impl Waiting {
    /// Cache positions each of its rows reserves.
    fn reserve(&self) -> usize {
        self.prompt.len() + self.params.max_new_tokens
    }
}

/// Continuous batching over one model (see the module docs).
pub struct Engine<'m, B: ModelBackend> {
    model: &'m Model<B>,
    limits: EngineLimits,
    next_id: RequestId,
    waiting: VecDeque<Waiting>,
    /// Row `r` lives in slot `r` of `cache`.
    rows: Vec<Row>,
    cache: SlotCache<B>,
    /// The next-token logits of every row, `[rows, vocab]`.
    logits: Option<Tensor<B, 2>>,
    /// Requests with nothing to generate (`max_new_tokens = 0`), finished at the next step.
    ready: Vec<Completion>,
    stats: EngineStats,
}

impl<'m, B: ModelBackend> Engine<'m, B> {
    pub fn new(model: &'m Model<B>, limits: EngineLimits) -> Result<Self> {
        if limits.max_batch_rows == 0 || limits.max_cache_tokens == 0 {
            return Err(Error::InvalidInput(
                "the engine needs max_batch_rows and max_cache_tokens above 0".into(),
            ));
        }
        if model.lm_head.is_none() && model.score.is_some() {
            return Err(Error::InvalidInput(format!(
                "{} cannot generate: it has a classification head, not a language-model head",
                model.config.class_name()
            )));
        }
        Ok(Engine {
            model,
            limits,
            next_id: 0,
            waiting: VecDeque::new(),
            rows: Vec::new(),
            cache: SlotCache::new(model.layers.len()),
            logits: None,
            ready: Vec::new(),
            stats: EngineStats::default(),
        })
    }

    /// Queues a request, checked against the model and the limits; returns its id.
    pub fn submit(&mut self, request: Request) -> Result<RequestId> {
        let Request {
            prompt,
            params,
            seed,
        } = request;
        check_params(&params)?;
        if prompt.is_empty() {
            return Err(Error::InvalidInput("the prompt is empty".into()));
        }
        self.model.check_ids(&prompt)?;
        let waiting = Waiting {
            id: self.next_id,
            prompt,
            params: Arc::new(params),
            seed,
        };
        let n = waiting.params.n;
        if n > self.limits.max_batch_rows {
            return Err(Error::InvalidInput(format!(
                "n = {n} samples exceed the engine's {} rows",
                self.limits.max_batch_rows
            )));
        }
        if n.saturating_mul(waiting.reserve()) > self.limits.max_cache_tokens {
            return Err(Error::InvalidInput(format!(
                "{n} samples of {} prompt + {} new tokens exceed the KV cache's {} positions",
                waiting.prompt.len(),
                waiting.params.max_new_tokens,
                self.limits.max_cache_tokens
            )));
        }
        if waiting.params.max_new_tokens == 0 {
            self.ready
                .extend((0..n).map(|s| empty_completion(waiting.id, s)));
        } else {
            self.waiting.push_back(waiting);
        }
        self.next_id += 1;
        Ok(self.next_id - 1)
    }

    /// Whether nothing is running or waiting.
    pub fn is_idle(&self) -> bool {
        self.rows.is_empty() && self.waiting.is_empty() && self.ready.is_empty()
    }

    pub fn stats(&self) -> EngineStats {
        self.stats
    }

    /// Rows running now.
    pub fn running_rows(&self) -> usize {
        self.rows.len()
    }

    /// Whether request `id` has samples waiting, running or about to be reported.
    pub fn has_request(&self, id: RequestId) -> bool {
        self.waiting.iter().any(|w| w.id == id)
            || self.rows.iter().any(|r| r.request == id)
            || self.ready.iter().any(|c| c.prompt_index == id)
    }

    /// Requests waiting for rows.
    pub fn waiting_requests(&self) -> usize {
        self.waiting.len()
    }

    /// Bytes the KV cache has allocated.
    pub fn cache_bytes(&self) -> usize {
        self.cache.allocated_bytes()
    }

    /// Drops a request, waiting or running (a client that went away); its samples end
    /// without a completion.
    pub fn cancel(&mut self, id: RequestId) {
        self.waiting.retain(|w| w.id != id);
        let doomed: Vec<usize> = (0..self.rows.len())
            .filter(|&r| self.rows[r].request == id)
            .collect();
        if doomed.is_empty() {
            return;
        }
        let logits = self.logits.take().map(|l| self.keep_rows(l, &doomed));
        self.remove_rows(&doomed);
        self.logits = logits;
    }

    /// Ends one sample of a request now, as if it had produced a stop token (a stop string the
    /// caller found in its text); returns what it generated. `None` if it is not running.
    pub fn finish_sample(&mut self, id: RequestId, sample: usize) -> Option<Completion> {
        let r = self
            .rows
            .iter()
            .position(|row| row.request == id && row.completion.sample_index == sample)?;
        let logits = self.logits.take().map(|l| self.keep_rows(l, &[r]));
        let mut completion = self.remove_rows(&[r]).pop().expect("one row removed");
        self.logits = logits;
        completion.finish_reason = FinishReason::Stop;
        Some(completion)
    }

    /// Admits what fits, then chooses one token for every running row and decodes the rows
    /// that go on.
    pub fn step(&mut self) -> Result<StepOutput> {
        self.admit()?;
        let mut out = StepOutput {
            finished: std::mem::take(&mut self.ready),
            ..StepOutput::default()
        };
        let Some(logits) = self.logits.take() else {
            return Ok(out);
        };
        let (choices, mut tops) = self.choose(logits);
        let mut done = Vec::new();
        for (r, choice) in choices.into_iter().enumerate() {
            let row = &mut self.rows[r];
            let c = &mut row.completion;
            c.token_ids.push(choice.token);
            c.logprobs.push(choice.logprob);
            c.sampling_logprobs.push(choice.sampling_logprob);
            let finished = if row.params.stop_token_ids.contains(&choice.token) {
                Some(FinishReason::Stop)
            } else if c.token_ids.len() >= row.params.max_new_tokens {
                Some(FinishReason::Length)
            } else {
                None
            };
            if let Some(reason) = finished {
                c.finish_reason = reason;
                done.push(r);
            }
            out.tokens.push(TokenEvent {
                request: row.request,
                sample: c.sample_index,
                choice,
                finished,
                top_logprobs: std::mem::take(&mut tops[r]),
            });
        }
        self.stats.generated_tokens += out.tokens.len();
        out.finished.extend(self.remove_rows(&done));
        if !self.rows.is_empty() {
            self.stats.decode_steps += 1;
            let ids: Vec<u32> = self
                .rows
                .iter()
                .map(|r| *r.completion.token_ids.last().expect("a chosen token"))
                .collect();
            let hidden = self.model.forward_slots(&ids, &mut self.cache); // [rows, hidden]
            self.logits = Some(self.model.lm_logits(hidden)); // [rows, vocab]
        }
        Ok(out)
    }

    /// Steps until every request has finished; the completions in the order they finished.
    pub fn run(&mut self) -> Result<Vec<Completion>> {
        let mut finished = Vec::new();
        while !self.is_idle() {
            finished.extend(self.step()?.finished);
        }
        Ok(finished)
    }

    /// Moves waiting requests into free rows and prefills them.
    fn admit(&mut self) -> Result<()> {
        if !self.limits.continuous && !self.rows.is_empty() {
            return Ok(());
        }
        let mut admitted: Vec<Waiting> = Vec::new();
        let mut rows = self.rows.len();
        let mut longest_reserve = self.rows.iter().map(|r| r.reserve).max().unwrap_or(0);
        let mut longest_prompt = 0;
        while let Some(next) = self.waiting.front() {
            let n = next.params.n;
            let reserve = longest_reserve.max(next.reserve());
            let prompt = longest_prompt.max(next.prompt.len());
            let fits = rows + n <= self.limits.max_batch_rows
                && (rows + n).saturating_mul(reserve) <= self.limits.max_cache_tokens;
            let prefill_fits = admitted.is_empty()
                || (admitted.len() + 1).saturating_mul(prompt) <= self.limits.max_prefill_tokens;
            if !fits || !prefill_fits {
                break;
            }
            rows += n;
            longest_reserve = reserve;
            longest_prompt = prompt;
            admitted.push(self.waiting.pop_front().expect("a front"));
        }
        if admitted.is_empty() {
            return Ok(());
        }
        // A row never outgrows its slot: its last written position is prompt + max_new_tokens
        // - 2 (the last token's keys are never written), inside its reserve.
        let limits = &self.limits;
        (self.cache).reserve(
            rows,
            longest_reserve,
            limits.max_batch_rows,
            limits.max_cache_tokens,
        );
        self.prefill(admitted);
        Ok(())
    }

    /// One forward pass over the admitted prompts (left-padded), their rows appended.
    fn prefill(&mut self, admitted: Vec<Waiting>) {
        let model = self.model;
        let device = model.device();
        let prompts: Vec<Vec<u32>> = admitted.iter().map(|w| w.prompt.clone()).collect();
        let batch = TokenBatch::left_padded(&prompts, model.config.pad_token_id.unwrap_or(0));
        let mut prefill = KvCache::new(model.layers.len());
        let hidden = model.forward_hidden(&batch, Some(&mut prefill)); // [prompts * seq, hidden]
        let last: Vec<usize> = (0..prompts.len())
            .map(|p| p * batch.seq + batch.seq - 1)
            .collect();
        let logits = model.lm_logits(hidden.select(0, index_tensor::<B>(&last, &device))); // [prompts, vocab]
        self.stats.prefill_passes += 1;
        self.stats.prefilled_tokens += prompts.iter().map(Vec::len).sum::<usize>();
        let mut expand = Vec::new();
        for (p, waiting) in admitted.into_iter().enumerate() {
            let n = waiting.params.n;
            let pad = batch.seq - waiting.prompt.len();
            self.cache.admit(&prefill, p, pad..batch.seq, n);
            for s in 0..n {
                expand.push(p);
                self.rows.push(Row {
                    request: waiting.id,
                    params: waiting.params.clone(),
                    rng: sample_rng(waiting.seed, s),
                    completion: empty_completion(waiting.id, s),
                    reserve: waiting.reserve(),
                });
            }
        }
        self.stats.peak_rows = self.stats.peak_rows.max(self.rows.len());
        let new = logits.select(0, index_tensor::<B>(&expand, &device)); // [new rows, vocab]
        self.logits = Some(match self.logits.take() {
            Some(old) => Tensor::cat(vec![old, new], 0),
            None => new,
        });
    }

    /// One token per row (rows with the same sampling parameters are chosen together), and
    /// each row's most likely tokens when its request asks for them.
    fn choose(&mut self, logits: Tensor<B, 2>) -> (Vec<Choice>, Vec<Vec<(u32, f32)>>) {
        let mut groups: Vec<(Arc<GenerationParams>, Vec<usize>)> = Vec::new();
        for (r, row) in self.rows.iter().enumerate() {
            match groups
                .iter_mut()
                .find(|(p, _)| Arc::ptr_eq(p, &row.params) || p.sampling == row.params.sampling)
            {
                Some((_, members)) => members.push(r),
                None => groups.push((row.params.clone(), vec![r])),
            }
        }
        let device = logits.device();
        let mut choices = vec![None; self.rows.len()];
        let mut tops = vec![Vec::new(); self.rows.len()];
        let single = groups.len() == 1;
        for (params, members) in groups {
            let part = if single {
                logits.clone()
            } else {
                logits
                    .clone()
                    .select(0, index_tensor::<B>(&members, &device))
            };
            let k = members
                .iter()
                .map(|&r| self.rows[r].params.top_logprobs)
                .max()
                .unwrap_or(0);
            let top = (k > 0).then(|| top_logprobs(part.clone(), k));
            let sampling: &SamplingParams = &params.sampling;
            let mut rngs: Vec<&mut ChaCha8Rng> = self
                .rows
                .iter_mut()
                .enumerate()
                .filter(|(r, _)| members.binary_search(r).is_ok())
                .map(|(_, row)| &mut row.rng)
                .collect();
            for (&r, choice) in members.iter().zip(choose_rows(part, sampling, &mut rngs)) {
                choices[r] = Some(choice);
            }
            if let Some(top) = top {
                for (&r, mut row) in members.iter().zip(top) {
                    row.truncate(self.rows[r].params.top_logprobs);
                    tops[r] = row;
                }
            }
        }
        let choices = choices
            .into_iter()
            .map(|c| c.expect("every row chosen"))
            .collect();
        (choices, tops)
    }

    /// `logits` without the rows `gone` (sorted), in the order [`Engine::remove_rows`] leaves
    /// the rows in.
    fn keep_rows(&self, logits: Tensor<B, 2>, gone: &[usize]) -> Tensor<B, 2> {
        let mut order: Vec<usize> = (0..self.rows.len()).collect();
        for &r in gone.iter().rev() {
            order.swap_remove(r);
        }
        let device = logits.device();
        logits.select(0, index_tensor::<B>(&order, &device))
    }

    /// Removes rows `gone` (sorted ascending) and their slots; returns their completions.
    fn remove_rows(&mut self, gone: &[usize]) -> Vec<Completion> {
        let mut completions = Vec::with_capacity(gone.len());
        // From the highest: each removal moves the last row into the freed slot.
        for &r in gone.iter().rev() {
            self.cache.swap_remove(r);
            completions.push(self.rows.swap_remove(r).completion);
        }
        completions.reverse();
        completions
    }
}

/// Rejects parameters no request can run with, naming the parameter.
pub fn check_params(params: &GenerationParams) -> Result<()> {
    params.sampling.validate()?;
    if params.n == 0 {
        return Err(Error::InvalidInput(
            "n (samples per prompt) must be at least 1".into(),
        ));
    }
    Ok(())
}

fn empty_completion(request: RequestId, sample: usize) -> Completion {
    Completion {
        prompt_index: request,
        sample_index: sample,
        token_ids: Vec::new(),
        logprobs: Vec::new(),
        sampling_logprobs: Vec::new(),
        finish_reason: FinishReason::Length,
    }
}

/// The `k` largest log-probabilities of each row of `logits` (`[rows, vocab]`), most likely
/// first, read back in one transfer.
fn top_logprobs<B: ModelBackend>(logits: Tensor<B, 2>, k: usize) -> Vec<Vec<(u32, f32)>> {
    let [rows, vocab] = logits.dims();
    let k = k.min(vocab);
    let logprobs = burn::tensor::activation::log_softmax(logits, 1);
    let (values, indices) = logprobs.topk_with_indices(k, 1); // [rows, k] each
    let packed = Tensor::cat(vec![values, indices.float()], 1); // [rows, 2k]
    let flat = crate::model::to_f32_vec(packed);
    (0..rows)
        .map(|r| {
            let row = &flat[r * 2 * k..(r + 1) * 2 * k];
            (0..k).map(|j| (row[k + j] as u32, row[j])).collect()
        })
        .collect()
}

fn index_tensor<B: ModelBackend>(indices: &[usize], device: &B::Device) -> Tensor<B, 1, Int> {
    let values: Vec<i64> = indices.iter().map(|&i| i as i64).collect();
    Tensor::from_data(TensorData::new(values, [indices.len()]), device)
}
