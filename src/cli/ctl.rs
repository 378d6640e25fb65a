//! `grlo ctl`: the admin CLI of a running coordinator. Tables for people, `--json` for scripts
//! (job objects carry `id` and `status`).

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use grlo_learner::TrainConfig;
use grlo_proto::security::Transport;
use grlo_proto::v1;
use grlo_proto::v1::coordinator_client::CoordinatorClient;
use serde_json::json;

#[derive(Debug, Args)]
pub struct CtlArgs {
    /// The coordinator's URL.
    #[arg(
        long,
        env = "GRLO_COORDINATOR",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    pub coordinator: String,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// TLS settings and the admin token (the ctl presents the admin token).
    #[command(flatten)]
    pub security: crate::cli::security::SecurityArgs,
    #[command(subcommand)]
    pub command: CtlCommand,
}

#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// Jobs: submit, list, get, watch, cancel, pause, resume, plot.
    #[command(subcommand)]
    Job(JobCommand),
    /// Workers.
    #[command(subcommand)]
    Worker(WorkerCommand),
    /// A job's device-hours: used, remaining, forecast, per role.
    Budget { id: String },
}

#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// Submit a job spec (a `grlo train` TOML with an optional [job] section).
    Submit {
        file: PathBuf,
        /// Override a setting of the file: `--set trainer.total_steps=10` (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
    },
    List,
    Get {
        id: String,
    },
    /// Follow a job until it ends, a line per step.
    Watch {
        id: String,
    },
    Cancel {
        id: String,
    },
    Pause {
        id: String,
    },
    Resume {
        id: String,
    },
    /// Change a job's settings between runs (total steps and epochs, save interval, validation,
    /// logging, learning rates and schedules, name and budgets): a job that succeeded or ran
    /// out of budget goes on from its last checkpoint.
    Update {
        id: String,
        /// A setting: `--set trainer.total_steps=80` (repeatable; TOML values).
        #[arg(long = "set", value_name = "KEY=VALUE", required = true)]
        overrides: Vec<String>,
    },
    /// Draw the job's charts (reward, response length, KL, throughput, budget) into a PNG.
    Plot {
        id: String,
        /// The PNG file to write (its directory must exist).
        #[arg(long, value_name = "FILE.png")]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum WorkerCommand {
    List,
}

pub fn run(args: CtlArgs) -> anyhow::Result<String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(execute(args))
}

async fn execute(args: CtlArgs) -> anyhow::Result<String> {
    // A job spec is checked (every problem listed) before any coordinator is needed.
    if let CtlCommand::Job(JobCommand::Submit { file, overrides }) = &args.command {
        TrainConfig::from_file(file)?
            .with_overrides(overrides, &format!("the overrides of {}", file.display()))?;
    }
    let url = args.coordinator.clone();
    let security = args.security.admin_client()?;
    let endpoint = security.endpoint(&url).with_context(|| {
        format!("coordinator URL {url} (use e.g. http://127.0.0.1:50051, or https:// with TLS)")
    })?;
    let channel = endpoint.connect().await.map_err(|e| {
        anyhow::anyhow!(
            "cannot reach the coordinator at {url}: {e} (is `grlo coordinator` running? set --coordinator or GRLO_COORDINATOR)"
        )
    })?;
    let mut client = CoordinatorClient::new(security.wrap(channel));
    let json_out = args.json;
    match args.command {
        CtlCommand::Job(command) => job(&mut client, command, json_out).await,
        CtlCommand::Worker(WorkerCommand::List) => {
            let workers = client
                .list_workers(v1::ListWorkersRequest {})
                .await
                .map_err(explain)?
                .into_inner()
                .workers;
            if json_out {
                return Ok(serde_json::to_string_pretty(
                    &workers.iter().map(worker_json).collect::<Vec<_>>(),
                )?);
            }
            let mut out = format!(
                "{:<18} {:<14} {:<22} {:<11} {:<10} {:>7} {:<6}\n",
                "ID", "ROLE", "ADDRESS", "ACTIVITY", "JOB", "VERSION", "ALIVE"
            );
            for w in &workers {
                let j = worker_json(w);
                out += &format!(
                    "{:<18} {:<14} {:<22} {:<11} {:<10} {:>7} {:<6}\n",
                    w.id,
                    j["role"].as_str().unwrap_or(""),
                    w.address,
                    j["activity"].as_str().unwrap_or(""),
                    w.job_id,
                    w.weight_version,
                    w.alive
                );
            }
            Ok(out.trim_end().to_string())
        }
        CtlCommand::Budget { id } => {
            let b = client
                .get_budget(v1::JobRef { job_id: id })
                .await
                .map_err(explain)?
                .into_inner();
            let value = json!({
                "id": b.job_id,
                "gpu_hours_budget": b.gpu_hours_budget,
                "gpu_hours_used": b.gpu_hours_used,
                "gpu_hours_remaining": (b.gpu_hours_budget - b.gpu_hours_used).max(0.0),
                "cpu_hours_budget": b.cpu_hours_budget,
                "cpu_hours_used": b.cpu_hours_used,
                "cost": b.cost,
                "forecast_exhausted_unix_ms": b.forecast_exhausted_unix_ms,
                "by_role": b.by_role.iter().map(|r| json!({"role": r.role, "gpu_seconds": r.gpu_seconds, "cpu_seconds": r.cpu_seconds})).collect::<Vec<_>>(),
            });
            if json_out {
                return Ok(serde_json::to_string_pretty(&value)?);
            }
            let mut out = format!(
                "job {}: GPU-hours {:.4} used of {} ({}), CPU-hours {:.4} used of {}\n",
                b.job_id,
                b.gpu_hours_used,
                budget_text(b.gpu_hours_budget),
                if b.forecast_exhausted_unix_ms > 0 {
                    format!(
                        "runs out in {:.0} s at the current rate",
                        (b.forecast_exhausted_unix_ms - grlo_coordinator::now_ms()) as f64 / 1000.0
                    )
                } else {
                    "no forecast".into()
                },
                b.cpu_hours_used,
                budget_text(b.cpu_hours_budget),
            );
            out += &format!(
                "{:<12} {:>14} {:>14}\n",
                "ROLE", "GPU-SECONDS", "CPU-SECONDS"
            );
            for r in &b.by_role {
                out += &format!(
                    "{:<12} {:>14.2} {:>14.2}\n",
                    r.role, r.gpu_seconds, r.cpu_seconds
                );
            }
            if b.cost > 0.0 {
                out += &format!("spend: {:.2}\n", b.cost);
            }
            Ok(out.trim_end().to_string())
        }
    }
}

fn budget_text(hours: f64) -> String {
    if hours > 0.0 {
        format!("{hours}")
    } else {
        "no budget".into()
    }
}

async fn job(
    client: &mut CoordinatorClient<Transport>,
    command: JobCommand,
    json_out: bool,
) -> anyhow::Result<String> {
    let one = |job: v1::Job| -> anyhow::Result<String> {
        if json_out {
            Ok(serde_json::to_string_pretty(&job_json(&job))?)
        } else {
            Ok(job_line(&job))
        }
    };
    match command {
        JobCommand::Submit { file, overrides } => {
            // Relative paths in the file are taken relative to the file, then sent resolved.
            let config = TrainConfig::from_file(&file)?
                .with_overrides(&overrides, &format!("the overrides of {}", file.display()))?;
            let spec_toml = toml::to_string(&config)?;
            let job = client
                .submit_job(v1::SubmitJobRequest { spec_toml })
                .await
                .map_err(explain)?
                .into_inner();
            one(job)
        }
        JobCommand::List => {
            let jobs = client
                .list_jobs(v1::ListJobsRequest {})
                .await
                .map_err(explain)?
                .into_inner()
                .jobs;
            if json_out {
                return Ok(serde_json::to_string_pretty(
                    &jobs.iter().map(job_json).collect::<Vec<_>>(),
                )?);
            }
            let mut out = format!(
                "{:<10} {:<20} {:<17} {:>11} {:>8}\n",
                "ID", "NAME", "STATUS", "STEP", "VERSION"
            );
            for job in &jobs {
                out += &format!(
                    "{:<10} {:<20} {:<17} {:>11} {:>8}\n",
                    job.id,
                    job.name,
                    status_name(job.status),
                    format!("{}/{}", job.step, job.total_steps),
                    job.weight_version
                );
            }
            Ok(out.trim_end().to_string())
        }
        JobCommand::Get { id } => one(client
            .get_job(v1::JobRef { job_id: id })
            .await
            .map_err(explain)?
            .into_inner()),
        JobCommand::Cancel { id } => one(client
            .cancel_job(v1::JobRef { job_id: id })
            .await
            .map_err(explain)?
            .into_inner()),
        JobCommand::Pause { id } => one(client
            .pause_job(v1::JobRef { job_id: id })
            .await
            .map_err(explain)?
            .into_inner()),
        JobCommand::Resume { id } => one(client
            .resume_job(v1::JobRef { job_id: id })
            .await
            .map_err(explain)?
            .into_inner()),
        JobCommand::Update { id, overrides } => {
            let answer = client
                .update_job(v1::UpdateJobRequest {
                    job_id: id,
                    overrides,
                })
                .await
                .map_err(explain)?
                .into_inner();
            let job = answer.job.unwrap_or_default();
            if json_out {
                let mut out = job_json(&job);
                out["changed"] = serde_json::json!(answer.changed);
                Ok(serde_json::to_string_pretty(&out)?)
            } else {
                let changed = match answer.changed.is_empty() {
                    true => "nothing changed".to_string(),
                    false => answer.changed.join(", "),
                };
                Ok(format!("{}\n{changed}", job_line(&job)))
            }
        }
        JobCommand::Plot { id, out } => {
            crate::cli::plot::run(client, &id, &out, json_out, explain).await
        }
        JobCommand::Watch { id } => {
            let mut stream = client
                .watch_job(v1::JobRef { job_id: id })
                .await
                .map_err(explain)?
                .into_inner();
            let mut last = None;
            while let Some(event) = stream.message().await.map_err(explain)? {
                let Some(job) = event.job else { continue };
                if json_out {
                    let mut value = job_json(&job);
                    if let Ok(metrics) =
                        serde_json::from_str::<serde_json::Value>(&event.step_metrics_json)
                    {
                        value["step_metrics"] = metrics;
                    }
                    println!("{value}");
                } else {
                    let mut line = job_line(&job);
                    if let Ok(metrics) =
                        serde_json::from_str::<serde_json::Value>(&event.step_metrics_json)
                    {
                        line += &format!(
                            " | reward {:.3} | kl {:.4} | {:.0} tok/s",
                            metrics["reward_mean"].as_f64().unwrap_or(f64::NAN),
                            metrics["approx_kl"].as_f64().unwrap_or(f64::NAN),
                            metrics["tokens_per_s"].as_f64().unwrap_or(f64::NAN)
                        );
                    }
                    println!("{line}");
                }
                last = Some(job);
            }
            match last {
                Some(job) if json_out => Ok(serde_json::to_string(&job_json(&job))?),
                Some(job) => Ok(format!("ended: {}", job_line(&job))),
                None => bail!("the coordinator closed the watch without an event"),
            }
        }
    }
}

/// A gRPC refusal as an error a person can act on.
fn explain(status: tonic::Status) -> anyhow::Error {
    match status.code() {
        tonic::Code::Unavailable => anyhow::anyhow!(
            "the coordinator is unavailable: {} (is `grlo coordinator` running? retry in a moment)",
            status.message()
        ),
        tonic::Code::NotFound => anyhow::anyhow!("{} ", status.message()),
        tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => anyhow::anyhow!(
            "the coordinator refused: {} (give the admin token with --admin-token-file or GRLO_ADMIN_TOKEN)",
            status.message()
        ),
        _ if std::error::Error::source(&status).is_some() => anyhow::anyhow!(
            "the connection to the coordinator failed: {} (if it serves TLS, use https:// and --tls-ca; if it does not, http://)",
            status.message()
        ),
        _ => anyhow::anyhow!("{}", status.message()),
    }
}

pub fn status_name(status: i32) -> &'static str {
    match v1::JobStatus::try_from(status) {
        Ok(v1::JobStatus::Queued) => "queued",
        Ok(v1::JobStatus::Running) => "running",
        Ok(v1::JobStatus::Paused) => "paused",
        Ok(v1::JobStatus::Succeeded) => "succeeded",
        Ok(v1::JobStatus::Failed) => "failed",
        Ok(v1::JobStatus::Cancelled) => "cancelled",
        Ok(v1::JobStatus::BudgetExhausted) => "budget_exhausted",
        _ => "unknown",
    }
}

fn job_json(job: &v1::Job) -> serde_json::Value {
    json!({
        "id": job.id,
        "name": job.name,
        "status": status_name(job.status),
        "step": job.step,
        "total_steps": job.total_steps,
        "weight_version": job.weight_version,
        "message": job.message,
        "created_unix_ms": job.created_unix_ms,
        "updated_unix_ms": job.updated_unix_ms,
        "last_metrics": serde_json::from_str::<serde_json::Value>(&job.last_metrics_json).unwrap_or(serde_json::Value::Null),
    })
}

fn job_line(job: &v1::Job) -> String {
    let mut line = format!(
        "{} ({}) {} step {}/{} version {}",
        job.id,
        job.name,
        status_name(job.status),
        job.step,
        job.total_steps,
        job.weight_version
    );
    if !job.message.is_empty() {
        line += &format!(": {}", job.message);
    }
    line
}

fn worker_json(w: &v1::Worker) -> serde_json::Value {
    let role = match v1::Role::try_from(w.role) {
        Ok(v1::Role::Actor) => "actor",
        Ok(v1::Role::RewardServer) => "reward_server",
        Ok(v1::Role::Learner) => "learner",
        _ => "unknown",
    };
    let activity = match v1::Activity::try_from(w.activity) {
        Ok(v1::Activity::Generating) => "generating",
        Ok(v1::Activity::Scoring) => "scoring",
        Ok(v1::Activity::Training) => "training",
        _ => "idle",
    };
    json!({
        "id": w.id,
        "name": w.name,
        "role": role,
        "address": w.address,
        "activity": activity,
        "job_id": w.job_id,
        "weight_version": w.weight_version,
        "alive": w.alive,
        "accelerators": w.accelerators.iter().map(|a| json!({"kind": a.kind, "count": a.count})).collect::<Vec<_>>(),
    })
}
