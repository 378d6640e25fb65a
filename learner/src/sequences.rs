//! Prompt + response sequences as the learner sees them: right-padded batches, and the
//! per-response-token quantities the losses need (log-probabilities, entropies, values).
//!
//! Token `j` of a response that starts at position `p` is predicted by the hidden state at
//! `p + j - 1`; its value (the critic's estimate before emitting it) is read at the same
//! state, as verl does. Only those states go through the vocabulary head, and the head computes
//! their log-probabilities (and entropies) a chunk of tokens at a time
//! ([`Model::token_logprobs`]): the `[tokens, vocab]` logits are never built whole, not even
//! for the response tokens.

use burn::tensor::{Int, Tensor, TensorData};
use grlo_model::backend::{ModelAutodiffBackend, ModelBackend};
use grlo_model::checkpointing::TrainingForward;
use grlo_model::{Model, TokenBatch};

/// A micro-batch of sequences: each row is a prompt followed by its response.
#[derive(Clone, Debug, PartialEq)]
pub struct SequenceBatch {
    pub rows: Vec<Vec<u32>>,
    pub prompt_lens: Vec<usize>,
    pub response_lens: Vec<usize>,
}

impl SequenceBatch {
    pub fn new(prompts: &[&[u32]], responses: &[&[u32]]) -> Self {
        let rows = prompts
            .iter()
            .zip(responses)
            .map(|(p, r)| p.iter().chain(r.iter()).copied().collect())
            .collect();
        SequenceBatch {
            rows,
            prompt_lens: prompts.iter().map(|p| p.len()).collect(),
            response_lens: responses.iter().map(|r| r.len()).collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The longest response (the width of every per-token tensor).
    pub fn max_response(&self) -> usize {
        self.response_lens.iter().copied().max().unwrap_or(0)
    }

    /// `[batch, max_response]` mask: 1 for response tokens, 0 for padding.
    pub fn mask<B: ModelBackend>(&self, device: &B::Device) -> Tensor<B, 2> {
        let width = self.max_response();
        let values: Vec<f32> = self
            .response_lens
            .iter()
            .flat_map(|&len| (0..width).map(move |j| if j < len { 1.0 } else { 0.0 }))
            .collect();
        Tensor::from_data(TensorData::new(values, [self.len(), width]), device)
    }

    /// Row-padded per-token values (`[batch, max_response]`, 0 in padding).
    pub fn pad<B: ModelBackend>(&self, rows: &[&[f32]], device: &B::Device) -> Tensor<B, 2> {
        let width = self.max_response();
        let mut values = Vec::with_capacity(self.len() * width);
        for row in rows {
            values.extend_from_slice(&row[..row.len().min(width)]);
            values.extend(std::iter::repeat_n(0.0, width - row.len().min(width)));
        }
        Tensor::from_data(TensorData::new(values, [self.len(), width]), device)
    }

    /// Indices into the `[batch * seq]` hidden states of the state that predicts each response
    /// token (padding slots point at row 0), and the response token ids themselves.
    fn response_states(&self, seq: usize) -> (Vec<i64>, Vec<i64>) {
        let width = self.max_response();
        let mut states = Vec::with_capacity(self.len() * width);
        let mut targets = Vec::with_capacity(self.len() * width);
        for (row, (&prompt, &response)) in
            self.prompt_lens.iter().zip(&self.response_lens).enumerate()
        {
            for j in 0..width {
                if j < response {
                    states.push((row * seq + prompt + j - 1) as i64);
                    targets.push(self.rows[row][prompt + j] as i64);
                } else {
                    states.push(0);
                    targets.push(0);
                }
            }
        }
        (states, targets)
    }

    /// The right-padded token batch of these rows.
    fn token_batch(&self, pad: u32) -> TokenBatch {
        TokenBatch::right_padded(&self.rows, pad)
    }

    /// The hidden states that predict the response tokens: `[batch * seq, hidden]` →
    /// `[batch * width, hidden]`.
    fn select_states<B: ModelBackend>(&self, hidden: Tensor<B, 2>, seq: usize) -> Tensor<B, 2> {
        let (states, _) = self.response_states(seq);
        let n = states.len();
        let index = Tensor::<B, 1, Int>::from_data(TensorData::new(states, [n]), &hidden.device());
        hidden.select(0, index) // [batch * width, hidden]
    }

    fn forward_states<B: ModelBackend>(&self, model: &Model<B>) -> Tensor<B, 2> {
        let batch = self.token_batch(model.config.pad_token_id.unwrap_or(0));
        let hidden = model.forward_hidden(&batch, None); // [batch * seq, hidden]
        self.select_states(hidden, batch.seq)
    }

    /// A training forward pass (see `grlo_model::checkpointing`) and the states that predict
    /// the response tokens.
    fn forward_states_training<A: ModelAutodiffBackend>(
        &self,
        model: &Model<A>,
        checkpoint_layers: bool,
    ) -> (Tensor<A, 2>, TrainingForward<A>) {
        let batch = self.token_batch(model.config.pad_token_id.unwrap_or(0));
        let forward = model.forward_training(&batch, checkpoint_layers);
        let states = self.select_states(forward.hidden.clone(), batch.seq);
        (states, forward)
    }
}

/// Log-probabilities of the response tokens under `policy`, `[batch, max_response]` (padding
/// slots hold the log-probability of token 0 at row 0's first state: mask them), and
/// optionally the entropy of the predictive distribution at each, both f32. Computed by the
/// chunked head, whose memory is a chunk of logits whatever the batch; an entropy that the
/// loss does not use costs its forward reduction only (no backward work, no memory).
pub fn response_logprobs<B: ModelBackend>(
    policy: &Model<B>,
    batch: &SequenceBatch,
    with_entropy: bool,
) -> (Tensor<B, 2>, Option<Tensor<B, 2>>) {
    let states = batch.forward_states(policy); // [rows * width, hidden]
    logprobs_of_states(policy, batch, states, with_entropy)
}

/// [`response_logprobs`] for training: the forward pass comes back too, for
/// [`TrainingForward::gradients`].
pub fn response_logprobs_training<A: ModelAutodiffBackend>(
    policy: &Model<A>,
    batch: &SequenceBatch,
    with_entropy: bool,
    checkpoint_layers: bool,
) -> (Tensor<A, 2>, Option<Tensor<A, 2>>, TrainingForward<A>) {
    let (states, forward) = batch.forward_states_training(policy, checkpoint_layers);
    let (logprobs, entropy) = logprobs_of_states(policy, batch, states, with_entropy);
    (logprobs, entropy, forward)
}

/// Log-probabilities (and entropies) of the response tokens from the states predicting them.
fn logprobs_of_states<B: ModelBackend>(
    policy: &Model<B>,
    batch: &SequenceBatch,
    states: Tensor<B, 2>,
    with_entropy: bool,
) -> (Tensor<B, 2>, Option<Tensor<B, 2>>) {
    let width = batch.max_response();
    let rows = batch.len();
    let seq = batch.rows.iter().map(Vec::len).max().unwrap_or(0);
    let (_, targets) = batch.response_states(seq);
    let targets: Vec<u32> = targets.into_iter().map(|t| t as u32).collect();
    let out = policy.token_logprobs(states, &targets, with_entropy); // [rows * width] each
    (
        out.logprobs.reshape([rows, width]),
        out.entropy.map(|entropy| entropy.reshape([rows, width])),
    )
}

/// The critic's value at each response token, `[batch, max_response]`.
pub fn response_values<B: ModelBackend>(critic: &Model<B>, batch: &SequenceBatch) -> Tensor<B, 2> {
    let states = batch.forward_states(critic); // [rows * width, hidden]
    values_of_states(critic, batch, states)
}

/// [`response_values`] for training, with the forward pass.
pub fn response_values_training<A: ModelAutodiffBackend>(
    critic: &Model<A>,
    batch: &SequenceBatch,
    checkpoint_layers: bool,
) -> (Tensor<A, 2>, TrainingForward<A>) {
    let (states, forward) = batch.forward_states_training(critic, checkpoint_layers);
    (values_of_states(critic, batch, states), forward)
}

fn values_of_states<B: ModelBackend>(
    critic: &Model<B>,
    batch: &SequenceBatch,
    states: Tensor<B, 2>,
) -> Tensor<B, 2> {
    critic
        .score_head(states)
        .expect("the critic has a value head")
        .reshape([batch.len(), batch.max_response()])
}

/// Splits items (by their token counts) into consecutive groups whose padded size
/// (`count × longest`) stays within `budget` tokens; an item larger than the budget gets a
/// group of its own.
pub fn split_by_tokens(lengths: &[usize], budget: usize) -> Vec<std::ops::Range<usize>> {
    let mut groups = Vec::new();
    let mut start = 0;
    let mut longest = 0;
    for (i, &len) in lengths.iter().enumerate() {
        let candidate = longest.max(len);
        if i > start && candidate * (i - start + 1) > budget {
            groups.push(start..i);
            start = i;
            longest = len;
        } else {
            longest = candidate;
        }
    }
    if start < lengths.len() {
        groups.push(start..lengths.len());
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_budget_groups_pad_only_to_their_longest() {
        assert_eq!(split_by_tokens(&[4, 4, 4, 4], 8), vec![0..2, 2..4]);
        assert_eq!(split_by_tokens(&[2, 10, 2], 8), vec![0..1, 1..2, 2..3]);
        assert_eq!(split_by_tokens(&[3, 3, 3], 100), vec![0..3]);
        assert!(split_by_tokens(&[], 8).is_empty());
    }

    /// The chunked head's log-probabilities and entropies of the response tokens, and the
    /// gradient of an entropy bonus, against the full logits with `log_softmax` and
    /// [`entropy_from_logits`](crate::loss::entropy_from_logits).
    #[test]
    fn response_logprobs_and_entropies_match_the_full_logits() {
        use burn::backend::Autodiff;
        use burn::tensor::activation::log_softmax;
        use grlo_model::model::to_f32_vec;

        type A = Autodiff<grlo_model::backend::Cpu>;
        let device = Default::default();
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/models/qwen3-tiny");
        let policy = Model::<A>::load(&dir, &device).unwrap();
        let batch = SequenceBatch::new(&[&[1, 2, 3], &[4]], &[&[5, 6], &[7, 8, 9]]);
        let mask = batch.mask::<A>(&device);
        let masked_sum = |x: Tensor<A, 2>| x.mul(mask.clone()).sum();

        let (lp, entropy) = response_logprobs(&policy, &batch, true);
        let entropy = entropy.unwrap();
        let (lp_host, entropy_host) = (to_f32_vec(lp.clone()), to_f32_vec(entropy.clone()));
        let grads = masked_sum(lp).add(masked_sum(entropy)).backward();

        let logits = policy.lm_logits(batch.forward_states(&policy)); // [6, vocab]
        let ref_entropy = crate::loss::entropy_from_logits(logits.clone()).reshape([2, 3]);
        let (_, targets) = batch.response_states(5);
        let targets = Tensor::<A, 2, Int>::from_data(TensorData::new(targets, [6, 1]), &device);
        let ref_lp = log_softmax(logits, 1).gather(1, targets).reshape([2, 3]);
        let ref_grads = masked_sum(ref_lp.clone())
            .add(masked_sum(ref_entropy.clone()))
            .backward();

        let max_diff = |a: &[f32], b: &[f32]| {
            a.iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0f32, f32::max)
        };
        let real = to_f32_vec(mask.clone());
        let only_real =
            |v: Vec<f32>| -> Vec<f32> { v.iter().zip(&real).map(|(x, m)| x * m).collect() };
        let diff = max_diff(&only_real(lp_host), &only_real(to_f32_vec(ref_lp)));
        assert!(diff < 1e-5, "logprobs: max |diff| {diff}");
        let diff = max_diff(
            &only_real(entropy_host),
            &only_real(to_f32_vec(ref_entropy)),
        );
        assert!(diff < 1e-5, "entropies: max |diff| {diff}");
        let head = policy
            .lm_head
            .as_ref()
            .expect("qwen3-tiny has an untied head")
            .val();
        let (ours, theirs) = (
            to_f32_vec(head.grad(&grads).unwrap()),
            to_f32_vec(head.grad(&ref_grads).unwrap()),
        );
        let scale = theirs.iter().fold(1.0f32, |m, x| m.max(x.abs()));
        let diff = max_diff(&ours, &theirs);
        assert!(
            diff < 1e-5 * scale,
            "lm_head gradient: max |diff| {diff} (scale {scale})"
        );
    }

    #[test]
    fn response_states_point_at_the_previous_position() {
        let batch = SequenceBatch::new(&[&[1, 2, 3], &[4]], &[&[5, 6], &[7, 8, 9]]);
        let seq = 5; // rows are 5 and 4 long
        let (states, targets) = batch.response_states(seq);
        // row 0: prompt 3 → states 2, 3, padding; row 1: prompt 1 → states 5, 6, 7
        assert_eq!(states, vec![2, 3, 0, 5, 6, 7]);
        assert_eq!(targets, vec![5, 6, 0, 7, 8, 9]);
    }
}
