//! Reward-model scores and critic values against HF transformers; saving and loading
//! checkpoints (bit-exact, sharded, through an object store URL); and the errors bad
//! checkpoints produce.

mod common;

use common::*;
use grlo_model::model::to_f32_vec;
use grlo_model::safetensors_io::WeightFiles;
use grlo_model::{ChatMessage, HeadKind, Model, Pretrained, StoredDtype, TokenBatch};

fn close(a: f32, b: f64, what: &str) {
    assert!((a as f64 - b).abs() <= 1e-4, "{what}: {a} vs {b}");
}

#[test]
fn reward_model_scores_match_transformers() {
    for name in ["llama31-rm-tiny", "qwen3-rm-tiny"] {
        let pretrained =
            Pretrained::<B>::load(model_dir(name).to_str().unwrap(), &Default::default()).unwrap();
        let model = &pretrained.model;
        for case in reference_json(&format!("{name}.score.json"))
            .as_array()
            .unwrap()
        {
            if let Some(batch) = case.get("batch") {
                let rows: Vec<Vec<u32>> = batch.as_array().unwrap().iter().map(json_ids).collect();
                let scores = to_f32_vec(model.score_sequences(&rows).unwrap());
                for (i, expected) in case["scores"].as_array().unwrap().iter().enumerate() {
                    close(
                        scores[i],
                        expected.as_f64().unwrap(),
                        &format!("{name} batch row {i}"),
                    );
                }
                continue;
            }
            let mut ids = json_ids(&case["ids"]);
            if let Some(messages) = case.get("messages") {
                // The conversation rendered with the reward model's own chat template.
                let messages: Vec<ChatMessage> = serde_json::from_value(messages.clone()).unwrap();
                let rendered = pretrained
                    .tokenizer()
                    .unwrap()
                    .encode_chat(&messages, false)
                    .unwrap();
                assert_eq!(rendered, ids, "{name}: chat template tokens");
                ids = rendered;
            }
            let score = to_f32_vec(model.score_sequences(&[ids.clone()]).unwrap());
            close(
                score[0],
                case["score"].as_f64().unwrap(),
                &format!("{name} {} tokens", ids.len()),
            );
        }
    }
}

#[test]
fn critic_values_match_transformers_at_every_token() {
    let model = load("qwen3-critic-tiny");
    assert_eq!(
        model.config.head,
        HeadKind::TokenClassification { num_labels: 1 }
    );
    for case in reference_json("qwen3-critic-tiny.values.json")
        .as_array()
        .unwrap()
    {
        let (rows, expected): (Vec<Vec<u32>>, Vec<Vec<f64>>) = match case.get("batch") {
            Some(batch) => (
                batch.as_array().unwrap().iter().map(json_ids).collect(),
                case["values"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| serde_json::from_value(v.clone()).unwrap())
                    .collect(),
            ),
            None => (
                vec![json_ids(&case["ids"])],
                vec![serde_json::from_value(case["values"].clone()).unwrap()],
            ),
        };
        let batch = TokenBatch::right_padded(&rows, 0);
        let values = to_f32_vec(
            model
                .score_head(model.forward_hidden(&batch, None))
                .unwrap(),
        );
        for (r, row) in expected.iter().enumerate() {
            for (t, v) in row.iter().enumerate() {
                close(values[r * batch.seq + t], *v, &format!("row {r} token {t}"));
            }
        }
    }
}

fn assert_same_tensors(a: &Model<B>, b: &Model<B>) {
    let (a, b) = (a.named_tensors(), b.named_tensors());
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.name, y.name);
        assert_eq!(x.shape, y.shape, "{}", x.name);
        let same_bits = x
            .values
            .iter()
            .zip(&y.values)
            .all(|(p, q)| p.to_bits() == q.to_bits());
        assert!(same_bits, "{} differs after the round trip", x.name);
    }
}

#[test]
fn save_then_load_is_bit_exact_single_and_sharded() {
    for name in [
        "qwen3-tiny",
        "llama31-tiny",
        "llama31-rm-tiny",
        "qwen3-critic-tiny",
    ] {
        let model = load(name);
        let out = tempfile::tempdir().unwrap();
        model.save(out.path(), StoredDtype::F32, 1 << 30).unwrap();
        assert!(out.path().join("model.safetensors").is_file());
        assert_same_tensors(
            &model,
            &Model::<B>::load(out.path(), &Default::default()).unwrap(),
        );

        let sharded = tempfile::tempdir().unwrap();
        model
            .save(sharded.path(), StoredDtype::F32, 100_000)
            .unwrap();
        assert!(
            sharded
                .path()
                .join("model.safetensors.index.json")
                .is_file(),
            "{name}"
        );
        assert_same_tensors(
            &model,
            &Model::<B>::load(sharded.path(), &Default::default()).unwrap(),
        );
    }
    // bf16 weights saved as bf16 keep every bit.
    let model = load("qwen3-tiny");
    let out = tempfile::tempdir().unwrap();
    model.save(out.path(), StoredDtype::Bf16, 1 << 30).unwrap();
    assert_same_tensors(
        &model,
        &Model::<B>::load(out.path(), &Default::default()).unwrap(),
    );
}

#[test]
fn loads_from_an_object_store_url() {
    let bucket = tempfile::tempdir().unwrap();
    let prefix = bucket.path().join("models/qwen3-chat-tiny");
    std::fs::create_dir_all(&prefix).unwrap();
    for entry in std::fs::read_dir(model_dir("qwen3-chat-tiny")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), prefix.join(entry.file_name())).unwrap();
    }
    // SAFETY: set before any other thread of this test reads the variable.
    let cache = tempfile::tempdir().unwrap();
    unsafe { std::env::set_var("GRLO_CACHE_DIR", cache.path()) };
    let url = format!("file://{}", prefix.display());
    let remote = Pretrained::<B>::load(&url, &Default::default()).unwrap();
    assert!(remote.dir.starts_with(cache.path()));
    let local = load("qwen3-chat-tiny");
    assert_same_tensors(&local, &remote.model);
    assert_eq!(remote.stop_token_ids().unwrap(), vec![151643, 151645]);
}

#[test]
fn a_classifier_checkpoint_becomes_a_critic_with_a_fresh_value_head() {
    let critic = Model::<B>::load_with_head(
        &model_dir("qwen3-rm-tiny"),
        HeadKind::TokenClassification { num_labels: 1 },
        7,
        &Default::default(),
    )
    .unwrap();
    let rm = load("qwen3-rm-tiny");
    let (c, r) = (critic.named_tensors(), rm.named_tensors());
    for (x, y) in c
        .iter()
        .zip(&r)
        .filter(|(x, _)| !x.name.starts_with("score"))
    {
        assert_eq!(x.values, y.values, "{} comes from the checkpoint", x.name);
    }
    let bias = c.iter().find(|t| t.name == "score.bias").unwrap();
    assert_eq!(
        bias.values,
        vec![0.0],
        "a fresh head starts with a zero bias"
    );
}

#[test]
fn broken_checkpoints_are_errors_naming_the_tensor_and_file() {
    let src = model_dir("qwen3-rm-tiny");
    let copy = |dir: &std::path::Path| {
        for f in ["config.json", "model.safetensors"] {
            std::fs::copy(src.join(f), dir.join(f)).unwrap();
        }
    };

    // A tensor missing from the file.
    let dir = tempfile::tempdir().unwrap();
    copy(dir.path());
    let model = load("qwen3-rm-tiny");
    let tensors: Vec<_> = model
        .named_tensors()
        .into_iter()
        .filter(|t| t.name != "model.norm.weight")
        .collect();
    grlo_model::safetensors_io::write_safetensors(dir.path(), tensors, StoredDtype::F32, 1 << 30)
        .unwrap();
    let err = Model::<B>::load(dir.path(), &Default::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing tensor model.norm.weight"), "{err}");

    // A config whose shape disagrees with the weights.
    let dir = tempfile::tempdir().unwrap();
    copy(dir.path());
    let config = std::fs::read_to_string(src.join("config.json"))
        .unwrap()
        .replace("\"intermediate_size\": 64", "\"intermediate_size\": 65");
    std::fs::write(dir.path().join("config.json"), config).unwrap();
    let err = Model::<B>::load(dir.path(), &Default::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("has shape [64, 32], expected [65, 32]") && err.contains("model.safetensors"),
        "{err}"
    );

    // A truncated file.
    let dir = tempfile::tempdir().unwrap();
    copy(dir.path());
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    std::fs::write(
        dir.path().join("model.safetensors"),
        &bytes[..bytes.len() / 2],
    )
    .unwrap();
    let err = Model::<B>::load(dir.path(), &Default::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("corrupt safetensors file") && err.contains("model.safetensors"),
        "{err}"
    );

    // An unknown architecture.
    let dir = tempfile::tempdir().unwrap();
    copy(dir.path());
    let config = std::fs::read_to_string(src.join("config.json"))
        .unwrap()
        .replace("\"qwen3\"", "\"gpt2\"");
    std::fs::write(dir.path().join("config.json"), config).unwrap();
    let err = Model::<B>::load(dir.path(), &Default::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown model_type \"gpt2\""), "{err}");

    // The weights index lists what a shard holds.
    let files = WeightFiles::open(&model_dir("llama31-tiny")).unwrap();
    assert!(files.contains("model.layers.2.self_attn.q_proj.bias"));
}
