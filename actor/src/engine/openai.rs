//! The HTTP engine (`rollout.engine = "openai"`): the task's prompts go to OpenAI-compatible
//! servers (vLLM, SGLang, `grlo serve`) as `/v1/completions` requests with token-id prompts,
//! at most `rollout.max_in_flight` at once, spread over `rollout.endpoints`. The answer's
//! token ids and log-probabilities become the trajectories' responses and behaviour
//! log-probabilities (`return_token_ids`, or vLLM's `return_tokens_as_token_ids`).
//!
//! A new weight version reaches an endpoint through SGLang's `POST /update_weights_from_disk
//! {"model_path": <the version's checkpoint directory>}` before the endpoint gets a request of
//! it; the directory must be one the server can read at the same path (a shared volume).
//! An endpoint that fails (refused connection, 5xx, 429, a broken answer) is left alone for a
//! while and the request goes to another, or to the same once it is back, until the task's
//! lease ends; an endpoint that comes back is reloaded first (it may have restarted on its
//! initial weights).

use std::sync::Arc;
use std::time::{Duration, Instant};

use grlo_learner::rollout::{PromptTask, RolloutParams};
use grlo_learner::trajectory::Trajectory;
use grlo_model::FinishReason;
use serde_json::json;
use tokio::sync::{Mutex, Semaphore};

use super::Generate;
use crate::openai::{CompletionChoice, CompletionResponse, ModelList, UpdateWeightsResponse};

/// One server and what it serves.
struct Endpoint {
    url: String,
    state: Mutex<Serving>,
}

#[derive(Default)]
struct Serving {
    /// The checkpoint directory it was last reloaded with, and the model name it lists.
    loaded: Option<(String, String)>,
    /// Not to be called before this (it failed recently).
    down_until: Option<Instant>,
    /// How long it is left alone after its next failure.
    backoff: Duration,
}

/// Generation on OpenAI-compatible servers with one weight version.
pub(crate) struct HttpEngine {
    endpoints: Vec<Arc<Endpoint>>,
    client: reqwest::Client,
    authorization: Option<String>,
    /// The version's checkpoint directory, as the servers see it.
    model_path: String,
    version: u64,
    max_in_flight: usize,
    runtime: tokio::runtime::Handle,
}

/// Why a call failed, and whether another try may succeed.
#[derive(Debug)]
struct CallError {
    message: String,
    retryable: bool,
}

impl CallError {
    fn retry(message: impl Into<String>) -> Self {
        CallError {
            message: message.into(),
            retryable: true,
        }
    }

    fn fatal(message: impl Into<String>) -> Self {
        CallError {
            message: message.into(),
            retryable: false,
        }
    }
}

impl HttpEngine {
    pub(crate) fn new(
        endpoints: &[String],
        model_path: String,
        version: u64,
        max_in_flight: usize,
        authorization: Option<String>,
    ) -> anyhow::Result<Self> {
        if endpoints.is_empty() {
            anyhow::bail!("rollout.engine = \"openai\" needs rollout.endpoints");
        }
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| anyhow::anyhow!("an HTTP client: {e}"))?;
        Ok(HttpEngine {
            endpoints: endpoints
                .iter()
                .map(|url| {
                    Arc::new(Endpoint {
                        url: url.trim_end_matches('/').to_string(),
                        state: Mutex::new(Serving::default()),
                    })
                })
                .collect(),
            client,
            authorization,
            model_path,
            version,
            max_in_flight: max_in_flight.max(1),
            runtime: tokio::runtime::Handle::current(),
        })
    }

    fn request(&self, builder: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.authorization {
            Some(value) => builder.header(reqwest::header::AUTHORIZATION, value),
            None => builder,
        }
    }

    /// Makes `endpoint` serve this version (reloading it when it does not yet); returns the
    /// model name to send it.
    async fn ensure_loaded(&self, endpoint: &Endpoint) -> Result<String, CallError> {
        let mut state = endpoint.state.lock().await;
        if let Some((path, name)) = &state.loaded
            && *path == self.model_path
        {
            return Ok(name.clone());
        }
        let url = format!("{}/update_weights_from_disk", endpoint.url);
        let body = json!({
            "model_path": self.model_path,
            "weight_version": format!("v{}", self.version),
        });
        let (status, text) = self.post_json(&url, &body).await?;
        let answer: Option<UpdateWeightsResponse> = serde_json::from_str(&text).ok();
        match answer {
            Some(a) if status.is_success() && a.success => {}
            Some(a) if refused(status) => {
                return Err(CallError::fatal(format!(
                    "{url} could not load {}: {}",
                    self.model_path, a.message
                )));
            }
            _ => {
                return Err(CallError::retry(format!(
                    "{url} answered {status}: {}",
                    text.chars().take(300).collect::<String>()
                )));
            }
        }
        let name = self.model_name(endpoint).await?;
        tracing::info!(endpoint = %endpoint.url, version = self.version, "engine reloaded");
        state.loaded = Some((self.model_path.clone(), name.clone()));
        Ok(name)
    }

    /// The first model `/v1/models` lists (vLLM refuses requests for other names).
    async fn model_name(&self, endpoint: &Endpoint) -> Result<String, CallError> {
        let url = format!("{}/v1/models", endpoint.url);
        let response = self
            .request(self.client.get(&url))
            .send()
            .await
            .map_err(|e| CallError::retry(format!("{url}: {e}")))?;
        if !response.status().is_success() {
            return Err(CallError::retry(format!(
                "{url} answered {}",
                response.status()
            )));
        }
        let list: ModelList = response
            .json()
            .await
            .map_err(|e| CallError::retry(format!("{url}: {e}")))?;
        list.data
            .first()
            .map(|m| m.id.clone())
            .ok_or_else(|| CallError::retry(format!("{url} lists no model")))
    }

    /// The endpoint to try next for request `index`: the first one that is up, starting from
    /// `index` (so requests spread); or how long until one is.
    async fn pick(&self, index: usize) -> Result<Arc<Endpoint>, Duration> {
        let now = Instant::now();
        let mut soonest = Duration::from_secs(2);
        for k in 0..self.endpoints.len() {
            let endpoint = &self.endpoints[(index + k) % self.endpoints.len()];
            let state = endpoint.state.lock().await;
            match state.down_until {
                Some(until) if until > now => soonest = soonest.min(until - now),
                _ => return Ok(endpoint.clone()),
            }
        }
        Err(soonest)
    }

    async fn mark_down(&self, endpoint: &Endpoint, error: &CallError) {
        let mut state = endpoint.state.lock().await;
        state.backoff =
            (state.backoff * 2).clamp(Duration::from_millis(100), Duration::from_secs(5));
        state.down_until = Some(Instant::now() + state.backoff);
        state.loaded = None; // it may come back on other weights
        tracing::warn!(endpoint = %endpoint.url, error = %error.message, "engine call failed");
    }

    async fn mark_up(&self, endpoint: &Endpoint) {
        let mut state = endpoint.state.lock().await;
        state.down_until = None;
        state.backoff = Duration::ZERO;
    }

    /// One prompt's `n` samples, retried over the endpoints until `deadline`.
    async fn generate(
        &self,
        index: usize,
        task: &PromptTask,
        params: &RolloutParams,
        deadline: Instant,
    ) -> anyhow::Result<Vec<Trajectory>> {
        let mut last_error = String::from("no endpoint answered");
        loop {
            if Instant::now() >= deadline {
                anyhow::bail!(
                    "prompt {}: no engine answered before the lease ended; last: {last_error}",
                    task.prompt_id
                );
            }
            let endpoint = match self.pick(index).await {
                Ok(endpoint) => endpoint,
                Err(wait) => {
                    tokio::time::sleep(wait.min(deadline - Instant::now())).await;
                    continue;
                }
            };
            let outcome = match self.ensure_loaded(&endpoint).await {
                Ok(model) => self.complete(&endpoint, &model, task, params).await,
                Err(e) => Err(e),
            };
            match outcome {
                Ok(trajectories) => {
                    self.mark_up(&endpoint).await;
                    return Ok(trajectories);
                }
                Err(e) if e.retryable => {
                    self.mark_down(&endpoint, &e).await;
                    last_error = e.message;
                }
                Err(e) => anyhow::bail!("prompt {}: {}", task.prompt_id, e.message),
            }
        }
    }

    /// POSTs `body` as JSON: the status and the answer's text. A refused connection or an
    /// answer that breaks off may succeed on another try.
    async fn post_json(
        &self,
        url: &str,
        body: &serde_json::Value,
    ) -> Result<(reqwest::StatusCode, String), CallError> {
        let response = self
            .request(self.client.post(url).json(body))
            .send()
            .await
            .map_err(|e| CallError::retry(format!("{url}: {e}")))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| CallError::retry(format!("{url}: the answer broke off: {e}")))?;
        Ok((status, text))
    }

    /// One `/v1/completions` call.
    async fn complete(
        &self,
        endpoint: &Endpoint,
        model: &str,
        task: &PromptTask,
        params: &RolloutParams,
    ) -> Result<Vec<Trajectory>, CallError> {
        let url = format!("{}/v1/completions", endpoint.url);
        let body = completion_body(model, task, params);
        let (status, text) = self.post_json(&url, &body).await?;
        if !status.is_success() {
            let message = format!(
                "{url} answered {status}: {}",
                text.chars().take(500).collect::<String>()
            );
            return Err(if refused(status) {
                CallError::fatal(message)
            } else {
                CallError::retry(message)
            });
        }
        let answer: CompletionResponse = serde_json::from_str(&text)
            .map_err(|e| CallError::retry(format!("{url}: an answer that does not parse: {e}")))?;
        trajectories(answer, task, params, self.version)
            .map_err(|e| CallError::retry(format!("{url}: {e}")))
    }
}

/// Whether a server refused the request itself (a 4xx other than 429): refused anywhere, where
/// a busy or failing server is not.
fn refused(status: reqwest::StatusCode) -> bool {
    status.is_client_error() && status != reqwest::StatusCode::TOO_MANY_REQUESTS
}

/// The request for one prompt's samples. `logprobs: 0` asks for the chosen tokens'
/// log-probabilities (raw model log-probabilities in vLLM's default `logprobs_mode` and in
/// `grlo serve`); the token ids come back through `return_token_ids` (vLLM ≥ 0.10.2,
/// `grlo serve`) or as `token_id:<id>` strings (`return_tokens_as_token_ids`).
fn completion_body(model: &str, task: &PromptTask, params: &RolloutParams) -> serde_json::Value {
    let s = &params.sampling;
    let mut body = json!({
        "model": model,
        "prompt": task.prompt_ids,
        "max_tokens": params.max_new_tokens,
        "temperature": if s.greedy { 0.0 } else { s.temperature },
        "top_p": s.top_p,
        "n": params.n,
        "seed": task.seed,
        "stop_token_ids": params.stop_token_ids,
        "logprobs": 0,
        "skip_special_tokens": false,
        "return_token_ids": true,
        "return_tokens_as_token_ids": true,
    });
    if s.top_k > 0 {
        body["top_k"] = json!(s.top_k);
    }
    body
}

/// The samples of one answer, in sample order.
fn trajectories(
    answer: CompletionResponse,
    task: &PromptTask,
    params: &RolloutParams,
    version: u64,
) -> Result<Vec<Trajectory>, String> {
    let mut choices = answer.choices;
    if choices.len() != params.n {
        return Err(format!(
            "{} choices for n = {} samples",
            choices.len(),
            params.n
        ));
    }
    choices.sort_by_key(|c| c.index);
    choices
        .into_iter()
        .enumerate()
        .map(|(sample_index, choice)| {
            let (response_ids, behaviour_logprobs, finish_reason) = sample(choice)?;
            Ok(Trajectory {
                prompt_id: task.prompt_id,
                group: task.group,
                sample_index,
                prompt_ids: task.prompt_ids.clone(),
                response_ids,
                behaviour_logprobs,
                finish_reason,
                reward: None,
                weight_version: version,
            })
        })
        .collect()
}

/// A choice's token ids, their log-probabilities and why it ended.
fn sample(choice: CompletionChoice) -> Result<(Vec<u32>, Vec<f32>, FinishReason), String> {
    let logprobs = choice
        .logprobs
        .ok_or("a choice without logprobs (the server ignored logprobs = 0)")?;
    let ids = match choice.token_ids {
        Some(ids) => ids,
        None => logprobs
            .tokens
            .iter()
            .map(|t| {
                t.strip_prefix("token_id:")
                    .and_then(|id| id.parse().ok())
                    .ok_or_else(|| {
                        format!(
                            "no token ids: the server returned neither token_ids nor \
                             token_id:<id> tokens (got {t:?})"
                        )
                    })
            })
            .collect::<Result<Vec<u32>, String>>()?,
    };
    let values: Vec<f32> = logprobs
        .token_logprobs
        .iter()
        .map(|lp| lp.ok_or("a token without a log-probability"))
        .collect::<Result<_, _>>()?;
    if values.len() != ids.len() {
        return Err(format!(
            "{} log-probabilities for {} tokens",
            values.len(),
            ids.len()
        ));
    }
    let finish = match choice.finish_reason.as_deref() {
        Some("stop") => FinishReason::Stop,
        Some("length") => FinishReason::Length,
        other => {
            return Err(format!(
                "finish_reason {other:?} (the sample did not finish)"
            ));
        }
    };
    Ok((ids, values, finish))
}

impl Generate for HttpEngine {
    fn rollout(
        &self,
        tasks: &[PromptTask],
        params: &RolloutParams,
        _version: u64,
        deadline: Instant,
    ) -> grlo_learner::Result<Vec<Trajectory>> {
        let permits = Arc::new(Semaphore::new(self.max_in_flight));
        let outcome = self.runtime.block_on(async {
            let calls = tasks.iter().enumerate().map(|(index, task)| {
                let permits = permits.clone();
                async move {
                    let _permit = permits.acquire().await.expect("never closed");
                    self.generate(index, task, params, deadline).await
                }
            });
            futures::future::join_all(calls).await
        });
        let mut out = Vec::with_capacity(tasks.len() * params.n);
        for result in outcome {
            out.extend(result.map_err(|e| grlo_learner::LearnerError::Invalid(format!("{e:#}")))?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openai::CompletionLogprobs;

    fn choice(
        index: usize,
        ids: Option<Vec<u32>>,
        tokens: &[&str],
        finish: &str,
    ) -> CompletionChoice {
        CompletionChoice {
            index,
            text: String::new(),
            logprobs: Some(CompletionLogprobs {
                tokens: tokens.iter().map(|t| t.to_string()).collect(),
                token_logprobs: tokens.iter().map(|_| Some(-0.5)).collect(),
                top_logprobs: Vec::new(),
                text_offset: Vec::new(),
            }),
            finish_reason: Some(finish.into()),
            token_ids: ids,
            prompt_token_ids: None,
        }
    }

    #[test]
    fn token_ids_come_from_either_extension() {
        let (ids, lps, finish) = sample(choice(0, Some(vec![5, 6]), &["a", "b"], "stop")).unwrap();
        assert_eq!(
            (ids, lps, finish),
            (vec![5, 6], vec![-0.5, -0.5], FinishReason::Stop)
        );
        let (ids, _, finish) =
            sample(choice(0, None, &["token_id:7", "token_id:8"], "length")).unwrap();
        assert_eq!((ids, finish), (vec![7, 8], FinishReason::Length));
    }

    /// An OpenAI-compatible stand-in that answers every prompt with its own first two ids,
    /// after a pause, counting the requests it holds at once and the reloads.
    #[derive(Default)]
    struct Stub {
        now: std::sync::atomic::AtomicUsize,
        peak: std::sync::atomic::AtomicUsize,
        reloads: std::sync::atomic::AtomicUsize,
    }

    async fn stub_server(stub: Arc<Stub>) -> String {
        use axum::routing::{get, post};
        use std::sync::atomic::Ordering::SeqCst;
        let completions = {
            let stub = stub.clone();
            move |axum::Json(body): axum::Json<serde_json::Value>| {
                let stub = stub.clone();
                async move {
                    let now = stub.now.fetch_add(1, SeqCst) + 1;
                    stub.peak.fetch_max(now, SeqCst);
                    tokio::time::sleep(Duration::from_millis(40)).await;
                    stub.now.fetch_sub(1, SeqCst);
                    let prompt: Vec<u32> = serde_json::from_value(body["prompt"].clone()).unwrap();
                    let n = body["n"].as_u64().unwrap() as usize;
                    let choices: Vec<_> = (0..n)
                        .map(|i| {
                            json!({"index": i, "text": "", "finish_reason": "length",
                                   "token_ids": [prompt[0], prompt[1]],
                                   "logprobs": {"tokens": ["a", "b"],
                                                "token_logprobs": [-1.0, -2.0]}})
                        })
                        .collect();
                    axum::Json(json!({"choices": choices}))
                }
            }
        };
        let reload = {
            let stub = stub.clone();
            move || {
                let stub = stub.clone();
                async move {
                    stub.reloads.fetch_add(1, SeqCst);
                    axum::Json(json!({"success": true, "message": "ok"}))
                }
            }
        };
        let app = axum::Router::new()
            .route("/v1/completions", post(completions))
            .route("/update_weights_from_disk", post(reload))
            .route(
                "/v1/models",
                get(|| async { axum::Json(json!({"object": "list", "data": [{"id": "stub"}]})) }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        url
    }

    fn tasks(count: usize) -> Vec<PromptTask> {
        (0..count)
            .map(|i| PromptTask {
                prompt_id: i,
                group: i,
                prompt_ids: vec![10 + i as u32, 20 + i as u32, 30],
                seed: i as u64,
            })
            .collect()
    }

    fn params() -> RolloutParams {
        RolloutParams {
            sampling: grlo_model::SamplingParams::default(),
            max_new_tokens: 2,
            n: 2,
            stop_token_ids: vec![0],
            max_batch_rows: 8,
            max_cache_tokens: 0,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_in_flight_stay_within_the_bound_and_skip_a_dead_endpoint() {
        let stub = Arc::new(Stub::default());
        let live = stub_server(stub.clone()).await;
        // A port nothing listens on.
        let dead = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}", listener.local_addr().unwrap())
        };
        for bound in [1, 3] {
            stub.peak.store(0, std::sync::atomic::Ordering::SeqCst);
            let engine = HttpEngine::new(
                &[dead.clone(), live.clone()],
                "/w/v1".into(),
                1,
                bound,
                None,
            )
            .unwrap();
            let out = tokio::task::spawn_blocking(move || {
                let deadline = Instant::now() + Duration::from_secs(60);
                engine.rollout(&tasks(12), &params(), 1, deadline)
            })
            .await
            .unwrap()
            .unwrap();
            assert_eq!(out.len(), 24);
            for (i, t) in out.iter().enumerate() {
                assert_eq!((t.prompt_id, t.sample_index), (i / 2, i % 2));
                assert_eq!(
                    t.response_ids,
                    vec![10 + (i / 2) as u32, 20 + (i / 2) as u32]
                );
                assert_eq!(t.behaviour_logprobs, vec![-1.0, -2.0]);
            }
            assert_eq!(stub.peak.load(std::sync::atomic::Ordering::SeqCst), bound);
        }
        // Each engine reloaded the live endpoint once before its first request.
        assert_eq!(stub.reloads.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_live_endpoint_fails_at_the_deadline_naming_it() {
        let dead = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}", listener.local_addr().unwrap())
        };
        let engine =
            HttpEngine::new(std::slice::from_ref(&dead), "/w/v1".into(), 1, 4, None).unwrap();
        let err = tokio::task::spawn_blocking(move || {
            engine.rollout(
                &tasks(2),
                &params(),
                1,
                Instant::now() + Duration::from_millis(800),
            )
        })
        .await
        .unwrap()
        .unwrap_err()
        .to_string();
        assert!(err.contains("lease ended") && err.contains(&dead), "{err}");
    }

    #[test]
    fn answers_without_ids_or_finish_are_errors() {
        let err = sample(choice(0, None, &["hello"], "stop")).unwrap_err();
        assert!(err.contains("no token ids"), "{err}");
        let err = sample(choice(0, Some(vec![1]), &["a"], "abort")).unwrap_err();
        assert!(err.contains("finish_reason"), "{err}");
        let err = sample(choice(0, Some(vec![1, 2]), &["a"], "stop")).unwrap_err();
        assert!(err.contains("1 log-probabilities for 2 tokens"), "{err}");
    }
}
