//! `/v1/completions` and `/v1/chat/completions`: a request's parameters checked and turned
//! into engine requests (one per prompt, its `n` samples sharing a prefill), its samples
//! followed as their tokens arrive, and the answer sent whole or streamed as server-sent
//! events. A client that goes away cancels its requests in the engine.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use grlo_model::engine::Request;
use grlo_model::{ChatMessage, FinishReason, GenerationParams, SamplingParams, Tokenizer};
use serde::Serialize;
use tokio::sync::mpsc;

use super::text::SampleText;
use super::worker::{Command, Event, Ticket};
use super::{Admitted, ApiError, AppState, unix_seconds};
use crate::openai::{
    CHAT_FIELDS, COMPLETION_FIELDS, ChatChoice, ChatLogprobs, ChatMessageOut, ChatRequest,
    ChatResponse, CompletionChoice, CompletionLogprobs, CompletionRequest, CompletionResponse,
    Content, Delta, Prompt, Sampling, TokenLogprob, TopLogprob, Usage, unknown_field,
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
enum Format {
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
struct Job {
    format: Format,
    model: String,
    prompts: Vec<Vec<u32>>,
    params: GenerationParams,
    seeds: Vec<u64>,
    stops: Vec<String>,
    skip_special: bool,
    stream: bool,
    include_usage: bool,
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

/// One sample as its tokens arrive.
struct Sample {
    text: SampleText,
    tokens: Vec<u32>,
    logprobs: Vec<f32>,
    tops: Vec<Vec<(u32, f32)>>,
    finish: Option<&'static str>,
}

/// A job's requests in the engine, until every sample has finished.
struct Running {
    shared: AppState,
    _admitted: Admitted,
    tickets: Vec<Ticket>,
    events: mpsc::UnboundedReceiver<(Ticket, Event)>,
    samples: Vec<Sample>,
    n: usize,
    tokenizer: Arc<Tokenizer>,
}

impl Drop for Running {
    /// Cancels whatever still runs (a client that went away; harmless once finished).
    fn drop(&mut self) {
        for &ticket in &self.tickets {
            let _ = self.shared.commands.send(Command::Cancel { ticket });
        }
    }
}

impl Running {
    /// Waits for the next token: the sample it went to, or `None` once every sample is done.
    async fn next(&mut self) -> Result<Option<usize>, ApiError> {
        loop {
            if self.samples.iter().all(|s| s.finish.is_some()) {
                return Ok(None);
            }
            let Some((ticket, event)) = self.events.recv().await else {
                return Err(ApiError::unavailable());
            };
            let Some(prompt) = self.tickets.iter().position(|&t| t == ticket) else {
                continue;
            };
            let token = match event {
                Event::Token(token) => token,
                Event::Rejected(message) => return Err(ApiError::invalid("", message)),
                Event::Failed(message) => {
                    return Err(ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "server_error",
                        format!("the engine failed: {message}"),
                    ));
                }
            };
            let index = prompt * self.n + token.sample;
            let sample = &mut self.samples[index];
            if sample.finish.is_some() {
                continue; // generated before the engine heard of a stop string
            }
            sample.tokens.push(token.choice.token);
            sample.logprobs.push(token.choice.logprob);
            sample.tops.push(token.top_logprobs);
            if sample.text.push(&self.tokenizer, token.choice.token) {
                sample.finish = Some("stop");
                if token.finished.is_none() {
                    let _ = self.shared.commands.send(Command::FinishSample {
                        ticket,
                        sample: token.sample,
                    });
                }
            } else if let Some(reason) = token.finished {
                sample.finish = Some(match reason {
                    FinishReason::Stop => "stop",
                    FinishReason::Length => "length",
                });
            }
            return Ok(Some(index));
        }
    }

    fn usage(&self, prompts: &[Vec<u32>]) -> Usage {
        let prompt_tokens = prompts.iter().map(Vec::len).sum();
        let completion_tokens = self.samples.iter().map(|s| s.tokens.len()).sum();
        Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
        }
    }
}

impl Job {
    /// Submits the job's prompts to the engine.
    fn start(&self, shared: &AppState, admitted: Admitted) -> Result<Running, ApiError> {
        let (sender, events) = mpsc::unbounded_channel();
        let mut tickets = Vec::with_capacity(self.prompts.len());
        for (prompt, &seed) in self.prompts.iter().zip(&self.seeds) {
            let ticket = shared.next_ticket.fetch_add(1, Ordering::Relaxed);
            tickets.push(ticket);
            let request = Request {
                prompt: prompt.clone(),
                params: self.params.clone(),
                seed,
            };
            shared
                .commands
                .send(Command::Submit {
                    ticket,
                    request,
                    events: sender.clone(),
                })
                .map_err(|_| ApiError::unavailable())?;
        }
        shared
            .metrics
            .prompt_tokens
            .inc_by(self.prompts.iter().map(Vec::len).sum::<usize>() as u64);
        let samples = (0..self.prompts.len() * self.params.n)
            .map(|_| Sample {
                text: SampleText::new(self.stops.clone(), self.skip_special),
                tokens: Vec::new(),
                logprobs: Vec::new(),
                tops: Vec::new(),
                finish: None,
            })
            .collect();
        Ok(Running {
            shared: shared.clone(),
            _admitted: admitted,
            tickets,
            events,
            samples,
            n: self.params.n,
            tokenizer: shared.tokenizer(),
        })
    }

    async fn respond(self, shared: AppState) -> Response {
        let admitted = match shared.admit() {
            Ok(admitted) => admitted,
            Err(e) => return e.into_response(),
        };
        let mut running = match self.start(&shared, admitted) {
            Ok(running) => running,
            Err(e) => return e.into_response(),
        };
        if self.stream {
            return self.stream(running);
        }
        loop {
            match running.next().await {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => return e.into_response(),
            }
        }
        let id = format!("{}-{}", self.id_prefix(), running.tickets[0]);
        let created = unix_seconds();
        let usage = Some(running.usage(&self.prompts));
        let tokenizer = running.tokenizer.clone();
        match self.format {
            Format::Completion {
                logprobs,
                tokens_as_ids,
                return_token_ids,
            } => {
                let choices = running
                    .samples
                    .iter_mut()
                    .enumerate()
                    .map(|(index, sample)| CompletionChoice {
                        index,
                        text: sample.text.text.clone(),
                        logprobs: logprobs
                            .map(|_| completion_logprobs(&tokenizer, sample, 0, tokens_as_ids)),
                        finish_reason: sample.finish.map(String::from),
                        token_ids: return_token_ids.then(|| sample.tokens.clone()),
                        prompt_token_ids: return_token_ids
                            .then(|| self.prompts[index / self.params.n].clone()),
                    })
                    .collect();
                axum::Json(CompletionResponse {
                    id,
                    object: "text_completion".into(),
                    created,
                    model: self.model.clone(),
                    choices,
                    usage,
                })
                .into_response()
            }
            Format::Chat { logprobs } => {
                let choices = running
                    .samples
                    .iter()
                    .enumerate()
                    .map(|(index, sample)| ChatChoice {
                        index,
                        message: Some(ChatMessageOut {
                            role: "assistant".into(),
                            content: sample.text.text.clone(),
                        }),
                        delta: None,
                        logprobs: logprobs.then(|| ChatLogprobs {
                            content: chat_logprobs(&tokenizer, sample, 0),
                        }),
                        finish_reason: sample.finish.map(String::from),
                    })
                    .collect();
                axum::Json(ChatResponse {
                    id,
                    object: "chat.completion".into(),
                    created,
                    model: self.model.clone(),
                    choices,
                    usage,
                })
                .into_response()
            }
        }
    }

    fn id_prefix(&self) -> &'static str {
        match self.format {
            Format::Completion { .. } => "cmpl",
            Format::Chat { .. } => "chatcmpl",
        }
    }

    /// Streams the answer: a chunk per token that adds text (or log-probabilities), a last
    /// chunk per choice with its finish reason, the usage if asked for, then `[DONE]`.
    fn stream(self, mut running: Running) -> Response {
        let (sender, receiver) = mpsc::channel::<Result<SseEvent, Infallible>>(64);
        tokio::spawn(async move {
            let id = format!("{}-{}", self.id_prefix(), running.tickets[0]);
            let created = unix_seconds();
            let chunk = |choices: ChunkChoices| -> SseEvent {
                match choices {
                    ChunkChoices::Completion(choices) => json_event(&CompletionResponse {
                        id: id.clone(),
                        object: "text_completion".into(),
                        created,
                        model: self.model.clone(),
                        choices,
                        usage: None,
                    }),
                    ChunkChoices::Chat(choices) => json_event(&ChatResponse {
                        id: id.clone(),
                        object: "chat.completion.chunk".into(),
                        created,
                        model: self.model.clone(),
                        choices,
                        usage: None,
                    }),
                }
            };
            if let Format::Chat { .. } = self.format {
                for index in 0..running.samples.len() {
                    let first = ChatChoice {
                        index,
                        delta: Some(Delta {
                            role: Some("assistant".into()),
                            content: Some(String::new()),
                        }),
                        ..ChatChoice::default()
                    };
                    if sender
                        .send(Ok(chunk(ChunkChoices::Chat(vec![first]))))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
            loop {
                let index = match running.next().await {
                    Ok(Some(index)) => index,
                    Ok(None) => break,
                    Err(e) => {
                        let body = crate::openai::ErrorBody { error: e.detail };
                        let _ = sender.send(Ok(json_event(&body))).await;
                        return;
                    }
                };
                let tokenizer = running.tokenizer.clone();
                let sample = &mut running.samples[index];
                let finished = sample.finish.is_some();
                let text = sample.text.take_sendable(finished);
                let last = sample.tokens.len() - 1;
                let choices = match self.format {
                    Format::Completion {
                        logprobs,
                        tokens_as_ids,
                        ..
                    } => {
                        if text.is_empty() && !finished && logprobs.is_none() {
                            continue;
                        }
                        ChunkChoices::Completion(vec![CompletionChoice {
                            index,
                            text,
                            logprobs: logprobs.map(|_| {
                                completion_logprobs(&tokenizer, sample, last, tokens_as_ids)
                            }),
                            finish_reason: sample.finish.map(String::from),
                            token_ids: None,
                            prompt_token_ids: None,
                        }])
                    }
                    Format::Chat { logprobs } => {
                        if text.is_empty() && !finished && !logprobs {
                            continue;
                        }
                        ChunkChoices::Chat(vec![ChatChoice {
                            index,
                            delta: Some(Delta {
                                role: None,
                                content: (!text.is_empty()).then_some(text),
                            }),
                            logprobs: logprobs.then(|| ChatLogprobs {
                                content: chat_logprobs(&tokenizer, sample, last),
                            }),
                            finish_reason: sample.finish.map(String::from),
                            message: None,
                        }])
                    }
                };
                if sender.send(Ok(chunk(choices))).await.is_err() {
                    return; // the client went away: `running` is dropped, the engine cancels
                }
            }
            if self.include_usage {
                let usage = running.usage(&self.prompts);
                let event = match self.format {
                    Format::Completion { .. } => json_event(&CompletionResponse {
                        id: id.clone(),
                        object: "text_completion".into(),
                        created,
                        model: self.model.clone(),
                        choices: Vec::new(),
                        usage: Some(usage),
                    }),
                    Format::Chat { .. } => json_event(&ChatResponse {
                        id: id.clone(),
                        object: "chat.completion.chunk".into(),
                        created,
                        model: self.model.clone(),
                        choices: Vec::new(),
                        usage: Some(usage),
                    }),
                };
                let _ = sender.send(Ok(event)).await;
            }
            let _ = sender.send(Ok(SseEvent::default().data("[DONE]"))).await;
        });
        Sse::new(tokio_stream::wrappers::ReceiverStream::new(receiver))
            .keep_alive(KeepAlive::default())
            .into_response()
    }
}

enum ChunkChoices {
    Completion(Vec<CompletionChoice>),
    Chat(Vec<ChatChoice>),
}

fn json_event<T: Serialize>(value: &T) -> SseEvent {
    SseEvent::default().data(serde_json::to_string(value).unwrap_or_else(|_| "{}".into()))
}

/// A token's text as log-probability entries name it.
fn token_text(tokenizer: &Tokenizer, id: u32, as_id: bool) -> String {
    if as_id {
        format!("token_id:{id}")
    } else {
        tokenizer.decode(&[id], false).unwrap_or_default()
    }
}

/// The completions format's log-probabilities of tokens `from..` of a sample.
fn completion_logprobs(
    tokenizer: &Tokenizer,
    sample: &Sample,
    from: usize,
    as_ids: bool,
) -> CompletionLogprobs {
    let mut out = CompletionLogprobs::default();
    let mut offset: usize = (0..from)
        .map(|i| token_text(tokenizer, sample.tokens[i], false).len())
        .sum();
    for i in from..sample.tokens.len() {
        let text = token_text(tokenizer, sample.tokens[i], as_ids);
        out.text_offset.push(offset);
        offset += token_text(tokenizer, sample.tokens[i], false).len();
        out.tokens.push(text);
        out.token_logprobs.push(Some(sample.logprobs[i]));
        out.top_logprobs.push(Some(
            sample.tops[i]
                .iter()
                .map(|&(id, lp)| (token_text(tokenizer, id, as_ids), lp))
                .collect(),
        ));
    }
    out
}

/// The chat format's log-probabilities of tokens `from..` of a sample.
fn chat_logprobs(tokenizer: &Tokenizer, sample: &Sample, from: usize) -> Vec<TokenLogprob> {
    (from..sample.tokens.len())
        .map(|i| {
            let token = token_text(tokenizer, sample.tokens[i], false);
            TokenLogprob {
                bytes: token.as_bytes().to_vec(),
                token,
                logprob: sample.logprobs[i],
                top_logprobs: sample.tops[i]
                    .iter()
                    .map(|&(id, logprob)| {
                        let token = token_text(tokenizer, id, false);
                        TopLogprob {
                            bytes: token.as_bytes().to_vec(),
                            token,
                            logprob,
                        }
                    })
                    .collect(),
            }
        })
        .collect()
}
