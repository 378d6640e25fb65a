//! `grlo plan`'s activation estimate ([`grlo_model::footprint`]) against the peak a counting
//! allocator measures for the same training micro-batch.

use std::path::Path;
use std::sync::Mutex;

use burn::backend::Autodiff;
use burn::tensor::{Tensor, TensorData};
use grlo_model::backend::{Cpu, ModelBackend};
use grlo_model::footprint::{Head, TrainingShape, parameters, training_bytes};
use grlo_model::memory::CountingAlloc;
use grlo_model::model::Precision;
use grlo_model::{Model, ModelConfig, TokenBatch};

#[global_allocator]
static HEAP: CountingAlloc = CountingAlloc::new();

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

type A = Autodiff<Cpu>;

fn rows(count: usize, len: usize, vocab: usize) -> Vec<Vec<u32>> {
    (0..count)
        .map(|r| {
            (0..len)
                .map(|i| ((i * 7 + r * 13) % (vocab - 8)) as u32)
                .collect()
        })
        .collect()
}

/// Bytes above what was allocated before: one forward + backward of `head`'s loss over
/// `count` rows of `len` tokens (the policy: log-probs of every next token; the critic and
/// the reward model: the head at every position / the last one).
fn measured(model: &Model<A>, count: usize, len: usize, head: Head, checkpoint: bool) -> usize {
    let vocab = model.config.vocab_size;
    let rows = rows(count, len, vocab);
    let device = model.device();
    let before = HEAP.current();
    let (peak, ()) = HEAP.peak_during(|| {
        let batch = TokenBatch::right_padded(&rows, 0);
        let forward = model.forward_training(&batch, checkpoint);
        let loss = match head {
            Head::LogProbs => {
                let targets: Vec<u32> = rows.iter().flatten().map(|&t| t + 1).collect();
                model
                    .token_logprobs(forward.hidden.clone(), &targets, false)
                    .logprobs
                    .sum()
            }
            Head::Values => model.score_head(forward.hidden.clone()).unwrap().sum(),
            Head::Score => {
                let last: Vec<i64> = (0..count).map(|r| (r * len + len - 1) as i64).collect();
                let index = Tensor::from_data(TensorData::new(last, [count]), &device);
                model
                    .score_head(forward.hidden.clone().select(0, index))
                    .unwrap()
                    .sum()
            }
        };
        drop(forward.gradients(loss, model));
    });
    peak - before
}

fn estimated(model: &Model<A>, count: usize, len: usize, head: Head, checkpoint: bool) -> usize {
    let shape = TrainingShape {
        rows: count,
        seq: len,
        head,
        checkpointing: checkpoint,
        precision: Precision::F32,
        attention_block_elements: <Cpu as ModelBackend>::attention_block_elements(),
        logits_chunk_elements: <Cpu as ModelBackend>::logits_chunk_elements(),
    };
    let bytes = training_bytes(&model.config, &shape);
    (bytes.activations + bytes.gradients) as usize
}

fn tiny(dir: &str) -> ModelConfig {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    ModelConfig::from_file(&root.join(dir).join("config.json")).unwrap()
}

fn check(config: ModelConfig, head: Head) {
    // One failing check must not poison the others' lock.
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let model = Model::<A>::random(config, 3, &Default::default());
    assert_eq!(
        parameters(&model.config),
        model.num_parameters() as u64,
        "the parameter count from the config"
    );
    for checkpoint in [false, true] {
        for (count, len) in [(1, 1024), (1, 2048), (1, 4096), (2, 2048)] {
            let real = measured(&model, count, len, head, checkpoint);
            let guess = estimated(&model, count, len, head, checkpoint);
            let error = guess as f64 / real as f64 - 1.0;
            eprintln!(
                "{head:?} checkpointing {checkpoint} {count}x{len}: measured {real} estimated {guess} ({:+.1}%)",
                100.0 * error
            );
            // A planner may err high (it then leaves memory unused) more than low (a job it
            // passes would not fit): at most 25% over, 15% under. The largest gap measured
            // here is the value head's, +20% at 2 x 2048 with checkpointing.
            assert!(
                (-0.15..=0.25).contains(&error),
                "{head:?}, checkpointing {checkpoint}, {count} x {len} tokens: estimated {guess} bytes, measured {real}"
            );
        }
    }
}

#[test]
fn the_estimate_follows_the_tiny_policy() {
    check(tiny("configs/tiny/policy"), Head::LogProbs);
}

#[test]
fn the_estimate_follows_the_tiny_critic() {
    check(
        tiny("configs/tiny/policy")
            .with_head(grlo_model::HeadKind::TokenClassification { num_labels: 1 }),
        Head::Values,
    );
}

#[test]
fn the_estimate_follows_the_tiny_reward_model() {
    check(tiny("configs/tiny/reward-model-init"), Head::Score);
}
