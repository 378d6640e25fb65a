//! Reward sources behind one interface: a prompt's `reward_model.style` picks a Bradley–Terry
//! reward model (`model`) or a rule verifier (`rule`); tests and custom tasks can plug in
//! their own function.

pub mod model;
pub mod rule;

use grlo_model::ChatMessage;
use grlo_model::backend::ModelBackend;

use crate::data::{PromptRecord, RewardStyle};
use crate::error::{LearnerError, Result};
pub use model::RewardModel;

/// What a reward source sees of one sample.
pub struct RewardInput<'a> {
    pub record: &'a PromptRecord,
    pub response_ids: &'a [u32],
    /// The response decoded with the policy's tokenizer, special tokens removed.
    pub response_text: &'a str,
}

/// Any way of turning samples into scalar rewards.
pub trait RewardFunction: Send {
    fn score(&mut self, inputs: &[RewardInput<'_>]) -> Result<Vec<f32>>;
}

/// The reward sources of a run.
pub struct Rewards<B: ModelBackend> {
    pub model: Option<RewardModel<B>>,
    /// Replaces both built-in sources when set.
    pub custom: Option<Box<dyn RewardFunction>>,
}

impl<B: ModelBackend> Rewards<B> {
    pub fn new(model: Option<RewardModel<B>>) -> Self {
        Rewards {
            model,
            custom: None,
        }
    }

    pub fn custom(function: Box<dyn RewardFunction>) -> Self {
        Rewards {
            model: None,
            custom: Some(function),
        }
    }

    /// Scores every input with the source its prompt asks for.
    pub fn score(&mut self, inputs: &[RewardInput<'_>]) -> Result<Vec<f32>> {
        if let Some(custom) = self.custom.as_mut() {
            return custom.score(inputs);
        }
        let mut scores = vec![0f32; inputs.len()];
        let mut by_model = Vec::new();
        let mut conversations = Vec::new();
        for (i, input) in inputs.iter().enumerate() {
            match input.record.style {
                RewardStyle::Rule => {
                    let truth = input.record.ground_truth.as_deref().unwrap_or("");
                    scores[i] = rule::rule_reward(
                        &input.record.data_source,
                        input.record.ability.as_deref(),
                        input.response_text,
                        truth,
                    );
                }
                RewardStyle::Model => {
                    let mut conversation = input.record.messages.clone();
                    conversation.push(ChatMessage::assistant(input.response_text));
                    conversations.push(conversation);
                    by_model.push(i);
                }
            }
        }
        if !by_model.is_empty() {
            let Some(model) = &self.model else {
                return Err(LearnerError::Reward(format!(
                    "prompt {} asks for a reward model (style model) but none is configured: set reward.model",
                    inputs[by_model[0]].record.id
                )));
            };
            for (i, score) in by_model.into_iter().zip(model.score(&conversations)?) {
                scores[i] = score;
            }
        }
        Ok(scores)
    }
}
