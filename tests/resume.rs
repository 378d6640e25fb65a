//! `grlo train --resume RUN_DIR --set ...` as a user runs it: a finished run given more steps
//! goes on from its last checkpoint to the weights of one uninterrupted run, and a setting that
//! cannot change between runs is refused with its name; the same through the coordinator
//! (`grlo ctl job update`).

mod cluster;

use std::path::Path;
use std::process::Output;

use cluster::{Cluster, exclusive, grlo, read_jsonl};
use serde_json::Value;

fn train(args: &[&str]) -> Output {
    grlo().arg("train").args(args).output().expect("grlo runs")
}

fn summary(output: &Output) -> Value {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("the summary")
}

fn policy(run_dir: &Path, checkpoint: &str) -> Vec<u8> {
    std::fs::read(
        run_dir
            .join("checkpoints")
            .join(checkpoint)
            .join("policy/model.safetensors"),
    )
    .unwrap()
}

#[test]
fn a_finished_run_given_more_steps_goes_on_to_the_weights_of_one_run() {
    let _one = exclusive();
    let dir = tempfile::tempdir().unwrap();
    let (resumed, straight) = (dir.path().join("resumed"), dir.path().join("straight"));
    let at = |run_dir: &Path| format!("trainer.run_dir={:?}", run_dir.display().to_string());

    let first = summary(&train(&[
        "--set",
        "trainer.total_steps=3",
        "--set",
        &at(&resumed),
    ]));
    assert_eq!(first["steps"], 3, "{first}");
    assert_eq!(first["checkpoint"], "step-3", "{first}");

    // A key that cannot change between runs is refused, named, and nothing is run.
    let refused = train(&[
        "--resume",
        resumed.to_str().unwrap(),
        "--set",
        "trainer.total_steps=5",
        "--set",
        "rollout.n=4",
    ]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("a resumed run cannot change rollout.n") && !stderr.contains("panicked"),
        "{stderr}"
    );
    assert_eq!(read_jsonl(&resumed.join("metrics.jsonl")).len(), 3);

    // More steps: it trains 4 and 5 from the step-3 checkpoint, and says what changed.
    let more = train(&[
        "--resume",
        resumed.to_str().unwrap(),
        "--set",
        "trainer.total_steps=5",
    ]);
    let stderr = String::from_utf8_lossy(&more.stderr).to_string();
    let second = summary(&more);
    assert!(
        stderr.contains("resuming with trainer.total_steps: 3 -> 5"),
        "{stderr}"
    );
    assert_eq!(second["steps"], 5, "{second}");
    assert_eq!(second["checkpoint"], "step-5", "{second}");
    let steps: Vec<u64> = read_jsonl(&resumed.join("metrics.jsonl"))
        .iter()
        .map(|m| m["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, [1, 2, 3, 4, 5], "each step trained once");

    // The same five steps in one run: the same weights, bit for bit.
    let one = summary(&train(&[
        "--set",
        "trainer.total_steps=5",
        "--set",
        &at(&straight),
    ]));
    assert_eq!(one["steps"], 5, "{one}");
    assert!(
        policy(&resumed, "step-5") == policy(&straight, "step-5"),
        "the resumed run's policy differs from one run's"
    );
    let prompts = |run_dir: &Path| -> Vec<Value> {
        read_jsonl(&run_dir.join("steps.jsonl"))
            .into_iter()
            .map(|s| s["prompt_ids"].clone())
            .collect()
    };
    assert_eq!(prompts(&resumed).len(), 5);
    assert_eq!(prompts(&resumed), prompts(&straight), "the dataset order");
}

#[test]
fn a_succeeded_job_updated_through_the_coordinator_trains_its_new_steps() {
    let _one = exclusive();
    let timeout = std::time::Duration::from_secs(120);
    let cluster = Cluster::start_all(200, 60_000, 2);
    let job = cluster.submit_tiny(&["trainer.total_steps=3", "job.prompts_per_task=8"]);
    let done = cluster.wait_for_status(&job, &["succeeded", "failed", "cancelled"], timeout);
    assert_eq!(done["status"], "succeeded", "{done}");

    let refused = cluster.ctl_output(&["job", "update", &job, "--set", "rollout.n=4"]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("cannot change rollout.n"), "{stderr}");

    let updated = cluster.ctl(&["job", "update", &job, "--set", "trainer.total_steps=5"]);
    assert_eq!(
        updated["changed"][0], "trainer.total_steps: 3 -> 5",
        "{updated}"
    );
    // Queued again, and running at once when its roles are there to take it.
    assert!(
        ["queued", "running"].contains(&updated["status"].as_str().unwrap_or_default()),
        "{updated}"
    );
    let done = cluster.wait_for_status(&job, &["succeeded", "failed", "cancelled"], timeout);
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["step"], 5, "{done}");
    // The same learner process trained steps 4 and 5, each once, on prompts not used before.
    cluster.assert_each_prompt_used_once(&job, 5, 32);
}
