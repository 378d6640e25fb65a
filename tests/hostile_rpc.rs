//! Hostile or oversized requests to a learner that is training a job: a worker token lets
//! anyone send trajectory batches, so every field that reaches a path or a directory is checked
//! at the RPC, and a batch of the paper's size (over tonic's 4 MiB default) is accepted.

mod cluster;

use std::time::Duration;

use cluster::{Cluster, exclusive, runtime};
use grlo_proto::v1;
use grlo_proto::v1::learner_client::LearnerClient;
use tonic::Code;
use tonic::transport::Channel;

/// A trajectory of `tokens` response tokens, valid in every field the RPC checks.
fn trajectory(tokens: usize) -> v1::Trajectory {
    v1::Trajectory {
        prompt_id: 0,
        group: 0,
        sample_index: 0,
        prompt_ids: vec![1000, 1001, 1002],
        response_ids: vec![1000; tokens],
        behaviour_logprobs: vec![-0.5; tokens],
        finish_reason: v1::FinishReason::Length as i32,
        reward: 0.25,
        weight_version: 0,
    }
}

fn batch(job: &str, task_id: &str, step: u64, tokens: usize) -> v1::TrajectoryBatch {
    v1::TrajectoryBatch {
        job_id: job.to_string(),
        task_id: task_id.to_string(),
        step,
        trajectories: vec![trajectory(tokens)],
    }
}

async fn send(
    client: &mut LearnerClient<Channel>,
    batch: v1::TrajectoryBatch,
) -> Result<Vec<String>, tonic::Status> {
    client
        .send_trajectories(tokio_stream::iter(vec![batch]))
        .await
        .map(|r| r.into_inner().task_ids)
}

#[test]
fn hostile_batches_are_refused_and_a_large_one_is_stored() {
    let _one = exclusive();
    let mut cluster = Cluster::new(200, 60_000);
    cluster.start("coordinator");
    cluster.start("reward");
    cluster.start("learner");
    cluster.wait_for_workers(2);
    // No actor: the job waits at step 1 with the learner assigned and nothing spooled.
    let job = cluster.submit_tiny(&["trainer.total_steps=3"]);
    let url = format!("http://127.0.0.1:{}", cluster.learner_port);
    let runtime = runtime();
    let mut client = runtime.block_on(async {
        LearnerClient::new(Channel::from_shared(url).unwrap().connect_lazy())
            .max_encoding_message_size(grlo_proto::MAX_TRAJECTORY_BATCH_BYTES)
    });
    cluster.wait_until(
        Duration::from_secs(60),
        "the learner to take the job",
        || {
            let status = runtime
                .block_on(client.status(v1::LearnerStatusRequest::default()))
                .ok()?
                .into_inner();
            (status.job_id == job && status.needed > 0).then_some(())
        },
    );
    // A token id past the vocabulary would panic the training thread once the step trains:
    // it is answered "loading: retry" until the learner has its models, then refused.
    let mut past = batch(&job, "1-0", 1, 4);
    past.trajectories[0].response_ids[2] = 10_000_000;
    let status = cluster.wait_until(Duration::from_secs(60), "the learner's models", || {
        let status = runtime
            .block_on(send(&mut client, past.clone()))
            .expect_err("a token id past the vocabulary");
        (status.code() != Code::Unavailable).then_some(status)
    });
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status
            .message()
            .contains("trajectories[0].response_ids[2] is 10000000, past the policy's vocabulary"),
        "{status:?}"
    );
    let run_dir = cluster.run_dir(&job);
    let spool = run_dir.join("spool");

    // Ids that would name a path outside the spool, or a file no task has.
    let long = "7".repeat(10_000);
    for task_id in [
        "../../escape",
        "../escape",
        "/tmp/grlo-escape",
        "1-0/../../x",
        ".hidden",
        "a\\b",
        "1-0\0",
        long.as_str(),
    ] {
        let refused = runtime.block_on(send(&mut client, batch(&job, task_id, 1, 4)));
        let status = refused.expect_err(task_id);
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{task_id}: {status:?}"
        );
        assert!(status.message().contains("is not an id"), "{status:?}");
    }
    assert!(!run_dir.join("escape.json").exists());
    assert!(!cluster.path("runs").join("escape.json").exists());
    assert!(!std::path::Path::new("/tmp/grlo-escape.json").exists());

    // Steps no lease can have: 0, and one far ahead (each would be a spool directory).
    let status = runtime
        .block_on(send(&mut client, batch(&job, "0-0", 0, 4)))
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let status = runtime
        .block_on(send(&mut client, batch(&job, "1000000-0", 1_000_000, 4)))
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("ahead of this learner"),
        "{status:?}"
    );
    let spooled: Vec<_> = std::fs::read_dir(&spool)
        .map(|entries| entries.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(spooled.is_empty(), "nothing is spooled yet: {spooled:?}");

    // One trajectory of 900,000 tokens: about 5.4 MB on the wire, over tonic's 4 MiB default,
    // as one batch of the paper's job is (256 prompts × 3,072 tokens).
    let large = batch(&job, "1-0", 1, 900_000);
    let bytes = prost::Message::encoded_len(&large);
    assert!(bytes > 5 << 20, "{bytes} bytes");
    let stored = runtime
        .block_on(send(&mut client, large))
        .unwrap_or_else(|status| panic!("a {bytes}-byte batch: {status:?}"));
    assert_eq!(stored, ["1-0"]);
    assert!(spool.join("step-1/1-0.json").is_file());
}
