//! Trajectories: the plain data that flows from generation through scoring to training.

use grlo_model::FinishReason;
use serde::{Deserialize, Serialize};

/// One sampled response to one prompt, with what the learner needs to train on it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Trajectory {
    /// The prompt's id in the dataset.
    pub prompt_id: usize,
    /// Which prompt of the step this answers; the `n` samples of a prompt share it.
    pub group: usize,
    pub sample_index: usize,
    pub prompt_ids: Vec<u32>,
    pub response_ids: Vec<u32>,
    /// Log-probability of each response token under the policy that generated it.
    pub behaviour_logprobs: Vec<f32>,
    pub finish_reason: FinishReason,
    /// The scalar reward, once scored.
    pub reward: Option<f32>,
    /// The weight version that generated it.
    pub weight_version: u64,
}
