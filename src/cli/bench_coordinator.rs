//! `grlo bench coordinator`: one coordinator under many workers at once. It runs in this
//! process on loopback; `--workers` simulated actors (a task each: register, heartbeat, lease,
//! complete) and a simulated learner and reward server drive a job through its steps, with no
//! model work, so what is measured is the coordinator: lease and heartbeat latency under load,
//! leases per second, and that no task is ever leased twice.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use grlo_learner::TrainConfig;
use grlo_proto::v1;
use grlo_proto::v1::coordinator_client::CoordinatorClient;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::cli::ctl::status_name;

#[derive(Debug, Args)]
pub struct BenchCoordinatorArgs {
    /// Simulated actors, all registering, heartbeating and leasing at once.
    #[arg(long, default_value_t = 200)]
    pub workers: usize,
    /// Steps of the job (each is `rollout.batch_size` tasks of one prompt).
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    /// The job (its dataset and models are loaded by the coordinator, never run).
    #[arg(long, default_value = "configs/tiny.toml")]
    pub config: PathBuf,
    /// Heartbeat interval of the coordinator and the workers, in milliseconds.
    #[arg(long, default_value_t = 200)]
    pub heartbeat_ms: u64,
    /// Override a setting of the job (repeatable), e.g. `--set rollout.batch_size=256` for
    /// more tasks per step.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
}

/// What the simulated workers saw.
#[derive(Default)]
struct Record {
    /// Task id → how many times it was leased.
    leases: BTreeMap<String, u32>,
    /// Tasks completed per step.
    completed: BTreeMap<u64, usize>,
    /// Seconds of each LeaseTask call that returned a task (a call that finds none waits up to
    /// 2 s for one, so this includes waiting for the next step's tasks).
    lease_s: Vec<f64>,
    /// Seconds of each Heartbeat call.
    heartbeat_s: Vec<f64>,
    /// Seconds of each RegisterWorker call.
    register_s: Vec<f64>,
    /// Workers that had to register again (the coordinator took them for dead).
    reregistered: usize,
}

pub fn run(args: BenchCoordinatorArgs) -> anyhow::Result<String> {
    if args.workers == 0 || args.steps == 0 {
        bail!("--workers and --steps must be at least 1");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("failed to start the async runtime")?;
    let report = runtime.block_on(bench(&args))?;
    Ok(serde_json::to_string_pretty(&report)?)
}

async fn bench(args: &BenchCoordinatorArgs) -> anyhow::Result<Value> {
    let dir = tempfile::tempdir()?;
    let mut overrides = args.overrides.clone();
    // As many epochs as the steps need (a large batch takes the tiny dataset's 964 prompts in
    // a few steps), so the job has exactly `--steps` steps.
    overrides.extend([
        format!("trainer.total_steps={}", args.steps),
        format!("trainer.total_epochs={}", args.steps),
        "job.prompts_per_task=1".to_string(),
    ]);
    let config =
        TrainConfig::from_file(&args.config)?.with_overrides(&overrides, "the benchmark's job")?;
    let tasks_per_step = config.rollout.batch_size;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let stop = CancellationToken::new();
    let coordinator = tokio::spawn(grlo_coordinator::run(
        grlo_coordinator::CoordinatorConfig {
            data_dir: dir.path().join("coordinator"),
            settings: grlo_coordinator::Settings {
                heartbeat_interval_ms: args.heartbeat_ms,
                lease_ms: 60_000,
            },
            http_listen: None,
            security: Default::default(),
        },
        listener,
        stop.clone(),
    ));
    let mut client = crate::cli::train::connect(&url).await?;

    let job = client
        .submit_job(v1::SubmitJobRequest {
            spec_toml: toml::to_string(&config)?,
        })
        .await
        .map_err(|s| anyhow::anyhow!("the job was refused: {}", s.message()))?
        .into_inner()
        .id;
    let record = Arc::new(Mutex::new(Record::default()));
    let workers_stop = CancellationToken::new();
    let every = Duration::from_millis(args.heartbeat_ms);

    // The reward server and the learner only have to be there for the job to start.
    let reward = register(&mut client, v1::Role::RewardServer, "127.0.0.1:1", &record).await?;
    let learner = register(&mut client, v1::Role::Learner, "127.0.0.1:2", &record).await?;
    for (worker, role, address) in [
        (&reward, v1::Role::RewardServer, "127.0.0.1:1"),
        (&learner, v1::Role::Learner, "127.0.0.1:2"),
    ] {
        tokio::spawn(heartbeats(
            client.clone(),
            (worker.clone(), role, address.to_string()),
            every,
            record.clone(),
            workers_stop.clone(),
        ));
    }

    let started = Instant::now();
    let mut actors = Vec::new();
    for _ in 0..args.workers {
        actors.push(tokio::spawn(actor(
            client.clone(),
            job.clone(),
            every,
            record.clone(),
            workers_stop.clone(),
        )));
    }

    // The learner: publishes version s once every task of step s is complete. Like the real
    // one, it announces its version again when nothing moves for a while (a coordinator that
    // took it for dead on a loaded machine has let the job go and then taken it back).
    let deadline = Instant::now() + Duration::from_secs(300);
    for version in 0..=args.steps as u64 {
        if version > 0 {
            let (mut seen, mut since) = (usize::MAX, Instant::now());
            loop {
                let done = record
                    .lock()
                    .expect("not poisoned")
                    .completed
                    .get(&version)
                    .copied()
                    .unwrap_or(0);
                if done >= tasks_per_step {
                    break;
                }
                if done != seen {
                    (seen, since) = (done, Instant::now());
                } else if since.elapsed() > 5 * every {
                    let _ = publish(&mut client, &learner, &job, version - 1, false).await;
                    since = Instant::now();
                }
                if Instant::now() > deadline {
                    bail!(
                        "step {version} did not complete in 300 s ({done} of {tasks_per_step} tasks)"
                    );
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        publish(
            &mut client,
            &learner,
            &job,
            version,
            version == args.steps as u64,
        )
        .await?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let status = client
        .get_job(v1::JobRef {
            job_id: job.clone(),
        })
        .await?
        .into_inner();
    workers_stop.cancel();
    for actor in actors {
        actor.await.context("a simulated actor panicked")??;
    }
    stop.cancel();
    coordinator
        .await
        .context("the coordinator panicked")?
        .context("the coordinator failed")?;

    let record = record.lock().expect("not poisoned");
    let leased: u32 = record.leases.values().sum();
    let twice: Vec<&String> = record
        .leases
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, _)| id)
        .collect();
    Ok(json!({
        "workers": args.workers,
        "steps": args.steps,
        "tasks_per_step": tasks_per_step,
        "job_status": status_name(status.status),
        "job_step": status.step,
        "tasks": record.leases.len(),
        "leases": leased,
        "tasks_leased_twice": twice,
        "seconds": seconds,
        "leases_per_s": f64::from(leased) / seconds,
        "lease_ms": percentiles(&record.lease_s),
        "heartbeat_ms": percentiles(&record.heartbeat_s),
        "register_ms": percentiles(&record.register_s),
        "heartbeats": record.heartbeat_s.len(),
        "reregistered": record.reregistered,
    }))
}

/// One simulated actor: registers, heartbeats every interval, and leases and completes tasks
/// until told to stop.
async fn actor(
    mut client: CoordinatorClient<Channel>,
    job: String,
    every: Duration,
    record: Arc<Mutex<Record>>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let worker = register(&mut client, v1::Role::Actor, "", &record).await?;
    tokio::spawn(heartbeats(
        client.clone(),
        (worker.clone(), v1::Role::Actor, String::new()),
        every,
        record.clone(),
        stop.clone(),
    ));
    while !stop.is_cancelled() {
        let asked = Instant::now();
        let lease = tokio::select! {
            lease = client.lease_task(v1::LeaseTaskRequest { worker_id: worker.clone() }) => lease,
            () = stop.cancelled() => break,
        };
        let lease = match lease {
            Ok(lease) => lease.into_inner(),
            // Taken for dead on a loaded machine: its heartbeat task registers it again.
            Err(status) if status.code() == tonic::Code::NotFound => {
                tokio::time::sleep(every).await;
                continue;
            }
            Err(status) => bail!("LeaseTask: {status}"),
        };
        let Some(task) = lease.task else {
            let wait = Duration::from_millis(u64::from(lease.retry_after_ms).clamp(1, 1000));
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = stop.cancelled() => break,
            }
            continue;
        };
        {
            let mut record = record.lock().expect("not poisoned");
            record.lease_s.push(asked.elapsed().as_secs_f64());
            *record.leases.entry(task.task_id.clone()).or_default() += 1;
        }
        let completed = client
            .complete_task(v1::CompleteTaskRequest {
                worker_id: worker.clone(),
                job_id: job.clone(),
                task_id: task.task_id.clone(),
                succeeded: true,
                message: String::new(),
            })
            .await;
        match completed {
            Ok(_) => {}
            // Its lease went back to the pool while it was taken for dead: another has it.
            Err(status)
                if matches!(
                    status.code(),
                    tonic::Code::NotFound | tonic::Code::FailedPrecondition
                ) =>
            {
                continue;
            }
            Err(status) => bail!("CompleteTask {}: {status}", task.task_id),
        }
        *record
            .lock()
            .expect("not poisoned")
            .completed
            .entry(task.step)
            .or_default() += 1;
    }
    Ok(())
}

async fn register(
    client: &mut CoordinatorClient<Channel>,
    role: v1::Role,
    address: &str,
    record: &Mutex<Record>,
) -> anyhow::Result<String> {
    let asked = Instant::now();
    let answer = client
        .register_worker(registration(role, address, ""))
        .await
        .map_err(|s| anyhow::anyhow!("RegisterWorker: {s}"))?
        .into_inner();
    record
        .lock()
        .expect("not poisoned")
        .register_s
        .push(asked.elapsed().as_secs_f64());
    Ok(answer.worker_id)
}

/// Heartbeats every interval until told to stop; a worker the coordinator has given up on
/// (its heartbeats held up past three intervals on a loaded machine) registers again under its
/// id, as the real roles do.
async fn heartbeats(
    mut client: CoordinatorClient<Channel>,
    (worker, role, address): (String, v1::Role, String),
    every: Duration,
    record: Arc<Mutex<Record>>,
    stop: CancellationToken,
) {
    while !stop.is_cancelled() {
        let asked = Instant::now();
        let beat = client
            .heartbeat(v1::HeartbeatRequest {
                worker_id: worker.clone(),
                activity: v1::Activity::Generating as i32,
                ..Default::default()
            })
            .await;
        if let Ok(beat) = beat {
            record
                .lock()
                .expect("not poisoned")
                .heartbeat_s
                .push(asked.elapsed().as_secs_f64());
            if beat.into_inner().reregister {
                record.lock().expect("not poisoned").reregistered += 1;
                let _ = client
                    .register_worker(registration(role, &address, &worker))
                    .await;
            }
        }
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = stop.cancelled() => {}
        }
    }
}

fn registration(role: v1::Role, address: &str, previous: &str) -> v1::RegisterWorkerRequest {
    v1::RegisterWorkerRequest {
        role: role as i32,
        address: address.to_string(),
        accelerators: vec![v1::Accelerator {
            kind: "cpu".into(),
            count: 1,
        }],
        name: String::new(),
        previous_worker_id: previous.to_string(),
    }
}

async fn publish(
    client: &mut CoordinatorClient<Channel>,
    learner: &str,
    job: &str,
    version: u64,
    finished: bool,
) -> anyhow::Result<()> {
    client
        .publish_weights(v1::PublishWeightsRequest {
            worker_id: learner.to_string(),
            weights: Some(v1::WeightVersion {
                job_id: job.to_string(),
                version,
                location: format!("/nowhere/v{version}"),
            }),
            step: version,
            step_metrics_json: if version == 0 {
                String::new()
            } else {
                json!({ "step": version }).to_string()
            },
            finished,
        })
        .await
        .map_err(|s| anyhow::anyhow!("PublishWeights v{version}: {s}"))?;
    Ok(())
}

/// p50, p99 and max of durations in seconds, in milliseconds.
fn percentiles(seconds: &[f64]) -> Value {
    if seconds.is_empty() {
        return Value::Null;
    }
    let mut sorted = seconds.to_vec();
    sorted.sort_by(f64::total_cmp);
    let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize] * 1e3;
    json!({ "p50": at(0.5), "p99": at(0.99), "max": at(1.0), "count": sorted.len() })
}
