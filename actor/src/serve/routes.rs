//! `/v1/completions` and `/v1/chat/completions`: a request's parameters checked and turned
//! into a [`Job`] for the engine (one request per prompt, its `n` samples sharing a prefill);
//! `answer.rs` runs it.

use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use grlo_model::{ChatMessage, GenerationParams, SamplingParams, Tokenizer};

use super::{ApiError, AppState};
use crate::openai::{
    CHAT_FIELDS, COMPLETION_FIELDS, ChatRequest, CompletionRequest, Content, Prompt, Sampling,
    unknown_field,
};

/// Most log-probabilities per position a request may ask for.
const MAX_TOP_LOGPROBS: usize = 20;
/// Most stop strings in one request.
const MAX_STOPS: usize = 16;

pub async fn completions(
    State(shared): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let started = Instant::now();
    let job = completion_job(&shared, &headers, &body);
    answer(shared, "completions", started, job).await
}

pub async fn chat_completions(
    State(shared): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let started = Instant::now();
    let job = chat_job(&shared, &headers, &body);
    answer(shared, "chat_completions", started, job).await
}

/// Runs a checked job (or answers why it was refused), counted under `route` from `started`.
async fn answer(
    shared: AppState,
    route: &str,
    started: Instant,
    job: Result<Job, ApiError>,
) -> Response {
    let response = match job {
        Ok(job) => job.respond(shared.clone()).await,
        Err(e) => e.into_response(),
    };
    shared.record(route, response.status(), started);
    response
}

/// Which route's format the answer takes.
#[derive(Clone, Copy, Debug)]
pub(super) enum Format {
    Completion {
        /// `logprobs`: the chosen token's and this many alternatives.
        logprobs: Option<usize>,
        tokens_as_ids: bool,
        return_token_ids: bool,
    },
    Chat {
        logprobs: bool,
    },
}

/// A checked request, ready for the engine.
pub(super) struct Job {
    pub format: Format,
    pub model: String,
    pub prompts: Vec<Vec<u32>>,
    pub params: GenerationParams,
    pub seeds: Vec<u64>,
    pub stops: Vec<String>,
    pub skip_special: bool,
    pub stream: bool,
    pub include_usage: bool,
}

/// Parses a body: JSON, no unknown fields, then the route's request type.
fn parse<T: serde::de::DeserializeOwned>(body: &[u8], own: &[&str]) -> Result<T, ApiError> {
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid("", format!("the request body is not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::invalid(
            "",
            "the request body must be a JSON object",
        ));
    }
    if let Some(field) = unknown_field(&value, own) {
        return Err(ApiError::invalid(
            field,
            format!("Unrecognized request argument supplied: {field}"),
        ));
    }
    serde_json::from_value(value).map_err(|e| ApiError::invalid("", format!("{e}")))
}

fn completion_job(shared: &AppState, headers: &HeaderMap, body: &[u8]) -> Result<Job, ApiError> {
    shared.authorize(headers)?;
    let request: CompletionRequest = parse(body, COMPLETION_FIELDS)?;
    let tokenizer = shared.tokenizer();
    let encode = |text: &str| {
        tokenizer
            .encode(text, true)
            .map_err(|e| ApiError::invalid("prompt", format!("the prompt: {e}")))
    };
    let prompts: Vec<Vec<u32>> = match &request.prompt {
        Prompt::Text(text) => vec![encode(text)?],
        Prompt::Texts(texts) => texts.iter().map(|t| encode(t)).collect::<Result<_, _>>()?,
        Prompt::Ids(ids) => vec![ids.clone()],
        Prompt::IdBatches(batches) => batches.clone(),
    };
    if request.echo == Some(true) {
        return Err(ApiError::invalid("echo", "echo is not supported"));
    }
    let n = request.sampling.n.unwrap_or(1);
    if request.best_of.is_some_and(|b| b != 1 && b != n) {
        return Err(ApiError::invalid(
            "best_of",
            "best_of is supported only equal to n (every sample is returned)",
        ));
    }
    if let Some(k) = request.logprobs
        && k > MAX_TOP_LOGPROBS
    {
        return Err(ApiError::invalid(
            "logprobs",
            format!("logprobs = {k} is above the most this server reports, {MAX_TOP_LOGPROBS}"),
        ));
    }
    let format = Format::Completion {
        logprobs: request.logprobs,
        tokens_as_ids: request.return_tokens_as_token_ids == Some(true),
        return_token_ids: request.return_token_ids == Some(true),
    };
    job(
        shared,
        &tokenizer,
        format,
        request.model,
        prompts,
        &request.sampling,
        request.sampling.max_tokens.unwrap_or(16),
        request.logprobs.unwrap_or(0),
    )
}

fn chat_job(shared: &AppState, headers: &HeaderMap, body: &[u8]) -> Result<Job, ApiError> {
    shared.authorize(headers)?;
    let request: ChatRequest = parse(body, CHAT_FIELDS)?;
    if request.messages.is_empty() {
        return Err(ApiError::invalid("messages", "messages is empty"));
    }
    let tokenizer = shared.tokenizer();
    let mut messages = Vec::with_capacity(request.messages.len());
    for (i, m) in request.messages.iter().enumerate() {
        let content = match &m.content {
            Content::Text(text) => text.clone(),
            Content::Parts(parts) => {
                let mut text = String::new();
                for part in parts {
                    match (part.kind.as_str(), &part.text) {
                        ("text", Some(t)) => text.push_str(t),
                        (kind, _) => {
                            return Err(ApiError::invalid(
                                "messages",
                                format!(
                                    "messages[{i}]: content parts of type \"{kind}\" are not \
                                     supported (text only)"
                                ),
                            ));
                        }
                    }
                }
                text
            }
        };
        let mut message = ChatMessage::new(m.role.clone(), content);
        message.reasoning_content = m.reasoning_content.clone();
        messages.push(message);
    }
    let template = tokenizer.chat_template().ok_or_else(|| {
        ApiError::invalid(
            "messages",
            "this model has no chat template; use /v1/completions",
        )
    })?;
    let kwargs = request.chat_template_kwargs.clone().unwrap_or_default();
    let text = template
        .render_with_kwargs(&messages, true, &kwargs)
        .map_err(|e| ApiError::invalid("messages", format!("the chat template: {e}")))?;
    let prompt = tokenizer
        .encode(&text, false)
        .map_err(|e| ApiError::invalid("messages", format!("the prompt: {e}")))?;
    if request.top_logprobs.is_some() && request.logprobs != Some(true) {
        return Err(ApiError::invalid(
            "top_logprobs",
            "top_logprobs needs logprobs = true",
        ));
    }
    let top = request.top_logprobs.unwrap_or(0);
    if top > MAX_TOP_LOGPROBS {
        return Err(ApiError::invalid(
            "top_logprobs",
            format!(
                "top_logprobs = {top} is above the most this server reports, {MAX_TOP_LOGPROBS}"
            ),
        ));
    }
    // Without max_tokens a chat answer may use the rest of the context (as in vLLM).
    let rest = shared
        .context_length
        .saturating_sub(prompt.len())
        .min(shared.config.max_tokens);
    let max_tokens = request
        .max_completion_tokens
        .or(request.sampling.max_tokens)
        .unwrap_or(rest);
    job(
        shared,
        &tokenizer,
        Format::Chat {
            logprobs: request.logprobs == Some(true),
        },
        request.model,
        vec![prompt],
        &request.sampling,
        max_tokens,
        top,
    )
}

/// The checks both routes share, and the engine's parameters.
#[allow(clippy::too_many_arguments)]
fn job(
    shared: &AppState,
    tokenizer: &Tokenizer,
    format: Format,
    model: Option<String>,
    prompts: Vec<Vec<u32>>,
    s: &Sampling,
    max_tokens: usize,
    top_logprobs: usize,
) -> Result<Job, ApiError> {
    let config = &shared.config;
    if prompts.is_empty() || prompts.iter().any(Vec::is_empty) {
        return Err(ApiError::invalid("prompt", "the prompt is empty"));
    }
    if let Some(bad) = prompts
        .iter()
        .flatten()
        .find(|&&id| id as usize >= shared.vocab_size)
    {
        return Err(ApiError::invalid(
            "prompt",
            format!(
                "token id {bad} is outside the vocabulary ({})",
                shared.vocab_size
            ),
        ));
    }
    let n = s.n.unwrap_or(1);
    if n == 0 || n > config.max_n {
        return Err(ApiError::invalid(
            "n",
            format!("n = {n}: this server takes 1 to {} (--max-n)", config.max_n),
        ));
    }
    if max_tokens == 0 {
        return Err(ApiError::invalid(
            "max_tokens",
            "max_tokens must be at least 1",
        ));
    }
    if max_tokens > config.max_tokens {
        return Err(ApiError::invalid(
            "max_tokens",
            format!(
                "max_tokens = {max_tokens} is above this server's limit of {} (--max-tokens)",
                config.max_tokens
            ),
        ));
    }
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    if longest + max_tokens > shared.context_length {
        return Err(ApiError::invalid(
            "max_tokens",
            format!(
                "This model's maximum context length is {} tokens. However, you requested {} \
                 tokens ({longest} in the prompt, {max_tokens} for the completion).",
                shared.context_length,
                longest + max_tokens
            ),
        )
        .code("context_length_exceeded"));
    }
    let temperature = s.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid(
            "temperature",
            format!("temperature = {temperature} is outside [0, 2]"),
        ));
    }
    let top_p = s.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid(
            "top_p",
            format!("top_p = {top_p} is outside (0, 1]"),
        ));
    }
    for (name, value) in [
        ("presence_penalty", s.presence_penalty),
        ("frequency_penalty", s.frequency_penalty),
    ] {
        if value.is_some_and(|v| v != 0.0) {
            return Err(ApiError::invalid(
                name,
                format!("{name} is not supported (only 0)"),
            ));
        }
    }
    let stops = s.stop.clone().map(|s| s.into_vec()).unwrap_or_default();
    if stops.len() > MAX_STOPS {
        return Err(ApiError::invalid(
            "stop",
            format!("{} stop sequences: at most {MAX_STOPS}", stops.len()),
        ));
    }
    let mut stop_token_ids = if s.ignore_eos == Some(true) {
        Vec::new()
    } else {
        tokenizer.stop_token_ids().to_vec()
    };
    for &id in s.stop_token_ids.iter().flatten() {
        if id as usize >= shared.vocab_size {
            return Err(ApiError::invalid(
                "stop_token_ids",
                format!(
                    "token id {id} is outside the vocabulary ({})",
                    shared.vocab_size
                ),
            ));
        }
        if !stop_token_ids.contains(&id) {
            stop_token_ids.push(id);
        }
    }
    if s.stream_options.is_some() && s.stream != Some(true) {
        return Err(ApiError::invalid(
            "stream_options",
            "stream_options is only allowed with stream = true",
        ));
    }
    let params = GenerationParams {
        sampling: SamplingParams {
            greedy: temperature == 0.0,
            temperature: if temperature == 0.0 { 1.0 } else { temperature },
            top_p,
            top_k: s.top_k.map(|k| k.max(0) as usize).unwrap_or(0),
            seed: 0,
        },
        max_new_tokens: max_tokens,
        n,
        stop_token_ids,
        top_logprobs,
    };
    grlo_model::engine::check_params(&params).map_err(|e| ApiError::invalid("", e.to_string()))?;
    // The samples of prompt i draw from `prompt_seed(seed, i)`, like `grlo model generate`.
    let seed = s.seed.unwrap_or_else(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        nanos ^ shared.next_ticket.load(Ordering::Relaxed).rotate_left(32)
    });
    let seeds = (0..prompts.len())
        .map(|i| grlo_model::generate::prompt_seed(seed, i))
        .collect();
    Ok(Job {
        format,
        model: model.unwrap_or_else(|| config.served_name.clone()),
        prompts,
        params,
        seeds,
        stops,
        skip_special: s.skip_special_tokens.unwrap_or(true),
        stream: s.stream == Some(true),
        include_usage: s.stream_options.as_ref().is_some_and(|o| o.include_usage),
    })
}
