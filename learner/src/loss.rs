//! Policy-gradient, critic and auxiliary losses as Burn tensor functions, generic over the
//! backend and differentiated under `Autodiff`.
//!
//! Per-token inputs are `[batch, len]` tensors padded on the right, with a float `mask`
//! (1 for real response tokens, 0 for padding). Padding positions never reach a loss or a
//! metric, whatever they hold (finite or not in the forward pass).
//!
//! Micro-batching: a mini-batch (one optimizer step) may be split into micro-batches whose
//! losses are back-propagated separately and whose gradients add up. Every aggregation
//! therefore divides by the denominators of the **whole mini-batch**
//! ([`AggregationScale`]), so the micro-batch losses sum to the mini-batch loss; with one
//! micro-batch that is the whole mini-batch, each mode equals verl's `agg_loss`.
//!
//! Semantics follow verl's `verl/trainer/ppo/core_algos.py` and `verl/utils/torch_functional.py`.

use grlo_model::backend::ModelBackend;
use std::ops::AddAssign;

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

/// verl's clamp of `log π - log π_old` before `exp` (and of the KL estimators' log-ratio).
pub const LOG_RATIO_BOUND: f32 = 20.0;

/// How a `[batch, len]` matrix of per-token losses becomes one scalar (verl's
/// `loss_agg_mode`). Serialised in kebab-case: `"token-mean"`, `"seq-mean-token-sum"`,
/// `"seq-mean-token-mean"`, `"seq-mean-token-sum-norm"`. The formulas are on [`aggregate`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LossAggregation {
    /// Mean over all real tokens of the mini-batch.
    TokenMean,
    /// Sum over each sequence's tokens, mean over sequences.
    SeqMeanTokenSum,
    /// Mean over each sequence's tokens, mean over sequences.
    SeqMeanTokenMean,
    /// Sum over all tokens divided by a constant length (Dr. GRPO; no division by sequences).
    SeqMeanTokenSumNorm,
}

/// The denominators of the whole mini-batch, shared by all its micro-batches.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AggregationScale {
    /// The aggregation mode.
    pub mode: LossAggregation,
    /// Real (mask = 1) tokens in the mini-batch; the `token-mean` denominator.
    pub total_tokens: f32,
    /// Sequences with at least one real token in the mini-batch; the `seq-mean-*`
    /// denominator (verl excludes fully masked sequences).
    pub total_sequences: f32,
    /// The constant of `seq-mean-token-sum-norm`: verl's `loss_scale_factor`, by default the
    /// padded response width (`loss_mask.shape[-1]`, i.e. the maximum response length).
    pub norm_length: f32,
}

impl AggregationScale {
    /// The denominators of a mini-batch whose sequences have `lengths` real tokens each:
    /// `total_tokens = Σ lengths`, `total_sequences = #{lengths > 0}`, and `norm_length` as
    /// given (verl's default is the maximum response length; keep it constant over training).
    pub fn from_lengths(mode: LossAggregation, lengths: &[usize], norm_length: f32) -> Self {
        AggregationScale {
            mode,
            total_tokens: lengths.iter().sum::<usize>() as f32,
            total_sequences: lengths.iter().filter(|&&l| l > 0).count() as f32,
            norm_length,
        }
    }
}

/// A denominator that is never 0 (an empty mini-batch has a zero numerator anyway).
fn denominator(x: f32) -> f32 {
    if x > 0.0 { x } else { 1.0 }
}

/// `loss · mask`, with padding positions forced to 0 first (verl's `masked_sum`), `[b, l]`.
fn masked<B: ModelBackend>(loss: Tensor<B, 2>, mask: Tensor<B, 2>) -> Tensor<B, 2> {
    let padding = mask.clone().equal_elem(0.0);
    loss.mask_fill(padding, 0.0) * mask
}

/// Aggregates per-token losses `loss: [b, l]` under `mask: [b, l]` into a scalar `[1]`, with
/// the denominators of the whole mini-batch (`scale`):
///
/// - `token-mean`: `Σ_{i,t} loss·mask / total_tokens`
/// - `seq-mean-token-sum`: `Σ_i Σ_t loss·mask / total_sequences`
/// - `seq-mean-token-mean`: `Σ_i [Σ_t loss·mask / (Σ_t mask + 1e-8)] / total_sequences`
///   (the per-sequence length is the row's own, so it is local to the micro-batch)
/// - `seq-mean-token-sum-norm`: `Σ_{i,t} loss·mask / norm_length` — exactly verl's
///   `agg_loss`, which does **not** divide by the number of sequences (despite the name);
///   for the Dr. GRPO paper's `1/G` set `norm_length = max_len · G`.
///
/// With one micro-batch equal to the mini-batch and `scale` from
/// [`AggregationScale::from_lengths`] (`norm_length` = padded width), each mode equals
/// verl's `agg_loss`. A zero denominator is replaced by 1.
pub fn aggregate<B: ModelBackend>(
    loss: Tensor<B, 2>,
    mask: Tensor<B, 2>,
    scale: &AggregationScale,
) -> Tensor<B, 1> {
    let masked_loss = masked(loss, mask.clone());
    match scale.mode {
        LossAggregation::TokenMean => masked_loss
            .sum()
            .div_scalar(denominator(scale.total_tokens)),
        LossAggregation::SeqMeanTokenSum => masked_loss
            .sum()
            .div_scalar(denominator(scale.total_sequences)),
        LossAggregation::SeqMeanTokenMean => {
            let lengths = mask.sum_dim(1).add_scalar(1e-8); // [b, 1]
            (masked_loss.sum_dim(1) / lengths)
                .sum()
                .div_scalar(denominator(scale.total_sequences))
        }
        LossAggregation::SeqMeanTokenSumNorm => {
            masked_loss.sum().div_scalar(denominator(scale.norm_length))
        }
    }
}

/// Reads several one-element tensors back to the host in one transfer.
fn host_scalars<B: ModelBackend>(scalars: Vec<Tensor<B, 1>>) -> Vec<f32> {
    Tensor::cat(scalars, 0)
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .expect("f32 data after convert")
}

/// The clipping of verl's vanilla PPO policy loss.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct PolicyLossConfig {
    /// Lower clip: the ratio is clamped from below at `1 - clip_low` (verl's `clip_ratio_low`).
    pub clip_low: f32,
    /// Upper clip: the ratio is clamped from above at `1 + clip_high` (verl's
    /// `clip_ratio_high`; equal to `clip_low` for symmetric PPO, larger for DAPO's clip-higher).
    pub clip_high: f32,
    /// Dual-clip constant `c > 1` bounding the loss of negative-advantage tokens by `-A·c`
    /// (verl's `clip_ratio_c`, always on there with default 3); `None` disables it.
    pub clip_ratio_c: Option<f32>,
}

impl Default for PolicyLossConfig {
    /// verl's defaults: symmetric 0.2 clip, dual-clip at 3.
    fn default() -> Self {
        PolicyLossConfig {
            clip_low: 0.2,
            clip_high: 0.2,
            clip_ratio_c: Some(3.0),
        }
    }
}

/// Host-side sums over the real tokens of one micro-batch, to be added over micro-batches
/// (`+=`) and divided by `tokens` for verl's metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PolicyLossMetrics {
    /// Tokens where the clipped surrogate was larger (numerator of verl's `pg_clipfrac`).
    pub clipped_tokens: f32,
    /// Negative-advantage tokens where the dual clip bound the loss (numerator of verl's
    /// `pg_clipfrac_lower`); 0 when dual-clip is off.
    pub dual_clipped_tokens: f32,
    /// `Σ (log π_old - log π) · mask`, with the log-ratio clamped to ±20 as in the loss
    /// (numerator of verl's `ppo_kl`).
    pub approx_kl_sum: f32,
    /// Real tokens (`Σ mask`).
    pub tokens: f32,
}

impl PolicyLossMetrics {
    /// verl's `pg_clipfrac` (0 without tokens).
    pub fn clip_fraction(&self) -> f32 {
        self.clipped_tokens / denominator(self.tokens)
    }

    /// verl's `pg_clipfrac_lower` (0 without tokens).
    pub fn dual_clip_fraction(&self) -> f32 {
        self.dual_clipped_tokens / denominator(self.tokens)
    }

    /// verl's `ppo_kl` (0 without tokens).
    pub fn approx_kl(&self) -> f32 {
        self.approx_kl_sum / denominator(self.tokens)
    }
}

impl AddAssign for PolicyLossMetrics {
    fn add_assign(&mut self, o: Self) {
        self.clipped_tokens += o.clipped_tokens;
        self.dual_clipped_tokens += o.dual_clipped_tokens;
        self.approx_kl_sum += o.approx_kl_sum;
        self.tokens += o.tokens;
    }
}

/// verl's vanilla PPO policy loss (`compute_policy_loss_vanilla`) on `[b, l]` tensors:
///
/// - `ratio = exp(clamp(logprobs - old_logprobs, -20, 20))`
/// - `L1 = -A·ratio`, `L2 = -A·clamp(ratio, 1 - clip_low, 1 + clip_high)`, `Lc = max(L1, L2)`
/// - dual clip (when `clip_ratio_c = Some(c)`): for `A < 0`, `min(Lc, -A·c)`; else `Lc`
/// - with `is_weights` (`[b, l]`, e.g. [`truncated_is_weights`]; detached here), the
///   per-token loss is multiplied by them (verl's TIS / rollout-IS correction)
/// - then [`aggregate`]d with `scale`: returns `[1]` and the micro-batch's metric sums.
///
/// Only `logprobs` should carry gradients. Reading the metrics synchronises with the device
/// once.
///
/// # Panics
/// If `clip_ratio_c` is `Some(c)` with `c <= 1` (verl asserts the same).
pub fn policy_loss<B: ModelBackend>(
    logprobs: Tensor<B, 2>,
    old_logprobs: Tensor<B, 2>,
    advantages: Tensor<B, 2>,
    mask: Tensor<B, 2>,
    config: &PolicyLossConfig,
    is_weights: Option<Tensor<B, 2>>,
    scale: &AggregationScale,
) -> (Tensor<B, 1>, PolicyLossMetrics) {
    let log_ratio = (logprobs - old_logprobs).clamp(-LOG_RATIO_BOUND, LOG_RATIO_BOUND);
    let ratio = log_ratio.clone().exp();
    let neg_adv = advantages.clone().neg();
    let loss1 = neg_adv.clone() * ratio.clone();
    let loss2 = neg_adv.clone() * ratio.clamp(1.0 - config.clip_low, 1.0 + config.clip_high);
    let clipped = loss2
        .clone()
        .detach()
        .greater(loss1.clone().detach())
        .float();
    // Ties keep `loss1` (the unclipped branch), which carries the gradient.
    let clipped_loss = loss1.max_pair(loss2);
    let (token_loss, dual_clipped) = match config.clip_ratio_c {
        Some(c) => {
            assert!(
                c > 1.0,
                "clip_ratio_c must be > 1 for dual-clip PPO, got {c}"
            );
            let loss3 = neg_adv.mul_scalar(c);
            let negative = advantages.lower_elem(0.0);
            let dual = clipped_loss
                .clone()
                .detach()
                .greater(loss3.clone())
                .bool_and(negative.clone())
                .float();
            let bounded = clipped_loss.clone().min_pair(loss3);
            (clipped_loss.mask_where(negative, bounded), Some(dual))
        }
        None => (clipped_loss, None),
    };
    let token_loss = match is_weights {
        Some(w) => token_loss * w.detach(),
        None => token_loss,
    };
    let loss = aggregate(token_loss, mask.clone(), scale);

    let mask = mask.detach();
    let mut sums = vec![
        masked(clipped, mask.clone()).sum(),
        masked(log_ratio.detach().neg(), mask.clone()).sum(),
        mask.clone().sum(),
    ];
    if let Some(dual) = dual_clipped {
        sums.push(masked(dual, mask).sum());
    }
    let host = host_scalars(sums);
    let metrics = PolicyLossMetrics {
        clipped_tokens: host[0],
        approx_kl_sum: host[1],
        tokens: host[2],
        dual_clipped_tokens: host.get(3).copied().unwrap_or(0.0),
    };
    (loss, metrics)
}

/// Host-side sums of the critic loss over the real tokens of one micro-batch (add with `+=`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ValueLossMetrics {
    /// Tokens where the clipped prediction gave the larger error (numerator of verl's
    /// `vf_clipfrac`).
    pub clipped_tokens: f32,
    /// `Σ (v - R)² · mask` of the unclipped predictions.
    pub sq_error_sum: f32,
    /// Real tokens (`Σ mask`).
    pub tokens: f32,
}

impl ValueLossMetrics {
    /// verl's `vf_clipfrac` (0 without tokens).
    pub fn clip_fraction(&self) -> f32 {
        self.clipped_tokens / denominator(self.tokens)
    }

    /// Mean squared error of the unclipped predictions (0 without tokens).
    pub fn mse(&self) -> f32 {
        self.sq_error_sum / denominator(self.tokens)
    }
}

impl AddAssign for ValueLossMetrics {
    fn add_assign(&mut self, o: Self) {
        self.clipped_tokens += o.clipped_tokens;
        self.sq_error_sum += o.sq_error_sum;
        self.tokens += o.tokens;
    }
}

/// verl's clipped critic loss (`compute_value_loss`) on `[b, l]` tensors:
/// `v_c = clamp(values, old_values - c, old_values + c)`,
/// `0.5 · aggregate(max((values - R)², (v_c - R)²))` with `c = cliprange_value`.
/// `values` are the current predictions (differentiated), `old_values` those the
/// advantages were computed with, `returns` the targets. Returns `[1]` and metric sums.
pub fn value_loss<B: ModelBackend>(
    values: Tensor<B, 2>,
    old_values: Tensor<B, 2>,
    returns: Tensor<B, 2>,
    mask: Tensor<B, 2>,
    cliprange_value: f32,
    scale: &AggregationScale,
) -> (Tensor<B, 1>, ValueLossMetrics) {
    let low = old_values.clone().sub_scalar(cliprange_value);
    let high = old_values.add_scalar(cliprange_value);
    let clipped_values = values.clone().min_pair(high).max_pair(low);
    let loss1 = (values - returns.clone()).square();
    let loss2 = (clipped_values - returns).square();
    let clipped = loss2
        .clone()
        .detach()
        .greater(loss1.clone().detach())
        .float();
    let sq_error = loss1.clone().detach();
    let loss = aggregate(loss1.max_pair(loss2), mask.clone(), scale).mul_scalar(0.5);

    let mask = mask.detach();
    let host = host_scalars(vec![
        masked(clipped, mask.clone()).sum(),
        masked(sq_error, mask.clone()).sum(),
        mask.sum(),
    ]);
    let metrics = ValueLossMetrics {
        clipped_tokens: host[0],
        sq_error_sum: host[1],
        tokens: host[2],
    };
    (loss, metrics)
}

/// Entropy of the categorical distributions of `logits: [n, vocab]`, shape `[n]`:
/// `logsumexp(l) - Σ softmax(l)·l` (verl's `entropy_from_logits`). Computed on logits shifted
/// by their (detached) row maximum `s = l - max(l)`, which changes neither the value nor the
/// gradient, as `log Z - Σ exp(s)·s / Z` with `Z = Σ exp(s)`.
///
/// The training step does not use this: it needs the whole `[n, vocab]` logits (and keeps
/// three more such intermediates under autodiff), where the learner's entropies come from the
/// chunked head ([`grlo_model::lm_head`], through
/// [`response_logprobs`](crate::sequences::response_logprobs)) in the same pass as the
/// log-probabilities. It stays as the formula's reference for tests and for callers that hold
/// logits anyway.
pub fn entropy_from_logits<B: ModelBackend>(logits: Tensor<B, 2>) -> Tensor<B, 1> {
    let [n, _] = logits.dims();
    let shifted = logits.clone() - logits.detach().max_dim(1); // [n, vocab]
    let exp = shifted.clone().exp(); // [n, vocab]
    let z = exp.clone().sum_dim(1); // [n, 1]
    let expected = (exp * shifted).sum_dim(1) / z.clone(); // [n, 1]
    (z.log() - expected).reshape([n])
}

/// Which estimator of `KL(π ‖ π_ref)` from per-token log-probabilities (Schulman's k1/k2/k3).
///
/// Serialised as `"k1"`, `"abs"`, `"k2"`, `"k3"`; verl's names `"kl"`, `"mse"` and
/// `"low_var_kl"` are accepted as aliases of k1, k2 and k3.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KlEstimator {
    /// `logp - ref` (verl `kl`).
    #[serde(alias = "kl")]
    K1,
    /// `|logp - ref|`.
    Abs,
    /// `0.5 · (logp - ref)²` (verl `mse`).
    #[serde(alias = "mse")]
    K2,
    /// `exp(ref - logp) - (ref - logp) - 1`, with `ref - logp` clamped to ±20 and the result
    /// to [-10, 10] (verl `low_var_kl`).
    #[serde(alias = "low_var_kl")]
    K3,
}

/// Per-token KL estimate (verl's `kl_penalty`), same shape as the inputs (`[b, l]`); see
/// [`KlEstimator`] for the formulas. Differentiable in `logprob`.
pub fn kl_penalty<B: ModelBackend>(
    logprob: Tensor<B, 2>,
    ref_logprob: Tensor<B, 2>,
    kind: KlEstimator,
) -> Tensor<B, 2> {
    match kind {
        KlEstimator::K1 => logprob - ref_logprob,
        KlEstimator::Abs => (logprob - ref_logprob).abs(),
        KlEstimator::K2 => (logprob - ref_logprob).square().mul_scalar(0.5),
        KlEstimator::K3 => {
            let kl = (ref_logprob - logprob).clamp(-LOG_RATIO_BOUND, LOG_RATIO_BOUND);
            (kl.clone().exp() - kl).sub_scalar(1.0).clamp(-10.0, 10.0)
        }
    }
}

/// Host version of [`kl_penalty`] over one row (or any equal-length slices), computed in
/// `f64`; used for the KL penalty in the reward ([`crate::advantage::token_rewards`]).
///
/// # Panics
/// If the slices differ in length.
pub fn kl_penalty_host(logprob: &[f32], ref_logprob: &[f32], kind: KlEstimator) -> Vec<f32> {
    assert_eq!(
        logprob.len(),
        ref_logprob.len(),
        "kl_penalty_host: lengths differ"
    );
    logprob
        .iter()
        .zip(ref_logprob)
        .map(|(&lp, &rp)| {
            let d = f64::from(lp) - f64::from(rp);
            let k = match kind {
                KlEstimator::K1 => d,
                KlEstimator::Abs => d.abs(),
                KlEstimator::K2 => 0.5 * d * d,
                KlEstimator::K3 => {
                    let kl = (-d).clamp(-f64::from(LOG_RATIO_BOUND), f64::from(LOG_RATIO_BOUND));
                    (kl.exp() - kl - 1.0).clamp(-10.0, 10.0)
                }
            };
            k as f32
        })
        .collect()
}

/// Stable `softplus(x) = log(1 + exp(x))` as `m + log(exp(x - m) + exp(-m))` with
/// `m = max(x, 0)` detached: no overflow, and the gradient is `σ(x)` everywhere.
fn softplus_stable<B: ModelBackend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let m = x.clone().detach().clamp_min(0.0);
    m.clone() + ((x - m.clone()).exp() + m.neg().exp()).log()
}

/// Bradley–Terry reward-model loss over pairs, `chosen: [n]`, `rejected: [n]` rewards:
/// `mean(-log σ(chosen - rejected)) = mean(softplus(rejected - chosen))`, computed stably;
/// shape `[1]`.
pub fn bradley_terry_loss<B: ModelBackend>(
    chosen: Tensor<B, 1>,
    rejected: Tensor<B, 1>,
) -> Tensor<B, 1> {
    softplus_stable(rejected - chosen).mean()
}

/// Truncated importance-sampling weights for a rollout engine that sampled with slightly
/// different probabilities than the trainer computes (verl's TIS, token level):
/// `min(exp(clamp(old - behaviour, -20, 20)), cap)`, detached, `[b, l]`. Pass them to
/// [`policy_loss`] as `is_weights`.
pub fn truncated_is_weights<B: ModelBackend>(
    old_logprobs: Tensor<B, 2>,
    behaviour_logprobs: Tensor<B, 2>,
    cap: f32,
) -> Tensor<B, 2> {
    (old_logprobs - behaviour_logprobs)
        .clamp(-LOG_RATIO_BOUND, LOG_RATIO_BOUND)
        .exp()
        .clamp_max(cap)
        .detach()
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::TensorData;

    type B = Flex;

    fn t2(rows: &[&[f32]]) -> Tensor<B, 2> {
        let (r, c) = (rows.len(), rows[0].len());
        let flat: Vec<f32> = rows.iter().flat_map(|x| x.iter().copied()).collect();
        Tensor::from_data(TensorData::new(flat, [r, c]), &Default::default())
    }

    fn scalar(t: Tensor<B, 1>) -> f32 {
        t.into_data().convert::<f32>().into_vec::<f32>().unwrap()[0]
    }

    #[test]
    fn aggregation_by_hand() {
        // Rows: [1, 2 | pad 100], [3 | pad, pad] -> lengths 2, 1; width 3.
        let loss = t2(&[&[1.0, 2.0, 100.0], &[3.0, f32::NAN, 7.0]]);
        let mask = t2(&[&[1.0, 1.0, 0.0], &[1.0, 0.0, 0.0]]);
        let expect = [
            (LossAggregation::TokenMean, 6.0 / 3.0),
            (LossAggregation::SeqMeanTokenSum, 6.0 / 2.0),
            (LossAggregation::SeqMeanTokenMean, (1.5 + 3.0) / 2.0),
            (LossAggregation::SeqMeanTokenSumNorm, 6.0 / 3.0),
        ];
        for (mode, want) in expect {
            let scale = AggregationScale::from_lengths(mode, &[2, 1], 3.0);
            let got = scalar(aggregate(loss.clone(), mask.clone(), &scale));
            assert!((got - want).abs() < 1e-6, "{mode:?}: {got} vs {want}");
        }
    }

    #[test]
    fn empty_rows_and_empty_batches_give_finite_losses() {
        let loss = t2(&[&[1.0, 2.0], &[5.0, 5.0]]);
        let mask = t2(&[&[1.0, 1.0], &[0.0, 0.0]]);
        let scale = AggregationScale::from_lengths(LossAggregation::SeqMeanTokenMean, &[2, 0], 2.0);
        assert_eq!(scale.total_sequences, 1.0);
        assert!((scalar(aggregate(loss.clone(), mask, &scale)) - 1.5).abs() < 1e-6);
        let none = t2(&[&[0.0, 0.0], &[0.0, 0.0]]);
        for mode in [
            LossAggregation::TokenMean,
            LossAggregation::SeqMeanTokenSum,
            LossAggregation::SeqMeanTokenMean,
            LossAggregation::SeqMeanTokenSumNorm,
        ] {
            let scale = AggregationScale::from_lengths(mode, &[0, 0], 0.0);
            assert_eq!(scalar(aggregate(loss.clone(), none.clone(), &scale)), 0.0);
        }
    }

    #[test]
    fn policy_loss_by_hand() {
        // ratio e^0.5 ≈ 1.6487 with A = +1: clipped at 1.2 -> loss -1.2 (clipped token).
        // ratio e^-1 ≈ 0.3679 with A = -2: max(0.7358, 1.6) = 1.6 (clipped), below 2·3.
        // ratio e^2 ≈ 7.389 with A = -1: max(7.389, 0.8) = 7.389 > 3 -> dual clip gives 3.
        let lp = t2(&[&[0.5, -1.0, 2.0]]);
        let old = t2(&[&[0.0, 0.0, 0.0]]);
        let adv = t2(&[&[1.0, -2.0, -1.0]]);
        let mask = t2(&[&[1.0, 1.0, 1.0]]);
        let scale = AggregationScale::from_lengths(LossAggregation::TokenMean, &[3], 3.0);
        let config = PolicyLossConfig::default();
        let (loss, m) = policy_loss(lp, old, adv, mask, &config, None, &scale);
        let want = (-1.2 + 1.6 + 3.0) / 3.0;
        assert!((scalar(loss) - want).abs() < 1e-6);
        assert_eq!(
            (m.clipped_tokens, m.dual_clipped_tokens, m.tokens),
            (2.0, 1.0, 3.0)
        );
        assert!((m.approx_kl() - (-0.5 + 1.0 - 2.0) / 3.0).abs() < 1e-6);
    }

    #[test]
    #[should_panic(expected = "clip_ratio_c")]
    fn dual_clip_constant_must_exceed_one() {
        let x = t2(&[&[0.0]]);
        let scale = AggregationScale::from_lengths(LossAggregation::TokenMean, &[1], 1.0);
        let config = PolicyLossConfig {
            clip_ratio_c: Some(1.0),
            ..PolicyLossConfig::default()
        };
        let _ = policy_loss(x.clone(), x.clone(), x.clone(), x, &config, None, &scale);
    }

    #[test]
    fn kl_estimators_by_hand_and_serde_names() {
        let lp = [0.0f32, -1.0];
        let rp = [-1.0f32, 0.0];
        assert_eq!(kl_penalty_host(&lp, &rp, KlEstimator::K1), vec![1.0, -1.0]);
        assert_eq!(kl_penalty_host(&lp, &rp, KlEstimator::Abs), vec![1.0, 1.0]);
        assert_eq!(kl_penalty_host(&lp, &rp, KlEstimator::K2), vec![0.5, 0.5]);
        let k3 = kl_penalty_host(&lp, &rp, KlEstimator::K3);
        let e = std::f64::consts::E;
        assert!((f64::from(k3[0]) - (1.0 / e + 1.0 - 1.0)).abs() < 1e-6);
        assert!((f64::from(k3[1]) - (e - 1.0 - 1.0)).abs() < 1e-6);
        for (k, name) in [
            (KlEstimator::K1, "k1"),
            (KlEstimator::Abs, "abs"),
            (KlEstimator::K2, "k2"),
            (KlEstimator::K3, "k3"),
        ] {
            assert_eq!(serde_json::to_string(&k).unwrap(), format!("\"{name}\""));
        }
        for (alias, k) in [
            ("kl", KlEstimator::K1),
            ("mse", KlEstimator::K2),
            ("low_var_kl", KlEstimator::K3),
        ] {
            assert_eq!(
                serde_json::from_str::<KlEstimator>(&format!("\"{alias}\"")).unwrap(),
                k
            );
        }
        let modes = serde_json::to_string(&[
            LossAggregation::TokenMean,
            LossAggregation::SeqMeanTokenSum,
            LossAggregation::SeqMeanTokenMean,
            LossAggregation::SeqMeanTokenSumNorm,
        ])
        .unwrap();
        assert_eq!(
            modes,
            r#"["token-mean","seq-mean-token-sum","seq-mean-token-mean","seq-mean-token-sum-norm"]"#
        );
    }

    #[test]
    fn bradley_terry_is_stable_for_large_margins() {
        let d = Default::default();
        let chosen =
            Tensor::<B, 1>::from_data(TensorData::new(vec![100.0f32, -100.0, 0.0], [3]), &d);
        let rejected = Tensor::<B, 1>::from_data(TensorData::new(vec![0.0f32, 0.0, 0.0], [3]), &d);
        let got = scalar(bradley_terry_loss(chosen, rejected));
        let want = (0.0 + 100.0 + std::f32::consts::LN_2) / 3.0;
        assert!((got - want).abs() < 1e-4, "{got} vs {want}");
    }

    #[test]
    fn entropy_of_uniform_and_peaked_rows() {
        let logits = t2(&[&[0.0, 0.0, 0.0, 0.0], &[1000.0, 0.0, 0.0, 0.0]]);
        let h = entropy_from_logits(logits)
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .unwrap();
        assert!(
            (h[0] - 4f32.ln()).abs() < 1e-6 && h[1].abs() < 1e-6,
            "{h:?}"
        );
    }
}
