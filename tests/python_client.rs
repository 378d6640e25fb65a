//! gRPC interop with a third-party client: examples/python/grlo_client.py, whose stubs
//! grpcio-tools generates from proto/protos, drives a real cluster over mutual TLS with the
//! admin token in its metadata. It submits a tiny job and follows WatchJob to `succeeded`,
//! pauses, resumes and cancels a second job, and reads the first one's budget. Each answer is
//! checked against the learner's own records and against `grlo ctl`. A wrong token is refused
//! with UNAUTHENTICATED and the worker token with PERMISSION_DENIED. The client runs in the
//! venv `scripts/test.sh` installs (grpcio, grpcio-tools, protobuf from
//! examples/python/requirements.txt).

mod cluster;

use std::process::{Command, Output};

use cluster::{Cluster, exclusive, root, test_python};
use serde_json::Value;

const WORKER_TOKEN: &str = "worker-3d81c7a2";
const ADMIN_TOKEN: &str = "admin-c41e96f0";
const STEPS: u64 = 3;

/// A cluster of every role and one actor with mutual TLS, a worker token and an admin token.
fn secure_cluster() -> Cluster {
    let mut cluster = Cluster::new(200, 60_000);
    let dir = cluster.dir.path().to_path_buf();
    cluster::write_test_certificates(&dir);
    std::fs::write(dir.join("worker.token"), format!("{WORKER_TOKEN}\n")).unwrap();
    let file = |name: &str| dir.join(name).display().to_string();
    cluster.tls = true;
    cluster.env = vec![
        ("GRLO_TLS_CERT".into(), file("cert.pem")),
        ("GRLO_TLS_KEY".into(), file("key.pem")),
        ("GRLO_TLS_CA".into(), file("ca.pem")),
        ("GRLO_TLS_CLIENT_AUTH".into(), "true".into()),
        ("GRLO_WORKER_TOKEN_FILE".into(), file("worker.token")),
        ("GRLO_ADMIN_TOKEN".into(), ADMIN_TOKEN.into()),
    ];
    cluster.with_roles(1)
}

/// `grlo_client.py ARGS` against the cluster over mutual TLS, with `token` in
/// GRLO_ADMIN_TOKEN (and no other GRLO_ variable of the test's environment).
fn python_client(cluster: &Cluster, token: &str, args: &[&str]) -> Output {
    let mut command = Command::new(test_python());
    command.current_dir(root());
    for (key, _) in std::env::vars() {
        if key.starts_with("GRLO_") {
            command.env_remove(key);
        }
    }
    command
        .arg(root().join("examples/python/grlo_client.py"))
        .args(["--coordinator", &cluster.coordinator_url()])
        .arg("--tls-ca")
        .arg(cluster.path("ca.pem"))
        .arg("--tls-cert")
        .arg(cluster.path("cert.pem"))
        .arg("--tls-key")
        .arg(cluster.path("key.pem"))
        .args(args)
        .env("GRLO_ADMIN_TOKEN", token)
        .output()
        .expect("python runs")
}

/// The client's JSON output; panics with its stderr when it failed.
fn python_json(cluster: &Cluster, args: &[&str]) -> Value {
    let output = python_client(cluster, ADMIN_TOKEN, args);
    assert!(
        output.status.success(),
        "grlo_client.py {args:?} failed (scripts/test.sh installs \
         examples/python/requirements.txt into the test venv): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("grlo_client.py prints JSON")
}

/// `actual` is `expected`: the same keys, arrays and strings; the same integers; floats equal
/// to 1e-12 relative, as each side printed and parsed them (Python's json, serde_json).
fn assert_same_json(actual: &Value, expected: &Value, at: &str) {
    match (actual, expected) {
        (Value::Number(a), Value::Number(e)) if a.is_f64() || e.is_f64() => {
            let (a, e) = (a.as_f64().unwrap(), e.as_f64().unwrap());
            assert!(
                (a - e).abs() <= 1e-12 * e.abs().max(f64::MIN_POSITIVE),
                "{at}: {a} != {e}"
            );
        }
        (Value::Object(a), Value::Object(e)) => {
            let keys = |o: &serde_json::Map<String, Value>| {
                o.keys().cloned().collect::<std::collections::BTreeSet<_>>()
            };
            assert_eq!(keys(a), keys(e), "{at}: the keys");
            for (key, value) in e {
                assert_same_json(&a[key], value, &format!("{at}.{key}"));
            }
        }
        (Value::Array(a), Value::Array(e)) => {
            assert_eq!(a.len(), e.len(), "{at}: the length");
            for (i, (a, e)) in a.iter().zip(e).enumerate() {
                assert_same_json(a, e, &format!("{at}[{i}]"));
            }
        }
        _ => assert_eq!(actual, expected, "{at}"),
    }
}

#[test]
fn the_python_client_runs_jobs_over_mutual_tls_with_the_admin_token() {
    let _one = exclusive();
    let cluster = secure_cluster();
    let steps = format!("trainer.total_steps={STEPS}");
    let scenario = [
        "scenario",
        "configs/tiny.toml",
        "--set",
        &steps,
        "--timeout-s",
        "300",
    ];
    let summary = python_json(&cluster, &scenario);

    // Job A: queued, then every event of its watch in order, ending with its success.
    let a = &summary["a"];
    assert_eq!(a["submitted"]["status"], "queued", "{a}");
    let id = a["submitted"]["id"].as_str().expect("an id").to_string();
    let events = a["events"].as_array().expect("the events");
    assert!(events.iter().all(|e| e["id"] == id.as_str()), "{a}");
    let step_of = |e: &Value| e["step"].as_u64().expect("a step");
    let all_steps: Vec<u64> = events.iter().map(step_of).collect();
    assert!(all_steps.is_sorted(), "steps never go back: {all_steps:?}");
    let updated: Vec<i64> = events
        .iter()
        .map(|e| e["updated_unix_ms"].as_i64().unwrap())
        .collect();
    assert!(updated.is_sorted(), "events in order: {updated:?}");
    let (last, before) = events.split_last().expect("at least one event");
    assert_eq!(
        last["status"], "succeeded",
        "the stream ends with the job: {last}"
    );
    assert_eq!(step_of(last), STEPS, "{last}");
    assert_eq!(last["total_steps"], STEPS, "{last}");
    for event in before {
        assert!(
            ["queued", "running"].contains(&event["status"].as_str().unwrap()),
            "before the end: {event}"
        );
    }

    // One event per trained step, each with the metrics the learner wrote for it.
    let trained: Vec<&Value> = events
        .iter()
        .filter(|e| e.get("step_metrics").is_some())
        .collect();
    let trained_steps: Vec<u64> = trained.iter().map(|&e| step_of(e)).collect();
    assert_eq!(trained_steps, (1..=STEPS).collect::<Vec<_>>(), "{a}");
    let learner_metrics = cluster.metrics(&id);
    assert_eq!(learner_metrics.len(), STEPS as usize, "{learner_metrics:?}");
    for (&event, line) in trained.iter().zip(&learner_metrics) {
        let at = format!("step {} metrics", step_of(event));
        assert_same_json(&event["step_metrics"], line, &at);
    }

    // What the client read at the end is what `grlo ctl` reads: the job and its budget.
    assert_same_json(&a["final"], &cluster.ctl(&["job", "get", &id]), "job A");
    assert_same_json(&a["budget"], &cluster.ctl(&["budget", &id]), "A's budget");
    let budget = &a["budget"];
    assert_eq!(budget["id"], id.as_str());
    assert!(budget["cpu_hours_used"].as_f64().unwrap() > 0.0, "{budget}");
    let by_role_cpu_s: f64 = budget["by_role"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["cpu_seconds"].as_f64().unwrap())
        .sum();
    let used_s = budget["cpu_hours_used"].as_f64().unwrap() * 3600.0;
    assert!((by_role_cpu_s - used_s).abs() <= 1e-6 * used_s, "{budget}");

    // Job B waited behind A (one learner): paused, queued again, cancelled.
    let b = &summary["b"];
    let b_id = b["submitted"]["id"].as_str().expect("an id");
    assert_ne!(b_id, id);
    for (call, status) in [
        ("submitted", "queued"),
        ("paused", "paused"),
        ("resumed", "queued"),
        ("cancelled", "cancelled"),
        ("final", "cancelled"),
    ] {
        assert_eq!(b[call]["id"], b_id, "{b}");
        assert_eq!(b[call]["status"], status, "B {call}: {b}");
    }
    assert_eq!(b["final"]["step"], 0, "{b}");
    assert_same_json(&b["final"], &cluster.ctl(&["job", "get", b_id]), "job B");

    // Watching a job that has ended gives its state once and ends.
    let watch = python_client(&cluster, ADMIN_TOKEN, &["watch", &id]);
    assert!(
        watch.status.success(),
        "{}",
        String::from_utf8_lossy(&watch.stderr)
    );
    let lines: Vec<Value> = String::from_utf8_lossy(&watch.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_same_json(&lines[0], &a["final"], "the watch of an ended job");

    // A wrong token and the worker token are refused, with the status code in the message.
    for (token, code) in [
        ("admin-c41e96f1", "UNAUTHENTICATED"),
        (WORKER_TOKEN, "PERMISSION_DENIED"),
    ] {
        let refused = python_client(&cluster, token, &["get", &id]);
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert_eq!(refused.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(&format!("error: {code}: ")), "{stderr}");
        assert!(refused.stdout.is_empty(), "nothing printed on a refusal");
    }
}
