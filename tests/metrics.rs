//! Every role's Prometheus endpoint, scraped while a tiny job runs and once it has finished:
//! the series the dashboards use exist, with values that agree with the job.

mod cluster;

use std::time::Duration;

use cluster::{Cluster, exclusive, free_port, http_get};

/// `GET /metrics`: the samples as (name with labels, value).
fn scrape(port: u16) -> Vec<(String, f64)> {
    let (status, head, body) = http_get(port, "/metrics", None);
    assert_eq!(status, 200, "{head}");
    assert!(
        head.to_lowercase().contains("content-type: text/plain"),
        "{head}"
    );
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|line| {
            let (name, value) = line.rsplit_once(' ').expect("NAME VALUE");
            (name.to_string(), value.parse().expect("a number"))
        })
        .collect()
}

/// The sum of the samples whose name (with labels) starts with `prefix` and contains every
/// one of `labels`; `None` when there is none.
fn value(samples: &[(String, f64)], prefix: &str, labels: &[&str]) -> Option<f64> {
    let matching: Vec<f64> = samples
        .iter()
        .filter(|(name, _)| name.starts_with(prefix) && labels.iter().all(|l| name.contains(l)))
        .map(|(_, v)| *v)
        .collect();
    (!matching.is_empty()).then(|| matching.iter().sum())
}

fn must(samples: &[(String, f64)], prefix: &str, labels: &[&str]) -> f64 {
    value(samples, prefix, labels).unwrap_or_else(|| {
        let names: Vec<&str> = samples.iter().map(|(n, _)| n.as_str()).collect();
        panic!("no {prefix} {labels:?} among:\n{}", names.join("\n"))
    })
}

#[test]
fn every_role_serves_its_metrics_during_a_tiny_job() {
    let _one = exclusive();
    let steps = 6;
    let mut cluster = Cluster::new(200, 60_000);
    let ports: Vec<(&str, u16)> = ["coordinator", "reward", "learner", "a1"]
        .into_iter()
        .map(|name| (name, free_port()))
        .collect();
    for (name, port) in &ports {
        cluster.extra_args.insert(
            name.to_string(),
            vec!["--http-listen".into(), format!("127.0.0.1:{port}")],
        );
    }
    let port = |name: &str| ports.iter().find(|(n, _)| *n == name).unwrap().1;
    let cluster = cluster.with_roles(1);
    let job = cluster.submit_tiny(&[&format!("trainer.total_steps={steps}")]);
    let job_label = format!("job=\"{job}\"");

    // While it runs: the first step has landed, the queue and the workers are visible.
    cluster.wait_until(Duration::from_secs(300), "the first step", || {
        let job = cluster.ctl(&["job", "get", &job]);
        (job["step"].as_u64().unwrap_or(0) >= 1).then_some(())
    });
    let running = scrape(port("coordinator"));
    assert_eq!(
        must(&running, "grlo_coordinator_jobs", &["status=\"running\""]),
        1.0
    );
    assert!(value(&running, "grlo_coordinator_tasks", &["state=\"pending\""]).is_some());
    // Registered workers (a busy 2-core machine can delay a heartbeat past "alive").
    assert_eq!(must(&running, "grlo_coordinator_workers", &[]), 3.0);
    assert!(must(&running, "grlo_coordinator_job_step", &[&job_label]) >= 1.0);

    let done = cluster.wait_for_status(&job, &["succeeded", "failed"], Duration::from_secs(300));
    assert_eq!(done["status"], "succeeded", "{done}");
    let reward_mean = done["last_metrics"]["reward_mean"].as_f64();

    // The coordinator: calls per RPC with latencies, the job's version, reward and usage.
    let c = scrape(port("coordinator"));
    let leases = must(
        &c,
        "grlo_coordinator_rpc_requests_total",
        &["method=\"LeaseTask\"", "code=\"Ok\""],
    );
    assert!(leases >= steps as f64, "{leases} leases for {steps} steps");
    let latency_count = must(
        &c,
        "grlo_coordinator_rpc_duration_seconds_count",
        &["method=\"LeaseTask\""],
    );
    assert!(latency_count >= leases);
    let latency_sum = must(
        &c,
        "grlo_coordinator_rpc_duration_seconds_sum",
        &["method=\"Heartbeat\""],
    );
    assert!(latency_sum > 0.0 && latency_sum < 60.0, "{latency_sum}");
    assert_eq!(
        must(&c, "grlo_coordinator_weight_version", &[&job_label]),
        steps as f64
    );
    assert_eq!(
        must(&c, "grlo_coordinator_tasks", &["state=\"pending\""]),
        0.0
    );
    let used = value(&c, "grlo_coordinator_gpu_used_seconds", &[&job_label]).unwrap_or(0.0)
        + must(&c, "grlo_coordinator_cpu_used_seconds", &[&job_label]);
    assert!(used > 0.0, "device-seconds used: {used}");
    let coordinator_reward = must(&c, "grlo_coordinator_reward_mean", &[&job_label]);
    let reward = reward_mean.expect("the job's last metrics carry reward_mean");
    assert!(
        (coordinator_reward - reward).abs() < 1e-9,
        "{coordinator_reward} vs {reward}"
    );

    // The learner: one train and publish phase per step, its version, its reward.
    let l = scrape(port("learner"));
    assert_eq!(must(&l, "grlo_learner_steps_total", &[]), steps as f64);
    for phase in ["wait", "train", "checkpoint", "publish"] {
        let label = format!("phase=\"{phase}\"");
        let count = must(&l, "grlo_learner_step_phase_seconds_count", &[&label]);
        assert_eq!(count, steps as f64, "{phase}");
    }
    assert!(
        must(
            &l,
            "grlo_learner_step_phase_seconds_sum",
            &["phase=\"train\""]
        ) > 0.0
    );
    assert_eq!(must(&l, "grlo_learner_weight_version", &[]), steps as f64);
    // The same mean, summed in the order the trajectories arrived (two actors): equal to the
    // last bits or so.
    let learner_reward = must(&l, "grlo_learner_reward_mean", &[]);
    assert!(
        (learner_reward - coordinator_reward).abs() < 1e-9,
        "{learner_reward} vs {coordinator_reward}"
    );
    let received = must(&l, "grlo_learner_trajectories_received_total", &[]);
    assert_eq!(
        received,
        (steps * 32) as f64,
        "32 prompts x 1 sample per step"
    );
    assert!(
        must(
            &l,
            "grlo_learner_rpc_requests_total",
            &["method=\"SendTrajectories\""]
        ) >= 1.0
    );

    // The actor: tasks, trajectories and tokens, and the version it ran last.
    let a = scrape(port("a1"));
    assert_eq!(must(&a, "grlo_actor_trajectories_total", &[]), received);
    let tokens = must(&a, "grlo_actor_generated_tokens_total", &[]);
    assert!(
        tokens >= received && tokens <= received * 64.0,
        "{tokens} tokens"
    );
    assert!(must(&a, "grlo_actor_tasks_total", &["outcome=\"done\""]) >= steps as f64);
    assert_eq!(
        must(&a, "grlo_actor_weight_version", &[]),
        (steps - 1) as f64
    );
    assert!(
        must(
            &a,
            "grlo_actor_task_phase_seconds_count",
            &["phase=\"generate\""]
        ) >= 1.0
    );

    // The reward server: what it scored, in batches of plausible size, and an empty queue.
    let r = scrape(port("reward"));
    let scored = must(&r, "grlo_reward_server_model_items_scored_total", &[])
        + must(&r, "grlo_reward_server_rule_items_scored_total", &[]);
    assert_eq!(scored, received);
    let batches = must(&r, "grlo_reward_server_batch_items_count", &[]);
    let items = must(&r, "grlo_reward_server_batch_items_sum", &[]);
    assert!(
        batches >= 1.0 && items <= scored,
        "{batches} batches, {items} items"
    );
    assert_eq!(must(&r, "grlo_reward_server_queue_items", &[]), 0.0);
    assert!(
        must(
            &r,
            "grlo_reward_server_rpc_requests_total",
            &["method=\"Score\"", "code=\"Ok\""]
        ) >= 1.0
    );

    // deploy/grafana/metrics.txt (what the Grafana dashboard is checked against) lists exactly
    // what the roles export.
    let scraped: Vec<&(String, f64)> = [&c, &l, &a, &r].into_iter().flatten().collect();
    let listed = listed_metrics();
    let base = |name: &str| -> String {
        let name = name.split('{').next().unwrap_or(name);
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(stem) = name.strip_suffix(suffix)
                && listed.get(stem).is_some_and(|kind| kind == "histogram")
            {
                return stem.to_string();
            }
        }
        name.to_string()
    };
    let exported: std::collections::BTreeSet<String> =
        scraped.iter().map(|(name, _)| base(name)).collect();
    let unlisted: Vec<&String> = exported
        .iter()
        .filter(|n| !listed.contains_key(*n))
        .collect();
    assert!(
        unlisted.is_empty(),
        "exported but not in deploy/grafana/metrics.txt: {unlisted:?}"
    );
    let missing: Vec<&String> = listed.keys().filter(|n| !exported.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "in deploy/grafana/metrics.txt but not exported: {missing:?}"
    );
}

/// deploy/grafana/metrics.txt: name -> type.
fn listed_metrics() -> std::collections::BTreeMap<String, String> {
    let text = std::fs::read_to_string(cluster::root().join("deploy/grafana/metrics.txt")).unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let mut fields = l.split_whitespace();
            let name = fields.next().unwrap().to_string();
            (name, fields.next().expect("NAME TYPE LABELS").to_string())
        })
        .collect()
}
