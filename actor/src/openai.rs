//! The OpenAI-compatible wire format: what `grlo serve` answers and the actor's HTTP engine
//! reads back. Field names and defaults follow OpenAI's API reference for
//! `/v1/completions` and `/v1/chat/completions`; the extensions vLLM and SGLang accept
//! (`top_k`, `stop_token_ids`, `ignore_eos`, `return_token_ids`, ...) are taken too, and
//! SGLang's `/update_weights_from_disk` shapes the reload route.
//!
//! Requests reject unknown fields (as OpenAI does: a misspelt parameter is an error, not a
//! silent default; see [`unknown_field`], since serde cannot deny them next to `flatten`);
//! responses are read leniently (servers add fields of their own).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `prompt`: text, token ids, or a batch of either.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Texts(Vec<String>),
    Ids(Vec<u32>),
    IdBatches(Vec<Vec<u32>>),
}

/// `stop`: one string or several.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

impl Stop {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Stop::One(s) => vec![s],
            Stop::Many(v) => v,
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// The sampling parameters both routes share (flattened into each request).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct Sampling {
    pub max_tokens: Option<usize>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    /// vLLM/SGLang: keep the k most likely tokens; 0 or -1 keeps all.
    pub top_k: Option<i64>,
    pub n: Option<usize>,
    pub seed: Option<u64>,
    pub stop: Option<Stop>,
    /// vLLM/SGLang: token ids that end a completion, besides the model's own stop tokens.
    pub stop_token_ids: Option<Vec<u32>>,
    /// vLLM/SGLang: do not stop at the model's end-of-sequence tokens.
    pub ignore_eos: Option<bool>,
    /// vLLM/SGLang: drop special tokens from the text (default true).
    pub skip_special_tokens: Option<bool>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub user: Option<String>,
    /// Accepted only at their neutral values (0): the engine has no penalties.
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
}

/// The fields of [`Sampling`], for [`unknown_field`].
const SAMPLING_FIELDS: &[&str] = &[
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "n",
    "seed",
    "stop",
    "stop_token_ids",
    "ignore_eos",
    "skip_special_tokens",
    "stream",
    "stream_options",
    "user",
    "presence_penalty",
    "frequency_penalty",
];

/// The fields of [`CompletionRequest`] besides the sampling ones.
pub const COMPLETION_FIELDS: &[&str] = &[
    "model",
    "prompt",
    "logprobs",
    "echo",
    "best_of",
    "return_token_ids",
    "return_tokens_as_token_ids",
];

/// The fields of [`ChatRequest`] besides the sampling ones.
pub const CHAT_FIELDS: &[&str] = &[
    "model",
    "messages",
    "max_completion_tokens",
    "logprobs",
    "top_logprobs",
    "chat_template_kwargs",
];

/// The first field of a request body that is neither a sampling field nor one of `own`.
pub fn unknown_field<'a>(body: &'a serde_json::Value, own: &[&str]) -> Option<&'a str> {
    body.as_object()?
        .keys()
        .map(String::as_str)
        .find(|key| !own.contains(key) && !SAMPLING_FIELDS.contains(key))
}

/// `POST /v1/completions`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct CompletionRequest {
    pub model: Option<String>,
    pub prompt: Prompt,
    #[serde(flatten)]
    pub sampling: Sampling,
    /// Log-probabilities of the chosen token and of this many most likely tokens per position.
    pub logprobs: Option<usize>,
    /// Only `false` (the prompt is not repeated in the answer).
    pub echo: Option<bool>,
    /// Only 1 or the same as `n`.
    pub best_of: Option<usize>,
    /// vLLM: each choice carries the completion's `token_ids` (and `prompt_token_ids`).
    pub return_token_ids: Option<bool>,
    /// vLLM: logprob tokens are written `token_id:<id>` rather than as text.
    pub return_tokens_as_token_ids: Option<bool>,
}

/// One message of `POST /v1/chat/completions`: `content` is text or text parts.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ChatMessageIn {
    pub role: String,
    pub content: Content,
    pub name: Option<String>,
    pub reasoning_content: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

/// `POST /v1/chat/completions`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct ChatRequest {
    pub model: Option<String>,
    pub messages: Vec<ChatMessageIn>,
    #[serde(flatten)]
    pub sampling: Sampling,
    /// The newer name of `max_tokens`.
    pub max_completion_tokens: Option<usize>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<usize>,
    /// vLLM/SGLang: extra variables for the chat template (e.g. `enable_thinking`).
    pub chat_template_kwargs: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
}

/// `logprobs` of a completion choice (the legacy completions format).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct CompletionLogprobs {
    #[serde(default)]
    pub tokens: Vec<String>,
    #[serde(default)]
    pub token_logprobs: Vec<Option<f32>>,
    #[serde(default)]
    pub top_logprobs: Vec<Option<BTreeMap<String, f32>>>,
    #[serde(default)]
    pub text_offset: Vec<usize>,
    /// llama.cpp's form: its chat format's list, each with the token's id.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub content: Vec<ContentLogprob>,
}

/// One token of llama.cpp's `logprobs.content` in a completion.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct ContentLogprob {
    #[serde(default)]
    pub id: Option<u32>,
    #[serde(default)]
    pub token: String,
    /// Null where the server could not write the number (a probability of 0).
    #[serde(default)]
    pub logprob: Option<f32>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct CompletionChoice {
    pub index: usize,
    #[serde(default)]
    pub text: String,
    #[serde(default)]
    pub logprobs: Option<CompletionLogprobs>,
    #[serde(default)]
    pub finish_reason: Option<String>,
    /// vLLM's `return_token_ids`: the completion's tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_ids: Option<Vec<u32>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_token_ids: Option<Vec<u32>>,
}

/// The answer of `/v1/completions` (and each streamed chunk of it).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct CompletionResponse {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub object: String,
    #[serde(default)]
    pub created: u64,
    #[serde(default)]
    pub model: String,
    #[serde(default)]
    pub choices: Vec<CompletionChoice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct TopLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct TokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
    pub top_logprobs: Vec<TopLogprob>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct ChatLogprobs {
    pub content: Vec<TokenLogprob>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct ChatMessageOut {
    pub role: String,
    pub content: String,
}

/// A streamed chat chunk's change to the message.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct Delta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct ChatChoice {
    pub index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<ChatMessageOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delta: Option<Delta>,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: Option<String>,
}

/// The answer of `/v1/chat/completions` (`chat.completion`, or `chat.completion.chunk`
/// when streamed).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct ChatResponse {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChatChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// OpenAI's error body: `{"error": {...}}`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct ErrorDetail {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub param: Option<String>,
    pub code: Option<String>,
}

/// SGLang's `POST /update_weights_from_disk` request (its other fields are accepted and
/// ignored: they tune SGLang's own loader).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct UpdateWeightsRequest {
    pub model_path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_version: Option<String>,
}

/// SGLang's answer to it.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct UpdateWeightsResponse {
    pub success: bool,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub num_paused_requests: usize,
}

/// SGLang's `GET /get_model_info` (the fields grlo reads).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct ModelInfo {
    #[serde(default)]
    pub model_path: String,
    #[serde(default)]
    pub weight_version: Option<String>,
}

/// `GET /v1/models` (read leniently: servers differ in the fields they fill).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct ModelList {
    pub object: String,
    pub data: Vec<ModelCard>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct ModelCard {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub owned_by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_model_len: Option<usize>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_field_lists_name_every_field_of_the_requests() {
        // Every field set, serialised: its keys are what `unknown_field` must accept.
        let sampling = serde_json::to_value(Sampling {
            max_tokens: Some(1),
            temperature: Some(1.0),
            top_p: Some(1.0),
            top_k: Some(1),
            n: Some(1),
            seed: Some(1),
            stop: Some(Stop::One("x".into())),
            stop_token_ids: Some(vec![1]),
            ignore_eos: Some(true),
            skip_special_tokens: Some(true),
            stream: Some(true),
            stream_options: Some(StreamOptions::default()),
            user: Some("u".into()),
            presence_penalty: Some(0.0),
            frequency_penalty: Some(0.0),
        })
        .unwrap();
        let keys: Vec<&str> = sampling
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut expected = SAMPLING_FIELDS.to_vec();
        expected.sort();
        let mut keys = keys;
        keys.sort();
        assert_eq!(keys, expected);
        let body = serde_json::json!({"prompt": "x", "max_tokens": 3, "logprobs": 1});
        assert_eq!(unknown_field(&body, COMPLETION_FIELDS), None);
        let body = serde_json::json!({"prompt": "x", "functions": []});
        assert_eq!(unknown_field(&body, COMPLETION_FIELDS), Some("functions"));
        let body = serde_json::json!({"messages": [], "prompt": "x"});
        assert_eq!(unknown_field(&body, CHAT_FIELDS), Some("prompt"));
    }
}
