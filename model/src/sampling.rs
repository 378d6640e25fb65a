//! Choosing the next token from one row of logits: greedy, or sampled after temperature,
//! top-k and top-p (in that order, as transformers' and vLLM's samplers apply them).
//!
//! Every choice also reports two log-probabilities of the chosen token: under the raw model
//! (`log_softmax(logits)`, the behaviour log-prob the learner needs) and under the
//! distribution actually sampled from (after temperature and truncation).

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use rand_chacha::ChaCha8Rng;

use crate::error::{Error, Result};
use crate::model::to_f32_vec;
use crate::params::uniform_open;

/// How to pick tokens.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// Always take the most likely token (also when `temperature` is 0).
    pub greedy: bool,
    pub temperature: f32,
    /// Keep the smallest set of most likely tokens whose probability reaches `top_p`; 1 keeps all.
    pub top_p: f32,
    /// Keep the `top_k` most likely tokens; 0 keeps all.
    pub top_k: usize,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            greedy: false,
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            seed: 0,
        }
    }
}

impl SamplingParams {
    pub fn greedy() -> Self {
        SamplingParams {
            greedy: true,
            ..Self::default()
        }
    }

    pub fn is_greedy(&self) -> bool {
        self.greedy || self.temperature == 0.0
    }

    /// Rejects values no sampler accepts, naming the parameter.
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(Error::InvalidInput(format!(
                "temperature must be a finite number >= 0, got {}",
                self.temperature
            )));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::InvalidInput(format!(
                "top_p must be in (0, 1], got {}",
                self.top_p
            )));
        }
        Ok(())
    }
}

/// One chosen token with its log-probabilities.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Choice {
    pub token: u32,
    /// `log p(token)` under the raw model distribution.
    pub logprob: f32,
    /// `log q(token)` under the distribution sampled from (0 for greedy).
    pub sampling_logprob: f32,
}

/// Picks a token for every row of `logits` (`[rows, vocab]`), row `i` drawing from `rngs[i]`.
///
/// Everything runs on the device, and one `[rows, 3]` tensor (token, raw log-prob, sampling
/// log-prob) comes back to the host: one synchronisation per step, which matters on a GPU
/// with a large vocabulary. Each row draws one uniform number from its own stream (so a row's
/// choice does not depend on the others), and the choices are those of the host reference
/// [`choose`] for the same draws: inverse-CDF sampling in vocabulary order after top-k (ties at
/// the k-th value kept), in order of decreasing probability after top-p. The work is O(vocab)
/// per row ([`inverse_cdf`]), plus a sort when `top_p < 1`.
pub fn choose_rows<B: Backend>(
    logits: Tensor<B, 2>,
    params: &SamplingParams,
    rngs: &mut [&mut ChaCha8Rng],
) -> Vec<Choice> {
    let [rows, vocab] = logits.dims();
    let device = logits.device();
    let log_z = log_sum_exp_rows(logits.clone()); // [rows, 1]
    let (tokens, sampling_logprobs) = if params.is_greedy() {
        let tokens = logits.clone().argmax(1); // [rows, 1]
        let zeros = Tensor::<B, 2>::zeros([rows, 1], (&device, logits.dtype()));
        (tokens, zeros)
    } else {
        let draws: Vec<f32> = rngs
            .iter_mut()
            .map(|rng| uniform_open(rng) as f32)
            .collect();
        let u = Tensor::<B, 2>::from_data(TensorData::new(draws, [rows, 1]), &device);
        sample_rows(logits.clone(), params, u)
    };
    let logprobs = logits.gather(1, tokens.clone()).sub(log_z); // [rows, 1]
    // Token ids are exact in f32 (below 2^24).
    let packed = Tensor::cat(vec![tokens.float(), logprobs, sampling_logprobs], 1); // [rows, 3]
    let values = to_f32_vec(packed);
    (0..rows)
        .map(|r| Choice {
            token: (values[r * 3] as u32).min(vocab as u32 - 1),
            logprob: values[r * 3 + 1],
            sampling_logprob: values[r * 3 + 2],
        })
        .collect()
}

/// Draws a token per row at uniform `u` (`[rows, 1]`) from the temperature-scaled, truncated
/// distribution: the tokens `[rows, 1]` and their log-probabilities under it `[rows, 1]`.
fn sample_rows<B: Backend>(
    logits: Tensor<B, 2>,
    params: &SamplingParams,
    u: Tensor<B, 2>,
) -> (Tensor<B, 2, Int>, Tensor<B, 2>) {
    let [rows, vocab] = logits.dims();
    let device = logits.device();
    let mut scaled = logits.div_scalar(params.temperature); // [rows, vocab]
    if params.top_k > 0 && params.top_k < vocab {
        // Keep every token at least as likely as the k-th (ties kept).
        let kth = scaled
            .clone()
            .topk(params.top_k, 1)
            .narrow(1, params.top_k - 1, 1); // [rows, 1]
        let below = scaled.clone().lower(kth.repeat_dim(1, vocab));
        scaled = scaled.mask_fill(below, f32::NEG_INFINITY);
    }
    let log_probs = scaled
        .clone()
        .sub(log_sum_exp_rows(scaled).repeat_dim(1, vocab)); // [rows, vocab]
    if params.top_p >= 1.0 {
        let tokens = inverse_cdf(log_probs.clone().exp(), u);
        let chosen = log_probs.gather(1, tokens.clone());
        return (tokens, chosen);
    }
    // Top-p: the most likely tokens until their mass reaches p (the one crossing it kept),
    // renormalised, sampled in order of decreasing probability.
    let (sorted, order) = log_probs.sort_descending_with_indices(1); // [rows, vocab]
    let probs = sorted.clone().exp();
    let p = Tensor::<B, 2>::full([rows, 1], params.top_p, (&device, probs.dtype()));
    let last_kept = inverse_cdf(probs.clone(), p); // [rows, 1]
    let positions = Tensor::<B, 1, Int>::arange(0..vocab as i64, &device)
        .unsqueeze::<2>()
        .repeat_dim(0, rows); // [rows, vocab]
    let dropped = positions.greater(last_kept.repeat_dim(1, vocab));
    let kept = probs.mask_fill(dropped, 0.0);
    let mass = kept.clone().sum_dim(1); // [rows, 1]
    let index = inverse_cdf(kept, u.mul(mass.clone())); // [rows, 1], in sorted order
    let tokens = order.gather(1, index.clone());
    let chosen = sorted.gather(1, index).sub(mass.log());
    (tokens, chosen)
}

/// Per row of `probs` (`[rows, vocab]`), the first token whose cumulative probability exceeds
/// the row's `u` (`[rows, 1]`): `[rows, 1]`.
///
/// In two levels, so that no cumulative sum runs over the whole vocabulary (Burn's CUDA
/// `cumsum` is a naive kernel, quadratic in the length: ~10¹⁰ reads per row at a vocabulary of
/// 151,936): the vocabulary is cut into blocks of about √vocab tokens, the block holding `u`
/// is found from the blocks' cumulative masses, and the token within it from that block's.
/// The work is O(vocab) per row, with cumulative sums over √vocab elements only.
pub fn inverse_cdf<B: Backend>(probs: Tensor<B, 2>, u: Tensor<B, 2>) -> Tensor<B, 2, Int> {
    let [rows, vocab] = probs.dims();
    let device = probs.device();
    let block = ((vocab as f64).sqrt().ceil() as usize)
        .next_power_of_two()
        .max(1);
    let blocks = vocab.div_ceil(block);
    let padded = blocks * block;
    let probs = if padded > vocab {
        let zeros = Tensor::<B, 2>::zeros([rows, padded - vocab], (&device, probs.dtype()));
        Tensor::cat(vec![probs, zeros], 1) // [rows, padded]
    } else {
        probs
    };
    let mass = probs
        .clone()
        .reshape([rows, blocks, block])
        .sum_dim(2)
        .reshape([rows, blocks]);
    let cumulative = mass.clone().cumsum(1); // [rows, blocks]
    let first_block = cumulative
        .clone()
        .lower(u.clone().repeat_dim(1, blocks))
        .int()
        .sum_dim(1)
        .clamp_max(blocks as i64 - 1); // [rows, 1]
    // The mass before the chosen block, and u's place within it.
    let before = cumulative
        .gather(1, first_block.clone())
        .sub(mass.gather(1, first_block.clone())); // [rows, 1]
    let within = u.sub(before);
    let offsets = Tensor::<B, 1, Int>::arange(0..block as i64, &device).unsqueeze::<2>(); // [1, block]
    let columns = first_block
        .clone()
        .mul_scalar(block as i64)
        .repeat_dim(1, block)
        .add(offsets.repeat_dim(0, rows)); // [rows, block]
    let in_block = probs.gather(1, columns).cumsum(1); // [rows, block]
    let position = in_block
        .lower(within.repeat_dim(1, block))
        .int()
        .sum_dim(1)
        .clamp_max(block as i64 - 1);
    first_block
        .mul_scalar(block as i64)
        .add(position)
        .clamp_max(vocab as i64 - 1)
}

/// `log Σ exp` over each row of `[rows, n]`, stably: `[rows, 1]`.
fn log_sum_exp_rows<B: Backend>(x: Tensor<B, 2>) -> Tensor<B, 2> {
    let n = x.dims()[1];
    let max = x.clone().max_dim(1); // [rows, 1]
    let shifted = x.sub(max.clone().repeat_dim(1, n));
    shifted.exp().sum_dim(1).log().add(max)
}

/// Picks a token from `logits` (one row, the whole vocabulary).
pub fn choose(logits: &[f32], params: &SamplingParams, rng: &mut ChaCha8Rng) -> Choice {
    let log_z = log_sum_exp(logits.iter().copied());
    if params.is_greedy() {
        let token = argmax(logits);
        return Choice {
            token: token as u32,
            logprob: (logits[token] as f64 - log_z) as f32,
            sampling_logprob: 0.0,
        };
    }

    let inv_t = 1.0 / params.temperature as f64;
    // Candidates as (token, scaled logit), most likely first once truncated.
    let mut candidates: Vec<(u32, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i as u32, l as f64 * inv_t))
        .collect();
    if params.top_k > 0 && params.top_k < candidates.len() {
        keep_top_k(&mut candidates, params.top_k);
    }
    let mut probs = softmax(&candidates);
    if params.top_p < 1.0 {
        keep_top_p(&mut candidates, &mut probs, params.top_p as f64);
    }

    let u = uniform_open(rng);
    let mut cumulative = 0.0;
    let mut picked = candidates.len() - 1;
    for (i, p) in probs.iter().enumerate() {
        cumulative += p;
        if u < cumulative {
            picked = i;
            break;
        }
    }
    let token = candidates[picked].0;
    Choice {
        token,
        logprob: (logits[token as usize] as f64 - log_z) as f32,
        sampling_logprob: probs[picked].ln() as f32,
    }
}

/// The index of the largest value (the first one on ties, as `torch.argmax`).
pub fn argmax(values: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] {
            best = i;
        }
    }
    best
}

/// `log Σ exp(x)`, computed stably in f64.
pub fn log_sum_exp(values: impl Iterator<Item = f32> + Clone) -> f64 {
    let max = values.clone().fold(f32::NEG_INFINITY, f32::max) as f64;
    if max == f64::NEG_INFINITY {
        return max;
    }
    max + values.map(|v| (v as f64 - max).exp()).sum::<f64>().ln()
}

/// Keeps every candidate whose logit is at least the k-th largest (ties kept, as
/// transformers' `TopKLogitsWarper`).
fn keep_top_k(candidates: &mut Vec<(u32, f64)>, k: usize) {
    let mut logits: Vec<f64> = candidates.iter().map(|c| c.1).collect();
    let (_, kth, _) = logits.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
    let threshold = *kth;
    candidates.retain(|c| c.1 >= threshold);
}

fn softmax(candidates: &[(u32, f64)]) -> Vec<f64> {
    let max = candidates
        .iter()
        .map(|c| c.1)
        .fold(f64::NEG_INFINITY, f64::max);
    let exps: Vec<f64> = candidates.iter().map(|c| (c.1 - max).exp()).collect();
    let total: f64 = exps.iter().sum();
    exps.into_iter().map(|e| e / total).collect()
}

/// Keeps the most likely candidates until their mass reaches `top_p` (the token that crosses
/// it included), sorted most likely first, and renormalises.
fn keep_top_p(candidates: &mut Vec<(u32, f64)>, probs: &mut Vec<f64>, top_p: f64) {
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    // Sort only as many as needed: the top `m`, doubling until they hold `top_p` of the mass.
    let mut m = 64.min(order.len());
    loop {
        if m < order.len() {
            order.select_nth_unstable_by(m - 1, |&a, &b| probs[b].total_cmp(&probs[a]));
        }
        order[..m].sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
        let mut mass = 0.0;
        let kept = order[..m].iter().position(|&i| {
            mass += probs[i];
            mass >= top_p
        });
        if let Some(last) = kept {
            order.truncate(last + 1);
            break;
        }
        if m == order.len() {
            break; // rounding: the whole set is kept
        }
        m = (m * 2).min(order.len());
    }
    let total: f64 = order.iter().map(|&i| probs[i]).sum();
    *candidates = order.iter().map(|&i| candidates[i]).collect();
    *probs = order.iter().map(|&i| probs[i] / total).collect();
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::SeedableRng;

    fn rng() -> ChaCha8Rng {
        ChaCha8Rng::seed_from_u64(7)
    }

    #[test]
    fn greedy_takes_the_first_maximum_and_reports_the_raw_logprob() {
        let logits = [1.0, 3.0, 3.0, -2.0];
        let choice = choose(&logits, &SamplingParams::greedy(), &mut rng());
        assert_eq!(choice.token, 1);
        let z: f64 = logits.iter().map(|l| (*l as f64).exp()).sum();
        assert!((choice.logprob as f64 - (3.0 - z.ln())).abs() < 1e-6);
        assert_eq!(choice.sampling_logprob, 0.0);
    }

    #[test]
    fn top_k_one_is_greedy_with_certainty() {
        let logits = [0.5, 2.0, 1.0];
        let params = SamplingParams {
            top_k: 1,
            ..SamplingParams::default()
        };
        for _ in 0..20 {
            let c = choose(&logits, &params, &mut rng());
            assert_eq!(c.token, 1);
            assert_eq!(c.sampling_logprob, 0.0);
        }
    }

    #[test]
    fn top_p_keeps_the_smallest_set_reaching_p() {
        // probabilities 0.5, 0.3, 0.2 (logits are their logs)
        let logits = [0.5f32.ln(), 0.3f32.ln(), 0.2f32.ln()];
        let params = SamplingParams {
            top_p: 0.7,
            seed: 1,
            ..SamplingParams::default()
        };
        let mut r = rng();
        let mut seen = [0usize; 3];
        for _ in 0..2000 {
            let c = choose(&logits, &params, &mut r);
            seen[c.token as usize] += 1;
            // renormalised over {0, 1}: 0.5 / 0.8 and 0.3 / 0.8
            let expected = if c.token == 0 { 0.625f64 } else { 0.375 };
            assert!((c.sampling_logprob as f64 - expected.ln()).abs() < 1e-6);
        }
        assert_eq!(seen[2], 0, "token 2 lies outside the top-p set");
        let frac = seen[0] as f64 / 2000.0;
        assert!((frac - 0.625).abs() < 0.05, "{frac}");
    }

    #[test]
    fn temperature_sharpens_and_the_sampling_logprob_follows_it() {
        let logits = [0.0f32, 1.0];
        let params = SamplingParams {
            temperature: 0.5,
            ..SamplingParams::default()
        };
        let c = choose(&logits, &params, &mut rng());
        let scaled = [0.0f64, 2.0];
        let z = scaled.iter().map(|s| s.exp()).sum::<f64>().ln();
        let expected = scaled[c.token as usize] - z;
        assert!((c.sampling_logprob as f64 - expected).abs() < 1e-6);
        let raw_z = (1.0f64 + 1f64.exp()).ln();
        assert!((c.logprob as f64 - (logits[c.token as usize] as f64 - raw_z)).abs() < 1e-6);
    }

    #[test]
    fn the_same_seed_gives_the_same_tokens() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let params = SamplingParams::default();
        let draw = || {
            let mut r = rng();
            (0..30)
                .map(|_| choose(&logits, &params, &mut r).token)
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(), draw());
    }

    #[test]
    fn device_choice_agrees_with_the_host_reference() {
        use crate::backend::Cpu;
        let vocab = 50;
        let rows: Vec<Vec<f32>> = (0..4)
            .map(|r| {
                (0..vocab)
                    .map(|i| ((i * 7 + r * 3) as f32 * 0.37).sin() * 3.0)
                    .collect()
            })
            .collect();
        let flat: Vec<f32> = rows.concat();
        let tensor = || {
            Tensor::<Cpu, 2>::from_data(
                TensorData::new(flat.clone(), [4, vocab]),
                &Default::default(),
            )
        };
        // Greedy: the same tokens and log-probs.
        let mut rngs: Vec<ChaCha8Rng> = (0..4).map(ChaCha8Rng::seed_from_u64).collect();
        let mut refs: Vec<&mut ChaCha8Rng> = rngs.iter_mut().collect();
        let device = choose_rows(tensor(), &SamplingParams::greedy(), &mut refs);
        for (r, row) in rows.iter().enumerate() {
            let host = choose(row, &SamplingParams::greedy(), &mut rng());
            assert_eq!(device[r].token, host.token);
            assert!((device[r].logprob - host.logprob).abs() < 1e-5);
        }
        // Sampling: the same draws pick the same tokens, with the same log-probs, plain and
        // truncated by top-k, top-p and both.
        for (top_k, top_p) in [(0, 1.0), (5, 1.0), (0, 0.8), (12, 0.9), (1, 1.0)] {
            let params = SamplingParams {
                temperature: 0.7,
                top_k,
                top_p,
                ..SamplingParams::default()
            };
            for seed in 0..20 {
                let mut device_rngs: Vec<ChaCha8Rng> = (0..4)
                    .map(|i| ChaCha8Rng::seed_from_u64(seed * 10 + i))
                    .collect();
                let mut refs: Vec<&mut ChaCha8Rng> = device_rngs.iter_mut().collect();
                let device = choose_rows(tensor(), &params, &mut refs);
                for (r, row) in rows.iter().enumerate() {
                    let host = choose(
                        row,
                        &params,
                        &mut ChaCha8Rng::seed_from_u64(seed * 10 + r as u64),
                    );
                    let case = format!("top_k {top_k} top_p {top_p} seed {seed} row {r}");
                    assert_eq!(device[r].token, host.token, "{case}");
                    assert!((device[r].logprob - host.logprob).abs() < 1e-5, "{case}");
                    let diff = (device[r].sampling_logprob - host.sampling_logprob).abs();
                    assert!(diff < 1e-5, "{case}: sampling log-prob off by {diff}");
                }
            }
        }
    }

    #[test]
    fn two_level_inverse_cdf_finds_the_token_a_flat_cumulative_sum_finds() {
        use crate::backend::Cpu;
        use rand_core::RngCore;
        let mut r = rng();
        for vocab in [1usize, 2, 7, 64, 1000, 5003] {
            let rows = 6;
            let mut probs = Vec::with_capacity(rows * vocab);
            for _ in 0..rows {
                let raw: Vec<f64> = (0..vocab)
                    .map(|_| (r.next_u32() % 1000) as f64 + 1.0)
                    .collect();
                let total: f64 = raw.iter().sum();
                probs.extend(raw.iter().map(|p| (p / total) as f32));
            }
            let mut draws: Vec<f32> = (0..rows - 1).map(|_| uniform_open(&mut r) as f32).collect();
            draws.push(0.999_999); // the last token's edge
            let device = Default::default();
            let t =
                Tensor::<Cpu, 2>::from_data(TensorData::new(probs.clone(), [rows, vocab]), &device);
            let u = Tensor::<Cpu, 2>::from_data(TensorData::new(draws.clone(), [rows, 1]), &device);
            let tokens: Vec<i64> = inverse_cdf(t, u)
                .into_data()
                .convert::<i64>()
                .into_vec()
                .unwrap();
            for row in 0..rows {
                let p = &probs[row * vocab..(row + 1) * vocab];
                // The reference: a flat running sum in f64.
                let mut cumulative = 0f64;
                let expected = p
                    .iter()
                    .position(|&x| {
                        cumulative += x as f64;
                        cumulative > draws[row] as f64
                    })
                    .unwrap_or(vocab - 1);
                let got = tokens[row] as usize;
                // Float rounding may move a draw that sits on a boundary by one token.
                let near_boundary = {
                    let before: f64 = p[..got.min(expected)].iter().map(|&x| x as f64).sum();
                    (before - draws[row] as f64).abs() < 1e-5
                        || (before + p[got.min(expected)] as f64 - draws[row] as f64).abs() < 1e-5
                };
                assert!(
                    got == expected || near_boundary,
                    "vocab {vocab} row {row}: token {got}, expected {expected}"
                );
            }
        }
    }

    #[test]
    fn invalid_parameters_are_named() {
        let bad_p = SamplingParams {
            top_p: 0.0,
            ..SamplingParams::default()
        };
        assert!(bad_p.validate().unwrap_err().to_string().contains("top_p"));
        let bad_t = SamplingParams {
            temperature: -1.0,
            ..SamplingParams::default()
        };
        assert!(
            bad_t
                .validate()
                .unwrap_err()
                .to_string()
                .contains("temperature")
        );
    }
}
