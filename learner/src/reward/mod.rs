//! Reward sources behind one interface: a prompt's `reward_model.style` picks a Bradley–Terry
//! reward model (`model`) or a rule verifier (`rule`); tests and custom tasks can plug in
//! their own function.

pub mod code;
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
        let mut by_code = Vec::new();
        for (i, input) in inputs.iter().enumerate() {
            let record = input.record;
            match record.style {
                RewardStyle::Rule
                    if code::is_code(&record.data_source, record.ability.as_deref()) =>
                {
                    by_code.push(i);
                }
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
        if !by_code.is_empty() {
            let pairs: Vec<(&str, &str)> = by_code
                .iter()
                .map(|&i| {
                    let input = &inputs[i];
                    (
                        input.response_text,
                        input.record.ground_truth.as_deref().unwrap_or(""),
                    )
                })
                .collect();
            let rewards = code::code_rewards(&pairs)
                .map_err(|e| LearnerError::Reward(format!("code prompts: {e}")))?;
            for (i, reward) in by_code.into_iter().zip(rewards) {
                scores[i] = reward;
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

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    fn record(id: usize, data_source: &str, ground_truth: &str) -> PromptRecord {
        PromptRecord {
            id,
            line: id + 1,
            messages: vec![ChatMessage::new("user", "Solve it.")],
            style: RewardStyle::Rule,
            ground_truth: Some(ground_truth.into()),
            data_source: data_source.into(),
            ability: None,
            extra_info: Value::Null,
        }
    }

    /// Code prompts run their tests in the sandbox beside math prompts, each in its place.
    #[test]
    fn code_prompts_are_scored_by_their_tests() {
        let records = [
            record(0, "codecontests", "assert add(2, 2) == 4"),
            record(1, "openai/gsm8k", "4"),
            record(2, "codecontests", "assert add(2, 2) == 4"),
            record(3, "taco", r#"{"inputs": ["3\n"], "outputs": ["9\n"]}"#),
        ];
        let responses = [
            "```python\ndef add(a, b):\n    return a + b\n```",
            "\\boxed{4}",
            "def add(a, b):\n    return a * b + 1\n",
            "n = int(input())\nprint(n * n)",
        ];
        let inputs: Vec<RewardInput<'_>> = records
            .iter()
            .zip(responses)
            .map(|(record, text)| RewardInput {
                record,
                response_ids: &[],
                response_text: text,
            })
            .collect();
        let mut rewards = Rewards::<grlo_model::backend::Cpu>::new(None);
        assert_eq!(rewards.score(&inputs).unwrap(), [1.0, 1.0, 0.0, 1.0]);
    }
}
