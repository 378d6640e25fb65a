//! The HTTP engine (`rollout.engine = "openai"`): the task's prompts go to OpenAI-compatible
//! servers (vLLM, SGLang, llama.cpp's `llama-server`, `grlo serve`) as `/v1/completions`
//! requests with token-id prompts, at most `rollout.max_in_flight` at once, spread over
//! `rollout.endpoints`. The answer's token ids and log-probabilities become the trajectories'
//! responses and behaviour log-probabilities: from `token_ids` (vLLM's `return_token_ids`,
//! `grlo serve`), `token_id:<id>` tokens (vLLM's `return_tokens_as_token_ids`) or the ids of
//! `logprobs.content` (llama.cpp).
//!
//! A new weight version reaches an endpoint before the endpoint gets a request of it, as
//! `rollout.reload` says: SGLang's `POST /update_weights_from_disk {"model_path": <the
//! version's checkpoint directory>}`, vLLM's dev-mode `POST /collective_rpc` (`update_config`
//! with the new model path, then `reload_weights`) and `POST /reset_prefix_cache`, or not at
//! all. The directory must be one the server can read at the same path (a shared volume).
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

use grlo_learner::config::RolloutReload;

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
    weights: Weights,
    max_in_flight: usize,
    runtime: tokio::runtime::Handle,
}

/// The weight version the engines are to serve, and how it reaches them.
pub(crate) struct Weights {
    /// The version's checkpoint directory, as the servers see it.
    pub path: String,
    pub version: u64,
    pub reload: RolloutReload,
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
        weights: Weights,
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
            weights,
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
            && *path == self.weights.path
        {
            return Ok(name.clone());
        }
        match self.weights.reload {
            RolloutReload::Sglang => self.reload_sglang(endpoint).await?,
            RolloutReload::Vllm => self.reload_vllm(endpoint).await?,
            RolloutReload::None => {}
        }
        let name = self.model_name(endpoint).await?;
        match self.weights.reload {
            RolloutReload::None => tracing::info!(
                endpoint = %endpoint.url,
                version = self.weights.version,
                "engine keeps its own weights (rollout.reload = none)"
            ),
            _ => tracing::info!(
                endpoint = %endpoint.url,
                version = self.weights.version,
                "engine reloaded"
            ),
        }
        state.loaded = Some((self.weights.path.clone(), name.clone()));
        Ok(name)
    }

    /// SGLang's (and `grlo serve`'s) `POST /update_weights_from_disk`.
    async fn reload_sglang(&self, endpoint: &Endpoint) -> Result<(), CallError> {
        let url = format!("{}/update_weights_from_disk", endpoint.url);
        let body = json!({
            "model_path": self.weights.path,
            "weight_version": format!("v{}", self.weights.version),
        });
        let (status, text) = self.post_json(&url, &body).await?;
        let answer: Option<UpdateWeightsResponse> = serde_json::from_str(&text).ok();
        match answer {
            Some(a) if status.is_success() && a.success => Ok(()),
            Some(a) if refused(status) => Err(CallError::fatal(format!(
                "{url} could not load {}: {}",
                self.weights.path, a.message
            ))),
            _ => Err(CallError::retry(format!(
                "{url} answered {status}: {}",
                text.chars().take(300).collect::<String>()
            ))),
        }
    }

    /// vLLM's development routes (`VLLM_SERVER_DEV_MODE=1`, vLLM 0.10-0.11): every worker's
    /// model path becomes the version's directory, its weights are reloaded from there in
    /// place, and the prefix cache (keys and values of the old weights) is dropped.
    async fn reload_vllm(&self, endpoint: &Endpoint) -> Result<(), CallError> {
        let rpc = format!("{}/collective_rpc", endpoint.url);
        let calls = [
            (
                rpc.clone(),
                json!({"method": "update_config",
                       "args": [{"model_config": {"model": self.weights.path}}]}),
            ),
            (rpc, json!({"method": "reload_weights"})),
            (format!("{}/reset_prefix_cache", endpoint.url), json!({})),
        ];
        for (url, body) in &calls {
            let (status, text) = self.post_json(url, body).await?;
            let answer = || text.chars().take(300).collect::<String>();
            if status == reqwest::StatusCode::NOT_FOUND {
                return Err(CallError::fatal(format!(
                    "{url} answered 404: vLLM serves its reload routes only when started \
                     with VLLM_SERVER_DEV_MODE=1 ({})",
                    answer()
                )));
            }
            if !status.is_success() {
                let message = format!("{url} answered {status}: {}", answer());
                return Err(if refused(status) {
                    CallError::fatal(message)
                } else {
                    CallError::retry(message)
                });
            }
        }
        Ok(())
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
        trajectories(answer, task, params, self.weights.version)
            .map_err(|e| CallError::retry(format!("{url}: {e}")))
    }
}

/// Whether a server refused the request itself (a 4xx other than 429): refused anywhere, where
/// a busy or failing server is not.
fn refused(status: reqwest::StatusCode) -> bool {
    status.is_client_error() && status != reqwest::StatusCode::TOO_MANY_REQUESTS
}

/// The request for one prompt's samples. `logprobs: 1` asks for the chosen tokens'
/// log-probabilities (raw model log-probabilities in vLLM's default `logprobs_mode`, in
/// llama.cpp, which reports none for 0, and in `grlo serve`); the token ids come back through
/// `return_token_ids` (vLLM ≥ 0.10.2, `grlo serve`), as `token_id:<id>` strings
/// (`return_tokens_as_token_ids`) or as the ids of llama.cpp's `logprobs.content`.
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
        "logprobs": 1,
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
            let (response_ids, behaviour_logprobs, finish_reason) =
                sample(choice, &params.stop_token_ids)?;
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

/// A choice's token ids, their log-probabilities and why it ended. A sample runs to its first
/// stop token: an engine that ignores `stop_token_ids` (llama.cpp stops only at its own
/// end-of-generation tokens) is cut there.
fn sample(
    choice: CompletionChoice,
    stop_token_ids: &[u32],
) -> Result<(Vec<u32>, Vec<f32>, FinishReason), String> {
    let logprobs = choice
        .logprobs
        .ok_or("a choice without logprobs (the server ignored logprobs = 1)")?;
    let mut ids = match (choice.token_ids, logprobs.content.is_empty()) {
        (Some(ids), _) => ids,
        (None, false) => logprobs
            .content
            .iter()
            .map(|t| {
                t.id.ok_or_else(|| {
                    format!("logprobs.content without a token id (at {:?})", t.token)
                })
            })
            .collect::<Result<Vec<u32>, String>>()?,
        (None, true) => logprobs
            .tokens
            .iter()
            .map(|t| {
                t.strip_prefix("token_id:")
                    .and_then(|id| id.parse().ok())
                    .ok_or_else(|| {
                        format!(
                            "no token ids: the server returned neither token_ids, \
                             token_id:<id> tokens nor logprobs.content ids (got {t:?})"
                        )
                    })
            })
            .collect::<Result<Vec<u32>, String>>()?,
    };
    let mut values: Vec<f32> = if logprobs.content.is_empty() {
        logprobs
            .token_logprobs
            .iter()
            .map(|lp| lp.ok_or("a token without a log-probability"))
            .collect::<Result<_, _>>()?
    } else {
        logprobs
            .content
            .iter()
            .map(|t| t.logprob.ok_or("a token without a log-probability"))
            .collect::<Result<_, _>>()?
    };
    if values.len() != ids.len() {
        return Err(format!(
            "{} log-probabilities for {} tokens",
            values.len(),
            ids.len()
        ));
    }
    let mut finish = match choice.finish_reason.as_deref() {
        Some("stop") => FinishReason::Stop,
        Some("length") => FinishReason::Length,
        other => {
            return Err(format!(
                "finish_reason {other:?} (the sample did not finish)"
            ));
        }
    };
    if let Some(at) = ids.iter().position(|id| stop_token_ids.contains(id)) {
        ids.truncate(at + 1);
        values.truncate(at + 1);
        finish = FinishReason::Stop;
    }
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
                ..Default::default()
            }),
            finish_reason: Some(finish.into()),
            token_ids: ids,
            prompt_token_ids: None,
        }
    }

    #[test]
    fn token_ids_come_from_either_extension() {
        let (ids, lps, finish) =
            sample(choice(0, Some(vec![5, 6]), &["a", "b"], "stop"), &[]).unwrap();
        assert_eq!(
            (ids, lps, finish),
            (vec![5, 6], vec![-0.5, -0.5], FinishReason::Stop)
        );
        let (ids, _, finish) = sample(
            choice(0, None, &["token_id:7", "token_id:8"], "length"),
            &[],
        )
        .unwrap();
        assert_eq!((ids, finish), (vec![7, 8], FinishReason::Length));
    }

    #[test]
    fn llama_cpp_answers_carry_ids_in_logprobs_content_and_stop_at_the_first_stop_token() {
        // llama-server's /v1/completions answer (its chat format's logprobs, with ids).
        let answer: CompletionChoice = serde_json::from_value(json!({
            "index": 0, "text": "ab", "finish_reason": "length",
            "logprobs": {"content": [
                {"id": 5, "token": "a", "bytes": [97], "logprob": -0.25, "top_logprobs": []},
                {"id": 9, "token": "", "bytes": [], "logprob": -1.5, "top_logprobs": []},
                {"id": 6, "token": "b", "bytes": [98], "logprob": -2.0, "top_logprobs": []}
            ]}
        }))
        .unwrap();
        let (ids, lps, finish) = sample(answer.clone(), &[]).unwrap();
        assert_eq!(
            (ids, lps, finish),
            (vec![5, 9, 6], vec![-0.25, -1.5, -2.0], FinishReason::Length)
        );
        // 9 is a stop token of the job the engine did not know: the sample ends there.
        let (ids, lps, finish) = sample(answer.clone(), &[9, 1]).unwrap();
        assert_eq!(
            (ids, lps, finish),
            (vec![5, 9], vec![-0.25, -1.5], FinishReason::Stop)
        );
        let mut broken = answer;
        broken.logprobs.as_mut().unwrap().content[1].id = None;
        let err = sample(broken, &[]).unwrap_err();
        assert!(err.contains("without a token id"), "{err}");
    }

    /// An OpenAI-compatible stand-in that answers every prompt with its own first two ids,
    /// after a pause, counting the requests it holds at once and noting the reload calls.
    #[derive(Default)]
    struct Stub {
        now: std::sync::atomic::AtomicUsize,
        peak: std::sync::atomic::AtomicUsize,
        /// The reload routes called: path, and the RPC's method and argument where it has one.
        reloads: std::sync::Mutex<Vec<String>>,
    }

    impl Stub {
        fn take_reloads(&self) -> Vec<String> {
            std::mem::take(&mut *self.reloads.lock().unwrap())
        }
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
        let note = |stub: Arc<Stub>, path: &'static str| {
            move |axum::Json(body): axum::Json<serde_json::Value>| {
                let stub = stub.clone();
                async move {
                    let mut call = path.to_string();
                    if let Some(method) = body["method"].as_str() {
                        call.push_str(&format!(" {method}"));
                    }
                    if let Some(model) = body["args"][0]["model_config"]["model"].as_str() {
                        call.push_str(&format!(" {model}"));
                    }
                    stub.reloads.lock().unwrap().push(call);
                    axum::Json(json!({"success": true, "message": "ok"}))
                }
            }
        };
        let app = axum::Router::new()
            .route("/v1/completions", post(completions))
            .route(
                "/update_weights_from_disk",
                post(note(stub.clone(), "/update_weights_from_disk")),
            )
            .route(
                "/collective_rpc",
                post(note(stub.clone(), "/collective_rpc")),
            )
            .route(
                "/reset_prefix_cache",
                post(note(stub.clone(), "/reset_prefix_cache")),
            )
            .route(
                "/v1/models",
                get(|| async { axum::Json(json!({"object": "list", "data": [{"id": "stub"}]})) }),
            );
        serve(app).await
    }

    /// Serves `app` on a free port of 127.0.0.1: its URL.
    async fn serve(app: axum::Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        url
    }

    /// `count` tasks' rollout on `engine`, off the runtime (it blocks on it), within `lease`.
    async fn rollout(
        engine: HttpEngine,
        count: usize,
        lease: Duration,
    ) -> grlo_learner::Result<Vec<Trajectory>> {
        tokio::task::spawn_blocking(move || {
            engine.rollout(&tasks(count), &params(), 1, Instant::now() + lease)
        })
        .await
        .unwrap()
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
            let engine =
                HttpEngine::new(&[dead.clone(), live.clone()], weights(), bound, None).unwrap();
            let out = rollout(engine, 12, Duration::from_secs(60)).await.unwrap();
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
        assert_eq!(stub.take_reloads(), ["/update_weights_from_disk"; 2]);
    }

    fn weights() -> Weights {
        Weights {
            path: "/w/v1".into(),
            version: 1,
            reload: RolloutReload::Sglang,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_reload_mode_calls_its_routes_once_per_version() {
        let stub = Arc::new(Stub::default());
        let live = stub_server(stub.clone()).await;
        for (reload, expected) in [
            (RolloutReload::Sglang, vec!["/update_weights_from_disk"]),
            (
                RolloutReload::Vllm,
                vec![
                    "/collective_rpc update_config /w/v1",
                    "/collective_rpc reload_weights",
                    "/reset_prefix_cache",
                ],
            ),
            (RolloutReload::None, vec![]),
        ] {
            let engine = HttpEngine::new(
                std::slice::from_ref(&live),
                Weights {
                    reload,
                    ..weights()
                },
                4,
                None,
            )
            .unwrap();
            let out = rollout(engine, 6, Duration::from_secs(60)).await.unwrap();
            assert_eq!(out.len(), 12);
            assert_eq!(stub.take_reloads(), expected, "{reload:?}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_vllm_without_its_dev_routes_fails_the_task_saying_how_to_start_it() {
        use axum::routing::get;
        let app = axum::Router::new().route(
            "/v1/models",
            get(|| async { axum::Json(json!({"object": "list", "data": [{"id": "m"}]})) }),
        );
        let url = serve(app).await;
        let reload = RolloutReload::Vllm;
        let engine = HttpEngine::new(
            &[url],
            Weights {
                reload,
                ..weights()
            },
            4,
            None,
        )
        .unwrap();
        let err = rollout(engine, 1, Duration::from_secs(60))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("VLLM_SERVER_DEV_MODE=1"), "{err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_live_endpoint_fails_at_the_deadline_naming_it() {
        let dead = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}", listener.local_addr().unwrap())
        };
        let engine = HttpEngine::new(std::slice::from_ref(&dead), weights(), 4, None).unwrap();
        let err = rollout(engine, 2, Duration::from_millis(800))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("lease ended") && err.contains(&dead), "{err}");
    }

    #[test]
    fn answers_without_ids_or_finish_are_errors() {
        let err = sample(choice(0, None, &["hello"], "stop"), &[]).unwrap_err();
        assert!(err.contains("no token ids"), "{err}");
        let err = sample(choice(0, Some(vec![1]), &["a"], "abort"), &[]).unwrap_err();
        assert!(err.contains("finish_reason"), "{err}");
        let err = sample(choice(0, Some(vec![1, 2]), &["a"], "stop"), &[]).unwrap_err();
        assert!(err.contains("1 log-probabilities for 2 tokens"), "{err}");
    }
}
