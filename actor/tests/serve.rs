//! `grlo serve` over HTTP, in process: answers equal to the engine's own, the OpenAI shapes,
//! stop strings, streaming, reloads, bad requests and load. (The official `openai` Python
//! client is exercised by `tests/serve_openai.rs` at the workspace root.)

use std::path::{Path, PathBuf};
use std::time::Duration;

use grlo_actor::serve::{ServeConfig, ServeMetrics, serve};
use grlo_model::backend::Cpu;
use grlo_model::engine::EngineLimits;
use grlo_model::{GenerationParams, Model, SamplingParams, generate_seeded};
use grlo_proto::security::{Access, Secret};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/models/qwen3-chat-tiny")
}

fn config(model: &Path) -> ServeConfig {
    ServeConfig {
        model: model.display().to_string(),
        served_name: "tiny".into(),
        cache_dir: std::env::temp_dir(),
        device: "cpu".into(),
        limits: EngineLimits {
            max_batch_rows: 8,
            ..EngineLimits::default()
        },
        max_n: 4,
        max_tokens: 64,
        max_pending: 64,
        access: Access::default(),
    }
}

/// A server on a free port; stops when dropped.
struct Server {
    url: String,
    shutdown: CancellationToken,
    client: reqwest::Client,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Server {
    async fn start(config: ServeConfig) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            serve(config, ServeMetrics::default(), listener, stop)
                .await
                .expect("the server runs");
        });
        let client = reqwest::Client::new();
        for _ in 0..200 {
            if let Ok(r) = client.get(format!("{url}/health")).send().await
                && r.status().is_success()
            {
                return Server {
                    url,
                    shutdown,
                    client,
                };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("grlo serve did not become healthy");
    }

    async fn post(&self, route: &str, body: &Value) -> (u16, Value) {
        self.post_raw(route, body.to_string()).await
    }

    async fn post_raw(&self, route: &str, body: String) -> (u16, Value) {
        let response = self
            .client
            .post(format!("{}{route}", self.url))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn metric(&self, name: &str) -> f64 {
        let text = self
            .client
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} in /metrics"))
    }

    /// The text of a streamed answer's `data:` lines, `[DONE]` included.
    async fn stream(&self, route: &str, body: &Value) -> Vec<String> {
        let text = self
            .client
            .post(format!("{}{route}", self.url))
            .json(body)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .filter_map(|l| l.strip_prefix("data: ").map(String::from))
            .collect()
    }
}

fn ids(value: &Value) -> Vec<u32> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_are_what_the_engine_generates_alone() {
    let server = Server::start(config(&fixture())).await;
    let prompt: Vec<u32> = vec![9707, 11, 1879, 0, 374, 264, 1273];
    let (status, answer) = server
        .post(
            "/v1/completions",
            &json!({"prompt": prompt, "max_tokens": 12, "n": 2, "seed": 7, "temperature": 1.0,
                    "logprobs": 0, "return_token_ids": true, "ignore_eos": true}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["object"], "text_completion");
    assert_eq!(answer["usage"]["completion_tokens"], 24);

    // The same request through the engine directly (seed of prompt 0, as `grlo model generate`).
    let model = Model::<Cpu>::load(&fixture(), &Default::default()).unwrap();
    let params = GenerationParams {
        sampling: SamplingParams {
            temperature: 1.0,
            ..SamplingParams::default()
        },
        max_new_tokens: 12,
        n: 2,
        stop_token_ids: Vec::new(),
        top_logprobs: 0,
    };
    let seed = grlo_model::generate::prompt_seed(7, 0);
    let alone = generate_seeded(&model, std::slice::from_ref(&prompt), &[seed], &params).unwrap();
    for (choice, expected) in answer["choices"].as_array().unwrap().iter().zip(&alone) {
        assert_eq!(ids(&choice["token_ids"]), expected.token_ids);
        let logprobs: Vec<f64> = choice["logprobs"]["token_logprobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        for (got, want) in logprobs.iter().zip(&expected.logprobs) {
            assert!((got - *want as f64).abs() < 1e-4, "{got} vs {want}");
        }
        assert_eq!(choice["finish_reason"], "length");
    }

    // Streamed, the same text arrives in pieces.
    let whole = answer["choices"][0]["text"].as_str().unwrap().to_string();
    let lines = server
        .stream(
            "/v1/completions",
            &json!({"prompt": prompt, "max_tokens": 12, "n": 2, "seed": 7, "ignore_eos": true,
                    "stream": true}),
        )
        .await;
    assert_eq!(lines.last().unwrap(), "[DONE]");
    let mut streamed = String::new();
    for line in &lines[..lines.len() - 1] {
        let chunk: Value = serde_json::from_str(line).unwrap();
        for choice in chunk["choices"].as_array().unwrap() {
            if choice["index"] == 0 {
                streamed.push_str(choice["text"].as_str().unwrap());
            }
        }
    }
    assert_eq!(streamed, whole);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_string_ends_the_text_before_it() {
    let server = Server::start(config(&fixture())).await;
    let body = json!({"prompt": "Once upon a time", "max_tokens": 24, "temperature": 0,
                      "ignore_eos": true});
    let (status, free) = server.post("/v1/completions", &body).await;
    assert_eq!(status, 200, "{free}");
    let text = free["choices"][0]["text"].as_str().unwrap().to_string();
    // A stop string from the middle of the greedy text: the answer ends where it first occurs.
    let chars: Vec<char> = text.chars().collect();
    assert!(chars.len() > 10, "{text:?}");
    let stop: String = chars[6..9].iter().collect();
    let at = text.find(&stop).unwrap();
    let mut with_stop = body.clone();
    with_stop["stop"] = json!([stop]);
    let (status, stopped) = server.post("/v1/completions", &with_stop).await;
    assert_eq!(status, 200, "{stopped}");
    assert_eq!(stopped["choices"][0]["text"], text[..at]);
    assert_eq!(stopped["choices"][0]["finish_reason"], "stop");
    // The stream never shows it either.
    with_stop["stream"] = json!(true);
    let lines = server.stream("/v1/completions", &with_stop).await;
    let streamed: String = lines[..lines.len() - 1]
        .iter()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["choices"][0]["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(streamed, text[..at]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_answers_with_logprobs_and_n() {
    let server = Server::start(config(&fixture())).await;
    let (status, answer) = server
        .post(
            "/v1/chat/completions",
            &json!({"messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 6,
                    "n": 2, "seed": 1, "logprobs": true, "top_logprobs": 3}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["object"], "chat.completion");
    let choices = answer["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 2);
    for choice in choices {
        assert_eq!(choice["message"]["role"], "assistant");
        for token in choice["logprobs"]["content"].as_array().unwrap() {
            let top = token["top_logprobs"].as_array().unwrap();
            assert_eq!(top.len(), 3);
            let best = top[0]["logprob"].as_f64().unwrap();
            assert!(
                top.windows(2)
                    .all(|w| w[0]["logprob"].as_f64() >= w[1]["logprob"].as_f64())
            );
            assert!(token["logprob"].as_f64().unwrap() <= best + 1e-5);
        }
    }
    // The prompt is the chat template's rendering.
    let tokenizer = grlo_model::Tokenizer::from_dir(&fixture()).unwrap();
    let expected = tokenizer
        .encode_chat(&[grlo_model::ChatMessage::user("Say hi")], true)
        .unwrap();
    assert_eq!(answer["usage"]["prompt_tokens"], expected.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_400s_in_openai_shape() {
    let server = Server::start(config(&fixture())).await;
    let long: Vec<u32> = vec![100; 500];
    let cases: Vec<(&str, String, &str)> = vec![
        ("/v1/completions", "{\"prompt\": ".into(), "not valid JSON"),
        ("/v1/completions", "[1, 2]".into(), "JSON object"),
        (
            "/v1/completions",
            json!({"prompt": "x", "foo": 1}).to_string(),
            "foo",
        ),
        (
            "/v1/completions",
            json!({"prompt": "x", "n": 5}).to_string(),
            "--max-n",
        ),
        (
            "/v1/completions",
            json!({"prompt": "x", "max_tokens": 65}).to_string(),
            "--max-tokens",
        ),
        (
            "/v1/completions",
            json!({"prompt": long, "max_tokens": 20}).to_string(),
            "maximum context length",
        ),
        (
            "/v1/completions",
            json!({"prompt": "x", "max_tokens": "ten"}).to_string(),
            "invalid type",
        ),
        (
            "/v1/completions",
            json!({"prompt": "x", "temperature": 3}).to_string(),
            "temperature",
        ),
        (
            "/v1/completions",
            json!({"prompt": "x", "top_p": 0}).to_string(),
            "top_p",
        ),
        (
            "/v1/completions",
            json!({"prompt": [1, 999999]}).to_string(),
            "outside the vocabulary",
        ),
        (
            "/v1/completions",
            json!({"prompt": []}).to_string(),
            "empty",
        ),
        (
            "/v1/completions",
            json!({"prompt": "x", "echo": true}).to_string(),
            "echo",
        ),
        (
            "/v1/completions",
            json!({"prompt": "x", "logprobs": 50}).to_string(),
            "logprobs",
        ),
        (
            "/v1/completions",
            json!({"prompt": "x", "presence_penalty": 1}).to_string(),
            "presence_penalty",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": []}).to_string(),
            "messages",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "x"}], "tools": []}).to_string(),
            "tools",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}).to_string(),
            "logprobs = true",
        ),
        ("/update_weights_from_disk", "{}".into(), "model_path"),
    ];
    for (route, body, expected) in cases {
        let (status, answer) = server.post_raw(route, body.clone()).await;
        assert_eq!(status, 400, "{route} {body}: {answer}");
        let message = answer["error"]["message"]
            .as_str()
            .or(answer["message"].as_str())
            .unwrap_or_else(|| panic!("{route} {body}: an error message in {answer}"));
        assert!(message.contains(expected), "{route} {body}: {message}");
        if route != "/update_weights_from_disk" {
            assert_eq!(answer["error"]["type"], "invalid_request_error");
        }
    }
    let (status, answer) = server.post("/v1/nothing", &json!({})).await;
    assert_eq!(status, 404);
    assert!(answer["error"]["message"].is_string());
    // It still serves.
    let (status, _) = server
        .post("/v1/completions", &json!({"prompt": "x"}))
        .await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bearer_token_is_required_when_configured() {
    let mut config = config(&fixture());
    config.access = Access::new(Some(Secret::new("worker-secret", "test").unwrap()), None).unwrap();
    let server = Server::start(config).await;
    let (status, answer) = server
        .post("/v1/completions", &json!({"prompt": "x"}))
        .await;
    assert_eq!(status, 401, "{answer}");
    assert_eq!(answer["error"]["type"], "authentication_error");
    let response = server
        .client
        .post(format!("{}/v1/completions", server.url))
        .bearer_auth("worker-secret")
        .json(&json!({"prompt": "x", "max_tokens": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    // Probes need no token.
    let health = server
        .client
        .get(format!("{}/health", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 200);
}

/// A copy of the fixture whose embeddings have the opposite sign: other answers.
fn other_weights(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for entry in std::fs::read_dir(fixture()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    let path = dir.join("model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    let tensor = &header["model.embed_tokens.weight"];
    let width = match tensor["dtype"].as_str().unwrap() {
        "BF16" | "F16" => 2,
        "F32" => 4,
        other => panic!("dtype {other}"),
    };
    let offsets = ids(&tensor["data_offsets"]);
    let start = 8 + header_len + offsets[0] as usize;
    let end = 8 + header_len + offsets[1] as usize;
    for element in bytes[start..end].chunks_mut(width) {
        element[width - 1] ^= 0x80; // the sign bit (little-endian)
    }
    std::fs::write(&path, bytes).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_changes_the_answers_and_a_bad_one_changes_nothing() {
    let server = Server::start(config(&fixture())).await;
    let body = json!({"prompt": [1, 2, 3, 4], "max_tokens": 8, "temperature": 0,
                      "ignore_eos": true, "return_token_ids": true});
    let (_, before) = server.post("/v1/completions", &body).await;
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("other");
    other_weights(&other);
    let (status, answer) = server
        .post(
            "/update_weights_from_disk",
            &json!({"model_path": other.display().to_string(), "weight_version": "v2"}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["success"], true);
    let (_, after) = server.post("/v1/completions", &body).await;
    assert_ne!(
        before["choices"][0]["token_ids"],
        after["choices"][0]["token_ids"]
    );
    let info = server
        .client
        .get(format!("{}/get_model_info", server.url))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(info["model_path"], other.display().to_string());
    assert_eq!(info["weight_version"], "v2");

    let missing = dir.path().join("missing");
    let (status, answer) = server
        .post(
            "/update_weights_from_disk",
            &json!({"model_path": missing.display().to_string()}),
        )
        .await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["success"], false);
    assert!(
        answer["message"].as_str().unwrap().contains("missing"),
        "{answer}"
    );
    let (_, still) = server.post("/v1/completions", &body).await;
    assert_eq!(
        still["choices"][0]["token_ids"],
        after["choices"][0]["token_ids"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_concurrent_requests_are_served_or_refused() {
    let mut config = config(&fixture());
    config.max_pending = 32;
    let server = std::sync::Arc::new(Server::start(config).await);
    let calls = (0..500).map(|i| {
        let server = server.clone();
        tokio::spawn(async move {
            let body = json!({"prompt": [1 + i % 50, 7, 9], "max_tokens": 4, "seed": i});
            server.post("/v1/completions", &body).await
        })
    });
    let mut served = 0;
    let mut refused = 0;
    for call in futures::future::join_all(calls).await {
        let (status, answer) = call.unwrap();
        match status {
            200 => {
                assert!(answer["choices"][0]["finish_reason"].as_str().is_some());
                served += 1;
            }
            429 | 503 => {
                assert!(answer["error"]["message"].is_string(), "{answer}");
                refused += 1;
            }
            other => panic!("status {other}: {answer}"),
        }
    }
    assert_eq!(served + refused, 500);
    assert!(served >= 32, "served {served}");
    assert!(refused > 0, "the admission bound refused nothing");
    // Nothing is left behind.
    assert_eq!(server.metric("grlo_serve_pending_requests").await, 0.0);
    let (status, _) = server
        .post("/v1/completions", &json!({"prompt": "x"}))
        .await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_frees_its_rows() {
    let mut config = config(&fixture());
    config.max_tokens = 500;
    let server = Server::start(config).await;
    let mut response = server
        .client
        .post(format!("{}/v1/completions", server.url))
        .json(
            &json!({"prompt": [5, 6, 7], "max_tokens": 500, "n": 4, "stream": true,
                      "ignore_eos": true}),
        )
        .send()
        .await
        .unwrap();
    assert!(response.chunk().await.unwrap().is_some());
    drop(response);
    let mut freed = false;
    for _ in 0..100 {
        if server.metric("grlo_serve_running_rows").await == 0.0
            && server.metric("grlo_serve_pending_requests").await == 0.0
        {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(freed, "the rows of a cancelled stream kept running");
    // Cancelled, not finished: far fewer than the 4 x 500 tokens asked for.
    let generated = server.metric("grlo_serve_generated_tokens_total").await;
    assert!(generated < 1000.0, "{generated} tokens generated");
}
