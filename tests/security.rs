//! Bearer tokens and TLS on real processes over loopback: every refusal (no token, a wrong
//! token, a token of the wrong kind, plaintext to a TLS port, no client certificate under
//! mutual TLS) with its status code, and a whole tiny job with mutual TLS and tokens on.

mod cluster;

use std::path::PathBuf;
use std::time::Duration;

use cluster::{Cluster, exclusive, grlo, runtime};
use grlo_proto::security::{ClientSecurity, Secret, TlsFiles};
use grlo_proto::v1;
use grlo_proto::v1::coordinator_client::CoordinatorClient;
use grlo_proto::v1::learner_client::LearnerClient;
use grlo_proto::v1::reward_server_client::RewardServerClient;
use tonic::Code;

const WORKER_TOKEN: &str = "worker-9f2c51e0";
const ADMIN_TOKEN: &str = "admin-77ab03d4";

/// A CA, and a certificate it signs for localhost/127.0.0.1 (used by every role, as server
/// and as client), written as PEM files.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        cluster::write_test_certificates(dir.path());
        std::fs::write(dir.path().join("worker.token"), format!("{WORKER_TOKEN}\n")).unwrap();
        Pki { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The variables every process of the cluster gets: TLS files, the worker token from a
    /// file, the admin token from the environment.
    fn env(&self, client_auth: bool) -> Vec<(String, String)> {
        let file = |name: &str| self.path(name).display().to_string();
        let mut env = vec![
            ("GRLO_TLS_CERT".to_string(), file("cert.pem")),
            ("GRLO_TLS_KEY".to_string(), file("key.pem")),
            ("GRLO_TLS_CA".to_string(), file("ca.pem")),
            ("GRLO_WORKER_TOKEN_FILE".to_string(), file("worker.token")),
            ("GRLO_ADMIN_TOKEN".to_string(), ADMIN_TOKEN.to_string()),
        ];
        if client_auth {
            env.push(("GRLO_TLS_CLIENT_AUTH".to_string(), "true".to_string()));
        }
        env
    }

    /// A client with the CA (and, with `identity`, the certificate) and `token`.
    fn client(&self, token: Option<&str>, identity: bool) -> ClientSecurity {
        let tls = TlsFiles {
            cert: identity.then(|| self.path("cert.pem")),
            key: identity.then(|| self.path("key.pem")),
            ca: Some(self.path("ca.pem")),
            ..TlsFiles::default()
        };
        let token = token.map(|t| Secret::new(t, "the test's token").unwrap());
        ClientSecurity::new(&tls, token.as_ref()).unwrap()
    }
}

fn coordinator(
    security: &ClientSecurity,
    url: &str,
) -> CoordinatorClient<grlo_proto::security::Transport> {
    CoordinatorClient::new(security.lazy(url).unwrap())
}

fn code<T>(result: Result<tonic::Response<T>, tonic::Status>) -> Code {
    match result {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

/// Refused before any gRPC was spoken: the TLS handshake failed and the server closed the
/// connection, so there is no status from the server. tonic reports such a call with the
/// transport error as its source and a code that depends on when the pipe broke (UNKNOWN,
/// INTERNAL for TLS bytes read as HTTP/2, CANCELLED, UNAVAILABLE); never OK.
fn refused_by_transport<T: std::fmt::Debug>(result: Result<tonic::Response<T>, tonic::Status>) {
    let status = result.expect_err("the call must fail");
    let source = std::error::Error::source(&status).map(|e| format!("{e:?}"));
    assert!(
        source.as_deref().is_some_and(|s| s.contains("Transport")),
        "a transport error: {status:?}"
    );
}

fn no_token_in_logs(cluster: &Cluster, names: &[&str]) {
    for name in names {
        let log = std::fs::read_to_string(cluster.path(&format!("{name}.log"))).unwrap();
        for token in [WORKER_TOKEN, ADMIN_TOKEN] {
            assert!(!log.contains(token), "{name}.log shows a token:\n{log}");
        }
    }
}

#[test]
fn calls_without_the_right_token_or_over_plaintext_are_refused() {
    let _one = exclusive();
    let pki = Pki::new();
    let mut cluster = Cluster::new(200, 60_000);
    cluster.tls = true;
    cluster.env = pki.env(false);
    cluster.start("coordinator");
    cluster.start("reward");
    cluster.start("learner");
    cluster.wait_for_workers(2);
    let url = cluster.coordinator_url();
    let reward = format!("127.0.0.1:{}", cluster.reward_port);
    let learner = format!("127.0.0.1:{}", cluster.learner_port);

    runtime().block_on(async {
        let list = v1::ListJobsRequest {};
        let register = v1::RegisterWorkerRequest {
            role: v1::Role::Actor as i32,
            ..Default::default()
        };
        let submit = v1::SubmitJobRequest {
            spec_toml: String::new(),
        };
        let job = v1::JobRef {
            job_id: "j-1".into(),
        };

        // Plaintext to the TLS port: the server drops the connection before any gRPC.
        let plain = tonic::transport::Endpoint::from_shared(url.replace("https", "http"))
            .unwrap()
            .connect_lazy();
        let refused = CoordinatorClient::new(plain).list_jobs(list).await;
        refused_by_transport(refused);

        // No token, a wrong token: UNAUTHENTICATED.
        let mut anonymous = coordinator(&pki.client(None, false), &url);
        let refused = anonymous.list_jobs(list).await.unwrap_err();
        assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
        assert!(refused.message().contains("bearer token"), "{refused:?}");
        let mut forger = coordinator(&pki.client(Some("admin-77ab03d5"), false), &url);
        assert_eq!(code(forger.list_jobs(list).await), Code::Unauthenticated);

        // The worker token cannot submit, cancel or read jobs: PERMISSION_DENIED.
        let mut worker = coordinator(&pki.client(Some(WORKER_TOKEN), false), &url);
        let refused = worker.submit_job(submit.clone()).await.unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
        assert!(refused.message().contains("admin token"), "{refused:?}");
        assert_eq!(
            code(worker.cancel_job(job.clone()).await),
            Code::PermissionDenied
        );
        assert_eq!(code(worker.list_jobs(list).await), Code::PermissionDenied);

        // The admin token cannot register as a worker or lease tasks.
        let mut admin = coordinator(&pki.client(Some(ADMIN_TOKEN), false), &url);
        let refused = admin.register_worker(register.clone()).await.unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
        let lease = v1::LeaseTaskRequest {
            worker_id: "w-1".into(),
        };
        assert_eq!(code(admin.lease_task(lease).await), Code::PermissionDenied);

        // The right tokens get through (to the service's own checks).
        assert_eq!(code(admin.list_jobs(list).await), Code::Ok);
        assert_eq!(code(admin.cancel_job(job).await), Code::NotFound);
        assert_eq!(code(admin.submit_job(submit).await), Code::InvalidArgument);
        let registered = code(worker.register_worker(register).await);
        assert!(
            ![Code::Unauthenticated, Code::PermissionDenied].contains(&registered),
            "{registered:?}"
        );

        // The health service stays open for probes.
        let channel = pki
            .client(None, false)
            .endpoint(&url)
            .unwrap()
            .connect_lazy();
        let health = tonic_health::pb::health_client::HealthClient::new(channel)
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await;
        assert_eq!(code(health), Code::Ok);

        // The reward server and the learner check tokens too.
        let score = v1::ScoreRequest::default();
        let channel = pki.client(None, false).lazy(&reward).unwrap();
        let refused = RewardServerClient::new(channel).score(score.clone()).await;
        assert_eq!(code(refused), Code::Unauthenticated);
        let channel = pki.client(Some(WORKER_TOKEN), false).lazy(&reward).unwrap();
        let checked = RewardServerClient::new(channel).score(score).await;
        assert_eq!(
            code(checked),
            Code::InvalidArgument,
            "past the token: an empty request"
        );
        let channel = pki.client(Some(ADMIN_TOKEN), false).lazy(&learner).unwrap();
        let batches = tokio_stream::iter(vec![v1::TrajectoryBatch::default()]);
        let refused = LearnerClient::new(channel).send_trajectories(batches).await;
        assert_eq!(code(refused), Code::PermissionDenied);
    });

    // `grlo ctl` without the admin token is refused with a message that says what to do.
    let output = grlo()
        .args(["ctl", "--coordinator", &url, "--tls-ca"])
        .arg(pki.path("ca.pem"))
        .args(["job", "list"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("admin token"), "{stderr}");
    // Over plaintext to the TLS port it says how to fix the URL.
    let output = grlo()
        .args([
            "ctl",
            "--coordinator",
            &url.replace("https", "http"),
            "job",
            "list",
        ])
        .env("GRLO_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("https://"), "{stderr}");
    // With it (from the environment, as the cluster's processes get it), it works.
    assert!(cluster.ctl(&["job", "list"]).is_array());
    no_token_in_logs(&cluster, &["coordinator", "reward", "learner"]);
}

#[test]
fn a_tiny_job_runs_with_mutual_tls_and_tokens() {
    let _one = exclusive();
    let pki = Pki::new();
    let mut cluster = Cluster::new(200, 60_000);
    cluster.tls = true;
    cluster.env = pki.env(true);
    let mut cluster = cluster.with_roles(1);

    // Under mutual TLS a client without a certificate is turned away in the handshake.
    let url = cluster.coordinator_url();
    runtime().block_on(async {
        let mut anonymous = coordinator(&pki.client(Some(ADMIN_TOKEN), false), &url);
        let refused = anonymous.list_jobs(v1::ListJobsRequest {}).await;
        refused_by_transport(refused);
        let mut admin = coordinator(&pki.client(Some(ADMIN_TOKEN), true), &url);
        assert_eq!(
            code(admin.list_jobs(v1::ListJobsRequest {}).await),
            Code::Ok
        );
    });

    let job = cluster.submit_tiny(&["trainer.total_steps=3"]);
    let done = cluster.wait_for_status(&job, &["succeeded", "failed"], Duration::from_secs(300));
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["step"], 3);
    cluster.assert_each_prompt_used_once(&job, 3, 32);
    for name in ["coordinator", "reward", "learner", "a1"] {
        assert!(cluster.terminate(name).success(), "{name} exits 0");
    }
    no_token_in_logs(&cluster, &["coordinator", "reward", "learner", "a1"]);
}
