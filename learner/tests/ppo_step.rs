//! One PPO step against PyTorch: on the tiny fixture policy and a fixed batch, the policy loss,
//! the global gradient norm and every weight after one clipped AdamW update equal those of
//! `reference/make_step_reference.py` (transformers + torch.optim.AdamW) within f32 tolerance.

use std::path::PathBuf;

use burn::backend::{Autodiff, Flex};
use burn::module::AutodiffModule;
use burn::optim::GradientsParams;
use burn::tensor::ElementConversion;
use grlo_learner::config::{LrSchedule, OptimSection};
use grlo_learner::loss::{AggregationScale, LossAggregation, PolicyLossConfig, policy_loss};
use grlo_learner::optim::AdamW;
use grlo_learner::sequences::{SequenceBatch, response_logprobs};
use grlo_model::Model;
use grlo_model::safetensors_io::read_safetensors_file;

type A = Autodiff<Flex>;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn rows(value: &serde_json::Value) -> Vec<Vec<f64>> {
    serde_json::from_value(value.clone()).unwrap()
}

#[test]
fn one_ppo_step_matches_pytorch() {
    let text =
        std::fs::read_to_string(root().join("learner/tests/reference/ppo_step.json")).unwrap();
    let reference: serde_json::Value = serde_json::from_str(&text).unwrap();
    let prompts: Vec<Vec<u32>> = serde_json::from_value(reference["prompts"].clone()).unwrap();
    let responses: Vec<Vec<u32>> = serde_json::from_value(reference["responses"].clone()).unwrap();
    let advantages = rows(&reference["advantages"]);
    let old = rows(&reference["old_logprobs"]);

    let device = Default::default();
    let policy = Model::<A>::load(&root().join("fixtures/models/qwen3-tiny"), &device).unwrap();
    let prompt_refs: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
    let response_refs: Vec<&[u32]> = responses.iter().map(Vec::as_slice).collect();
    let batch = SequenceBatch::new(&prompt_refs, &response_refs);
    let as_f32 = |v: &Vec<Vec<f64>>| {
        v.iter()
            .map(|r| r.iter().map(|&x| x as f32).collect())
            .collect::<Vec<Vec<f32>>>()
    };
    let (old, advantages) = (as_f32(&old), as_f32(&advantages));
    let pad = |v: &Vec<Vec<f32>>| {
        batch.pad::<A>(&v.iter().map(Vec::as_slice).collect::<Vec<_>>(), &device)
    };

    let (logprobs, _) = response_logprobs(&policy, &batch, false);
    let config = PolicyLossConfig {
        clip_low: reference["clip"].as_f64().unwrap() as f32,
        clip_high: reference["clip"].as_f64().unwrap() as f32,
        clip_ratio_c: Some(reference["clip_c"].as_f64().unwrap() as f32),
    };
    let scale =
        AggregationScale::from_lengths(LossAggregation::TokenMean, &batch.response_lens, 8.0);
    let (loss, _) = policy_loss(
        logprobs,
        pad(&old),
        pad(&advantages),
        batch.mask(&device),
        &config,
        None,
        &scale,
    );
    let loss_value = loss.clone().into_scalar().elem::<f64>();
    let expected_loss = reference["loss"].as_f64().unwrap();
    assert!(
        (loss_value - expected_loss).abs() < 1e-5,
        "loss {loss_value} vs {expected_loss}"
    );

    let grads = GradientsParams::from_grads(loss.backward(), &policy);
    let norm = AdamW::<Flex>::grad_norm(&policy, &grads);
    let expected_norm = reference["grad_norm"].as_f64().unwrap();
    assert!(
        (norm - expected_norm).abs() / expected_norm < 1e-4,
        "grad norm {norm} vs {expected_norm}"
    );

    let lr = reference["lr"].as_f64().unwrap();
    let mut optim = AdamW::<Flex>::new(OptimSection {
        lr,
        weight_decay: reference["weight_decay"].as_f64().unwrap(),
        betas: [0.9, 0.999],
        eps: reference["eps"].as_f64().unwrap(),
        grad_clip: reference["max_norm"].as_f64().unwrap(),
        schedule: LrSchedule::default(),
    });
    let updated = optim.update(policy.clone(), grads, lr, norm).valid();
    let before = policy.valid();

    let expected =
        read_safetensors_file(&root().join("learner/tests/reference/ppo_step_weights.safetensors"))
            .unwrap();
    let ours = updated.named_tensors();
    let before = before.named_tensors();
    assert_eq!(ours.len(), expected.len());
    let mut moved = 0usize;
    for ((t, e), b) in ours.iter().zip(&expected).zip(&before) {
        let e = expected.iter().find(|x| x.name == t.name).unwrap_or(e);
        assert_eq!(t.shape, e.shape, "{}", t.name);
        let diff = t
            .values
            .iter()
            .zip(&e.values)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(diff < 1e-6, "{}: max |diff| {diff} after the step", t.name);
        moved += t
            .values
            .iter()
            .zip(&b.values)
            .filter(|(a, b)| a != b)
            .count();
    }
    assert!(moved > 1000, "the step moved the weights ({moved} changed)");
}

/// The same PPO step in mixed precision (bf16 matmuls and attention, f32 master weights,
/// gradients and moments; the CPU backend computes bf16 products through f32 and rounds them,
/// as a GPU's tensor cores do) against the f32 step: the loss within 1e-2 relative, the update
/// pointing the same way (cosine > 0.99), and with checkpointed layers the same as without.
#[test]
fn a_bf16_step_follows_the_f32_step() {
    use grlo_learner::sequences::response_logprobs_training;
    use grlo_model::model::Precision;

    let text =
        std::fs::read_to_string(root().join("learner/tests/reference/ppo_step.json")).unwrap();
    let reference: serde_json::Value = serde_json::from_str(&text).unwrap();
    let prompts: Vec<Vec<u32>> = serde_json::from_value(reference["prompts"].clone()).unwrap();
    let responses: Vec<Vec<u32>> = serde_json::from_value(reference["responses"].clone()).unwrap();
    let advantages = rows(&reference["advantages"]);
    let old = rows(&reference["old_logprobs"]);
    let device = Default::default();
    let policy = Model::<A>::load(&root().join("fixtures/models/qwen3-tiny"), &device).unwrap();
    let prompt_refs: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
    let response_refs: Vec<&[u32]> = responses.iter().map(Vec::as_slice).collect();
    let batch = SequenceBatch::new(&prompt_refs, &response_refs);
    let pad = |v: &Vec<Vec<f64>>| {
        let v: Vec<Vec<f32>> = v
            .iter()
            .map(|r| r.iter().map(|&x| x as f32).collect())
            .collect();
        batch.pad::<A>(&v.iter().map(Vec::as_slice).collect::<Vec<_>>(), &device)
    };
    let config = PolicyLossConfig {
        clip_low: 0.2,
        clip_high: 0.2,
        clip_ratio_c: Some(3.0),
    };
    let scale =
        AggregationScale::from_lengths(LossAggregation::TokenMean, &batch.response_lens, 8.0);
    // (loss, the weights after one AdamW update minus before), flattened.
    let step = |precision: Precision, checkpoint: bool| {
        let model = policy.clone().with_precision(precision);
        let (logprobs, _, forward) = response_logprobs_training(&model, &batch, false, checkpoint);
        let (loss, _) = policy_loss(
            logprobs,
            pad(&old),
            pad(&advantages),
            batch.mask(&device),
            &config,
            None,
            &scale,
        );
        let value = loss.clone().into_scalar().elem::<f64>();
        let grads = forward.gradients(loss, &model);
        let norm = AdamW::<Flex>::grad_norm(&model, &grads);
        let mut optim = AdamW::<Flex>::new(OptimSection {
            lr: 1e-3,
            weight_decay: 0.0,
            betas: [0.9, 0.999],
            eps: 1e-8,
            grad_clip: 1.0,
            schedule: LrSchedule::default(),
        });
        let after = optim.update(model.clone(), grads, 1e-3, norm).valid();
        let delta: Vec<f32> = after
            .named_tensors()
            .iter()
            .zip(model.valid().named_tensors())
            .flat_map(|(a, b)| {
                a.values
                    .iter()
                    .zip(&b.values)
                    .map(|(x, y)| x - y)
                    .collect::<Vec<_>>()
            })
            .collect();
        (value, delta, norm)
    };
    let (loss32, delta32, norm32) = step(Precision::F32, false);
    let (loss16, delta16, norm16) = step(Precision::Bf16, false);
    assert!(
        ((loss16 - loss32) / loss32).abs() < 1e-2,
        "bf16 loss {loss16} vs f32 {loss32}"
    );
    let dot: f64 = delta32
        .iter()
        .zip(&delta16)
        .map(|(a, b)| (*a as f64) * (*b as f64))
        .sum();
    let n32: f64 = delta32
        .iter()
        .map(|a| (*a as f64).powi(2))
        .sum::<f64>()
        .sqrt();
    let n16: f64 = delta16
        .iter()
        .map(|a| (*a as f64).powi(2))
        .sum::<f64>()
        .sqrt();
    let cosine = dot / (n32 * n16);
    eprintln!("bf16 loss {loss16}, f32 loss {loss32}, update cosine {cosine}");
    assert!(
        cosine > 0.99,
        "update direction cosine {cosine} (grad norms {norm32} / {norm16})"
    );
    // bf16 really computed in bf16: the losses differ.
    assert!(
        loss16 != loss32,
        "bf16 gave the f32 loss exactly: no cast happened"
    );

    let (loss_ckpt, delta_ckpt, _) = step(Precision::F32, true);
    assert!((loss_ckpt - loss32).abs() < 1e-7, "{loss_ckpt} vs {loss32}");
    let diff = delta_ckpt
        .iter()
        .zip(&delta32)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(diff < 1e-7, "checkpointed update differs by {diff}");
}
