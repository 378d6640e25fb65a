//! The coordinator's rules, with the clock in the test's hands: jobs start when their roles
//! are filled, tasks are leased, expire and are re-leased, weight versions unlock steps,
//! budgets stop jobs, and a restarted coordinator finds everything where it was.

use std::path::PathBuf;

use grlo_coordinator::records::JobStatus;
use grlo_coordinator::{Settings, State};
use grlo_learner::TrainConfig;
use grlo_proto::v1;

fn tiny_spec(extra: &[&str]) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../configs/tiny.toml");
    let mut overrides: Vec<String> = vec![
        "rollout.batch_size=8".into(),
        "actor.ppo_mini_batch_size=8".into(),
    ];
    overrides.extend(extra.iter().map(|s| s.to_string()));
    let config = TrainConfig::from_file(&path)
        .unwrap()
        .with_overrides(&overrides, "test")
        .unwrap();
    toml::to_string(&config).unwrap()
}

fn settings() -> Settings {
    Settings {
        heartbeat_interval_ms: 1000,
        lease_ms: 10_000,
    }
}

fn register(state: &mut State, role: v1::Role, address: &str, now: i64) -> String {
    let request = v1::RegisterWorkerRequest {
        role: role as i32,
        address: address.into(),
        accelerators: vec![v1::Accelerator {
            kind: "cpu".into(),
            count: 2,
        }],
        name: String::new(),
        previous_worker_id: String::new(),
    };
    state.register_worker(&request, now).unwrap()
}

fn heartbeat(
    state: &mut State,
    worker: &str,
    activity: v1::Activity,
    now: i64,
) -> grlo_coordinator::state::HeartbeatOutcome {
    let request = v1::HeartbeatRequest {
        worker_id: worker.into(),
        activity: activity as i32,
        weight_version: 0,
        job_id: String::new(),
        ..Default::default()
    };
    state.heartbeat(&request, now).unwrap()
}

fn publish(state: &mut State, learner: &str, job: &str, version: u64, now: i64) {
    let request = v1::PublishWeightsRequest {
        worker_id: learner.into(),
        weights: Some(v1::WeightVersion {
            job_id: job.into(),
            version,
            location: format!("/weights/v{version}"),
        }),
        step: version,
        step_metrics_json: String::new(),
        finished: false,
    };
    state.publish_weights(&request, now).unwrap();
}

struct Cluster {
    state: State,
    job: String,
    learner: String,
    actor: String,
}

fn cluster(dir: &std::path::Path, extra: &[&str]) -> Cluster {
    let mut state = State::open(dir, settings()).unwrap();
    let job = state.submit_job(&tiny_spec(extra), 0).unwrap();
    assert_eq!(job.status, JobStatus::Queued);
    let learner = register(&mut state, v1::Role::Learner, "127.0.0.1:1", 0);
    register(&mut state, v1::Role::RewardServer, "127.0.0.1:2", 0);
    let actor = register(&mut state, v1::Role::Actor, "", 0);
    assert_eq!(state.job(&job.id).unwrap().status, JobStatus::Running);
    Cluster {
        state,
        job: job.id,
        learner,
        actor,
    }
}

#[test]
fn a_spec_with_errors_is_refused_with_every_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut state = State::open(dir.path(), settings()).unwrap();
    let spec = tiny_spec(&[])
        .replace("batch_size = 8", "batch_size = 0")
        .replace("n = 1", "n = 0");
    let (failure, message) = state.submit_job(&spec, 0).unwrap_err();
    assert_eq!(failure.code(), tonic::Code::InvalidArgument);
    assert!(
        message.contains("rollout.batch_size") && message.contains("rollout.n"),
        "{message}"
    );
    let (_, message) = state.submit_job("[model]\npolicy = 1", 0).unwrap_err();
    assert!(message.contains("policy"), "{message}");
}

#[test]
fn tasks_flow_from_versions_through_leases() {
    let dir = tempfile::tempdir().unwrap();
    let Cluster {
        mut state,
        job,
        learner,
        actor,
    } = cluster(dir.path(), &[]);
    // Nothing to do until the learner has published the initial policy.
    assert!(state.lease_task(&actor, 1).unwrap().is_none());
    publish(&mut state, &learner, &job, 0, 2);
    let task = state
        .lease_task(&actor, 3)
        .unwrap()
        .expect("a task of step 1");
    assert_eq!((task.step, task.weight_version), (1, 0));
    assert_eq!(
        task.prompts.len(),
        8,
        "batch 8 in one task (max_batch_rows 32, n 1)"
    );
    assert!(
        task.prompts
            .iter()
            .all(|p| !p.prompt_ids.is_empty() && !p.messages.is_empty())
    );
    assert_eq!(task.learner_address, "127.0.0.1:1");
    // On-policy: step 2 waits for version 1.
    assert!(state.lease_task(&actor, 4).unwrap().is_none());
    state
        .complete_task(
            &v1::CompleteTaskRequest {
                worker_id: actor.clone(),
                job_id: job.clone(),
                task_id: task.task_id.clone(),
                succeeded: true,
                message: String::new(),
            },
            5,
        )
        .unwrap();
    publish(&mut state, &learner, &job, 1, 6);
    let next = state
        .lease_task(&actor, 7)
        .unwrap()
        .expect("a task of step 2");
    assert_eq!((next.step, next.weight_version), (2, 1));
    let first: Vec<u64> = task.prompts.iter().map(|p| p.prompt_id).collect();
    let second: Vec<u64> = next.prompts.iter().map(|p| p.prompt_id).collect();
    assert!(
        first.iter().all(|p| !second.contains(p)),
        "a step's prompts are new within an epoch"
    );
}

#[test]
fn expired_leases_and_dead_actors_give_tasks_back() {
    let dir = tempfile::tempdir().unwrap();
    let Cluster {
        mut state,
        job,
        learner,
        actor,
    } = cluster(dir.path(), &[]);
    publish(&mut state, &learner, &job, 0, 0);
    let other = register(&mut state, v1::Role::Actor, "", 0);
    let task = state.lease_task(&actor, 100).unwrap().unwrap();
    assert!(
        state.lease_task(&other, 200).unwrap().is_none(),
        "the only task is leased"
    );
    // The first actor stops heartbeating; after three intervals its lease comes back.
    heartbeat(&mut state, &other, v1::Activity::Idle, 3000);
    heartbeat(&mut state, &learner, v1::Activity::Idle, 3000);
    let again = state
        .lease_task(&other, 3500)
        .unwrap()
        .expect("the lease of the silent actor");
    assert_eq!(again.task_id, task.task_id);
    // A lease past its deadline also comes back.
    let third = register(&mut state, v1::Role::Actor, "", 3600);
    heartbeat(&mut state, &other, v1::Activity::Generating, 3600 + 10_001);
    heartbeat(&mut state, &third, v1::Activity::Idle, 3600 + 10_001);
    let late = state
        .lease_task(&third, 3600 + 10_001)
        .unwrap()
        .expect("an expired lease");
    assert_eq!(late.task_id, task.task_id);
}

#[test]
fn a_restarted_coordinator_keeps_jobs_tasks_and_workers() {
    let dir = tempfile::tempdir().unwrap();
    let (job, learner, actor, task_id) = {
        let Cluster {
            mut state,
            job,
            learner,
            actor,
        } = cluster(dir.path(), &[]);
        publish(&mut state, &learner, &job, 0, 0);
        let task = state.lease_task(&actor, 10).unwrap().unwrap();
        (job, learner, actor, task.task_id)
    };
    let mut state = State::open(dir.path(), settings()).unwrap();
    let record = state.job(&job).unwrap();
    assert_eq!(record.status, JobStatus::Running);
    assert_eq!(record.weight_version, Some(0));
    // Workers come back with their ids and keep their assignments and leases.
    let back = state
        .register_worker(
            &v1::RegisterWorkerRequest {
                role: v1::Role::Actor as i32,
                address: String::new(),
                accelerators: vec![],
                name: String::new(),
                previous_worker_id: actor.clone(),
            },
            20,
        )
        .unwrap();
    assert_eq!(back, actor);
    heartbeat(&mut state, &learner, v1::Activity::Idle, 20);
    // The leased task is still leased (deadline not passed); once it passes, it is re-leased.
    assert!(state.lease_task(&actor, 30).unwrap().is_none());
    heartbeat(&mut state, &learner, v1::Activity::Idle, 10_500);
    heartbeat(&mut state, &actor, v1::Activity::Idle, 10_500);
    let task = state.lease_task(&actor, 10_500).unwrap().unwrap();
    assert_eq!(task.task_id, task_id);
}

#[test]
fn a_spent_budget_stops_the_job_and_asks_for_a_final_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    // 2 CPU devices per worker; a budget of 0.003 CPU-hours = 10.8 CPU-seconds.
    let Cluster {
        mut state,
        job,
        learner,
        actor,
    } = cluster(dir.path(), &["job.cpu_hours=0.003"]);
    publish(&mut state, &learner, &job, 0, 0);
    let mut now = 0;
    let mut outcome = heartbeat(&mut state, &learner, v1::Activity::Training, now);
    while !outcome.stop {
        now += 500;
        heartbeat(&mut state, &actor, v1::Activity::Generating, now);
        outcome = heartbeat(&mut state, &learner, v1::Activity::Training, now);
        assert!(now < 10_000, "the budget stops the job");
    }
    let record = state.job(&job).unwrap();
    assert_eq!(record.status, JobStatus::BudgetExhausted);
    let budget = state.budget(&job).unwrap();
    let used = budget.cpu_hours_used * 3600.0;
    // Stopped within one heartbeat interval of every worker's devices (3 workers × 2 CPUs ×
    // 1 s) of the budget: early, as the next interval would have crossed it.
    assert!(
        (10.8 - 3.0 * 2.0 * 1.0..=10.8).contains(&used),
        "used {used} CPU-seconds"
    );
    let roles: Vec<&str> = budget.by_role.iter().map(|r| r.role.as_str()).collect();
    assert!(
        roles.contains(&"generation") && roles.contains(&"training"),
        "{roles:?}"
    );
    assert!(
        state.lease_task(&actor, now + 1).unwrap().is_none(),
        "no more work"
    );
}

#[test]
fn a_failure_reported_by_the_jobs_learner_fails_the_job() {
    let dir = tempfile::tempdir().unwrap();
    let Cluster {
        mut state,
        job,
        learner,
        actor,
    } = cluster(dir.path(), &[]);
    publish(&mut state, &learner, &job, 0, 0);
    let report = |worker: &str, job_id: &str| v1::HeartbeatRequest {
        worker_id: worker.into(),
        activity: v1::Activity::Idle as i32,
        weight_version: 0,
        job_id: job_id.into(),
        job_failure: "training thread panicked: index out of bounds".into(),
    };
    // From an actor, or naming another job: nothing changes.
    state.heartbeat(&report(&actor, &job), 100).unwrap();
    state.heartbeat(&report(&learner, "job-999"), 100).unwrap();
    assert_eq!(state.job(&job).unwrap().status, JobStatus::Running);
    // From the job's learner: the job fails with the reason, and the learner is let go.
    let outcome = state.heartbeat(&report(&learner, &job), 200).unwrap();
    let record = state.job(&job).unwrap();
    assert_eq!(record.status, JobStatus::Failed);
    assert!(
        record
            .message
            .contains("failed: training thread panicked: index out of bounds"),
        "{}",
        record.message
    );
    assert!(outcome.assignment.is_none(), "{:?}", outcome.assignment);
    assert!(
        state.lease_task(&actor, 300).unwrap().is_none(),
        "no more work"
    );
    // A second report changes nothing more.
    state.heartbeat(&report(&learner, &job), 300).unwrap();
    assert_eq!(state.job(&job).unwrap().status, JobStatus::Failed);
}

/// The prompts (ids and seeds) of every task of `step`, leased by `actor`.
fn step_prompts(state: &mut State, actor: &str, step: u64, now: i64) -> Vec<(u64, u64)> {
    let mut prompts = Vec::new();
    while let Some(task) = state.lease_task(actor, now).unwrap() {
        assert_eq!(task.step, step, "{}", task.task_id);
        prompts.extend(task.prompts.iter().map(|p| (p.prompt_id, p.seed)));
    }
    prompts.sort_unstable();
    prompts
}

/// Trains steps 1..=`steps` of a started job: the actor leases every task of each step, then
/// the learner publishes it (version 0 first).
fn train_steps(cluster: &mut Cluster, steps: u64) {
    let Cluster {
        state,
        job,
        learner,
        actor,
    } = cluster;
    publish(state, learner, job, 0, 0);
    for step in 1..=steps {
        step_prompts(state, actor, step, step as i64);
        publish_step(state, learner, job, step, step as i64);
    }
}

#[test]
fn a_finished_job_given_more_steps_goes_on_where_its_dataset_cursor_is() {
    // The same job run to 4 steps at once: the prompts of its step 3.
    let straight = tempfile::tempdir().unwrap();
    let expected = {
        let mut four = cluster(straight.path(), &["trainer.total_steps=4"]);
        train_steps(&mut four, 2);
        step_prompts(&mut four.state, &four.actor, 3, 3)
    };
    assert!(!expected.is_empty());

    let dir = tempfile::tempdir().unwrap();
    let mut two = cluster(dir.path(), &["trainer.total_steps=2"]);
    train_steps(&mut two, 2);
    let Cluster {
        mut state,
        job,
        learner,
        actor,
    } = two;
    assert_eq!(state.job(&job).unwrap().status, JobStatus::Succeeded);

    // A key that cannot change between runs is refused, named; the job stays as it was.
    let (_, message) = state
        .update_job_spec(
            &job,
            &tiny_spec(&["trainer.total_steps=4", "rollout.n=4"]),
            10,
        )
        .unwrap_err();
    assert!(message.contains("cannot change rollout.n"), "{message}");
    assert_eq!(state.job(&job).unwrap().status, JobStatus::Succeeded);

    // Two more steps: queued, then running again with its roles, from version 2.
    let changed = state
        .update_job_spec(&job, &tiny_spec(&["trainer.total_steps=4"]), 20)
        .unwrap();
    assert_eq!(changed, ["trainer.total_steps: 2 -> 4"]);
    assert_eq!(state.job(&job).unwrap().status, JobStatus::Queued);
    heartbeat(&mut state, &learner, v1::Activity::Idle, 30);
    let record = state.job(&job).unwrap();
    assert_eq!(record.status, JobStatus::Running, "{}", record.message);
    assert_eq!(record.total_steps, 4);
    // The learner announces the version it has (2); step 3's tasks are those of one run.
    publish(&mut state, &learner, &job, 2, 40);
    assert_eq!(step_prompts(&mut state, &actor, 3, 50), expected);

    // A cancelled job stays ended.
    state.cancel_job(&job, 60).unwrap();
    let (_, message) = state
        .update_job_spec(&job, &tiny_spec(&["trainer.total_steps=6"]), 70)
        .unwrap_err();
    assert!(message.contains("cannot be resumed"), "{message}");
}

fn publish_step(state: &mut State, learner: &str, job: &str, step: u64, now: i64) {
    let request = v1::PublishWeightsRequest {
        worker_id: learner.into(),
        weights: Some(v1::WeightVersion {
            job_id: job.into(),
            version: step,
            location: format!("/weights/v{step}"),
        }),
        step,
        step_metrics_json: format!(r#"{{"step":{step},"reward_mean":{}}}"#, step as f64 / 4.0),
        finished: false,
    };
    state.publish_weights(&request, now).unwrap();
}

#[test]
fn every_trained_step_is_kept_in_order_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let job = {
        // 2 CPU devices per worker, 3 workers; a budget of 1 CPU-hour.
        let Cluster {
            mut state,
            job,
            learner,
            ..
        } = cluster(dir.path(), &["job.cpu_hours=1"]);
        publish(&mut state, &learner, &job, 0, 0);
        assert!(
            state.step_history(&job, 0).unwrap().is_empty(),
            "version 0 is no step"
        );
        // Steps 1..=11 a second apart, the learner training in between (2 CPU-seconds each);
        // step 10 sorts after step 9.
        for step in 1..=11 {
            let now = 1000 * step as i64;
            heartbeat(&mut state, &learner, v1::Activity::Training, now);
            publish_step(&mut state, &learner, &job, step, now);
        }
        // A learner that did not hear the answer publishes the same step again.
        publish_step(&mut state, &learner, &job, 11, 11_500);
        job
    };

    let state = State::open(dir.path(), settings()).unwrap();
    let history = state.step_history(&job, 0).unwrap();
    let steps: Vec<u64> = history.iter().map(|s| s.step).collect();
    assert_eq!(steps, (1..=11).collect::<Vec<_>>());
    for record in &history {
        let metrics: serde_json::Value = serde_json::from_str(&record.metrics_json).unwrap();
        assert_eq!(metrics["reward_mean"], record.step as f64 / 4.0);
        assert_eq!(record.job_id, job);
        // Heartbeats at 1000 ms, 2000 ms, ...: the learner's 2 CPUs for 1 s each step.
        assert_eq!(
            record.cpu_seconds_used,
            2.0 * record.step as f64,
            "{record:?}"
        );
        assert_eq!(record.cpu_seconds_limit, 3600.0);
        assert_eq!(
            (record.gpu_seconds_used, record.gpu_seconds_limit),
            (0.0, 0.0)
        );
    }
    assert_eq!(history[0].time_ms, 1000);
    assert_eq!(
        history[10].time_ms, 11_500,
        "the repeat replaces the record"
    );

    let later: Vec<u64> = state
        .step_history(&job, 9)
        .unwrap()
        .iter()
        .map(|s| s.step)
        .collect();
    assert_eq!(later, vec![10, 11]);
    let (failure, message) = state.step_history("job-404", 0).unwrap_err();
    assert_eq!(failure.code(), tonic::Code::NotFound);
    assert!(message.contains("job-404"), "{message}");
}

#[test]
fn an_older_weight_version_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let Cluster {
        mut state,
        job,
        learner,
        actor,
    } = cluster(dir.path(), &["job.staleness=1"]);
    publish(&mut state, &learner, &job, 0, 0);
    for step in 1..=3 {
        publish_step(&mut state, &learner, &job, step, 1000 * step as i64);
    }
    let before = state.job(&job).unwrap();
    assert_eq!((before.step, before.weight_version), (3, Some(3)));
    assert_eq!(
        before.tasks_created_to_step, 5,
        "steps 4 and 5 with staleness 1"
    );

    // A learner resumed from its checkpoint of step 1 re-trains step 2 and announces it,
    // with metrics and with `finished` set.
    let mut request = v1::PublishWeightsRequest {
        worker_id: learner.clone(),
        weights: Some(v1::WeightVersion {
            job_id: job.clone(),
            version: 2,
            location: "/weights/v2".into(),
        }),
        step: 2,
        step_metrics_json: r#"{"step":2,"reward_mean":9.0}"#.into(),
        finished: true,
    };
    state.publish_weights(&request, 4000).unwrap();
    request.finished = false;
    state.publish_weights(&request, 4100).unwrap();
    let after = state.job(&job).unwrap();
    assert_eq!((after.step, after.weight_version), (3, Some(3)));
    assert_eq!(after.weights_location, "/weights/v3");
    assert_eq!(after.status, JobStatus::Running);
    assert_eq!(after.last_metrics_json, before.last_metrics_json);
    assert_eq!(after.tasks_created_to_step, 5);
    let history = state.step_history(&job, 0).unwrap();
    let steps: Vec<u64> = history.iter().map(|s| s.step).collect();
    assert_eq!(steps, [1, 2, 3]);
    assert_eq!(history[1].time_ms, 2000, "step 2's record is the first one");
    // Tasks still run with the newest version, from the step after it.
    heartbeat(&mut state, &actor, v1::Activity::Idle, 4200);
    let next = state
        .lease_task(&actor, 4200)
        .unwrap()
        .expect("a task of step 4");
    assert_eq!((next.step, next.weight_version), (4, 3));
    assert_eq!(next.weights_location, "/weights/v3");

    // The same version again is recorded again (a learner that missed the answer).
    publish_step(&mut state, &learner, &job, 3, 4300);
    assert_eq!(state.job(&job).unwrap().step, 3);
}
