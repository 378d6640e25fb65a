//! A Bradley–Terry reward model as a reward source: the conversation (prompt messages plus
//! the response as an assistant message) is re-rendered with the reward model's own chat
//! template and tokenizer, as verl does, and scored at its last token.

use grlo_model::backend::ModelBackend;
use grlo_model::model::to_f32_vec;
use grlo_model::{ChatMessage, HeadKind, Pretrained};

use crate::error::{LearnerError, Result};
use crate::sequences::split_by_tokens;

/// A sequence-classification checkpoint with one label, and its tokenizer.
pub struct RewardModel<B: ModelBackend> {
    pretrained: Pretrained<B>,
    max_length: usize,
    batch_tokens: usize,
}

impl<B: ModelBackend> RewardModel<B> {
    /// Loads a reward model; it must be a one-label sequence classifier with a tokenizer and a
    /// chat template.
    pub fn load(
        location: &str,
        max_length: usize,
        batch_tokens: usize,
        device: &B::Device,
    ) -> Result<Self> {
        let pretrained = Pretrained::<B>::load(location, device)?;
        if pretrained.model.config.head != (HeadKind::SequenceClassification { num_labels: 1 }) {
            return Err(LearnerError::Reward(format!(
                "reward model {location} is a {}, expected a sequence classifier with one label",
                pretrained.model.config.class_name()
            )));
        }
        let tokenizer = pretrained.tokenizer()?;
        if tokenizer.chat_template().is_none() {
            return Err(LearnerError::Reward(format!(
                "reward model {location} has no chat template to render conversations with"
            )));
        }
        Ok(Self::from_pretrained(pretrained, max_length, batch_tokens))
    }

    /// A reward model from a loaded checkpoint, held for inference (in bf16 on CUDA).
    pub fn from_pretrained(
        mut pretrained: Pretrained<B>,
        max_length: usize,
        batch_tokens: usize,
    ) -> Self {
        pretrained.model = pretrained.model.for_inference();
        RewardModel {
            pretrained,
            max_length,
            batch_tokens,
        }
    }

    /// Token ids of a conversation in the reward model's template (no generation prompt), cut
    /// from the left to `max_length` tokens so that the scored last token stays.
    pub fn encode(&self, conversation: &[ChatMessage]) -> Result<Vec<u32>> {
        let tokenizer = self.pretrained.tokenizer()?;
        let mut ids = tokenizer.encode_chat(conversation, false)?;
        if ids.len() > self.max_length {
            ids.drain(..ids.len() - self.max_length);
        }
        if ids.is_empty() {
            return Err(LearnerError::Reward(
                "a conversation rendered to no tokens".into(),
            ));
        }
        Ok(ids)
    }

    /// Scores conversations, batching them by length within the token budget.
    pub fn score(&self, conversations: &[Vec<ChatMessage>]) -> Result<Vec<f32>> {
        let encoded = conversations
            .iter()
            .map(|c| self.encode(c))
            .collect::<Result<Vec<_>>>()?;
        self.score_ids(&encoded)
    }

    /// Scores already-encoded sequences.
    pub fn score_ids(&self, encoded: &[Vec<u32>]) -> Result<Vec<f32>> {
        let mut order: Vec<usize> = (0..encoded.len()).collect();
        order.sort_by_key(|&i| encoded[i].len());
        let lengths: Vec<usize> = order.iter().map(|&i| encoded[i].len()).collect();
        let mut scores = vec![0f32; encoded.len()];
        for range in split_by_tokens(&lengths, self.batch_tokens) {
            let rows: Vec<Vec<u32>> = order[range.clone()]
                .iter()
                .map(|&i| encoded[i].clone())
                .collect();
            let values = to_f32_vec(self.pretrained.model.score_sequences(&rows)?);
            for (k, &i) in order[range].iter().enumerate() {
                scores[i] = values[k];
            }
        }
        Ok(scores)
    }
}
