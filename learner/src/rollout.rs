//! Generation and scoring: prompts in, scored trajectories out.

use grlo_model::backend::ModelBackend;
use grlo_model::{GenerationParams, Model, SamplingParams, Tokenizer, generate_seeded};

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
}

/// Generates `n` responses for every task, in task order (samples of a task together).
pub fn rollout<B: ModelBackend>(
    policy: &Model<B>,
    tasks: &[PromptTask],
    params: &RolloutParams,
    weight_version: u64,
) -> Result<Vec<Trajectory>> {
    // Similar lengths together: less padding in each generation batch.
    let mut order: Vec<usize> = (0..tasks.len()).collect();
    order.sort_by_key(|&i| tasks[i].prompt_ids.len());
    let per_batch = (params.max_batch_rows / params.n).max(1);
    let generation = GenerationParams {
        sampling: params.sampling.clone(),
        max_new_tokens: params.max_new_tokens,
        n: params.n,
        stop_token_ids: params.stop_token_ids.clone(),
    };
    let mut by_task: Vec<Vec<Trajectory>> = vec![Vec::new(); tasks.len()];
    for chunk in order.chunks(per_batch) {
        let prompts: Vec<Vec<u32>> = chunk.iter().map(|&i| tasks[i].prompt_ids.clone()).collect();
        let seeds: Vec<u64> = chunk.iter().map(|&i| tasks[i].seed).collect();
        for completion in generate_seeded(policy, &prompts, &seeds, &generation)? {
            let task = &tasks[chunk[completion.prompt_index]];
            by_task[chunk[completion.prompt_index]].push(Trajectory {
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
