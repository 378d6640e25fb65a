//! Generation and scoring: prompts in, scored trajectories out.

use grlo_model::backend::ModelBackend;
use grlo_model::{EngineLimits, GenerationParams, Model, SamplingParams, Tokenizer, generate_with};

use crate::data::PromptRecord;
use crate::error::Result;
use crate::reward::{RewardInput, Rewards};
use crate::trajectory::Trajectory;

/// One prompt to answer in a step.
#[derive(Clone, Debug, PartialEq)]
pub struct PromptTask {
    /// The prompt's id in the dataset.
    pub prompt_id: usize,
    /// Its position among the step's prompts.
    pub group: usize,
    pub prompt_ids: Vec<u32>,
    /// Seeds its samples (so a prompt's samples do not depend on what it is batched with).
    pub seed: u64,
}

/// How to generate.
#[derive(Clone, Debug, PartialEq)]
pub struct RolloutParams {
    pub sampling: SamplingParams,
    pub max_new_tokens: usize,
    pub n: usize,
    pub stop_token_ids: Vec<u32>,
    /// Most sequences generated together.
    pub max_batch_rows: usize,
    /// Most KV-cache positions held at once (0: no bound beyond `max_batch_rows`).
    pub max_cache_tokens: usize,
}

/// Generates `n` responses for every task, in task order (samples of a task together), in one
/// continuous batch of at most `max_batch_rows` rows: a row that finishes is refilled from the
/// waiting prompts at once.
pub fn rollout<B: ModelBackend>(
    policy: &Model<B>,
    tasks: &[PromptTask],
    params: &RolloutParams,
    weight_version: u64,
) -> Result<Vec<Trajectory>> {
    let generation = GenerationParams {
        sampling: params.sampling.clone(),
        max_new_tokens: params.max_new_tokens,
        n: params.n,
        stop_token_ids: params.stop_token_ids.clone(),
        top_logprobs: 0,
    };
    let limits = EngineLimits {
        max_batch_rows: params.max_batch_rows.max(params.n),
        max_cache_tokens: match params.max_cache_tokens {
            0 => usize::MAX,
            budget => budget,
        },
        ..EngineLimits::default()
    };
    // Similar lengths admitted together: less padding in each prefill.
    let mut order: Vec<usize> = (0..tasks.len()).collect();
    order.sort_by_key(|&i| tasks[i].prompt_ids.len());
    let prompts: Vec<Vec<u32>> = order.iter().map(|&i| tasks[i].prompt_ids.clone()).collect();
    let seeds: Vec<u64> = order.iter().map(|&i| tasks[i].seed).collect();
    let completions =
        generate_with(policy, &prompts, &seeds, &generation, limits).map_err(|e| match e {
            grlo_model::Error::InvalidInput(message) if message.contains("KV cache") => {
                grlo_model::Error::InvalidInput(format!("{message} (rollout.max_cache_tokens)"))
            }
            other => other,
        })?;
    let mut by_task: Vec<Vec<Trajectory>> = vec![Vec::new(); tasks.len()];
    for completion in completions {
        let index = order[completion.prompt_index];
        let task = &tasks[index];
        by_task[index].push(Trajectory {
            prompt_id: task.prompt_id,
            group: task.group,
            sample_index: completion.sample_index,
            prompt_ids: task.prompt_ids.clone(),
            response_ids: completion.token_ids,
            behaviour_logprobs: completion.logprobs,
            finish_reason: completion.finish_reason,
            reward: None,
            weight_version,
        });
    }
    Ok(by_task.into_iter().flatten().collect())
}

/// Sets the reward of every trajectory: responses are decoded with the policy's tokenizer and
/// scored by the source their prompt asks for.
pub fn score<B: ModelBackend>(
    rewards: &mut Rewards<B>,
    tokenizer: &Tokenizer,
    records: &[PromptRecord],
    trajectories: &mut [Trajectory],
) -> Result<()> {
    let texts = trajectories
        .iter()
        .map(|t| tokenizer.decode(&t.response_ids, true))
        .collect::<Result<Vec<_>, _>>()?;
    let inputs: Vec<RewardInput<'_>> = trajectories
        .iter()
        .zip(&texts)
        .map(|(t, text)| RewardInput {
            record: &records[t.prompt_id],
            response_ids: &t.response_ids,
            response_text: text,
        })
        .collect();
    let scores = rewards.score(&inputs)?;
    for (t, s) in trajectories.iter_mut().zip(scores) {
        t.reward = Some(s);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use grlo_model::backend::Cpu;

    fn policy() -> Model<Cpu> {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/models/qwen3-tiny");
        Model::load(&dir, &Default::default()).expect("the fixture loads")
    }

    fn tasks() -> Vec<PromptTask> {
        (0..5)
            .map(|i| PromptTask {
                prompt_id: i,
                group: i,
                prompt_ids: (0..3 + 4 * i)
                    .map(|t| (t * 31 + i * 7) as u32 % 1000)
                    .collect(),
                seed: 100 + i as u64,
            })
            .collect()
    }

    fn params(max_batch_rows: usize, max_cache_tokens: usize) -> RolloutParams {
        RolloutParams {
            sampling: SamplingParams {
                temperature: 1.0,
                ..SamplingParams::default()
            },
            max_new_tokens: 12,
            n: 2,
            stop_token_ids: vec![2],
            max_batch_rows,
            max_cache_tokens,
        }
    }

    #[test]
    fn trajectories_do_not_depend_on_the_batch_limits() {
        let policy = policy();
        let wide = rollout(&policy, &tasks(), &params(64, 0), 3).unwrap();
        let narrow = rollout(&policy, &tasks(), &params(2, 0), 3).unwrap();
        let budgeted = rollout(&policy, &tasks(), &params(64, 2 * 40), 3).unwrap();
        assert_eq!(wide.len(), 10);
        for (other, name) in [
            (&narrow, "max_batch_rows = 2"),
            (&budgeted, "max_cache_tokens"),
        ] {
            for (a, b) in wide.iter().zip(other) {
                assert_eq!((a.prompt_id, a.sample_index), (b.prompt_id, b.sample_index));
                assert_eq!(a.response_ids, b.response_ids, "{name}");
            }
        }
    }

    #[test]
    fn a_prompt_over_the_cache_budget_names_the_key() {
        // The longest prompt (19 tokens) + 12 new tokens, twice, exceeds 40 positions.
        let err = rollout(&policy(), &tasks(), &params(64, 40), 0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("rollout.max_cache_tokens"), "{err}");
    }
}
