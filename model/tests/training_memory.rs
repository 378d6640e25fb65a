//! Training memory, measured with a counting allocator: linear in the sequence length through
//! the block-wise attention, and smaller again with per-layer activation checkpointing.
//! Ratios within one run, never absolute figures.

use std::path::Path;
use std::sync::Mutex;

use burn::backend::Autodiff;
use burn::tensor::{Tensor, TensorData};
use grlo_model::backend::Cpu;
use grlo_model::memory::CountingAlloc;
use grlo_model::{Model, ModelConfig, TokenBatch};

#[global_allocator]
static HEAP: CountingAlloc = CountingAlloc::new();

/// The measurements share the allocator: one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

type A = Autodiff<Cpu>;

/// A Llama reward model of `layers` layers, `hidden` wide (4 heads, 2 kv heads); at 2 layers
/// and 64 wide, the tiny reward model's shape (configs/tiny/reward-model-init).
fn config(layers: usize, hidden: usize) -> ModelConfig {
    let (intermediate, head_dim) = (3 * hidden, hidden / 4);
    let json = format!(
        r#"{{"model_type": "llama", "architectures": ["LlamaForSequenceClassification"],
        "vocab_size": 1024, "hidden_size": {hidden}, "intermediate_size": {intermediate},
        "num_hidden_layers": {layers}, "num_attention_heads": 4, "num_key_value_heads": 2,
        "head_dim": {head_dim}, "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "num_labels": 1,
        "max_position_embeddings": 8192, "pad_token_id": 1023, "initializer_range": 0.02}}"#
    );
    ModelConfig::from_json_str(&json, Path::new("test-config.json")).unwrap()
}

fn rows(count: usize, len: usize) -> Vec<Vec<u32>> {
    (0..count)
        .map(|r| (0..len).map(|i| ((i * 7 + r * 13) % 1000) as u32).collect())
        .collect()
}

/// Peak bytes of one forward + backward of a sequence-classification loss (as reward-model
/// training computes it) over `rows` of `len` tokens.
fn peak_of_step(model: &Model<A>, rows: &[Vec<u32>], checkpoint: bool) -> usize {
    let (peak, ()) = HEAP.peak_during(|| {
        let batch = TokenBatch::right_padded(rows, 0);
        let forward = model.forward_training(&batch, checkpoint);
        let last: Vec<i64> = (0..rows.len())
            .map(|r| (r * batch.seq + batch.seq - 1) as i64)
            .collect();
        let index = Tensor::from_data(TensorData::new(last, [rows.len()]), &model.device());
        let scores = model
            .score_head(forward.hidden.clone().select(0, index))
            .unwrap();
        let loss = scores.sum();
        let grads = forward.gradients(loss, model);
        drop(grads);
    });
    peak
}

#[test]
fn attention_memory_grows_linearly_with_the_sequence() {
    let _one = ONE_AT_A_TIME.lock().unwrap();
    let model = Model::<A>::random(config(2, 64), 1, &Default::default());
    let peaks: Vec<usize> = [1024, 2048, 4096]
        .iter()
        .map(|&len| peak_of_step(&model, &rows(4, len), false))
        .collect();
    eprintln!("peak bytes at 1024, 2048, 4096 tokens x 4 rows: {peaks:?}");
    for pair in peaks.windows(2) {
        let growth = pair[1] as f64 / pair[0] as f64;
        assert!(
            growth <= 2.2,
            "peak memory grew {growth:.2}x for twice the tokens ({peaks:?} bytes at 1024, 2048, 4096)"
        );
    }
}

#[test]
fn checkpointing_keeps_one_layer_of_activations() {
    let _one = ONE_AT_A_TIME.lock().unwrap();
    let model = Model::<A>::random(config(12, 256), 2, &Default::default());
    let rows = rows(2, 1024);
    let full = peak_of_step(&model, &rows, false);
    let checkpointed = peak_of_step(&model, &rows, true);
    eprintln!("peak bytes: whole graph {full}, checkpointed {checkpointed}");
    assert!(
        (checkpointed as f64) < 0.4 * full as f64,
        "checkpointed peak {checkpointed} bytes against {full} with the whole graph"
    );
}
