//! The distributed service as separate OS processes on 127.0.0.1: a coordinator, a reward
//! server, a learner and actors, driven by `grlo ctl`. Faults are in tests/faults.rs.

mod cluster;

use std::time::{Duration, Instant};

use cluster::{Cluster, exclusive, grlo, root, single_process_metrics};
use grlo_proto::v1;
use grlo_proto::v1::reward_server_client::RewardServerClient;

const JOB_TIMEOUT: Duration = Duration::from_secs(300);

#[test]
fn a_tiny_job_across_processes_equals_the_single_process_run() {
    let _one = exclusive();
    let steps = 12;
    let overrides = [format!("trainer.total_steps={steps}")];
    let overrides: Vec<&str> = overrides.iter().map(String::as_str).collect();

    let mut cluster = Cluster::start_all(200, 60_000, 2);
    let job = cluster.submit_tiny(&overrides);
    let done = cluster.wait_for_status(&job, &["succeeded", "failed"], JOB_TIMEOUT);
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["step"], steps);
    cluster.assert_each_prompt_used_once(&job, steps, 32);

    // Both actors took part.
    let workers = cluster.ctl(&["worker", "list"]);
    let versions: Vec<u64> = workers
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["role"] == "actor")
        .map(|w| w["weight_version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions.len(), 2, "{workers}");
    let logs: Vec<String> = ["a1", "a2"]
        .iter()
        .map(|a| std::fs::read_to_string(cluster.path(&format!("{a}.log"))).unwrap())
        .collect();
    for (actor, log) in ["a1", "a2"].iter().zip(&logs) {
        assert!(log.contains("task done"), "{actor} did no task:\n{log}");
    }

    // `ctl job watch` on a finished job prints its history and ends; `ctl budget` splits by role.
    let watch = grlo()
        .args([
            "ctl",
            "--coordinator",
            &cluster.coordinator_url(),
            "job",
            "watch",
            &job,
        ])
        .output()
        .unwrap();
    assert!(watch.status.success());
    let watch = String::from_utf8_lossy(&watch.stdout);
    assert!(watch.contains("succeeded"), "{watch}");
    let budget = cluster.ctl(&["budget", &job]);
    let roles: Vec<&str> = budget["by_role"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["role"].as_str().unwrap())
        .collect();
    for role in ["generation", "training"] {
        assert!(roles.contains(&role), "{budget}");
    }
    assert!(budget["cpu_hours_used"].as_f64().unwrap() > 0.0, "{budget}");

    // Every role stops gracefully on SIGTERM with exit 0.
    for role in ["a1", "a2", "learner", "reward", "coordinator"] {
        let status = cluster.terminate(role);
        assert!(status.success(), "{role} exited with {status}");
    }

    // The same seed in one process gives the same run: same prompts, same rewards.
    let distributed = cluster.metrics(&job);
    let single = single_process_metrics(cluster.dir.path(), &overrides);
    assert_eq!(distributed.len(), steps as usize);
    assert_eq!(single.len(), steps as usize);
    for (step, (d, s)) in distributed.iter().zip(&single).enumerate() {
        for key in [
            "reward_mean",
            "response_len_mean",
            "policy_loss",
            "value_loss",
        ] {
            let (d, s) = (d[key].as_f64().unwrap(), s[key].as_f64().unwrap());
            assert!(
                (d - s).abs() <= 1e-3 * (1.0 + s.abs()),
                "step {}: {key} {d} (distributed) vs {s} (one process)",
                step + 1
            );
        }
    }
    // And the reward rises as in the single-process run.
    let mean = |rows: &[serde_json::Value]| {
        rows.iter()
            .map(|m| m["reward_mean"].as_f64().unwrap())
            .sum::<f64>()
            / rows.len() as f64
    };
    let (first, last) = (mean(&distributed[..4]), mean(&distributed[8..]));
    assert!(last > first + 0.5, "reward {first:.3} -> {last:.3}");
}

#[test]
fn a_job_generates_on_grlo_serve_and_outlives_a_dead_endpoint() {
    let _one = exclusive();
    let steps = 6;
    let mut cluster = Cluster::start_all(200, 60_000, 1);
    let policy = root().join("configs/tiny/policy");
    let ports = [cluster::free_port(), cluster::free_port()];
    cluster.start_serve("serve1", ports[0], &policy);
    cluster.start_serve("serve2", ports[1], &policy);
    // One endpoint dies mid-job: the actor's requests go to the other.
    job_outlives_a_dead_endpoint(&mut cluster, ports, "serve1", steps, &[]);

    // The actor generated nothing itself: every version reached the live engine by a reload,
    // and its completions carried the trajectories.
    let log = std::fs::read_to_string(cluster.path("a1.log")).unwrap();
    assert!(log.contains("engine reloaded"), "{log}");
    let (_, _, metrics) = cluster::http_get(ports[1], "/metrics", None);
    assert!(
        metric(&metrics, "grlo_serve_reloads_total{outcome=\"ok\"}") >= 1.0,
        "{metrics}"
    );
    assert!(
        metric(&metrics, "grlo_serve_generated_tokens_total") > 0.0,
        "{metrics}"
    );
}

/// Runs a tiny job of `steps` generating on the external engines at `ports` (with
/// `overrides`), SIGKILLs the engine `dies` after step 2, and checks that the job still
/// succeeds with every prompt used once.
fn job_outlives_a_dead_endpoint(
    cluster: &mut Cluster,
    ports: [u16; 2],
    dies: &str,
    steps: u64,
    overrides: &[&str],
) {
    let endpoints = format!(
        "rollout.endpoints=[\"http://127.0.0.1:{}\", \"http://127.0.0.1:{}\"]",
        ports[0], ports[1]
    );
    let total_steps = format!("trainer.total_steps={steps}");
    let mut all = vec![
        total_steps.as_str(),
        "rollout.engine=\"openai\"",
        &endpoints,
        "rollout.max_in_flight=8",
    ];
    all.extend_from_slice(overrides);
    let job = cluster.submit_tiny(&all);
    cluster.wait_until(JOB_TIMEOUT, "step 2", || {
        let status = cluster.ctl(&["job", "get", &job]);
        (status["step"].as_u64().unwrap_or(0) >= 2).then_some(())
    });
    cluster.kill(dies);
    let done = cluster.wait_for_status(&job, &["succeeded", "failed"], JOB_TIMEOUT);
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["step"], steps);
    cluster.assert_each_prompt_used_once(&job, steps, 32);
}

/// A counter's value in a Prometheus text page (0 where it is missing).
fn metric(page: &str, name: &str) -> f64 {
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// A third-party engine: llama.cpp's `llama-server` (built from source by `scripts/test.sh`)
/// serving the tiny policy as GGUF. It has no route that loads new weights, so the job runs
/// with `rollout.reload = "none"` (its responses come from the initial policy).
#[test]
fn a_job_generates_on_llama_cpp_server_and_outlives_a_dead_endpoint() {
    let _one = exclusive();
    let steps = 4;
    let mut cluster = Cluster::start_all(200, 60_000, 1);
    let gguf = cluster.path("policy.gguf");
    let converted = std::process::Command::new(cluster::test_python())
        .arg(root().join("tests/python/hf_to_gguf.py"))
        .arg(root().join("configs/tiny/policy"))
        .arg(&gguf)
        .output()
        .expect("the converter runs");
    assert!(
        converted.status.success(),
        "{}",
        String::from_utf8_lossy(&converted.stderr)
    );
    let ports = [cluster::free_port(), cluster::free_port()];
    cluster.start_llama_server("llama1", ports[0], &gguf);
    cluster.start_llama_server("llama2", ports[1], &gguf);

    // Both engines serve the same model: greedy answers token for token, log-probabilities
    // within f32 noise (llama.cpp's kernels against grlo's, on the converted weights).
    let ours = cluster::free_port();
    cluster.start_serve("ours", ours, &root().join("configs/tiny/policy"));
    let request = serde_json::json!({
        "model": "tiny", "prompt": [5, 6, 7, 8, 100, 200, 300], "max_tokens": 12,
        "temperature": 0.0, "logprobs": 1, "return_token_ids": true,
    });
    let answer = |port: u16| -> (Vec<u64>, Vec<f64>) {
        let (status, body) = cluster::http_post_json(port, "/v1/completions", &request);
        assert_eq!(status, 200, "{body}");
        let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
        let choice = &answer["choices"][0];
        let (ids, logprobs): (Vec<_>, Vec<_>) = match choice["logprobs"]["content"].as_array() {
            Some(content) => content
                .iter()
                .map(|t| (t["id"].as_u64().unwrap(), t["logprob"].as_f64().unwrap()))
                .unzip(),
            None => (
                choice["token_ids"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|i| i.as_u64().unwrap())
                    .collect(),
                choice["logprobs"]["token_logprobs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|l| l.as_f64().unwrap())
                    .collect(),
            ),
        };
        (ids, logprobs)
    };
    let (theirs, ours) = (answer(ports[0]), answer(ours));
    assert_eq!(theirs.0, ours.0);
    assert_eq!(theirs.0.len(), 12);
    for (a, b) in theirs.1.iter().zip(&ours.1) {
        assert!((a - b).abs() < 1e-3, "{:?} against {:?}", theirs.1, ours.1);
    }
    cluster.kill("ours");
    job_outlives_a_dead_endpoint(
        &mut cluster,
        ports,
        "llama1",
        steps,
        &["rollout.reload=\"none\""],
    );

    let log = std::fs::read_to_string(cluster.path("a1.log")).unwrap();
    assert!(log.contains("engine keeps its own weights"), "{log}");
    assert!(!log.contains("engine reloaded"), "{log}");
    // The live server generated the tokens (llama.cpp's own counter).
    let (_, _, metrics) = cluster::http_get(ports[1], "/metrics", None);
    assert!(
        metric(&metrics, "llamacpp:tokens_predicted_total") > 0.0,
        "{metrics}"
    );
}

#[test]
fn async_mode_overlaps_generation_with_training_within_the_staleness_bound() {
    let _one = exclusive();
    let steps = 8;
    let cluster = Cluster::start_all(200, 60_000, 2);
    let job = cluster.submit_tiny(&[
        &format!("trainer.total_steps={steps}"),
        "job.staleness=1",
        "job.prompts_per_task=8",
    ]);
    let done = cluster.wait_for_status(&job, &["succeeded", "failed"], JOB_TIMEOUT);
    assert_eq!(done["status"], "succeeded", "{done}");
    cluster.assert_each_prompt_used_once(&job, steps, 32);

    let records = cluster.steps(&job);
    let mut overlapped = 0;
    for record in &records {
        let step = record["step"].as_u64().unwrap();
        for version in record["weight_versions"].as_array().unwrap() {
            let version = version.as_u64().unwrap();
            // Step s trains on versions s-1 (on-policy) or s-2 (one behind), never older.
            assert!(
                version + 1 + 1 >= step && version < step,
                "step {step} trained on version {version}: {record}"
            );
            if version + 2 == step {
                overlapped += 1;
            }
        }
    }
    // Actors generated the next step's rollouts while the learner trained.
    assert!(
        overlapped > 0,
        "no step used rollouts generated during the previous step's training: {records:?}"
    );
}

#[test]
fn a_spent_budget_stops_the_job_with_a_final_checkpoint() {
    let _one = exclusive();
    let heartbeat_ms = 200;
    let mut cluster = Cluster::new(heartbeat_ms, 60_000);
    // Each worker accounts one (pretend) GPU.
    cluster.accelerators = Some("test-gpu:1".into());
    let cluster = cluster.with_roles(2);
    // 43.2 GPU-seconds: 4 workers for about 10.8 s, several steps of the tiny job even on a
    // loaded machine (the budget must outlast the first step for there to be a checkpoint).
    let budget_hours = 0.012;
    let job = cluster.submit_tiny(&[
        "trainer.total_steps=200",
        // A checkpoint every step, so the last one written is of the last step trained.
        "trainer.save_every=1",
        &format!("job.gpu_hours={budget_hours}"),
    ]);
    let done = cluster.wait_for_status(
        &job,
        &["succeeded", "failed", "budget_exhausted"],
        JOB_TIMEOUT,
    );
    assert_eq!(done["status"], "budget_exhausted", "{done}");
    let stopped_at = done["step"].as_u64().unwrap();
    assert!(stopped_at < 200, "{done}");

    // The learner wrote a final checkpoint of the last step it trained.
    let latest = cluster.run_dir(&job).join("checkpoints/latest");
    cluster.wait_until(Duration::from_secs(30), "the final checkpoint", || {
        latest.exists().then_some(())
    });
    let trained = cluster.steps(&job).len() as u64;
    let checkpoint = std::fs::read_to_string(&latest).unwrap();
    assert_eq!(
        checkpoint.trim(),
        format!("step-{trained}"),
        "the latest checkpoint is the last trained step"
    );

    // Usage ends within one heartbeat interval of the budget (4 workers x 1 GPU each).
    std::thread::sleep(Duration::from_millis(4 * heartbeat_ms));
    let budget = cluster.ctl(&["budget", &job]);
    let used = budget["gpu_hours_used"].as_f64().unwrap() * 3600.0;
    let limit = budget_hours * 3600.0;
    let one_heartbeat = 4.0 * heartbeat_ms as f64 / 1000.0;
    assert!(
        (used - limit).abs() <= one_heartbeat,
        "used {used:.2} GPU-s of {limit:.2}, one heartbeat = {one_heartbeat:.2}: {budget}"
    );
    let split: f64 = budget["by_role"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["gpu_seconds"].as_f64().unwrap())
        .sum();
    assert!((split - used).abs() < 1e-6, "{budget}");

    // The table form names the roles.
    let table = grlo()
        .args([
            "ctl",
            "--coordinator",
            &cluster.coordinator_url(),
            "budget",
            &job,
        ])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("generation") && table.contains("GPU-SECONDS"),
        "{table}"
    );
}

#[test]
fn the_learner_checkpoints_every_save_every_steps_and_keeps_the_newest() {
    let _one = exclusive();
    let cluster = Cluster::start_all(200, 60_000, 2);
    let job = cluster.submit_tiny(&[
        "trainer.total_steps=6",
        "trainer.save_every=2",
        "trainer.max_checkpoints_to_keep=2",
    ]);
    let done = cluster.wait_for_status(&job, &["succeeded", "failed"], JOB_TIMEOUT);
    assert_eq!(done["status"], "succeeded", "{done}");
    cluster.assert_each_prompt_used_once(&job, 6, 32);

    // Steps 2, 4 and 6 were checkpointed; the oldest went once step-6 was complete.
    let checkpoints = cluster.run_dir(&job).join("checkpoints");
    let mut names: Vec<String> = std::fs::read_dir(&checkpoints)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("step-"))
        .collect();
    names.sort();
    assert_eq!(names, ["step-4", "step-6"]);
    assert_eq!(
        std::fs::read_to_string(checkpoints.join("latest"))
            .unwrap()
            .trim(),
        "step-6"
    );
    for part in [
        "policy/model.safetensors",
        "critic/model.safetensors",
        "optimizer/policy.safetensors",
        "state.json",
    ] {
        assert!(
            checkpoints.join("step-4").join(part).is_file(),
            "step-4/{part}"
        );
    }
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(checkpoints.join("step-4/state.json")).unwrap())
            .unwrap();
    assert_eq!(state["step"], 4);
    // The checkpoint's policy is the published version of its step, file for file.
    for file in ["model.safetensors", "config.json", "tokenizer.json"] {
        let checkpointed = std::fs::read(checkpoints.join("step-6/policy").join(file)).unwrap();
        let published = std::fs::read(checkpoints.join("weights/v6").join(file)).unwrap();
        assert!(checkpointed == published, "{file} differs");
    }
    // Every step is covered by a checkpoint: no spooled trajectories are left.
    let spooled: Vec<_> = std::fs::read_dir(cluster.run_dir(&job).join("spool"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(spooled.is_empty(), "{spooled:?}");
}

#[test]
fn a_job_spec_with_errors_is_refused_listing_every_error() {
    let _one = exclusive();
    let mut cluster = Cluster::new(200, 60_000);
    cluster.start("coordinator");
    cluster.wait_for_workers(0);
    let spec = cluster.path("bad.toml");
    std::fs::write(
        &spec,
        "[model]\npolicy = \"\"\n[data]\ntrain_files = [\"\"]\n[trainer]\ndevice = \"tpu\"\n",
    )
    .unwrap();
    let output = cluster.ctl_output(&["job", "submit", spec.to_str().unwrap()]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    for problem in ["model.policy", "data.train_files", "trainer.device"] {
        assert!(stderr.contains(problem), "{problem} not listed: {stderr}");
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
    let jobs = cluster.ctl(&["job", "list"]);
    assert_eq!(jobs.as_array().unwrap().len(), 0, "{jobs}");
}

/// Peak resident memory of a process, from /proc.
fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

#[test]
fn the_reward_server_answers_or_refuses_a_thousand_concurrent_requests() {
    let _one = exclusive();
    let dir = tempfile::tempdir().unwrap();
    let port = cluster::free_port();
    let log = std::fs::File::create(dir.path().join("reward.log")).unwrap();
    let mut server = grlo()
        .args([
            "reward-server",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--model",
            &root()
                .join("configs/tiny/reward-model")
                .display()
                .to_string(),
            "--max-queue",
            "64",
            "--max-request-items",
            "16",
            "--max-item-bytes",
            "4096",
        ])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let pid = server.id();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let result = runtime.block_on(async move {
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(60);
        let channel = loop {
            match tonic::transport::Endpoint::from_shared(url.clone())
                .unwrap()
                .connect()
                .await
            {
                Ok(channel) => break channel,
                Err(e) if Instant::now() > deadline => panic!("reward server never came up: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        let item = |response: String| v1::ScoreItem {
            prompt: vec![v1::ChatMessage {
                role: "user".into(),
                content: "Say something nice.".into(),
            }],
            response,
            style: "model".into(),
            ..Default::default()
        };
        let request = |i: usize| v1::ScoreRequest {
            job_id: String::new(),
            items: (0..4)
                .map(|j| item(format!("great happy {i} {j}")))
                .collect(),
        };

        // 1,000 at once: each answered with 4 scores or refused with RESOURCE_EXHAUSTED.
        let calls = (0..1000).map(|i| {
            let mut client = RewardServerClient::new(channel.clone());
            let request = request(i);
            tokio::spawn(async move { client.score(request).await })
        });
        let (mut answered, mut refused) = (0, 0);
        for call in futures_join(calls.collect()).await {
            match call {
                Ok(response) => {
                    assert_eq!(response.into_inner().scores.len(), 4);
                    answered += 1;
                }
                Err(status) if status.code() == tonic::Code::ResourceExhausted => refused += 1,
                Err(status) => panic!("neither answered nor refused: {status}"),
            }
        }
        assert_eq!(answered + refused, 1000);
        assert!(answered > 0, "nothing answered");

        // Oversized and malformed requests are INVALID_ARGUMENT.
        let mut client = RewardServerClient::new(channel);
        let too_many = v1::ScoreRequest {
            job_id: String::new(),
            items: (0..17).map(|j| item(format!("{j}"))).collect(),
        };
        let too_long = v1::ScoreRequest {
            job_id: String::new(),
            items: vec![item("x".repeat(10_000))],
        };
        let mut bad_style = request(0);
        bad_style.items[2].style = "vibes".into();
        for (what, request) in [
            ("17 items", too_many),
            ("10 KB", too_long),
            ("style", bad_style),
        ] {
            let status = client.score(request).await.expect_err(what);
            assert_eq!(
                status.code(),
                tonic::Code::InvalidArgument,
                "{what}: {status}"
            );
        }
        (answered, refused)
    });
    let peak = peak_rss_mib(pid);
    let _ = server.kill();
    let _ = server.wait();
    eprintln!(
        "answered {}, refused {}, peak RSS {peak:.0} MiB",
        result.0, result.1
    );
    assert!(peak < 1024.0, "peak RSS {peak:.0} MiB");
}

#[test]
fn every_role_answers_the_grpc_health_check_and_stops_on_sigterm() {
    let _one = exclusive();
    let mut cluster = Cluster::start_all(200, 60_000, 0);
    let actor_port = cluster::free_port();
    let log = std::fs::File::create(cluster.path("actor.log")).unwrap();
    let mut actor = grlo()
        .args([
            "actor",
            "--coordinator",
            &cluster.coordinator_url(),
            "--cache-dir",
            cluster.path("cache").to_str().unwrap(),
            "--listen",
            &format!("127.0.0.1:{actor_port}"),
        ])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let ports = [
        ("coordinator", cluster.coordinator_port),
        ("reward server", cluster.reward_port),
        ("learner", cluster.learner_port),
        ("actor", actor_port),
    ];
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        use tonic_health::pb::health_check_response::ServingStatus;
        use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
        for (role, port) in ports {
            let url = format!("http://127.0.0.1:{port}");
            let deadline = Instant::now() + Duration::from_secs(30);
            let status = loop {
                let answer = async {
                    let channel = tonic::transport::Endpoint::from_shared(url.clone())
                        .unwrap()
                        .connect()
                        .await
                        .map_err(|e| e.to_string())?;
                    HealthClient::new(channel)
                        .check(HealthCheckRequest {
                            service: String::new(),
                        })
                        .await
                        .map_err(|e| e.to_string())
                };
                match answer.await {
                    Ok(response) => break response.into_inner().status,
                    Err(e) if Instant::now() > deadline => panic!("{role}: {e}"),
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            };
            assert_eq!(status, ServingStatus::Serving as i32, "{role}");
        }
    });
    // SAFETY: signalling a child we spawned and have not reaped.
    unsafe {
        libc::kill(actor.id() as libc::pid_t, libc::SIGTERM);
    }
    assert!(
        actor.wait().unwrap().success(),
        "the actor's exit on SIGTERM"
    );
    for role in ["learner", "reward", "coordinator"] {
        let status = cluster.terminate(role);
        assert!(status.success(), "{role} exited with {status}");
    }
}

#[test]
fn a_role_takes_its_settings_from_a_file() {
    let _one = exclusive();
    let dir = tempfile::tempdir().unwrap();
    let port = cluster::free_port();
    let settings = dir.path().join("coordinator.toml");
    std::fs::write(
        &settings,
        format!(
            "listen = \"127.0.0.1:{port}\"\ndata-dir = \"{}\"\nheartbeat-ms = 300\n",
            dir.path().join("db").display()
        ),
    )
    .unwrap();
    let mut coordinator = grlo()
        .args(["coordinator", "--settings", settings.to_str().unwrap()])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let list = grlo()
            .args(["ctl", "--coordinator", &url, "--json", "job", "list"])
            .output()
            .unwrap();
        if list.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the coordinator never listened on {port}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(dir.path().join("db").is_dir(), "data-dir from the file");
    let _ = coordinator.kill();
    let _ = coordinator.wait();

    std::fs::write(&settings, "lissen = \"127.0.0.1:1\"\n").unwrap();
    let output = grlo()
        .args(["coordinator", "--settings", settings.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("`lissen` is not a setting of grlo coordinator")
            && stderr.contains("listen"),
        "{stderr}"
    );
}

async fn futures_join<T>(handles: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        out.push(handle.await.expect("the call's task"));
    }
    out
}
