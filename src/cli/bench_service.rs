//! `grlo bench service`: rollout throughput of the distributed service (a coordinator, a reward
//! server, a learner and actors as separate processes on this machine) beside the
//! single-process loop (`Trainer::run`: generate, score, train in one thread, no gRPC) on the
//! same job, and the weight-sync time (learner has v+1 → every actor has loaded v+1) beside a
//! raw copy of the same bytes.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use burn::backend::Autodiff;
use clap::Args;
use grlo_learner::{TrainConfig, Trainer};
use grlo_proto::v1;
use grlo_proto::v1::coordinator_client::CoordinatorClient;
use serde_json::{Value, json};

use crate::cli::ctl::status_name;

#[derive(Debug, Args)]
pub struct BenchServiceArgs {
    /// The job (default: configs/tiny.toml).
    #[arg(long, default_value = "configs/tiny.toml")]
    pub config: PathBuf,
    /// Training steps of each run.
    #[arg(long, default_value_t = 8)]
    pub steps: usize,
    /// Actor processes of the distributed run (the batch is split into one task per actor).
    #[arg(long, default_value_t = 2)]
    pub actors: usize,
    /// Override a setting of the job (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
}

/// Trajectories and generated tokens over a run's wall time.
#[derive(Debug, Clone, Copy)]
struct Throughput {
    seconds: f64,
    trajectories: f64,
    tokens: f64,
}

impl Throughput {
    fn from_metrics(run_dir: &Path, batch: usize, seconds: f64) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(run_dir.join("metrics.jsonl"))
            .with_context(|| format!("no metrics.jsonl in {}", run_dir.display()))?;
        let (mut trajectories, mut tokens) = (0.0, 0.0);
        for line in text.lines() {
            let m: Value = serde_json::from_str(line)?;
            trajectories += batch as f64;
            tokens += batch as f64 * m["response_len_mean"].as_f64().unwrap_or(0.0);
        }
        Ok(Throughput {
            seconds,
            trajectories,
            tokens,
        })
    }

    fn json(&self) -> Value {
        json!({
            "seconds": self.seconds,
            "trajectories_per_s": self.trajectories / self.seconds,
            "tokens_per_s": self.tokens / self.seconds,
        })
    }
}

pub fn run(args: BenchServiceArgs) -> anyhow::Result<String> {
    let mut overrides = args.overrides.clone();
    overrides.push(format!("trainer.total_steps={}", args.steps));
    let config = TrainConfig::from_file(&args.config)?.with_overrides(&overrides, "the job")?;
    if config.trainer.device != "cpu" {
        bail!("grlo bench service runs on CPU (trainer.device = \"cpu\")");
    }
    let batch = config.rollout.batch_size * config.rollout.n;
    let dir = tempfile::tempdir()?;

    eprintln!("single process: {} steps ...", args.steps);
    let single = single_process(&config, &dir.path().join("single"), batch)?;
    eprintln!(
        "distributed, {} actors: {} steps ...",
        args.actors, args.steps
    );
    let (distributed, sync) = distributed(&config, dir.path(), args.actors, batch)?;

    let ratio = |key: &str| {
        distributed.json()[key].as_f64().unwrap_or(0.0) / single.json()[key].as_f64().unwrap_or(1.0)
    };
    let report = json!({
        "steps": args.steps,
        "batch": batch,
        "actors": args.actors,
        "single_process": single.json(),
        "distributed": distributed.json(),
        "ratio_trajectories_per_s": ratio("trajectories_per_s"),
        "ratio_tokens_per_s": ratio("tokens_per_s"),
        "weight_sync": sync,
    });
    eprintln!(
        "\n{:<15} {:>10} {:>16} {:>14}\n{:<15} {:>10.1} {:>16.2} {:>14.0}\n{:<15} {:>10.1} {:>16.2} {:>14.0}\n{:<15} {:>10} {:>16.2} {:>14.2}",
        "run",
        "seconds",
        "trajectories/s",
        "tokens/s",
        "single process",
        single.seconds,
        single.trajectories / single.seconds,
        single.tokens / single.seconds,
        "distributed",
        distributed.seconds,
        distributed.trajectories / distributed.seconds,
        distributed.tokens / distributed.seconds,
        "ratio",
        "",
        ratio("trajectories_per_s"),
        ratio("tokens_per_s"),
    );
    eprintln!(
        "weight sync: mean {:.1} ms, max {:.1} ms over {} versions; raw copy of the same {} bytes: {:.2} ms",
        sync["mean_ms"].as_f64().unwrap_or(f64::NAN),
        sync["max_ms"].as_f64().unwrap_or(f64::NAN),
        sync["versions"],
        sync["bytes"],
        sync["raw_copy_ms"].as_f64().unwrap_or(f64::NAN),
    );
    Ok(serde_json::to_string_pretty(&report)?)
}

/// The library's loop in this process.
fn single_process(
    config: &TrainConfig,
    run_dir: &Path,
    batch: usize,
) -> anyhow::Result<Throughput> {
    let mut config = config.clone();
    config.trainer.run_dir = run_dir.display().to_string();
    let device = Default::default();
    let started = Instant::now();
    let mut trainer = Trainer::<Autodiff<grlo_model::backend::Cpu>>::new(config, &device, false)?;
    trainer.run(|_| {})?;
    Throughput::from_metrics(run_dir, batch, started.elapsed().as_secs_f64())
}

/// Child processes of this binary, killed when dropped.
struct Processes(Vec<Child>);

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn distributed(
    config: &TrainConfig,
    dir: &Path,
    actors: usize,
    batch: usize,
) -> anyhow::Result<(Throughput, Value)> {
    let exe = std::env::current_exe()?;
    let coordinator_port = free_port()?;
    let url = format!("http://127.0.0.1:{coordinator_port}");
    let spawn = |name: &str, args: Vec<String>| -> anyhow::Result<Child> {
        let log = File::create(dir.join(format!("{name}.log")))?;
        Command::new(&exe)
            .args(args)
            .env("GRLO_LOG", "info")
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start the {name}"))
    };
    let text = |s: &str| s.to_string();
    let mut processes = Processes(Vec::new());
    processes.0.push(spawn(
        "coordinator",
        vec![
            text("coordinator"),
            text("--listen"),
            format!("127.0.0.1:{coordinator_port}"),
            text("--data-dir"),
            dir.join("coordinator").display().to_string(),
            text("--heartbeat-ms"),
            text("200"),
        ],
    )?);
    processes.0.push(spawn(
        "reward",
        vec![
            text("reward-server"),
            text("--listen"),
            format!("127.0.0.1:{}", free_port()?),
            text("--coordinator"),
            url.clone(),
        ],
    )?);
    processes.0.push(spawn(
        "learner",
        vec![
            text("learner"),
            text("--listen"),
            format!("127.0.0.1:{}", free_port()?),
            text("--coordinator"),
            url.clone(),
            text("--work-dir"),
            dir.join("runs").display().to_string(),
        ],
    )?);
    for i in 0..actors {
        processes.0.push(spawn(
            &format!("actor-{i}"),
            vec![
                text("actor"),
                text("--coordinator"),
                url.clone(),
                text("--cache-dir"),
                dir.join(format!("cache-{i}")).display().to_string(),
            ],
        )?);
    }

    let mut job_config = config.clone();
    job_config.job.prompts_per_task = config.rollout.batch_size.div_ceil(actors.max(1));
    let spec_toml = toml::to_string(&job_config)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (job, seconds) = runtime.block_on(async {
        let endpoint = tonic::transport::Endpoint::from_shared(url.clone())?;
        let deadline = Instant::now() + Duration::from_secs(60);
        let channel = loop {
            match endpoint.connect().await {
                Ok(channel) => break channel,
                Err(e) if Instant::now() > deadline => {
                    bail!("the coordinator did not come up: {e}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        let mut client = CoordinatorClient::new(channel);
        // Wait for every worker, so that both runs start from loaded processes.
        loop {
            let workers = client
                .list_workers(v1::ListWorkersRequest {})
                .await?
                .into_inner();
            if workers.workers.iter().filter(|w| w.alive).count() >= actors + 2 {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "the workers did not register");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let started = Instant::now();
        let job = client
            .submit_job(v1::SubmitJobRequest { spec_toml })
            .await
            .map_err(|s| anyhow::anyhow!("the job was refused: {}", s.message()))?
            .into_inner();
        let mut stream = client
            .watch_job(v1::JobRef {
                job_id: job.id.clone(),
            })
            .await?
            .into_inner();
        let mut last = job;
        while let Some(event) = stream.message().await? {
            if let Some(job) = event.job {
                last = job;
            }
        }
        Ok((last, started.elapsed().as_secs_f64()))
    })?;
    if status_name(job.status) != "succeeded" {
        bail!(
            "the distributed job ended {}: {}",
            status_name(job.status),
            job.message
        );
    }
    drop(processes);
    let run_dir = dir.join("runs").join(&job.id);
    let throughput = Throughput::from_metrics(&run_dir, batch, seconds)?;
    let sync = weight_sync(dir, actors, &run_dir)?;
    Ok((throughput, sync))
}

/// Per version: the learner's "published weights" (in the object store) to the last actor's "weights loaded", from
/// the roles' logs; and the time to copy the same files on this disk.
fn weight_sync(dir: &Path, actors: usize, run_dir: &Path) -> anyhow::Result<Value> {
    let published = log_times(&dir.join("learner.log"), "published weights")?;
    let mut loaded = Vec::new();
    for i in 0..actors {
        loaded.push(log_times(
            &dir.join(format!("actor-{i}.log")),
            "weights loaded",
        )?);
    }
    let mut syncs = Vec::new();
    for (version, at) in &published {
        if *version == 0 {
            continue; // the initial policy is loaded at start, not synced
        }
        let last = loaded
            .iter()
            .map(|times| times.iter().find(|(v, _)| v == version).map(|(_, t)| *t))
            .collect::<Option<Vec<f64>>>();
        if let Some(last) = last {
            let last = last.into_iter().fold(f64::MIN, f64::max);
            syncs.push((last - at) * 1000.0);
        }
    }
    // The newest version (the learner deletes the ones no task can use any more).
    let weights = std::fs::read_dir(run_dir.join("checkpoints/weights"))?
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.join("manifest.json").is_file())
        .max_by_key(|path| {
            path.file_name()
                .and_then(|n| n.to_str()?.strip_prefix('v')?.parse::<u64>().ok())
        })
        .context("no published weight version to copy")?;
    let copy_to = dir.join("raw-copy");
    std::fs::create_dir_all(&copy_to)?;
    let mut bytes = 0;
    let started = Instant::now();
    for entry in std::fs::read_dir(&weights)
        .with_context(|| format!("no published weights at {}", weights.display()))?
    {
        let entry = entry?;
        bytes += std::fs::copy(entry.path(), copy_to.join(entry.file_name()))?;
    }
    let raw_copy_ms = started.elapsed().as_secs_f64() * 1000.0;
    let mean = syncs.iter().sum::<f64>() / syncs.len().max(1) as f64;
    Ok(json!({
        "versions": syncs.len(),
        "mean_ms": mean,
        "max_ms": syncs.iter().copied().fold(0.0, f64::max),
        "bytes": bytes,
        "raw_copy_ms": raw_copy_ms,
    }))
}

/// (version, seconds since the epoch) of each log line holding `message`.
fn log_times(path: &Path, message: &str) -> anyhow::Result<Vec<(u64, f64)>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the log {}", path.display()))?;
    Ok(text
        .lines()
        .filter(|line| line.contains(message))
        .filter_map(|line| {
            let at = timestamp_seconds(line.split_whitespace().next()?)?;
            let version = line
                .split_whitespace()
                .find_map(|word| word.strip_prefix("version="))?
                .parse()
                .ok()?;
            Some((version, at))
        })
        .collect())
}

/// Seconds since the epoch of a `tracing` timestamp such as `2026-11-26T11:46:27.147276Z`.
fn timestamp_seconds(text: &str) -> Option<f64> {
    let (date, time) = text.trim_end_matches('Z').split_once('T')?;
    let mut ymd = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, d) = (ymd.next()??, ymd.next()??, ymd.next()??);
    let mut hms = time.splitn(3, ':');
    let (h, min) = (
        hms.next()?.parse::<f64>().ok()?,
        hms.next()?.parse::<f64>().ok()?,
    );
    let s: f64 = hms.next()?.parse().ok()?;
    // Days from the civil date (proleptic Gregorian), after Howard Hinnant's algorithm.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days as f64 * 86_400.0 + h * 3600.0 + min * 60.0 + s)
}

#[cfg(test)]
mod tests {
    #[test]
    fn timestamps_are_seconds_since_the_epoch() {
        assert_eq!(
            super::timestamp_seconds("1970-01-01T00:00:01.5Z"),
            Some(1.5)
        );
        // date -u -d 2026-11-26T11:46:27Z +%s
        assert_eq!(
            super::timestamp_seconds("2026-11-26T11:46:27.000000Z"),
            Some(1_795_693_587.0)
        );
        assert_eq!(super::timestamp_seconds("garbage"), None);
    }
}
