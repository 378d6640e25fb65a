//! gRPC server reflection on every role, read with the official `grpcio-reflection` Python
//! client (`tests/python/reflect_services.py`, as `grpcurl list` and `describe` would): each
//! role lists its own grlo.v1 service with its methods, and health; with tokens on,
//! reflection stays open like health while the services themselves still need a token.
//! The client comes from the venv `scripts/test.sh` installs.

mod cluster;

use std::process::Command;

use cluster::{Cluster, exclusive, free_port, test_python};
use serde_json::Value;

const HEALTH: &str = "grpc.health.v1.Health";
const REFLECTION: &str = "grpc.reflection.v1alpha.ServerReflection";

/// Every service and its methods, by server address, through reflection.
fn reflect(addresses: &[String]) -> Value {
    let output = Command::new(test_python())
        .arg(cluster::root().join("tests/python/reflect_services.py"))
        .args(addresses)
        .output()
        .expect("python runs");
    assert!(
        output.status.success(),
        "the reflection client failed (scripts/test.sh installs grpcio-reflection): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("a JSON object")
}

fn names(services: &Value) -> Vec<String> {
    let mut names: Vec<String> = services.as_object().unwrap().keys().cloned().collect();
    names.sort();
    names
}

#[test]
fn every_role_describes_its_services_through_reflection() {
    let _one = exclusive();
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("worker.token");
    std::fs::write(&token, "worker-5be1c0de\n").unwrap();
    let mut cluster = Cluster::new(200, 60000);
    cluster.env = vec![
        ("GRLO_WORKER_TOKEN_FILE".into(), token.display().to_string()),
        ("GRLO_ADMIN_TOKEN".into(), "admin-9c7e21aa".into()),
    ];
    let actor_port = free_port();
    cluster.extra_args.insert(
        "a1".into(),
        vec!["--listen".into(), format!("127.0.0.1:{actor_port}")],
    );
    for role in ["coordinator", "reward", "learner", "a1"] {
        cluster.start(role);
    }
    cluster.wait_for_workers(3);
    let address = |port: u16| format!("127.0.0.1:{port}");
    let roles = [
        (cluster.coordinator_port, Some("grlo.v1.Coordinator")),
        (cluster.reward_port, Some("grlo.v1.RewardServer")),
        (cluster.learner_port, Some("grlo.v1.Learner")),
        (actor_port, None),
    ];
    let addresses: Vec<String> = roles.iter().map(|(port, _)| address(*port)).collect();
    let described = reflect(&addresses);
    for (port, service) in roles {
        let services = &described[address(port)];
        let mut expected: Vec<String> = [HEALTH, REFLECTION]
            .into_iter()
            .chain(service)
            .map(String::from)
            .collect();
        expected.sort();
        assert_eq!(
            names(services),
            expected,
            "{service:?} on {port}: {services}"
        );
        assert_eq!(services[HEALTH], serde_json::json!(["Check", "Watch"]));
    }
    let coordinator = &described[address(cluster.coordinator_port)]["grlo.v1.Coordinator"];
    for method in ["SubmitJob", "WatchJob", "LeaseTask", "PublishWeights"] {
        assert!(
            coordinator.as_array().unwrap().iter().any(|m| m == method),
            "{method} in {coordinator}"
        );
    }
    assert_eq!(
        described[address(cluster.reward_port)]["grlo.v1.RewardServer"],
        serde_json::json!(["Score"])
    );
    // The services themselves still want a token: `grlo ctl` without one is refused.
    let refused = cluster::grlo()
        .args([
            "ctl",
            "--coordinator",
            &cluster.coordinator_url(),
            "job",
            "list",
        ])
        .output()
        .expect("grlo ctl runs");
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("bearer token"), "{stderr}");
}
