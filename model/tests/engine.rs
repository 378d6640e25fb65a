//! The generation engine: continuous batching gives each prompt the completion it gets alone,
//! the slot cache reproduces a full forward pass, and the limits hold.

mod common;

use common::*;
use grlo_model::engine::SlotCache;
use grlo_model::model::to_f32_vec;
use grlo_model::{
    Completion, Engine, EngineLimits, FinishReason, GenerationParams, KvCache, Request,
    SamplingParams, TokenBatch, generate_seeded,
};

fn prompts() -> Vec<Vec<u32>> {
    [1usize, 17, 4, 33, 9, 2, 25, 12]
        .iter()
        .enumerate()
        .map(|(p, &len)| {
            (0..len)
                .map(|i| ((i * 13 + p * 101 + 3) % 1000) as u32)
                .collect()
        })
        .collect()
}

fn params(sampling: SamplingParams, max_new_tokens: usize, n: usize) -> GenerationParams {
    GenerationParams {
        sampling,
        max_new_tokens,
        n,
        // Tokens some rows produce early, so rows finish at different steps.
        stop_token_ids: vec![917, 2],
        top_logprobs: 0,
    }
}

fn limits(rows: usize, continuous: bool) -> EngineLimits {
    EngineLimits {
        max_batch_rows: rows,
        continuous,
        ..EngineLimits::default()
    }
}

/// Submits prompt `i` before step `i` (requests arriving over time), with per-prompt token
/// limits, and runs to the end; completions sorted by (prompt, sample).
fn run_arriving(
    engine: &mut Engine<'_, B>,
    prompts: &[Vec<u32>],
    params: &[GenerationParams],
) -> Vec<Completion> {
    let mut finished = Vec::new();
    let mut next = 0;
    while next < prompts.len() || !engine.is_idle() {
        if next < prompts.len() {
            engine
                .submit(Request {
                    prompt: prompts[next].clone(),
                    params: params[next].clone(),
                    seed: 1000 + next as u64,
                })
                .unwrap();
            next += 1;
        }
        finished.extend(engine.step().unwrap().finished);
    }
    finished.sort_by_key(|c| (c.prompt_index, c.sample_index));
    finished
}

/// Every completion of `batched` (sorted by prompt and sample) is what its prompt gets alone.
fn assert_as_alone(
    model: &grlo_model::Model<B>,
    prompts: &[Vec<u32>],
    per_prompt: &[GenerationParams],
    batched: &[Completion],
) {
    let mut batched = batched.iter();
    for (p, prompt) in prompts.iter().enumerate() {
        let seed = [1000 + p as u64];
        let alone = generate_seeded(model, std::slice::from_ref(prompt), &seed, &per_prompt[p]);
        for (s, a) in alone.unwrap().iter().enumerate() {
            let b = batched.next().expect("as many completions");
            assert_eq!(b.token_ids, a.token_ids, "prompt {p} sample {s}");
            assert_eq!(b.finish_reason, a.finish_reason, "prompt {p} sample {s}");
            let diff = max_abs_diff(&b.logprobs, &a.logprobs);
            assert!(diff < 1e-4, "prompt {p} sample {s}: logprob diff {diff}");
            let diff = max_abs_diff(&b.sampling_logprobs, &a.sampling_logprobs);
            assert!(diff < 1e-4, "prompt {p} sample {s}: sampling diff {diff}");
        }
    }
    assert!(batched.next().is_none(), "no more completions");
}

fn check_against_alone(sampling: SamplingParams, n: usize) {
    let model = load("qwen3-tiny");
    let prompts = prompts();
    let per_prompt: Vec<GenerationParams> = (0..prompts.len())
        .map(|p| params(sampling.clone(), 6 + (p * 5) % 13, n))
        .collect();
    // Three rows for eight prompts × n samples: slots are freed and refilled all along.
    let mut engine = Engine::new(&model, limits(3.max(n), true)).unwrap();
    let batched = run_arriving(&mut engine, &prompts, &per_prompt);
    assert_eq!(batched.len(), prompts.len() * n);
    assert!(engine.stats().peak_rows <= 3.max(n));
    assert_as_alone(&model, &prompts, &per_prompt, &batched);
}

#[test]
fn continuous_batching_gives_each_prompt_its_greedy_completion_alone() {
    check_against_alone(SamplingParams::greedy(), 1);
}

#[test]
fn continuous_batching_gives_each_prompt_its_sampled_completions_alone() {
    let plain = SamplingParams {
        temperature: 0.9,
        ..SamplingParams::default()
    };
    check_against_alone(plain, 2);
    let truncated = SamplingParams {
        temperature: 0.8,
        top_p: 0.9,
        top_k: 40,
        ..SamplingParams::default()
    };
    check_against_alone(truncated, 3);
}

#[test]
fn requests_with_different_sampling_share_a_batch() {
    let model = load("qwen3-tiny");
    let prompts = prompts();
    let per_prompt: Vec<GenerationParams> = (0..prompts.len())
        .map(|p| {
            let sampling = if p % 2 == 0 {
                SamplingParams::greedy()
            } else {
                SamplingParams {
                    temperature: 0.7,
                    top_k: (p % 3) * 20,
                    ..SamplingParams::default()
                }
            };
            params(sampling, 8, 1)
        })
        .collect();
    let mut engine = Engine::new(&model, limits(4, true)).unwrap();
    let batched = run_arriving(&mut engine, &prompts, &per_prompt);
    assert_as_alone(&model, &prompts, &per_prompt, &batched);
}

#[test]
fn continuous_batching_takes_fewer_steps_than_static_batching_for_the_same_output() {
    let model = load("qwen3-tiny");
    let prompts = prompts();
    // Very different lengths: a static batch waits for its longest row.
    let per_prompt: Vec<GenerationParams> = (0..prompts.len())
        .map(|p| {
            let mut params = params(SamplingParams::greedy(), [2, 30][p % 2], 1);
            params.stop_token_ids.clear();
            params
        })
        .collect();
    let run = |continuous| {
        let mut engine = Engine::new(&model, limits(4, continuous)).unwrap();
        for (p, prompt) in prompts.iter().enumerate() {
            engine
                .submit(Request {
                    prompt: prompt.clone(),
                    params: per_prompt[p].clone(),
                    seed: p as u64,
                })
                .unwrap();
        }
        let mut steps = 0;
        let mut finished = Vec::new();
        while !engine.is_idle() {
            finished.extend(engine.step().unwrap().finished);
            steps += 1;
        }
        finished.sort_by_key(|c| c.prompt_index);
        (steps, finished, engine.stats())
    };
    let (continuous_steps, continuous, stats) = run(true);
    let (static_steps, fixed, _) = run(false);
    for (c, s) in continuous.iter().zip(&fixed) {
        assert_eq!(c.token_ids, s.token_ids);
    }
    // Static: two batches of four, each as long as its 30-token rows (60 steps). Continuous:
    // each short row's slot is refilled as it finishes, so the last long row starts at step 7
    // (after three short ones) and ends at step 36.
    assert_eq!(static_steps, 60, "static batching");
    assert_eq!(continuous_steps, 36, "continuous batching");
    assert_eq!(stats.generated_tokens, 4 * 2 + 4 * 30);
}

#[test]
fn the_samples_of_a_prompt_share_one_prefill() {
    let model = load("qwen3-tiny");
    let mut engine = Engine::new(&model, limits(16, true)).unwrap();
    let prompt: Vec<u32> = (0..21).map(|i| i * 7 % 1000).collect();
    let sampling = SamplingParams {
        temperature: 1.0,
        ..SamplingParams::default()
    };
    engine
        .submit(Request {
            prompt: prompt.clone(),
            params: params(sampling, 5, 8),
            seed: 3,
        })
        .unwrap();
    let completions = engine.run().unwrap();
    assert_eq!(completions.len(), 8);
    let stats = engine.stats();
    assert_eq!(stats.prefill_passes, 1);
    assert_eq!(
        stats.prefilled_tokens,
        prompt.len(),
        "one prefill for 8 samples"
    );
    let distinct: std::collections::HashSet<&Vec<u32>> =
        completions.iter().map(|c| &c.token_ids).collect();
    assert!(distinct.len() > 1, "the samples differ");
}

/// Slots of different lengths, decoded together after some rows left (their slots taken by
/// others): every row's logits equal a full forward pass over its own sequence.
#[test]
fn the_slot_cache_matches_a_full_forward_at_every_step() {
    for name in ["qwen3-tiny", "llama31-tiny"] {
        let model = load(name);
        let vocab = model.config.vocab_size;
        let sequences: Vec<Vec<u32>> = [30usize, 22, 27, 35]
            .iter()
            .enumerate()
            .map(|(s, &len)| {
                (0..len)
                    .map(|i| ((i * 37 + s * 11 + 5) % 1000) as u32)
                    .collect()
            })
            .collect();
        let prompts: Vec<Vec<u32>> = [5usize, 12, 1, 9]
            .iter()
            .zip(&sequences)
            .map(|(&len, s)| s[..len].to_vec())
            .collect();
        let full: Vec<Vec<f32>> = sequences
            .iter()
            .map(|s| to_f32_vec(model.logits(s).unwrap()))
            .collect();
        let mut prefill = KvCache::new(model.layers.len());
        let batch = TokenBatch::left_padded(&prompts, 0);
        model.forward_hidden(&batch, Some(&mut prefill));
        let mut cache = SlotCache::new(model.layers.len());
        cache.reserve(4, 40, 4, usize::MAX);
        let mut slots: Vec<usize> = Vec::new(); // the sequence in each slot
        for (p, prompt) in prompts.iter().enumerate() {
            cache.admit(&prefill, p, batch.seq - prompt.len()..batch.seq, 1);
            slots.push(p);
        }
        for step in 0..20 {
            if step == 6 {
                // Sequence 1 leaves: the last slot moves into its place.
                let slot = slots.iter().position(|&s| s == 1).unwrap();
                cache.swap_remove(slot);
                slots.swap_remove(slot);
            }
            let ids: Vec<u32> = slots
                .iter()
                .zip(&cache.lengths)
                .map(|(&s, &len)| sequences[s][len])
                .collect();
            let positions = cache.lengths.clone();
            let logits = to_f32_vec(model.lm_logits(model.forward_slots(&ids, &mut cache)));
            for (r, (&s, &position)) in slots.iter().zip(&positions).enumerate() {
                let expected = &full[s][position * vocab..(position + 1) * vocab];
                let diff = max_abs_diff(&logits[r * vocab..(r + 1) * vocab], expected);
                assert!(
                    diff < 1e-4,
                    "{name}: sequence {s} at position {position}, max |diff| {diff}"
                );
            }
        }
    }
}

#[test]
fn limits_bound_the_rows_and_the_cache() {
    let model = load("qwen3-tiny");
    let c = &model.config;
    let bytes_per_position = c.num_hidden_layers * 2 * c.num_key_value_heads * c.head_dim * 4;
    let budget = 4 * 64; // four rows of up to 64 positions
    let engine_limits = EngineLimits {
        max_batch_rows: 16,
        max_cache_tokens: budget,
        ..EngineLimits::default()
    };
    let mut engine = Engine::new(&model, engine_limits).unwrap();
    for (p, prompt) in prompts().into_iter().enumerate() {
        let mut params = params(SamplingParams::greedy(), 20, 1);
        params.stop_token_ids.clear();
        engine
            .submit(Request {
                prompt,
                params,
                seed: p as u64,
            })
            .unwrap();
    }
    let completions = engine.run().unwrap();
    assert_eq!(completions.len(), 8);
    assert!(completions.iter().all(|c| c.token_ids.len() == 20));
    let stats = engine.stats();
    // The longest row reserves 33 + 20 positions: four fit in 256, five do not.
    assert!(stats.peak_rows <= 4, "peak rows {}", stats.peak_rows);
    assert!(
        engine.cache_bytes() <= budget * bytes_per_position,
        "{} bytes allocated for a budget of {budget} positions",
        engine.cache_bytes()
    );

    // Rows arriving one by one grow the cache, within the budget all the same: five rows of
    // up to 33 + 20 positions.
    let budget = 5 * 53;
    let mut engine = Engine::new(
        &model,
        EngineLimits {
            max_batch_rows: 16,
            max_cache_tokens: budget,
            ..EngineLimits::default()
        },
    )
    .unwrap();
    let mut no_stop = params(SamplingParams::greedy(), 20, 1);
    no_stop.stop_token_ids.clear();
    let per_prompt = vec![no_stop; prompts().len()];
    let completions = run_arriving(&mut engine, &prompts(), &per_prompt);
    assert_eq!(completions.len(), 8);
    assert!(engine.stats().peak_rows <= 5);
    assert!(
        engine.cache_bytes() <= budget * bytes_per_position,
        "{} bytes allocated for a budget of {budget} positions",
        engine.cache_bytes()
    );

    // A request that can never fit is refused when submitted, naming the budget.
    let err = engine
        .submit(Request {
            prompt: vec![1; 60],
            params: params(SamplingParams::greedy(), 10, 8),
            seed: 0,
        })
        .unwrap_err()
        .to_string();
    assert!(err.contains("exceed") && err.contains("265"), "{err}");
    let err = engine
        .submit(Request {
            prompt: vec![],
            params: params(SamplingParams::greedy(), 10, 1),
            seed: 0,
        })
        .unwrap_err()
        .to_string();
    assert!(err.contains("empty"), "{err}");
}

#[test]
fn cancelled_requests_free_their_rows() {
    let model = load("qwen3-tiny");
    let mut engine = Engine::new(&model, limits(8, true)).unwrap();
    let mut no_stop = params(SamplingParams::greedy(), 30, 2);
    no_stop.stop_token_ids.clear();
    let ids: Vec<usize> = prompts()
        .into_iter()
        .take(3)
        .map(|prompt| {
            engine
                .submit(Request {
                    prompt,
                    params: no_stop.clone(),
                    seed: 0,
                })
                .unwrap()
        })
        .collect();
    engine.step().unwrap();
    assert_eq!(engine.running_rows(), 6);
    engine.cancel(ids[1]);
    assert_eq!(engine.running_rows(), 4);
    let completions = engine.run().unwrap();
    let mut seen: Vec<usize> = completions.iter().map(|c| c.prompt_index).collect();
    seen.sort();
    assert_eq!(seen, vec![0, 0, 2, 2]);
    // The survivors are unaffected by the cancelled rows' removal.
    let alone = generate_seeded(&model, &prompts()[2..3], &[0], &no_stop).unwrap();
    let survivor = completions
        .iter()
        .find(|c| c.prompt_index == 2 && c.sample_index == 1)
        .unwrap();
    assert_eq!(survivor.token_ids, alone[1].token_ids);
    assert_eq!(survivor.finish_reason, FinishReason::Length);
}
