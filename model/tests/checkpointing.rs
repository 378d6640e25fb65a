//! Per-layer activation checkpointing: the same gradients as keeping the whole graph, for
//! less memory.

mod common;

use burn::backend::Autodiff;
use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Tensor, TensorData};
use common::*;
use grlo_model::model::to_f32_vec;
use grlo_model::{Model, TokenBatch};

type A = Autodiff<B>;

/// Every parameter's gradient, by path order.
struct Collect<'a> {
    grads: &'a GradientsParams,
    out: Vec<Vec<f32>>,
}

impl ModuleVisitor<A> for Collect<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<A, D>>) {
        let grad = self
            .grads
            .get::<B, D>(param.id)
            .expect("every parameter has a gradient");
        self.out.push(to_f32_vec(grad));
    }
}

fn gradients(model: &Model<A>, batch: &TokenBatch, checkpoint: bool) -> Vec<Vec<f32>> {
    let forward = model.forward_training(batch, checkpoint);
    let hidden = forward.hidden.clone();
    let [tokens, _] = hidden.dims();
    // Next-token log-likelihood of every position, weighted (a loss through the LM head).
    let targets: Vec<u32> = (0..tokens).map(|i| batch.ids[(i + 1) % tokens]).collect();
    let weights: Vec<f32> = (0..tokens).map(|i| 1.0 + (i % 5) as f32 * 0.25).collect();
    let weights = Tensor::<A, 1>::from_data(TensorData::new(weights, [tokens]), &model.device());
    let logprobs = model.token_logprobs(hidden, &targets, false).logprobs;
    let loss = logprobs.mul(weights).sum().neg();
    let grads = forward.gradients(loss, model);
    let mut collect = Collect {
        grads: &grads,
        out: Vec::new(),
    };
    model.visit(&mut collect);
    collect.out
}

#[test]
fn checkpointed_gradients_equal_the_full_graphs() {
    for name in ["qwen3-tiny", "llama31-tiny", "qwen3-critic-tiny"] {
        let model = Model::<A>::load(&model_dir(name), &Default::default()).unwrap();
        if model.score.is_some() {
            continue; // no language-model head to take log-probs from
        }
        let rows = vec![
            vec![3, 9, 27, 81, 5, 7, 11],
            vec![2, 4, 8],
            vec![100, 1, 17, 30, 44],
        ];
        let batch = TokenBatch::right_padded(&rows, 0);
        let full = gradients(&model, &batch, false);
        let checkpointed = gradients(&model, &batch, true);
        assert_eq!(full.len(), checkpointed.len());
        for (i, (a, b)) in full.iter().zip(&checkpointed).enumerate() {
            let scale = a.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6);
            let diff = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(
                diff <= 1e-5 * scale.max(1.0),
                "{name} parameter {i}: max |diff| {diff} (scale {scale})"
            );
        }
    }
}
