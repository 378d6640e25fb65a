//! A [`Job`]'s run: its requests in the engine, its samples followed as their tokens arrive
//! (text, stop strings, log-probabilities), and the answer sent whole or streamed as
//! server-sent events. A client that goes away cancels its requests in the engine.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use grlo_model::engine::Request;
use grlo_model::{FinishReason, Tokenizer};
use serde::Serialize;
use tokio::sync::mpsc;

use super::routes::{Format, Job};
use super::text::SampleText;
use super::worker::{Command, Event, Ticket};
use super::{Admitted, ApiError, AppState, unix_seconds};
use crate::openai::{
    ChatChoice, ChatLogprobs, ChatMessageOut, ChatResponse, CompletionChoice, CompletionLogprobs,
    CompletionResponse, Delta, TokenLogprob, TopLogprob, Usage,
};

/// One sample as its tokens arrive.
struct Sample {
    text: SampleText,
    tokens: Vec<u32>,
    logprobs: Vec<f32>,
    tops: Vec<Vec<(u32, f32)>>,
    finish: Option<&'static str>,
    /// Where each token's text starts (the completions format's `text_offset`), for the
    /// tokens up to the last one asked for.
    offsets: Vec<usize>,
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
                offsets: Vec::new(),
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

    pub(super) async fn respond(self, shared: AppState) -> Response {
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
    sample: &mut Sample,
    from: usize,
    as_ids: bool,
) -> CompletionLogprobs {
    // Each token's offset once, as the stream reaches it (not the sum over the whole text
    // again for every streamed token).
    while sample.offsets.len() < sample.tokens.len() {
        let offset = match sample.offsets.len() {
            0 => 0,
            i => sample.offsets[i - 1] + token_text(tokenizer, sample.tokens[i - 1], false).len(),
        };
        sample.offsets.push(offset);
    }
    let mut out = CompletionLogprobs::default();
    for i in from..sample.tokens.len() {
        out.text_offset.push(sample.offsets[i]);
        out.tokens
            .push(token_text(tokenizer, sample.tokens[i], as_ids));
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
