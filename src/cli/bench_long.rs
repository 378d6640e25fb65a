//! `grlo bench model --long-context T,...`: forward+backward passes over one long sequence
//! (batch 1, the next-token cross-entropy of the "train" workload) beside PyTorch sdpa, with
//! tokens/s and peak memory of both sides.
//!
//! Peak memory is the growth over the memory held with the model loaded, so every workload runs
//! in a child process of its own on each side: grlo re-executes itself as the hidden
//! `grlo bench model-worker`, the peer runs `bench/peer_transformers.py` with a one-workload
//! plan. Each child loads the random model, frees what it can (`malloc_trim`, the allocator
//! pools), takes its baseline, runs the warm-up and the timed rounds and reports the peak:
//! - CPU: the peak resident set (`VmHWM` of `/proc/self/status`, reset to the current RSS by
//!   writing 5 to `/proc/self/clear_refs` at the baseline) minus the baseline RSS;
//! - CUDA: the growth of the bytes the allocator pools reserve (cubecl's `memory_usage()` on
//!   grlo's side, torch's `max_memory_reserved` on the peer's: neither pool gives memory back
//!   between explicit cleanups, so this is each pool's high-water mark); the peer's
//!   `max_memory_allocated` growth is reported beside it.

use grlo_model::backend::ModelBackend;
use std::process::Command;

use anyhow::{Context, bail};
use burn::backend::Autodiff;
use clap::Args;
use grlo_model::{Model, ModelConfig};
use serde::{Deserialize, Serialize};

use super::bench::{
    BenchModelArgs, Workload, bench_config, forward_backward, median_seconds, peer_output,
    random_rows,
};
use crate::device::{DeviceArg, OnBackend, dispatch};

/// The long-context workloads of one config: one per length, in the order given.
pub(super) fn plan(config: &ModelConfig, lengths: &[usize]) -> anyhow::Result<Vec<Workload>> {
    let mut plan: Vec<Workload> = Vec::new();
    for &seq in lengths {
        if seq < 2 {
            bail!("--long-context {seq}: a next-token loss needs sequences of at least 2 tokens");
        }
        if seq > config.max_position_embeddings {
            bail!(
                "--long-context {seq}: longer than the config's max_position_embeddings ({})",
                config.max_position_embeddings
            );
        }
        if plan.iter().any(|w| w.seq == seq) {
            continue;
        }
        plan.push(Workload {
            name: format!("long fwd+bwd 1x{seq}"),
            kind: "long",
            batch: 1,
            seq,
            steps: 0,
        });
    }
    Ok(plan)
}

/// One long-context workload, measured on both sides.
#[derive(Debug, Serialize)]
pub(super) struct LongRow {
    config: String,
    tokens: usize,
    /// How peak memory was measured: `rss` (CPU) or `cuda-reserved`.
    memory: &'static str,
    grlo_tokens_per_s: Option<f64>,
    grlo_peak_bytes: Option<u64>,
    peer_tokens_per_s: Option<f64>,
    peer_peak_bytes: Option<u64>,
    /// CUDA only: the growth of torch's `max_memory_allocated` (tensors alone, no pool slack).
    peer_peak_allocated_bytes: Option<u64>,
    /// grlo / peer tokens/s.
    tokens_ratio: Option<f64>,
    /// grlo / peer peak memory (the same measure on both sides).
    memory_ratio: Option<f64>,
    /// Why a side has no numbers (a child that failed, ran out of memory, ...).
    errors: Vec<String>,
}

/// What a worker prints: one workload's throughput and peak memory.
#[derive(Debug, Deserialize, Serialize)]
struct Measured {
    tokens_per_s: f64,
    baseline_bytes: u64,
    peak_bytes: u64,
    memory: String,
}

/// Runs every workload of `plan` for config `name` on both sides, each in its own process.
pub(super) fn run(
    args: &BenchModelArgs,
    name: &str,
    plan: &[Workload],
    threads: usize,
) -> anyhow::Result<Vec<LongRow>> {
    let (json, _) = bench_config(name)?;
    let exe = std::env::current_exe().context("cannot find the grlo binary to re-run")?;
    let mut rows = Vec::new();
    for w in plan {
        let mut errors = Vec::new();
        eprintln!("[bench] {name}: {} on grlo", w.name);
        let ours = run_worker(&exe, args, name, w.seq, threads)
            .map_err(|e| errors.push(format!("grlo: {e:#}")))
            .ok();
        let peer = if args.peer == "none" {
            None
        } else {
            eprintln!("[bench] {name}: {} on transformers", w.name);
            peer_measure(args, json, w, threads)
                .map_err(|e| errors.push(format!("transformers: {e:#}")))
                .ok()
        };
        for error in &errors {
            eprintln!("[bench] {name}: {} failed: {error}", w.name);
        }
        let grlo_tokens_per_s = ours.as_ref().map(|m| m.tokens_per_s);
        let grlo_peak_bytes = ours.as_ref().map(|m| m.peak_bytes);
        let peer_tokens_per_s = peer.as_ref().map(|p| p.tokens_per_s);
        let peer_peak_bytes = peer.as_ref().map(|p| p.peak_bytes);
        rows.push(LongRow {
            config: name.to_string(),
            tokens: w.seq,
            memory: memory_measure(&args.device),
            grlo_tokens_per_s,
            grlo_peak_bytes,
            peer_tokens_per_s,
            peer_peak_bytes,
            peer_peak_allocated_bytes: peer.as_ref().and_then(|p| p.peak_allocated_bytes),
            tokens_ratio: ratio(grlo_tokens_per_s, peer_tokens_per_s),
            memory_ratio: ratio(
                grlo_peak_bytes.map(|b| b as f64),
                peer_peak_bytes.map(|b| b as f64),
            ),
            errors,
        });
    }
    Ok(rows)
}

fn ratio(ours: Option<f64>, peer: Option<f64>) -> Option<f64> {
    match (ours, peer) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

fn memory_measure(device: &DeviceArg) -> &'static str {
    match device {
        DeviceArg::Cpu => "rss",
        DeviceArg::Cuda(_) => "cuda-reserved",
    }
}

fn device_name(device: &DeviceArg) -> String {
    match device {
        DeviceArg::Cpu => "cpu".into(),
        DeviceArg::Cuda(i) => format!("cuda:{i}"),
    }
}

/// `grlo bench model-worker` in a child process; what it measured.
fn run_worker(
    exe: &std::path::Path,
    args: &BenchModelArgs,
    name: &str,
    seq: usize,
    threads: usize,
) -> anyhow::Result<Measured> {
    let output = Command::new(exe)
        .args(["bench", "model-worker", "--config", name])
        .args(["--seq", &seq.to_string()])
        .args(["--rounds", &args.rounds.to_string()])
        .args(["--device", &device_name(&args.device)])
        .args(["--threads", &threads.to_string()])
        .env_remove("GRLO_SETTINGS")
        .output()
        .with_context(|| format!("failed to run {}", exe.display()))?;
    if !output.status.success() {
        bail!(
            "the worker failed ({}): {}",
            output.status,
            last_line(&output.stderr)
        );
    }
    serde_json::from_slice(&output.stdout).context("the worker printed no JSON")
}

/// The last non-empty line a process printed (its error, for a message).
pub fn last_line(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .to_string()
}

/// The peer's numbers for one workload.
struct PeerMeasured {
    tokens_per_s: f64,
    peak_bytes: u64,
    peak_allocated_bytes: Option<u64>,
}

/// The transformers peer on a plan of this one workload, so that its process holds nothing else.
fn peer_measure(
    args: &BenchModelArgs,
    json: &str,
    w: &Workload,
    threads: usize,
) -> anyhow::Result<PeerMeasured> {
    let value = peer_output(args, json, std::slice::from_ref(w), threads)?;
    let tokens_per_s = value["tokens_per_second"][&w.name]
        .as_f64()
        .context("the transformers peer printed no tokens_per_second")?;
    let memory = &value["memory"][&w.name];
    let peak_bytes = memory["peak_bytes"]
        .as_u64()
        .context("the transformers peer printed no peak memory (an old peer script?)")?;
    Ok(PeerMeasured {
        tokens_per_s,
        peak_bytes,
        peak_allocated_bytes: memory["peak_allocated_bytes"].as_u64(),
    })
}

/// The long-context table.
pub(super) fn table(rows: &[LongRow], device: &DeviceArg, threads: usize) -> String {
    let cuda = matches!(device, DeviceArg::Cuda(_));
    let measure = if cuda {
        "growth of the allocator pools' reserved bytes (transformers' max allocated beside it)"
    } else {
        "growth of the peak RSS over the loaded model"
    };
    let mut out = format!(
        "\nlong-context training (fwd+bwd, batch 1): device {device:?}, {threads} threads; \
         tokens/s (median of rounds); peak memory in MiB = {measure}; ratio = grlo / transformers\n"
    );
    out += &format!(
        "{:<12} {:>6} {:>10} {:>12} {:>6} {:>10} {:>12} {:>6}",
        "config", "tokens", "grlo tok/s", "trf tok/s", "ratio", "grlo MiB", "trf MiB", "ratio"
    );
    if cuda {
        out += &format!(" {:>14}", "trf alloc MiB");
    }
    out += "\n";
    let num = |x: Option<f64>, digits: usize| x.map_or("-".into(), |x| format!("{x:.digits$}"));
    let mib = |b: Option<u64>| b.map_or("-".into(), |b| format!("{:.0}", b as f64 / MIB));
    let mut notes = Vec::new();
    for r in rows {
        out += &format!(
            "{:<12} {:>6} {:>10} {:>12} {:>6} {:>10} {:>12} {:>6}",
            r.config,
            r.tokens,
            num(r.grlo_tokens_per_s, 1),
            num(r.peer_tokens_per_s, 1),
            num(r.tokens_ratio, 2),
            mib(r.grlo_peak_bytes),
            mib(r.peer_peak_bytes),
            num(r.memory_ratio, 2),
        );
        if cuda {
            out += &format!(" {:>14}", mib(r.peer_peak_allocated_bytes));
        }
        out += "\n";
        notes.extend(
            r.errors
                .iter()
                .map(|e| format!("  {} t={}: {e}\n", r.config, r.tokens)),
        );
    }
    for note in notes {
        out += &note;
    }
    out
}

const MIB: f64 = 1024.0 * 1024.0;

/// `grlo bench model-worker`: one long-context workload in a process of its own (hidden; run by
/// `grlo bench model --long-context`). Prints `{"tokens_per_s", "baseline_bytes", "peak_bytes",
/// "memory"}`.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// The bench shape (qwen3-25m, qwen3-0.6b).
    #[arg(long)]
    pub config: String,
    /// Tokens of the one sequence.
    #[arg(long)]
    pub seq: usize,
    /// Timed rounds (after one warm-up); the median is reported.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    #[arg(long, default_value = "cpu")]
    pub device: DeviceArg,
    /// Threads (0: all cores). Sets RAYON_NUM_THREADS.
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

pub fn worker(args: WorkerArgs) -> anyhow::Result<String> {
    if args.threads > 0 {
        // SAFETY: set before any worker thread pool starts.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", args.threads.to_string()) };
    }
    let (json, _) = bench_config(&args.config)?;
    let config = ModelConfig::from_json_str(json, std::path::Path::new(&args.config))?;
    plan(&config, &[args.seq])?;
    let meter = Meter::for_device(&args.device);
    let measured = dispatch(
        &args.device,
        LongWorkload {
            config,
            seq: args.seq,
            rounds: args.rounds,
            meter,
        },
    )?;
    Ok(serde_json::to_string(&measured)?)
}

struct LongWorkload {
    config: ModelConfig,
    seq: usize,
    rounds: usize,
    meter: Meter,
}

impl OnBackend for LongWorkload {
    type Output = Measured;

    fn run<B: ModelBackend>(self, device: B::Device) -> anyhow::Result<Measured> {
        let model = Model::<Autodiff<B>>::random(self.config.clone(), 0, &device);
        let rows = random_rows(self.config.vocab_size, 1, self.seq);
        let _ = B::sync(&device);
        B::memory_cleanup(&device);
        let baseline = self.meter.start()?;
        let seconds = median_seconds::<Autodiff<B>>(&device, self.rounds, || {
            forward_backward(&model, &rows);
        });
        let _ = B::sync(&device);
        let peak = self.meter.peak()?;
        Ok(Measured {
            tokens_per_s: self.seq as f64 / seconds,
            baseline_bytes: baseline,
            peak_bytes: peak.saturating_sub(baseline),
            memory: self.meter.name().to_string(),
        })
    }
}

/// Where a worker reads its memory from.
enum Meter {
    /// The process's resident set (CPU).
    Rss,
    /// The CUDA allocator pools of device N.
    #[cfg(feature = "cuda")]
    Cuda(usize),
}

impl Meter {
    fn for_device(device: &DeviceArg) -> Self {
        match device {
            DeviceArg::Cpu => Meter::Rss,
            #[cfg(feature = "cuda")]
            DeviceArg::Cuda(index) => Meter::Cuda(*index),
            // `dispatch` refuses CUDA in a build without it before the meter is used.
            #[cfg(not(feature = "cuda"))]
            DeviceArg::Cuda(_) => Meter::Rss,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Meter::Rss => "rss",
            #[cfg(feature = "cuda")]
            Meter::Cuda(_) => "cuda-reserved",
        }
    }

    /// Frees what the allocator holds unused, starts the high-water mark here and returns the
    /// bytes held now.
    fn start(&self) -> anyhow::Result<u64> {
        match self {
            Meter::Rss => {
                #[cfg(all(target_os = "linux", target_env = "gnu"))]
                // SAFETY: malloc_trim only returns free heap pages to the system.
                unsafe {
                    libc::malloc_trim(0);
                }
                let rss = proc_status_bytes("VmRSS")?;
                std::fs::write("/proc/self/clear_refs", "5")
                    .context("cannot reset the peak RSS (writing 5 to /proc/self/clear_refs)")?;
                Ok(rss)
            }
            #[cfg(feature = "cuda")]
            Meter::Cuda(index) => cuda_reserved_bytes(*index),
        }
    }

    /// The most bytes held since `start`.
    fn peak(&self) -> anyhow::Result<u64> {
        match self {
            Meter::Rss => proc_status_bytes("VmHWM"),
            // The pools keep what they reserved until an explicit cleanup: their size now is
            // their high-water mark since the cleanup before `start`.
            #[cfg(feature = "cuda")]
            Meter::Cuda(index) => cuda_reserved_bytes(*index),
        }
    }
}

/// The bytes the CUDA allocator pools of device `index` hold reserved.
#[cfg(feature = "cuda")]
fn cuda_reserved_bytes(index: usize) -> anyhow::Result<u64> {
    let device = burn::backend::cuda::CudaDevice::new(index);
    let _ = <grlo_model::backend::Cuda as burn::tensor::backend::Backend>::sync(&device);
    let (reserved, _) =
        grlo_model::backend::cuda_memory_usage(&device).map_err(anyhow::Error::msg)?;
    Ok(reserved)
}

/// A `kB` field of `/proc/self/status`, in bytes.
fn proc_status_bytes(field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")
        .context("peak memory on CPU needs Linux's /proc/self/status")?;
    status_field_bytes(&status, field)
        .with_context(|| format!("/proc/self/status has no {field} line"))
}

/// `VmHWM:    2200 kB` → 2,252,800.
fn status_field_bytes(status: &str, field: &str) -> Option<u64> {
    let rest = status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))?;
    let mut parts = rest.split_whitespace();
    let value: u64 = parts.next()?.parse().ok()?;
    match parts.next() {
        Some("kB") => Some(value * 1024),
        None => Some(value),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ModelConfig {
        let (json, _) = bench_config("qwen3-25m").unwrap();
        ModelConfig::from_json_str(json, std::path::Path::new("qwen3-25m")).unwrap()
    }

    #[test]
    fn the_plan_has_one_batch_1_workload_per_length_in_order_without_repeats() {
        let plan = plan(&config(), &[512, 1024, 512, 4096]).unwrap();
        let seqs: Vec<usize> = plan.iter().map(|w| w.seq).collect();
        assert_eq!(seqs, [512, 1024, 4096]);
        assert!(plan.iter().all(|w| w.kind == "long" && w.batch == 1));
        assert_eq!(plan[0].name, "long fwd+bwd 1x512");
        assert!(super::plan(&config(), &[]).unwrap().is_empty());
    }

    #[test]
    fn lengths_the_model_cannot_take_are_refused_by_name() {
        let error = plan(&config(), &[512, 8192]).unwrap_err().to_string();
        assert!(error.contains("8192") && error.contains("max_position_embeddings (4096)"));
        let error = plan(&config(), &[1]).unwrap_err().to_string();
        assert!(error.contains("at least 2 tokens"), "{error}");
    }

    #[test]
    fn proc_status_fields_are_read_in_bytes() {
        let status = "Name:\tgrlo\nVmPeak:\t  999 kB\nVmHWM:\t    2200 kB\nVmRSS:\t    2100 kB\n\
                      Threads:\t3\n";
        assert_eq!(status_field_bytes(status, "VmHWM"), Some(2200 * 1024));
        assert_eq!(status_field_bytes(status, "VmRSS"), Some(2100 * 1024));
        assert_eq!(status_field_bytes(status, "Threads"), Some(3));
        assert_eq!(status_field_bytes(status, "VmSwap"), None);
        // The live file has both fields.
        assert!(proc_status_bytes("VmHWM").unwrap() > 0);
        assert!(proc_status_bytes("VmRSS").unwrap() > 0);
    }

    #[test]
    fn ratios_need_both_sides() {
        assert_eq!(ratio(Some(3.0), Some(2.0)), Some(1.5));
        assert_eq!(ratio(Some(3.0), None), None);
        assert_eq!(ratio(None, Some(2.0)), None);
        assert_eq!(ratio(Some(3.0), Some(0.0)), None);
    }
}
