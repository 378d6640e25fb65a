//! Advantage estimators and token rewards, computed on the host over ragged rows.
//!
//! Each sample is one response. Per-token quantities are `&[Vec<f32>]` with one row per
//! sample whose length is that response's length (no padding); per-sample quantities
//! (`scores`, `group_ids`, `lengths`) are slices of the batch size. `group_ids[i]` names
//! the prompt sample `i` answers: the `n` samples of one prompt share an id, ids need not be
//! contiguous or sorted.
//!
//! The semantics follow verl's `verl/trainer/ppo/core_algos.py` (functions named in each
//! item's documentation); statistics are accumulated in `f64` and rounded to `f32` at the
//! end. Every function accepts zero-length rows (they get empty output rows).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// Added to the variance before the square root when whitening (verl's `masked_whiten`).
pub const WHITEN_EPS: f64 = 1e-8;

/// verl's default `epsilon` of GRPO's `(s - mean) / (std + epsilon)`.
pub const GRPO_EPS: f32 = 1e-6;

/// Which advantage estimator turns rewards into advantages.
///
/// Serialised in kebab-case: `"gae"`, `"grpo"`, `"dr-grpo"`, `"rloo"`,
/// `"reinforce-plus-plus"`, `"reinforce-plus-plus-baseline"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AdvantageEstimator {
    /// Generalised advantage estimation with a critic ([`gae`], then [`whiten`]).
    Gae,
    /// Group-relative, normalised by the group's standard deviation ([`grpo`]).
    Grpo,
    /// Group-relative without the standard deviation ([`dr_grpo`]).
    DrGrpo,
    /// Leave-one-out group baseline ([`rloo`]).
    Rloo,
    /// Discounted returns-to-go whitened over the batch ([`reinforce_plus_plus`]).
    ReinforcePlusPlus,
    /// Group-mean baseline whitened over the batch ([`reinforce_plus_plus_baseline`]).
    ReinforcePlusPlusBaseline,
}

impl AdvantageEstimator {
    /// Whether the estimator needs a value model (only [`AdvantageEstimator::Gae`]).
    pub fn uses_critic(self) -> bool {
        self == AdvantageEstimator::Gae
    }

    /// Whether the estimator compares the samples of one prompt (needs `n >= 2` to be useful).
    pub fn uses_groups(self) -> bool {
        matches!(
            self,
            AdvantageEstimator::Grpo
                | AdvantageEstimator::DrGrpo
                | AdvantageEstimator::Rloo
                | AdvantageEstimator::ReinforcePlusPlusBaseline
        )
    }
}

/// Generalised advantage estimation (verl's `compute_gae_advantage_return`, without the
/// whitening verl applies afterwards: call [`whiten`] on the advantages for that).
///
/// For each row, backwards over `t`:
/// `delta_t = r_t + gamma * V_{t+1} - V_t`, `A_t = delta_t + gamma * lambda * A_{t+1}`,
/// with `V_len = 0` and `A_len = 0` (the last token bootstraps with 0). Returns
/// `(advantages, returns)` with `returns = advantages + values`, both shaped like the input.
///
/// # Panics
/// If `token_rewards` and `values` differ in number of rows or in any row's length.
pub fn gae(
    token_rewards: &[Vec<f32>],
    values: &[Vec<f32>],
    gamma: f32,
    lambda: f32,
) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
    assert_eq!(
        token_rewards.len(),
        values.len(),
        "gae: rewards and values differ in rows"
    );
    let (gamma, lambda) = (f64::from(gamma), f64::from(lambda));
    let mut advantages = Vec::with_capacity(values.len());
    let mut returns = Vec::with_capacity(values.len());
    for (rewards, values) in token_rewards.iter().zip(values) {
        assert_eq!(
            rewards.len(),
            values.len(),
            "gae: a row's rewards and values differ in length"
        );
        let n = rewards.len();
        let mut adv = vec![0f64; n];
        let (mut next_value, mut last_gae) = (0f64, 0f64);
        for t in (0..n).rev() {
            let v = f64::from(values[t]);
            let delta = f64::from(rewards[t]) + gamma * next_value - v;
            last_gae = delta + gamma * lambda * last_gae;
            adv[t] = last_gae;
            next_value = v;
        }
        returns.push(
            adv.iter()
                .zip(values)
                .map(|(a, v)| (a + f64::from(*v)) as f32)
                .collect(),
        );
        advantages.push(adv.into_iter().map(|a| a as f32).collect());
    }
    (advantages, returns)
}

/// Whitens every token of the batch in place (verl's `masked_whiten` over the response mask):
/// `x' = (x - mean) / sqrt(var + 1e-8)`, where `mean` and the unbiased variance
/// (`Σ (x - mean)² / (N - 1)`) are taken over all `N` tokens of all rows. With
/// `shift_mean = false` the mean is added back (`x' + mean`).
///
/// Degenerate batches do not panic (verl raises): with no tokens nothing changes; with one
/// token the variance is taken as 0, so the token becomes 0 (or `mean` when `shift_mean` is
/// false). verl divides the mean by `N + 1e-8`; here it is `Σ x / N` (the difference is
/// below `f32` resolution).
pub fn whiten(rows: &mut [Vec<f32>], shift_mean: bool) {
    let n: usize = rows.iter().map(Vec::len).sum();
    if n == 0 {
        return;
    }
    let count = n as f64;
    let mean = rows.iter().flatten().map(|&x| f64::from(x)).sum::<f64>() / count;
    let var = if n > 1 {
        rows.iter()
            .flatten()
            .map(|&x| (f64::from(x) - mean).powi(2))
            .sum::<f64>()
            / (count - 1.0)
    } else {
        0.0
    };
    let inv_std = 1.0 / (var + WHITEN_EPS).sqrt();
    let back = if shift_mean { 0.0 } else { mean };
    for x in rows.iter_mut().flatten() {
        *x = ((f64::from(*x) - mean) * inv_std + back) as f32;
    }
}

/// Per-group statistics of the scores: count, mean and unbiased standard deviation.
struct GroupStats {
    count: usize,
    sum: f64,
    mean: f64,
    std: f64,
}

fn group_stats(scores: &[f32], group_ids: &[usize]) -> HashMap<usize, GroupStats> {
    assert_eq!(
        scores.len(),
        group_ids.len(),
        "scores and group_ids differ in length"
    );
    let mut groups: HashMap<usize, GroupStats> = HashMap::new();
    for (&s, &g) in scores.iter().zip(group_ids) {
        let e = groups.entry(g).or_insert(GroupStats {
            count: 0,
            sum: 0.0,
            mean: 0.0,
            std: 0.0,
        });
        e.count += 1;
        e.sum += f64::from(s);
    }
    for e in groups.values_mut() {
        e.mean = e.sum / e.count as f64;
    }
    let mut sq: HashMap<usize, f64> = HashMap::new();
    for (&s, &g) in scores.iter().zip(group_ids) {
        *sq.entry(g).or_default() += (f64::from(s) - groups[&g].mean).powi(2);
    }
    for (g, e) in groups.iter_mut() {
        if e.count > 1 {
            e.std = (sq[g] / (e.count - 1) as f64).sqrt();
        }
    }
    groups
}

/// Repeats one value per sample over that sample's tokens; returns `(rows, rows.clone())`.
fn broadcast(per_sample: &[f64], lengths: &[usize]) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
    assert_eq!(
        per_sample.len(),
        lengths.len(),
        "scores and lengths differ in length"
    );
    let rows: Vec<Vec<f32>> = per_sample
        .iter()
        .zip(lengths)
        .map(|(&a, &len)| vec![a as f32; len])
        .collect();
    (rows.clone(), rows)
}

/// GRPO outcome advantage (verl's `compute_grpo_outcome_advantage`).
///
/// For each group of samples sharing a `group_ids` value: `mean` and the unbiased `std`
/// (`torch.std`) of its scores; a group of one gets `mean = 0`, `std = 1` (so its advantage
/// is its raw score, not 0). The sample's advantage is `(s - mean) / (std + eps)` when
/// `norm_by_std`, else `s - mean`, repeated over its `lengths[i]` tokens. Returns
/// `(advantages, returns)` with `returns == advantages` (as verl); rows are `lengths[i]` long.
///
/// # Panics
/// If `scores`, `group_ids` and `lengths` differ in length.
pub fn grpo(
    scores: &[f32],
    group_ids: &[usize],
    lengths: &[usize],
    norm_by_std: bool,
    eps: f32,
) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
    let groups = group_stats(scores, group_ids);
    let per_sample: Vec<f64> = scores
        .iter()
        .zip(group_ids)
        .map(|(&s, g)| {
            let e = &groups[g];
            let (mean, std) = if e.count == 1 {
                (0.0, 1.0)
            } else {
                (e.mean, e.std)
            };
            let centred = f64::from(s) - mean;
            if norm_by_std {
                centred / (std + f64::from(eps))
            } else {
                centred
            }
        })
        .collect();
    broadcast(&per_sample, lengths)
}

/// Dr. GRPO advantage: [`grpo`] without the division by the group's standard deviation
/// (`s - mean`, a group of one keeping `s`). The paper's other change, no per-response length
/// normalisation, is the loss aggregation `seq-mean-token-sum-norm`
/// ([`crate::loss::LossAggregation::SeqMeanTokenSumNorm`]). Returns `(advantages, returns)`,
/// equal, rows `lengths[i]` long.
pub fn dr_grpo(
    scores: &[f32],
    group_ids: &[usize],
    lengths: &[usize],
) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
    grpo(scores, group_ids, lengths, false, 0.0)
}

/// RLOO advantage (verl's `compute_rloo_outcome_advantage`): in a group of `n > 1` samples,
/// `s_i - mean_{j != i} s_j` (verl writes it `(s_i - mean) * n / (n - 1)`); a group of one
/// keeps `s_i`. Repeated over the sample's tokens. Returns `(advantages, returns)`, equal,
/// rows `lengths[i]` long.
///
/// # Panics
/// If `scores`, `group_ids` and `lengths` differ in length.
pub fn rloo(
    scores: &[f32],
    group_ids: &[usize],
    lengths: &[usize],
) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
    let groups = group_stats(scores, group_ids);
    let per_sample: Vec<f64> = scores
        .iter()
        .zip(group_ids)
        .map(|(&s, g)| {
            let e = &groups[g];
            let s = f64::from(s);
            if e.count > 1 {
                s - (e.sum - s) / (e.count - 1) as f64
            } else {
                s
            }
        })
        .collect();
    broadcast(&per_sample, lengths)
}

/// REINFORCE++ advantage (verl's `compute_reinforce_plus_plus_outcome_advantage`):
/// per row the discounted return-to-go `G_t = r_t + gamma * G_{t+1}` (`G_len = 0`), then
/// [`whiten`]ed (mean shifted) over all tokens of the batch. Returns `(advantages, returns)`
/// with `returns = G` (before whitening); both shaped like `token_rewards`.
pub fn reinforce_plus_plus(
    token_rewards: &[Vec<f32>],
    gamma: f32,
) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
    let gamma = f64::from(gamma);
    let returns: Vec<Vec<f32>> = token_rewards
        .iter()
        .map(|rewards| {
            let mut out = vec![0f32; rewards.len()];
            let mut running = 0f64;
            for t in (0..rewards.len()).rev() {
                running = f64::from(rewards[t]) + gamma * running;
                out[t] = running as f32;
            }
            out
        })
        .collect();
    let mut advantages = returns.clone();
    whiten(&mut advantages, true);
    (advantages, returns)
}

/// REINFORCE++-baseline advantage (verl's
/// `compute_reinforce_plus_plus_baseline_outcome_advantage`): `s - mean(group)` (a group of
/// one subtracts 0), repeated over the sample's tokens, then [`whiten`]ed (mean shifted) over
/// all tokens of the batch (so longer responses weigh more in the statistics). Returns
/// `(advantages, returns)`, equal (as verl), rows `lengths[i]` long.
///
/// # Panics
/// If `scores`, `group_ids` and `lengths` differ in length.
pub fn reinforce_plus_plus_baseline(
    scores: &[f32],
    group_ids: &[usize],
    lengths: &[usize],
) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
    let groups = group_stats(scores, group_ids);
    let per_sample: Vec<f64> = scores
        .iter()
        .zip(group_ids)
        .map(|(&s, g)| {
            let e = &groups[g];
            f64::from(s) - if e.count > 1 { e.mean } else { 0.0 }
        })
        .collect();
    let (mut advantages, _) = broadcast(&per_sample, lengths);
    whiten(&mut advantages, true);
    (advantages.clone(), advantages)
}

/// Token rewards from one scalar score per sample (verl's reward placement plus
/// `apply_kl_penalty`): row `i` has `lengths[i]` entries, `scores[i]` on the last one and 0
/// elsewhere, minus `kl_coef * kl[i][t]` on every token when `kl = Some((kl, kl_coef))`
/// (`kl` rows as from [`crate::loss::kl_penalty_host`], `lengths[i]` long). A zero-length
/// row is empty (its score has no token to land on).
///
/// # Panics
/// If `scores` and `lengths` differ in length, or a KL row's length differs from `lengths[i]`.
pub fn token_rewards(
    scores: &[f32],
    lengths: &[usize],
    kl: Option<(&[Vec<f32>], f32)>,
) -> Vec<Vec<f32>> {
    assert_eq!(
        scores.len(),
        lengths.len(),
        "token_rewards: scores and lengths differ in length"
    );
    if let Some((kl, _)) = kl {
        assert_eq!(
            kl.len(),
            lengths.len(),
            "token_rewards: kl and lengths differ in rows"
        );
    }
    scores
        .iter()
        .zip(lengths)
        .enumerate()
        .map(|(i, (&score, &len))| {
            let mut row = vec![0f32; len];
            if let Some(last) = row.last_mut() {
                *last = score;
            }
            if let Some((kl, coef)) = kl {
                assert_eq!(
                    kl[i].len(),
                    len,
                    "token_rewards: kl row {i} has the wrong length"
                );
                for (r, k) in row.iter_mut().zip(&kl[i]) {
                    *r = (f64::from(*r) - f64::from(coef) * f64::from(*k)) as f32;
                }
            }
            row
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &[Vec<f32>], b: &[Vec<f64>]) {
        assert_eq!(a.len(), b.len(), "{a:?} vs {b:?}");
        for (x, y) in a.iter().zip(b) {
            assert_eq!(x.len(), y.len(), "{a:?} vs {b:?}");
            for (p, q) in x.iter().zip(y) {
                assert!((f64::from(*p) - q).abs() < 1e-5, "{a:?} vs {b:?}");
            }
        }
    }

    #[test]
    fn gae_by_hand() {
        // One row r = [0, 1], V = [0.5, 0.25], gamma = 0.5, lambda = 0.5:
        // delta_1 = 1 - 0.25 = 0.75, A_1 = 0.75
        // delta_0 = 0 + 0.5 * 0.25 - 0.5 = -0.375, A_0 = -0.375 + 0.25 * 0.75 = -0.1875
        let (a, r) = gae(
            &[vec![0.0, 1.0], vec![]],
            &[vec![0.5, 0.25], vec![]],
            0.5,
            0.5,
        );
        close(&a, &[vec![-0.1875, 0.75], vec![]]);
        close(&r, &[vec![0.3125, 1.0], vec![]]);
        // gamma = lambda = 1 and zero values: the advantage is the reward-to-go.
        let (a, r) = gae(&[vec![1.0, 2.0, 3.0]], &[vec![0.0; 3]], 1.0, 1.0);
        close(&a, &[vec![6.0, 5.0, 3.0]]);
        close(&r, &[vec![6.0, 5.0, 3.0]]);
    }

    #[test]
    fn whiten_by_hand() {
        // Tokens 1, 2, 3, 4 (two rows): mean 2.5, unbiased var 5/3.
        let mut rows = vec![vec![1.0, 2.0], vec![], vec![3.0, 4.0]];
        whiten(&mut rows, true);
        let s = (5.0f64 / 3.0 + 1e-8).sqrt();
        close(
            &rows,
            &[vec![-1.5 / s, -0.5 / s], vec![], vec![0.5 / s, 1.5 / s]],
        );
        let mut rows = vec![vec![1.0, 2.0, 3.0, 4.0]];
        whiten(&mut rows, false);
        close(
            &rows,
            &[vec![
                2.5 - 1.5 / s,
                2.5 - 0.5 / s,
                2.5 + 0.5 / s,
                2.5 + 1.5 / s,
            ]],
        );
    }

    #[test]
    fn whiten_degenerate_batches_do_not_panic() {
        let mut empty: Vec<Vec<f32>> = vec![vec![], vec![]];
        whiten(&mut empty, true);
        assert_eq!(empty, vec![Vec::<f32>::new(), vec![]]);
        let mut one = vec![vec![], vec![3.0]];
        whiten(&mut one, true);
        assert_eq!(one, vec![vec![], vec![0.0]]);
        let mut one = vec![vec![3.0]];
        whiten(&mut one, false);
        assert_eq!(one, vec![vec![3.0]]);
    }

    #[test]
    fn grpo_by_hand() {
        // Group 7: scores 1 and 0 -> mean 0.5, std sqrt(0.5); group 3 has one sample.
        let scores = [1.0, 2.0, 0.0];
        let ids = [7, 3, 7];
        let lens = [2, 1, 0];
        let std = 0.5f64.sqrt();
        let (a, r) = grpo(&scores, &ids, &lens, true, 1e-6);
        close(
            &a,
            &[
                vec![0.5 / (std + 1e-6); 2],
                vec![2.0 / (1.0 + 1e-6)],
                vec![],
            ],
        );
        assert_eq!(a, r);
        let (a, _) = dr_grpo(&scores, &ids, &lens);
        close(&a, &[vec![0.5; 2], vec![2.0], vec![]]);
        // Equal scores: zero advantage, no division by zero.
        let (a, _) = grpo(&[1.0, 1.0], &[0, 0], &[1, 1], true, 1e-6);
        close(&a, &[vec![0.0], vec![0.0]]);
    }

    #[test]
    fn rloo_by_hand() {
        // Group 0: 1, 2, 6 -> 1 - 4 = -3, 2 - 3.5 = -1.5, 6 - 1.5 = 4.5; group 1 alone keeps 5.
        let (a, r) = rloo(&[1.0, 2.0, 5.0, 6.0], &[0, 0, 1, 0], &[1, 2, 1, 0]);
        close(&a, &[vec![-3.0], vec![-1.5; 2], vec![5.0], vec![]]);
        assert_eq!(a, r);
    }

    #[test]
    fn reinforce_plus_plus_by_hand() {
        // Returns-to-go with gamma 0.5: [0.25, 0.5, 1] and [2]; then whitened.
        let (a, r) = reinforce_plus_plus(&[vec![0.0, 0.0, 1.0], vec![2.0], vec![]], 0.5);
        close(&r, &[vec![0.25, 0.5, 1.0], vec![2.0], vec![]]);
        let (mean, var) = (3.75f64 / 4.0, {
            let m = 3.75f64 / 4.0;
            [0.25, 0.5, 1.0, 2.0]
                .iter()
                .map(|x| (x - m) * (x - m))
                .sum::<f64>()
                / 3.0
        });
        let w = |x: f64| (x - mean) / (var + 1e-8).sqrt();
        close(&a, &[vec![w(0.25), w(0.5), w(1.0)], vec![w(2.0)], vec![]]);
    }

    #[test]
    fn reinforce_plus_plus_baseline_by_hand() {
        // Group 0: 1 and 3 -> -1, +1 (lengths 1 and 3); group 1 alone: 2 (length 0).
        // Tokens -1, 1, 1, 1: mean 0.5, unbiased var 1.
        let (a, r) = reinforce_plus_plus_baseline(&[1.0, 3.0, 2.0], &[0, 0, 1], &[1, 3, 0]);
        let s = (1.0f64 + 1e-8).sqrt();
        close(&a, &[vec![-1.5 / s], vec![0.5 / s; 3], vec![]]);
        assert_eq!(a, r);
    }

    #[test]
    fn token_rewards_by_hand() {
        let rows = token_rewards(&[1.0, 2.0, 3.0], &[3, 0, 1], None);
        assert_eq!(rows, vec![vec![0.0, 0.0, 1.0], vec![], vec![3.0]]);
        let kl = vec![vec![1.0, -2.0, 0.5], vec![], vec![4.0]];
        let rows = token_rewards(&[1.0, 2.0, 3.0], &[3, 0, 1], Some((&kl, 0.1)));
        close(&rows, &[vec![-0.1, 0.2, 0.95], vec![], vec![2.6]]);
    }

    #[test]
    fn estimators_serialise_in_kebab_case() {
        for (e, name) in [
            (AdvantageEstimator::Gae, "gae"),
            (AdvantageEstimator::Grpo, "grpo"),
            (AdvantageEstimator::DrGrpo, "dr-grpo"),
            (AdvantageEstimator::Rloo, "rloo"),
            (AdvantageEstimator::ReinforcePlusPlus, "reinforce-plus-plus"),
            (
                AdvantageEstimator::ReinforcePlusPlusBaseline,
                "reinforce-plus-plus-baseline",
            ),
        ] {
            assert_eq!(serde_json::to_string(&e).unwrap(), format!("\"{name}\""));
            assert_eq!(
                serde_json::from_str::<AdvantageEstimator>(&format!("\"{name}\"")).unwrap(),
                e
            );
        }
        assert!(AdvantageEstimator::Gae.uses_critic() && !AdvantageEstimator::Grpo.uses_critic());
        assert!(
            AdvantageEstimator::Rloo.uses_groups()
                && !AdvantageEstimator::ReinforcePlusPlus.uses_groups()
        );
    }
}
