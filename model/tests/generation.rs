//! Generation against HF transformers' `generate`, and the invariants of batched, cached
//! decoding: the KV cache reproduces a full forward pass, batching does not change results.

mod common;

use common::*;
use grlo_model::model::to_f32_vec;
use grlo_model::{
    FinishReason, GenerationParams, KvCache, Model, SamplingParams, TokenBatch, generate,
    generate_seeded,
};

fn greedy(max_new_tokens: usize, stop_token_ids: Vec<u32>) -> GenerationParams {
    GenerationParams {
        sampling: SamplingParams::greedy(),
        max_new_tokens,
        n: 1,
        stop_token_ids,
        top_logprobs: 0,
    }
}

fn check_greedy_against_transformers(name: &str) {
    let model = load(name);
    let cases = reference_json(&format!("{name}.generate.json"));
    for case in cases.as_array().unwrap() {
        let prompt = json_ids(&case["prompt_ids"]);
        let expected = json_ids(&case["output_ids"]);
        let params = greedy(
            case["max_new_tokens"].as_u64().unwrap() as usize,
            json_ids(&case["eos_token_ids"]),
        );
        let out = generate(&model, std::slice::from_ref(&prompt), &params).unwrap();
        assert_eq!(
            out[0].token_ids,
            expected,
            "{name}, prompt of {} tokens",
            prompt.len()
        );
        let stopped = expected
            .last()
            .is_some_and(|t| params.stop_token_ids.contains(t));
        let reason = if stopped {
            FinishReason::Stop
        } else {
            FinishReason::Length
        };
        assert_eq!(out[0].finish_reason, reason, "{name}");
    }
}

#[test]
fn greedy_generation_matches_transformers_qwen3() {
    check_greedy_against_transformers("qwen3-tiny");
}

#[test]
fn greedy_generation_matches_transformers_llama31() {
    check_greedy_against_transformers("llama31-tiny");
}

#[test]
fn greedy_generation_matches_transformers_qwen3_chat() {
    check_greedy_against_transformers("qwen3-chat-tiny");
}

/// Decoding token by token against the cache gives the logits of a full forward pass over
/// the whole sequence, at every step.
fn check_cache_matches_full_forward(model: &Model<B>, sequence: &[u32], prompt_len: usize) {
    let full = to_f32_vec(model.logits(sequence).unwrap());
    let vocab = model.config.vocab_size;
    let mut cache = KvCache::new(model.layers.len());
    let prefill = TokenBatch::right_padded(&[sequence[..prompt_len].to_vec()], 0);
    let hidden = model.forward_hidden(&prefill, Some(&mut cache));
    let mut step_logits = to_f32_vec(model.lm_logits(hidden));
    let expected = &full[..prompt_len * vocab];
    let diff = max_abs_diff(&step_logits, expected);
    assert!(diff < 1e-4, "prefill: max |diff| {diff}");
    for position in prompt_len..sequence.len() {
        let step = TokenBatch {
            batch: 1,
            seq: 1,
            ids: vec![sequence[position]],
            positions: vec![position],
            key_windows: None,
            lengths: vec![1],
        };
        let hidden = model.forward_hidden(&step, Some(&mut cache));
        step_logits = to_f32_vec(model.lm_logits(hidden));
        let expected = &full[position * vocab..(position + 1) * vocab];
        let diff = max_abs_diff(&step_logits, expected);
        assert!(
            diff < 1e-4,
            "step at position {position}: max |diff| {diff}"
        );
    }
    assert_eq!(cache.len(), sequence.len());
}

#[test]
fn kv_cache_decoding_matches_a_full_forward_at_every_step() {
    for name in ["qwen3-tiny", "llama31-tiny"] {
        let model = load(name);
        let sequence: Vec<u32> = (0..40).map(|i| (i * 37 + 11) % 1000).collect();
        check_cache_matches_full_forward(&model, &sequence, 7);
    }
}

fn mixed_prompts() -> Vec<Vec<u32>> {
    vec![
        vec![5],
        (0..17).map(|i| (i * 13 + 3) % 1000).collect(),
        (0..4).map(|i| (i * 101 + 7) % 1000).collect(),
        (0..33).map(|i| (i * 7 + 100) % 1000).collect(),
    ]
}

#[test]
fn batched_greedy_generation_matches_each_prompt_alone() {
    for name in ["qwen3-tiny", "llama31-tiny"] {
        let model = load(name);
        let prompts = mixed_prompts();
        // A stop token that some rows hit early, so rows leave the batch at different steps.
        let params = greedy(20, vec![917]);
        let batched = generate(&model, &prompts, &params).unwrap();
        for (i, prompt) in prompts.iter().enumerate() {
            let alone = generate(&model, std::slice::from_ref(prompt), &params).unwrap();
            assert_eq!(
                batched[i].token_ids, alone[0].token_ids,
                "{name} prompt {i}"
            );
            assert_eq!(batched[i].finish_reason, alone[0].finish_reason);
            let diff = max_abs_diff(&batched[i].logprobs, &alone[0].logprobs);
            assert!(diff < 1e-4, "{name} prompt {i}: logprob diff {diff}");
        }
    }
}

#[test]
fn sampled_generation_is_reproducible_and_independent_of_batching() {
    // Truncated sampling (chosen on the host) and plain sampling (chosen on the device).
    for (top_p, top_k) in [(0.95, 50), (1.0, 0)] {
        check_sampled_generation(top_p, top_k);
    }
}

fn check_sampled_generation(top_p: f32, top_k: usize) {
    let model = load("qwen3-tiny");
    let prompts = mixed_prompts();
    let params = GenerationParams {
        sampling: SamplingParams {
            temperature: 0.9,
            top_p,
            top_k,
            seed: 1234,
            ..SamplingParams::default()
        },
        max_new_tokens: 16,
        n: 3,
        top_logprobs: 0,
        stop_token_ids: vec![2],
    };
    let seeds = [11, 22, 33, 44];
    let first = generate_seeded(&model, &prompts, &seeds, &params).unwrap();
    let again = generate_seeded(&model, &prompts, &seeds, &params).unwrap();
    assert_eq!(first, again, "same seed, same output");
    assert_eq!(first.len(), prompts.len() * 3);
    for (i, prompt) in prompts.iter().enumerate() {
        let alone =
            generate_seeded(&model, std::slice::from_ref(prompt), &seeds[i..=i], &params).unwrap();
        for s in 0..3 {
            assert_eq!(
                first[i * 3 + s].token_ids,
                alone[s].token_ids,
                "prompt {i} sample {s}"
            );
        }
        // The n samples of a prompt differ from each other.
        assert!(
            first[i * 3].token_ids != first[i * 3 + 1].token_ids
                || first[i * 3].token_ids != first[i * 3 + 2].token_ids
        );
    }
    // Behaviour log-probs are those of the raw model: recompute one from a full forward.
    let c = &first[4];
    let mut sequence = prompts[c.prompt_index].clone();
    sequence.extend(&c.token_ids);
    let logits = to_f32_vec(model.logits(&sequence).unwrap());
    let vocab = model.config.vocab_size;
    for (k, (&token, &logprob)) in c.token_ids.iter().zip(&c.logprobs).enumerate() {
        let row = &logits[(prompts[c.prompt_index].len() + k - 1) * vocab..][..vocab];
        let max = row.iter().cloned().fold(f32::MIN, f32::max) as f64;
        let log_z = max
            + row
                .iter()
                .map(|&l| (l as f64 - max).exp())
                .sum::<f64>()
                .ln();
        let expected = row[token as usize] as f64 - log_z;
        assert!(
            (logprob as f64 - expected).abs() < 1e-4,
            "token {k}: {logprob} vs {expected}"
        );
    }
}

#[test]
fn bad_prompts_are_clear_errors() {
    let model = load("qwen3-tiny");
    let params = greedy(4, vec![]);
    let err = generate(&model, &[vec![1, 2], vec![]], &params)
        .unwrap_err()
        .to_string();
    assert!(err.contains("prompt 1 is empty"), "{err}");
    let err = generate(&model, &[vec![1, 5000]], &params)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("token id 5000 at position 1") && err.contains("1024"),
        "{err}"
    );
}
