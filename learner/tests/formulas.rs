//! Every advantage estimator and loss against independent numpy references.
//!
//! `tests/reference/formulas.json` is written by `tests/reference/make_formula_reference.py`
//! (numpy, float64, straight from verl's formulas on padded arrays); this file feeds the same
//! inputs to `grlo_learner::{advantage, loss}` and compares to 1e-5 (absolute, relative above
//! 1). It also checks that micro-batches with the mini-batch's `AggregationScale` add up to the
//! mini-batch loss, and that Burn's gradients of the policy and value losses equal the analytic
//! ones.

use burn::backend::{Autodiff, Flex};
use burn::tensor::{Tensor, TensorData};
use grlo_learner::advantage;
use grlo_learner::loss::{
    AggregationScale, KlEstimator, LossAggregation, PolicyLossConfig, PolicyLossMetrics,
    ValueLossMetrics, bradley_terry_loss, entropy_from_logits, kl_penalty, kl_penalty_host,
    policy_loss, truncated_is_weights, value_loss,
};
use grlo_model::backend::ModelBackend;
use serde_json::Value;

type F = Flex;
type AD = Autodiff<Flex>;

const TOLERANCE: f64 = 1e-5;

const MODES: [(LossAggregation, &str); 4] = [
    (LossAggregation::TokenMean, "token-mean"),
    (LossAggregation::SeqMeanTokenSum, "seq-mean-token-sum"),
    (LossAggregation::SeqMeanTokenMean, "seq-mean-token-mean"),
    (
        LossAggregation::SeqMeanTokenSumNorm,
        "seq-mean-token-sum-norm",
    ),
];

const KINDS: [(KlEstimator, &str); 4] = [
    (KlEstimator::K1, "k1"),
    (KlEstimator::Abs, "abs"),
    (KlEstimator::K2, "k2"),
    (KlEstimator::K3, "k3"),
];

const POLICY_CONFIGS: [&str; 4] = ["symmetric", "asymmetric", "dual", "asymmetric_dual_tis"];

fn reference() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/reference/formulas.json");
    let text =
        std::fs::read_to_string(path).expect("formulas.json (run make_formula_reference.py)");
    serde_json::from_str(&text).expect("formulas.json parses")
}

fn f32s(v: &Value) -> Vec<f32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number") as f32)
        .collect()
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number"))
        .collect()
}

fn rows(v: &Value) -> Vec<Vec<f32>> {
    v.as_array()
        .expect("array of rows")
        .iter()
        .map(f32s)
        .collect()
}

fn rows64(v: &Value) -> Vec<Vec<f64>> {
    v.as_array()
        .expect("array of rows")
        .iter()
        .map(f64s)
        .collect()
}

fn usizes(v: &Value) -> Vec<usize> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("integer") as usize)
        .collect()
}

fn num(v: &Value) -> f64 {
    v.as_f64().expect("number")
}

fn close(got: f64, want: f64) -> bool {
    (got - want).abs() <= TOLERANCE * want.abs().max(1.0)
}

fn assert_scalar(got: f32, want: f64, what: &str) {
    assert!(
        close(f64::from(got), want),
        "{what}: got {got}, want {want}"
    );
}

fn assert_rows(got: &[Vec<f32>], want: &[Vec<f64>], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: rows");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.len(), w.len(), "{what}: row {i} length");
        for (t, (a, b)) in g.iter().zip(w).enumerate() {
            assert!(
                close(f64::from(*a), *b),
                "{what}[{i}][{t}]: got {a}, want {b}"
            );
        }
    }
}

/// The first `lengths[i]` entries of each padded row.
fn cut(padded: &[Vec<f32>], lengths: &[usize]) -> Vec<Vec<f32>> {
    padded
        .iter()
        .zip(lengths)
        .map(|(r, &n)| r[..n].to_vec())
        .collect()
}

/// A `[rows, width]` tensor from host rows, each cut or zero-padded to `width`.
fn tensor<B: ModelBackend>(rows: &[Vec<f32>], width: usize) -> Tensor<B, 2> {
    let mut flat = Vec::with_capacity(rows.len() * width);
    for r in rows {
        flat.extend((0..width).map(|t| r.get(t).copied().unwrap_or(0.0)));
    }
    Tensor::from_data(
        TensorData::new(flat, [rows.len(), width]),
        &Default::default(),
    )
}

fn host<B: ModelBackend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .expect("f32")
}

fn host_rows<B: ModelBackend>(t: Tensor<B, 2>) -> Vec<Vec<f32>> {
    let [_, w] = t.dims();
    host(t).chunks(w).map(<[f32]>::to_vec).collect()
}

fn mask_rows(lengths: &[usize], width: usize) -> Vec<Vec<f32>> {
    lengths
        .iter()
        .map(|&n| (0..width).map(|t| if t < n { 1.0 } else { 0.0 }).collect())
        .collect()
}

/// Everything the loss tests need, as host rows.
struct Batch {
    lengths: Vec<usize>,
    width: usize,
    logprobs: Vec<Vec<f32>>,
    old: Vec<Vec<f32>>,
    behaviour: Vec<Vec<f32>>,
    advantages: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
    old_values: Vec<Vec<f32>>,
    returns: Vec<Vec<f32>>,
    tis_cap: f32,
    cliprange_value: f32,
    norm_length: f32,
}

impl Batch {
    fn new(r: &Value) -> Self {
        let i = &r["inputs"];
        Batch {
            lengths: usizes(&i["lengths"]),
            width: i["width"].as_u64().unwrap() as usize,
            logprobs: rows(&i["logprobs"]),
            old: rows(&i["old_logprobs"]),
            behaviour: rows(&i["behaviour_logprobs"]),
            advantages: rows(&i["advantages"]),
            values: rows(&i["values"]),
            old_values: rows(&i["old_values"]),
            returns: rows(&i["returns"]),
            tis_cap: num(&i["tis_cap"]) as f32,
            cliprange_value: num(&i["cliprange_value"]) as f32,
            norm_length: num(&i["norm_length"]) as f32,
        }
    }

    fn scale(&self, mode: LossAggregation) -> AggregationScale {
        AggregationScale::from_lengths(mode, &self.lengths, self.norm_length)
    }

    /// Rows `range` as a micro-batch padded to its own longest response (padding zeros, not
    /// the fixture's junk) or, with `full`, exactly as in the fixture (junk padding, full width).
    fn rows_of(
        &self,
        v: &[Vec<f32>],
        range: std::ops::Range<usize>,
        full: bool,
    ) -> (Vec<Vec<f32>>, usize) {
        if full {
            return (v[range].to_vec(), self.width);
        }
        let width = self.lengths[range.clone()]
            .iter()
            .copied()
            .max()
            .unwrap_or(0)
            .max(1);
        let cut: Vec<Vec<f32>> = v[range.clone()]
            .iter()
            .zip(&self.lengths[range])
            .map(|(r, &n)| r[..n].to_vec())
            .collect();
        (cut, width)
    }

    fn t<B: ModelBackend>(
        &self,
        v: &[Vec<f32>],
        range: std::ops::Range<usize>,
        full: bool,
    ) -> Tensor<B, 2> {
        let (rows, width) = self.rows_of(v, range, full);
        tensor(&rows, width)
    }

    fn mask<B: ModelBackend>(&self, range: std::ops::Range<usize>, full: bool) -> Tensor<B, 2> {
        let m = mask_rows(&self.lengths, self.width);
        self.t(&m, range, full)
    }

    fn config(&self, r: &Value, name: &str) -> (PolicyLossConfig, Option<f32>) {
        let c = &r["expected"]["policy"][name]["config"];
        let config = PolicyLossConfig {
            clip_low: num(&c["clip_low"]) as f32,
            clip_high: num(&c["clip_high"]) as f32,
            clip_ratio_c: c["clip_ratio_c"].as_f64().map(|x| x as f32),
        };
        (config, c["tis_cap"].as_f64().map(|x| x as f32))
    }

    /// The policy loss over rows `range`; `logprobs` given separately so tests can track it.
    fn policy<B: ModelBackend>(
        &self,
        logprobs: Tensor<B, 2>,
        range: std::ops::Range<usize>,
        full: bool,
        config: &PolicyLossConfig,
        tis_cap: Option<f32>,
        mode: LossAggregation,
    ) -> (Tensor<B, 1>, PolicyLossMetrics) {
        let old = self.t::<B>(&self.old, range.clone(), full);
        let weights = tis_cap.map(|cap| {
            truncated_is_weights(
                old.clone(),
                self.t(&self.behaviour, range.clone(), full),
                cap,
            )
        });
        policy_loss(
            logprobs,
            old,
            self.t(&self.advantages, range.clone(), full),
            self.mask(range, full),
            config,
            weights,
            &self.scale(mode),
        )
    }

    fn value<B: ModelBackend>(
        &self,
        values: Tensor<B, 2>,
        range: std::ops::Range<usize>,
        full: bool,
        mode: LossAggregation,
    ) -> (Tensor<B, 1>, ValueLossMetrics) {
        value_loss(
            values,
            self.t(&self.old_values, range.clone(), full),
            self.t(&self.returns, range.clone(), full),
            self.mask(range, full),
            self.cliprange_value,
            &self.scale(mode),
        )
    }
}

#[test]
fn token_rewards_with_and_without_kl_match_numpy() {
    let r = reference();
    let (i, e) = (&r["inputs"], &r["expected"]);
    let lengths = usizes(&i["lengths"]);
    let scores = f32s(&i["scores"]);
    assert_rows(
        &advantage::token_rewards(&scores, &lengths, None),
        &rows64(&e["token_rewards"]),
        "token_rewards",
    );
    let old = cut(&rows(&i["old_logprobs"]), &lengths);
    let reference = cut(&rows(&i["ref_logprobs"]), &lengths);
    let kl: Vec<Vec<f32>> = old
        .iter()
        .zip(&reference)
        .map(|(a, b)| kl_penalty_host(a, b, KlEstimator::K1))
        .collect();
    let got = advantage::token_rewards(&scores, &lengths, Some((&kl, num(&i["kl_coef"]) as f32)));
    assert_rows(
        &got,
        &rows64(&e["token_rewards_kl"]),
        "token_rewards with KL",
    );
}

#[test]
fn gae_and_whitening_match_numpy() {
    let r = reference();
    let (i, e) = (&r["inputs"], &r["expected"]);
    let lengths = usizes(&i["lengths"]);
    let rewards = rows(&i["token_rewards"]);
    let values = cut(&rows(&i["old_values"]), &lengths);
    let (gamma, lambda) = (num(&i["gamma_gae"]) as f32, num(&i["lambda_gae"]) as f32);
    let (mut adv, ret) = advantage::gae(&rewards, &values, gamma, lambda);
    assert_rows(&adv, &rows64(&e["gae"]["advantages"]), "gae advantages");
    assert_rows(&ret, &rows64(&e["gae"]["returns"]), "gae returns");
    advantage::whiten(&mut adv, true);
    assert_rows(
        &adv,
        &rows64(&e["gae"]["whitened"]),
        "gae advantages whitened",
    );
    let mut v = values.clone();
    advantage::whiten(&mut v, false);
    assert_rows(
        &v,
        &rows64(&e["whiten_values_no_shift"]),
        "whiten(shift_mean = false)",
    );
}

#[test]
fn outcome_estimators_match_numpy() {
    let r = reference();
    let (i, e) = (&r["inputs"], &r["expected"]);
    let lengths = usizes(&i["lengths"]);
    let groups = usizes(&i["group_ids"]);
    let scores = f32s(&i["scores"]);
    let eps = num(&i["grpo_eps"]) as f32;

    let (a, ret) = advantage::grpo(&scores, &groups, &lengths, true, eps);
    assert_rows(&a, &rows64(&e["grpo"]), "grpo");
    assert_eq!(a, ret, "grpo returns are the advantages");
    let (a, ret) = advantage::dr_grpo(&scores, &groups, &lengths);
    assert_rows(&a, &rows64(&e["dr_grpo"]), "dr_grpo");
    assert_eq!(a, ret);
    let (a, _) = advantage::grpo(&scores, &groups, &lengths, false, eps);
    assert_rows(&a, &rows64(&e["dr_grpo"]), "grpo without std");
    let (a, ret) = advantage::rloo(&scores, &groups, &lengths);
    assert_rows(&a, &rows64(&e["rloo"]), "rloo");
    assert_eq!(a, ret);
    let (a, ret) = advantage::reinforce_plus_plus_baseline(&scores, &groups, &lengths);
    assert_rows(
        &a,
        &rows64(&e["reinforce_plus_plus_baseline"]),
        "reinforce++ baseline",
    );
    assert_eq!(a, ret);

    let rewards = rows(&i["token_rewards"]);
    let (a, ret) = advantage::reinforce_plus_plus(&rewards, num(&i["gamma_rpp"]) as f32);
    assert_rows(
        &a,
        &rows64(&e["reinforce_plus_plus"]["advantages"]),
        "reinforce++ advantages",
    );
    assert_rows(
        &ret,
        &rows64(&e["reinforce_plus_plus"]["returns"]),
        "reinforce++ returns",
    );
}

#[test]
fn kl_estimators_match_numpy_on_host_and_device() {
    let r = reference();
    let (i, e) = (&r["inputs"], &r["expected"]);
    let lengths = usizes(&i["lengths"]);
    let width = i["width"].as_u64().unwrap() as usize;
    let (lp, old, rp) = (
        rows(&i["logprobs"]),
        rows(&i["old_logprobs"]),
        rows(&i["ref_logprobs"]),
    );
    for (kind, name) in KINDS {
        // Host: per row over the real tokens, as for the KL in the reward.
        let got: Vec<Vec<f32>> = cut(&old, &lengths)
            .iter()
            .zip(&cut(&rp, &lengths))
            .map(|(a, b)| kl_penalty_host(a, b, kind))
            .collect();
        assert_rows(
            &got,
            &rows64(&e["kl_host"][name]),
            &format!("kl_penalty_host {name}"),
        );
        // Tensor: every position of the padded matrices (padding included: it is elementwise).
        let got = host_rows(kl_penalty(
            tensor::<F>(&lp, width),
            tensor::<F>(&rp, width),
            kind,
        ));
        assert_rows(
            &got,
            &rows64(&e["kl_tensor"][name]),
            &format!("kl_penalty {name}"),
        );
    }
}

#[test]
fn truncated_is_weights_match_numpy() {
    let r = reference();
    let b = Batch::new(&r);
    let got = truncated_is_weights(
        b.t::<F>(&b.old, 0..b.lengths.len(), true),
        b.t(&b.behaviour, 0..b.lengths.len(), true),
        b.tis_cap,
    );
    assert_rows(
        &host_rows(got),
        &rows64(&r["expected"]["tis_weights"]),
        "truncated IS weights",
    );
}

#[test]
fn policy_loss_matches_numpy_for_every_clip_and_aggregation() {
    let r = reference();
    let b = Batch::new(&r);
    let all = 0..b.lengths.len();
    for name in POLICY_CONFIGS {
        let (config, tis) = b.config(&r, name);
        let want = &r["expected"]["policy"][name];
        for (mode, mode_name) in MODES {
            let lp = b.t::<F>(&b.logprobs, all.clone(), true);
            let (loss, m) = b.policy(lp, all.clone(), true, &config, tis, mode);
            assert_scalar(
                host(loss)[0],
                num(&want["loss"][mode_name]),
                &format!("policy loss {name} {mode_name}"),
            );
            let wm = &want["metrics"];
            assert_scalar(
                m.clipped_tokens,
                num(&wm["clipped_tokens"]),
                &format!("{name} clipped_tokens"),
            );
            assert_scalar(
                m.dual_clipped_tokens,
                num(&wm["dual_clipped_tokens"]),
                &format!("{name} dual_clipped"),
            );
            assert_scalar(
                m.approx_kl_sum,
                num(&wm["approx_kl_sum"]),
                &format!("{name} approx_kl_sum"),
            );
            assert_scalar(m.tokens, num(&wm["tokens"]), &format!("{name} tokens"));
        }
    }
}

#[test]
fn value_loss_matches_numpy_for_every_aggregation() {
    let r = reference();
    let b = Batch::new(&r);
    let all = 0..b.lengths.len();
    let want = &r["expected"]["value"];
    for (mode, mode_name) in MODES {
        let (loss, m) = b.value(
            b.t::<F>(&b.values, all.clone(), true),
            all.clone(),
            true,
            mode,
        );
        assert_scalar(
            host(loss)[0],
            num(&want["loss"][mode_name]),
            &format!("value loss {mode_name}"),
        );
        let wm = &want["metrics"];
        assert_scalar(
            m.clipped_tokens,
            num(&wm["clipped_tokens"]),
            "value clipped_tokens",
        );
        assert_scalar(
            m.sq_error_sum,
            num(&wm["sq_error_sum"]),
            "value sq_error_sum",
        );
        assert_scalar(m.tokens, num(&wm["tokens"]), "value tokens");
    }
}

#[test]
fn micro_batches_with_the_mini_batch_scale_add_up() {
    let r = reference();
    let b = Batch::new(&r);
    let n = b.lengths.len();
    let splits = [vec![0..3, 3..n], vec![0..1, 1..5, 5..n]];
    for (mode, mode_name) in MODES {
        for name in POLICY_CONFIGS {
            let (config, tis) = b.config(&r, name);
            let (full, full_m) = b.policy(
                b.t::<F>(&b.logprobs, 0..n, true),
                0..n,
                true,
                &config,
                tis,
                mode,
            );
            let full = host(full)[0];
            for split in &splits {
                let (mut sum, mut metrics) = (0f64, PolicyLossMetrics::default());
                for part in split {
                    // Each micro-batch padded to its own width, with zeros instead of junk.
                    let lp = b.t::<F>(&b.logprobs, part.clone(), false);
                    let (loss, m) = b.policy(lp, part.clone(), false, &config, tis, mode);
                    sum += f64::from(host(loss)[0]);
                    metrics += m;
                }
                assert_scalar(
                    sum as f32,
                    f64::from(full),
                    &format!("policy {name} {mode_name} micro-batch sum"),
                );
                assert_scalar(
                    metrics.clipped_tokens,
                    f64::from(full_m.clipped_tokens),
                    "clipped sum",
                );
                assert_scalar(
                    metrics.dual_clipped_tokens,
                    f64::from(full_m.dual_clipped_tokens),
                    "dual sum",
                );
                assert_scalar(
                    metrics.approx_kl_sum,
                    f64::from(full_m.approx_kl_sum),
                    "kl sum",
                );
                assert_scalar(metrics.tokens, f64::from(full_m.tokens), "tokens sum");
            }
        }
        let (full, full_m) = b.value(b.t::<F>(&b.values, 0..n, true), 0..n, true, mode);
        let full = host(full)[0];
        for split in &splits {
            let (mut sum, mut metrics) = (0f64, ValueLossMetrics::default());
            for part in split {
                let (loss, m) = b.value(
                    b.t::<F>(&b.values, part.clone(), false),
                    part.clone(),
                    false,
                    mode,
                );
                sum += f64::from(host(loss)[0]);
                metrics += m;
            }
            assert_scalar(
                sum as f32,
                f64::from(full),
                &format!("value {mode_name} micro-batch sum"),
            );
            assert_scalar(
                metrics.clipped_tokens,
                f64::from(full_m.clipped_tokens),
                "value clipped sum",
            );
            assert_scalar(
                metrics.sq_error_sum,
                f64::from(full_m.sq_error_sum),
                "value sq error sum",
            );
        }
    }
}

#[test]
fn policy_gradient_matches_the_analytic_gradient() {
    let r = reference();
    let b = Batch::new(&r);
    let all = 0..b.lengths.len();
    for name in POLICY_CONFIGS {
        let (config, tis) = b.config(&r, name);
        for (mode, mode_name) in MODES {
            let lp = b.t::<AD>(&b.logprobs, all.clone(), true).require_grad();
            let (loss, _) = b.policy(lp.clone(), all.clone(), true, &config, tis, mode);
            let grads = loss.backward();
            let grad = lp.grad(&grads).expect("logprobs carry a gradient");
            let want = rows64(&r["expected"]["policy"][name]["grad"][mode_name]);
            assert_rows(
                &host_rows(grad),
                &want,
                &format!("d policy_loss / d logprobs, {name}, {mode_name}"),
            );
        }
    }
}

#[test]
fn value_gradient_matches_the_analytic_gradient() {
    let r = reference();
    let b = Batch::new(&r);
    let all = 0..b.lengths.len();
    for (mode, mode_name) in MODES {
        let v = b.t::<AD>(&b.values, all.clone(), true).require_grad();
        let (loss, _) = b.value(v.clone(), all.clone(), true, mode);
        let grads = loss.backward();
        let grad = v.grad(&grads).expect("values carry a gradient");
        let want = rows64(&r["expected"]["value"]["grad"][mode_name]);
        assert_rows(
            &host_rows(grad),
            &want,
            &format!("d value_loss / d values, {mode_name}"),
        );
    }
}

#[test]
fn entropy_its_gradient_and_bradley_terry_match_numpy() {
    let r = reference();
    let (i, e) = (&r["inputs"], &r["expected"]);
    let logits = rows(&i["logits"]);
    let vocab = logits[0].len();
    let got = host(entropy_from_logits(tensor::<F>(&logits, vocab)));
    assert_rows(&[got], &[f64s(&e["entropy"])], "entropy");
    let x = tensor::<AD>(&logits, vocab).require_grad();
    let grads = entropy_from_logits(x.clone()).sum().backward();
    let grad = x.grad(&grads).expect("logits carry a gradient");
    assert_rows(
        &host_rows(grad),
        &rows64(&e["entropy_grad"]),
        "d sum(entropy) / d logits",
    );

    let d = Default::default();
    let chosen = f32s(&i["chosen"]);
    let rejected = f32s(&i["rejected"]);
    let n = chosen.len();
    let loss = bradley_terry_loss(
        Tensor::<F, 1>::from_data(TensorData::new(chosen, [n]), &d),
        Tensor::<F, 1>::from_data(TensorData::new(rejected, [n]), &d),
    );
    assert_scalar(
        host(loss)[0],
        num(&e["bradley_terry"]),
        "Bradley-Terry loss",
    );
}
