//! A real reward server on 127.0.0.1:0 with the tiny reward model of `configs/tiny`, called
//! through the generated tonic client. Model scores are checked against
//! `grlo_learner::reward::RewardModel` called directly (itself checked against transformers
//! in the learner's tests); rule scores against what the verifiers must say.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use grlo_learner::reward::RewardModel;
use grlo_model::backend::Cpu;
use grlo_proto::v1::reward_server_client::RewardServerClient;
use grlo_proto::v1::{ChatMessage, ScoreItem, ScoreRequest};
use grlo_reward_server::{RewardServerConfig, SERVICE_NAME, Stats};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const MODEL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../configs/tiny/reward-model");

/// Longest a test waits for anything.
const PATIENCE: Duration = Duration::from_secs(60);

/// A prompt and a response.
type Sample = (&'static [(&'static str, &'static str)], &'static str);

const SAMPLES: [Sample; 4] = [
    (
        &[("user", "What makes a good day?")],
        "A great day with friends, thanks! I love it.",
    ),
    (
        &[
            ("system", "You are a helpful assistant."),
            ("user", "Tell me about the sea."),
        ],
        "The sea is big and blue and full of fish.",
    ),
    (&[("user", "hi")], "yes"),
    (
        &[
            ("user", "Plan a trip for me."),
            ("assistant", "Where would you like to go?"),
            ("user", "Somewhere warm, please."),
        ],
        "How about Lisbon? It is wonderful and sunny, the best place in spring. Have fun!",
    ),
];

fn model_item(sample: Sample) -> ScoreItem {
    let (prompt, response) = sample;
    ScoreItem {
        prompt: prompt
            .iter()
            .map(|&(role, content)| ChatMessage {
                role: role.into(),
                content: content.into(),
            })
            .collect(),
        response: response.into(),
        style: "model".into(),
        ..Default::default()
    }
}

fn rule_item(response: &str, ground_truth: &str, data_source: &str) -> ScoreItem {
    ScoreItem {
        prompt: vec![ChatMessage {
            role: "user".into(),
            content: "Answer the question.".into(),
        }],
        response: response.into(),
        style: "rule".into(),
        ground_truth: ground_truth.into(),
        data_source: data_source.into(),
        ability: String::new(),
    }
}

fn request(items: Vec<ScoreItem>) -> ScoreRequest {
    ScoreRequest {
        job_id: String::new(),
        items,
    }
}

/// The scores of `samples` from the reward model called directly.
fn reference_scores(samples: &[Sample], max_length: usize) -> Vec<f32> {
    let model = RewardModel::<Cpu>::load(MODEL, max_length, 16384, &Default::default()).unwrap();
    let conversations: Vec<Vec<grlo_model::ChatMessage>> = samples
        .iter()
        .map(|(prompt, response)| {
            let mut messages: Vec<_> = prompt
                .iter()
                .map(|&(role, content)| grlo_model::ChatMessage::new(role, content))
                .collect();
            messages.push(grlo_model::ChatMessage::assistant(*response));
            messages
        })
        .collect();
    model.score(&conversations).unwrap()
}

/// Token length of a sample in the reward model's template.
fn token_length(sample: Sample) -> usize {
    let model = RewardModel::<Cpu>::load(MODEL, 8192, 16384, &Default::default()).unwrap();
    let (prompt, response) = sample;
    let mut messages: Vec<_> = prompt
        .iter()
        .map(|&(role, content)| grlo_model::ChatMessage::new(role, content))
        .collect();
    messages.push(grlo_model::ChatMessage::assistant(response));
    model.encode(&messages).unwrap().len()
}

fn assert_close(actual: &[f32], expected: &[f32]) {
    assert_eq!(actual.len(), expected.len(), "{actual:?} vs {expected:?}");
    for (a, e) in actual.iter().zip(expected) {
        assert!((a - e).abs() < 1e-4, "{actual:?} vs {expected:?}");
    }
}

/// One reward server on a free port of 127.0.0.1, stopped by its token.
struct Sandbox {
    address: SocketAddr,
    shutdown: CancellationToken,
    server: JoinHandle<grlo_reward_server::Result<()>>,
    stats: Arc<Stats>,
}

impl Sandbox {
    async fn start(config: RewardServerConfig) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let stats = Arc::new(Stats::default());
        let server = tokio::spawn(grlo_reward_server::serve::<Cpu>(
            config,
            Default::default(),
            listener,
            shutdown.clone(),
            Arc::clone(&stats),
        ));
        let sandbox = Sandbox {
            address,
            shutdown,
            server,
            stats,
        };
        sandbox.wait_serving().await;
        sandbox
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.address))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    async fn client(&self) -> RewardServerClient<Channel> {
        RewardServerClient::new(self.channel().await)
    }

    async fn health(&self, service: &str) -> ServingStatus {
        let mut health = HealthClient::new(self.channel().await);
        let response = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap();
        response.into_inner().status()
    }

    async fn wait_serving(&self) {
        let started = Instant::now();
        while self.health("").await != ServingStatus::Serving {
            assert!(
                started.elapsed() < PATIENCE,
                "the server never became SERVING"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Cancels the token and waits for `serve` to return.
    async fn stop(self) -> grlo_reward_server::Result<()> {
        self.shutdown.cancel();
        tokio::time::timeout(PATIENCE, self.server)
            .await
            .expect("the server stops")
            .unwrap()
    }
}

fn with_model() -> RewardServerConfig {
    RewardServerConfig {
        model: Some(MODEL.into()),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_requests_keep_their_order_and_match_the_reward_model() {
    let server = Sandbox::start(with_model()).await;
    let items = vec![
        model_item(SAMPLES[0]),
        rule_item("so $x = \\boxed{\\dfrac{1}{2}}$.", "0.5", "openai/gsm8k"),
        model_item(SAMPLES[1]),
        rule_item("Lyon", "Paris", "trivia"),
        model_item(SAMPLES[2]),
        rule_item(" Paris ", "Paris", "trivia"),
        model_item(SAMPLES[3]),
        rule_item("The answer is 0.5", "0.5", "lighteval/MATH"),
    ];
    let scores = server
        .client()
        .await
        .score(request(items))
        .await
        .unwrap()
        .into_inner()
        .scores;
    let expected = reference_scores(&SAMPLES, 8192);
    assert!(
        expected.windows(2).any(|w| (w[0] - w[1]).abs() > 1e-3),
        "the samples should score differently: {expected:?}"
    );
    let model_scores = [scores[0], scores[2], scores[4], scores[6]];
    assert_close(&model_scores, &expected);
    assert_eq!(
        [scores[1], scores[3], scores[5], scores[7]],
        [1.0, 0.0, 1.0, 0.0],
        "boxed 1/2 = 0.5, Lyon != Paris, exact Paris, a math answer without a box"
    );
    assert_eq!(server.stats.model_items(), 4);
    assert_eq!(server.stats.rule_items(), 4);
    assert_eq!(server.stats.queued_items(), 0);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_conversations_are_cut_from_the_left_like_the_reward_model() {
    let max_length = 12;
    assert!(token_length(SAMPLES[3]) > 2 * max_length);
    let server = Sandbox::start(RewardServerConfig {
        max_length,
        ..with_model()
    })
    .await;
    let scores = server
        .client()
        .await
        .score(request(SAMPLES.iter().map(|&s| model_item(s)).collect()))
        .await
        .unwrap()
        .into_inner()
        .scores;
    assert_close(&scores, &reference_scores(&SAMPLES, max_length));
    assert!(
        (scores[3] - reference_scores(&SAMPLES[3..], 8192)[0]).abs() > 1e-4,
        "cutting changes the score"
    );
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_verifiers_work_without_a_reward_model() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(grlo_reward_server::run(
        RewardServerConfig::default(),
        listener,
        shutdown.clone(),
    ));
    let channel = Channel::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel.clone());
    for service in ["", SERVICE_NAME] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status();
        assert_eq!(status, ServingStatus::Serving, "{service:?}");
    }
    let mut client = RewardServerClient::new(channel);
    let items = vec![
        rule_item("We get \\boxed{1,000}", "1000", "openai/gsm8k"),
        rule_item("We get \\boxed{999}", "1000", "openai/gsm8k"),
        rule_item("Paris", "Paris", "trivia"),
        rule_item("paris", "Paris", "trivia"),
    ];
    let scores = client
        .score(request(items))
        .await
        .unwrap()
        .into_inner()
        .scores;
    assert_eq!(scores, [1.0, 0.0, 1.0, 0.0]);

    let mixed = vec![
        rule_item("Paris", "Paris", "trivia"),
        model_item(SAMPLES[0]),
    ];
    let status = client.score(request(mixed)).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status
            .message()
            .starts_with("this reward server has no reward model: items[1]"),
        "{}",
        status.message()
    );
    shutdown.cancel();
    server.await.unwrap().unwrap();
}

/// Code items (rule style, a code data source) run their programs against their tests in
/// the sandbox: asserts and stdin/stdout cases, beside other rule items, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn code_items_are_scored_by_running_their_tests() {
    let server = Sandbox::start(RewardServerConfig::default()).await;
    let mut client = server.client().await;
    let asserts = "assert add(1, 2) == 3\nassert add(-1, 1) == 0";
    let stdio = r#"{"inputs": ["2\n", "5\n"], "outputs": ["4\n", "10\n"]}"#;
    let items = vec![
        rule_item(
            "Here:\n```python\ndef add(a, b):\n    return a + b\n```",
            asserts,
            "codecontests",
        ),
        rule_item(
            "def add(a, b):\n    return a - b\n",
            asserts,
            "codecontests",
        ),
        rule_item("We get \\boxed{4}", "4", "openai/gsm8k"),
        rule_item(
            "```python\nprint(int(input()) * 2)\n```",
            stdio,
            "likaixin/TACO-verified",
        ),
        rule_item("print(int(input()) + 2)", stdio, "likaixin/TACO-verified"),
        rule_item("import os\nos._exit(0)", asserts, "apps"),
    ];
    let scores = client
        .score(request(items))
        .await
        .unwrap()
        .into_inner()
        .scores;
    assert_eq!(scores, [1.0, 0.0, 1.0, 1.0, 0.0, 0.0]);

    let bad = vec![
        rule_item("print(1)", "4", "openai/gsm8k"),
        rule_item("print(1)", r#"{"inputs": ["1"]}"#, "codecontests"),
    ];
    let status = client.score(request(bad)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status
            .message()
            .starts_with("items[1].ground_truth: the tests of a code item"),
        "{}",
        status.message()
    );
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_invalid_arguments_naming_the_item() {
    let server = Sandbox::start(RewardServerConfig {
        max_request_items: 4,
        max_item_bytes: 1000,
        ..with_model()
    })
    .await;
    let mut client = server.client().await;
    let good = || model_item(SAMPLES[0]);
    let mut typo = good();
    typo.style = "mdoel".into();
    let mut big = good();
    big.response = "fun ".repeat(500);
    let mut role = good();
    role.prompt[0].role = "usr".into();
    let cases: Vec<(Vec<ScoreItem>, &str)> = vec![
        (vec![], "the request has no items"),
        (vec![good(); 5], "the request has 5 items, more than the 4"),
        (vec![good(), typo], "items[1].style is \"mdoel\""),
        (
            vec![good(), good(), rule_item("4", "", "openai/gsm8k")],
            "items[2].ground_truth is empty",
        ),
        (
            vec![big, good()],
            "items[0] is 2026 bytes of text, more than the 1000",
        ),
        (
            vec![good(), good(), good(), role],
            "items[3].prompt[0].role is \"usr\"",
        ),
    ];
    for (items, expected) in cases {
        let status = client.score(request(items)).await.unwrap_err();
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{expected}: {status:?}"
        );
        assert!(
            status.message().starts_with(expected),
            "{:?} should start with {expected:?}",
            status.message()
        );
    }
    assert_eq!(server.stats.model_calls(), 0, "nothing was queued");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_requests_is_answered_or_refused_and_the_queue_stays_bounded() {
    const REQUESTS: usize = 1000;
    const MAX_QUEUE: usize = 8;
    let server = Sandbox::start(RewardServerConfig {
        max_queue_items: MAX_QUEUE,
        max_request_items: 4,
        batch_window: Duration::from_millis(2),
        ..with_model()
    })
    .await;
    let expected = reference_scores(&SAMPLES, 8192);
    let mut channels = Vec::new();
    for _ in 0..10 {
        channels.push(server.channel().await);
    }
    let calls: Vec<_> = (0..REQUESTS)
        .map(|k| {
            let mut client = RewardServerClient::new(channels[k % channels.len()].clone());
            let (a, b) = (k % SAMPLES.len(), (k + 1) % SAMPLES.len());
            let items = vec![
                model_item(SAMPLES[a]),
                rule_item("\\boxed{7}", "7", "aime_2024"),
                model_item(SAMPLES[b]),
            ];
            let want = vec![expected[a], 1.0, expected[b]];
            tokio::spawn(async move { (client.score(request(items)).await, want) })
        })
        .collect();
    let (mut answered, mut refused) = (0, 0);
    for call in futures::future::join_all(calls).await {
        match call.unwrap() {
            (Ok(response), want) => {
                assert_close(&response.into_inner().scores, &want);
                answered += 1;
            }
            (Err(status), _) if status.code() == Code::ResourceExhausted => {
                assert!(status.message().contains("queue is full"), "{status:?}");
                refused += 1;
            }
            (Err(status), _) => panic!("unexpected status {status:?}"),
        }
    }
    println!(
        "{answered} answered, {refused} refused, {} model calls, peak queue {}",
        server.stats.model_calls(),
        server.stats.peak_queued_items()
    );
    assert_eq!(answered + refused, REQUESTS);
    assert!(
        answered > 0 && refused > 0,
        "{answered} answered, {refused} refused"
    );
    assert_eq!(server.stats.refused_requests(), refused as u64);
    assert_eq!(server.stats.model_items(), 2 * answered as u64);
    assert!(server.stats.peak_queued_items() <= MAX_QUEUE);
    assert!(server.stats.peak_queued_items() >= 2);
    assert_eq!(server.stats.queued_items(), 0);
    let after = vec![model_item(SAMPLES[0])];
    let scores = server.client().await.score(request(after)).await.unwrap();
    assert_close(&scores.into_inner().scores, &expected[..1]);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_gives_up_frees_its_room_in_the_queue() {
    let server = Sandbox::start(RewardServerConfig {
        batch_window: Duration::from_millis(300),
        ..with_model()
    })
    .await;
    let mut call = tonic::Request::new(request(vec![model_item(SAMPLES[0]); 3]));
    call.set_timeout(Duration::from_millis(20));
    let status = server.client().await.score(call).await.unwrap_err();
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );
    assert_eq!(
        server.stats.peak_queued_items(),
        3,
        "the request was queued"
    );
    let started = Instant::now();
    while server.stats.queued_items() > 0 {
        assert!(
            started.elapsed() < PATIENCE,
            "the abandoned items stay queued"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_the_queued_requests_then_returns() {
    let window = Duration::from_secs(8);
    let server = Sandbox::start(RewardServerConfig {
        batch_window: window,
        ..with_model()
    })
    .await;
    assert_eq!(server.health(SERVICE_NAME).await, ServingStatus::Serving);
    let expected = reference_scores(&SAMPLES, 8192);
    let client = server.client().await;
    let calls: Vec<_> = (0..6)
        .map(|k| {
            let mut client = client.clone();
            let k = k % SAMPLES.len();
            tokio::spawn(async move { client.score(request(vec![model_item(SAMPLES[k])])).await })
        })
        .collect();
    let started = Instant::now();
    while server.stats.queued_items() < 6 {
        assert!(
            started.elapsed() < PATIENCE,
            "the requests were never queued"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        server.stats.model_calls(),
        0,
        "the batch window is still open"
    );
    let address = server.address;
    let stopping = Instant::now();
    server.shutdown.cancel();
    for (k, call) in calls.into_iter().enumerate() {
        let scores = call.await.unwrap().unwrap().into_inner().scores;
        assert_close(&scores, &[expected[k % SAMPLES.len()]]);
    }
    let stats = Arc::clone(&server.stats);
    server.stop().await.unwrap();
    assert!(
        stopping.elapsed() < window / 2,
        "the batch window was cut short: {:?}",
        stopping.elapsed()
    );
    assert!(stats.model_calls() >= 1);
    assert_eq!(stats.queued_items(), 0);
    assert!(
        tokio::net::TcpStream::connect(address).await.is_err(),
        "the listener is closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_share_model_calls_within_the_token_budget() {
    const N: usize = 8;
    let sample = SAMPLES[1];
    let length = token_length(sample);
    let expected = reference_scores(&[sample], 8192)[0];
    for (batch_tokens, fewest, most) in [(16384, 1, N - 1), (2 * length, N / 2, N - 1)] {
        let server = Sandbox::start(RewardServerConfig {
            batch_tokens,
            batch_window: Duration::from_millis(300),
            ..with_model()
        })
        .await;
        let client = server.client().await;
        let calls: Vec<_> = (0..N)
            .map(|_| {
                let mut client = client.clone();
                tokio::spawn(async move { client.score(request(vec![model_item(sample)])).await })
            })
            .collect();
        for call in calls {
            let scores = call.await.unwrap().unwrap().into_inner().scores;
            assert_close(&scores, &[expected]);
        }
        let model_calls = server.stats.model_calls() as usize;
        println!("budget {batch_tokens}: {N} requests in {model_calls} model calls");
        assert!(
            (fewest..=most).contains(&model_calls),
            "budget {batch_tokens} ({length} tokens a request): {model_calls} model calls for {N} requests"
        );
        server.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reward_model_that_fails_to_load_stops_the_server() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = RewardServerConfig {
        model: Some("/nonexistent/reward-model".into()),
        ..Default::default()
    };
    let result = tokio::time::timeout(
        PATIENCE,
        grlo_reward_server::run(config, listener, CancellationToken::new()),
    )
    .await
    .expect("run returns");
    let message = result.unwrap_err().to_string();
    assert!(
        message.contains("failed to load reward model /nonexistent/reward-model"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_configuration_is_refused_before_serving() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = RewardServerConfig {
        max_queue_items: 2,
        ..with_model()
    };
    let message = grlo_reward_server::run(config, listener, CancellationToken::new())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("max_request_items (1024) is more than max_queue_items (2)"),
        "{message}"
    );
}
