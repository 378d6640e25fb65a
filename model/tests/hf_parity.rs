//! Forward passes against HF transformers: logits at every position, reward-model scores and
//! critic values, on the tiny random checkpoints in `fixtures/models`.

mod common;

use common::*;
use grlo_model::model::to_f32_vec;

const LENGTHS: [usize; 9] = [1, 2, 3, 5, 8, 16, 33, 64, 100];
const TOLERANCE: f32 = 1e-3;

fn check_logits(name: &str) {
    let model = load(name);
    let reference = Reference::open(&format!("{name}.safetensors"));
    for len in LENGTHS {
        let ids = reference.ids(&format!("ids_{len}"));
        let (shape, expected) = reference.f32(&format!("logits_{len}"));
        let logits = model.logits(&ids).unwrap();
        assert_eq!(logits.dims().to_vec(), shape, "{name} length {len}");
        let diff = max_abs_diff(&to_f32_vec(logits), &expected);
        assert!(diff <= TOLERANCE, "{name} length {len}: max |diff| {diff}");
    }
}

#[test]
fn qwen3_logits_match_transformers() {
    check_logits("qwen3-tiny");
}

#[test]
fn llama31_with_llama3_rope_scaling_logits_match_transformers() {
    check_logits("llama31-tiny");
}

/// The same logits from a model on the autodiff backend, where every pass runs the block-wise
/// attention (the training path) instead of the backend's fused kernel.
#[test]
fn training_path_logits_match_transformers() {
    type A = burn::backend::Autodiff<B>;
    for name in ["qwen3-tiny", "llama31-tiny"] {
        let model = grlo_model::Model::<A>::load(&model_dir(name), &Default::default()).unwrap();
        let reference = Reference::open(&format!("{name}.safetensors"));
        for len in LENGTHS {
            let ids = reference.ids(&format!("ids_{len}"));
            let (_, expected) = reference.f32(&format!("logits_{len}"));
            let diff = max_abs_diff(&to_f32_vec(model.logits(&ids).unwrap()), &expected);
            assert!(diff <= TOLERANCE, "{name} length {len}: max |diff| {diff}");
        }
    }
}
