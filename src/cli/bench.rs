//! `grlo bench model`: throughput of the model core beside HF transformers on the same configs.
//!
//! Both sides run the same workloads on randomly initialised models of the same shape: prefill
//! (a forward over the prompts, logits at the last position only, as generation needs), greedy
//! decoding with a KV cache at several batch sizes, a forward+backward pass of the next-token
//! cross-entropy, and a whole training step (forward, backward, gradient clipping and AdamW).
//! The peer runs in a child process (`bench/peer_transformers.py`) with the same thread count;
//! the table prints tokens/s of each side and their ratio. `--long-context` adds forward+backward
//! passes over one long sequence, with peak memory (see `bench_long.rs`).

use grlo_model::backend::{ModelAutodiffBackend, ModelBackend};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};
use burn::backend::Autodiff;
use burn::optim::GradientsParams;
use burn::tensor::{Int, Tensor, TensorData};
use clap::Args;
use grlo_learner::config::{LrSchedule, OptimSection};
use grlo_learner::optim::AdamW;
use grlo_model::model::to_f32_vec;
use grlo_model::{GenerationParams, Model, ModelConfig, SamplingParams, TokenBatch};
use serde::Serialize;

use super::bench_long;
use crate::device::{DeviceArg, OnBackend, dispatch};

/// A Qwen3-shaped model of about 27M parameters (tied embeddings).
const QWEN3_25M: &str = r#"{"model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"],
  "vocab_size": 32000, "hidden_size": 384, "intermediate_size": 1280, "num_hidden_layers": 8,
  "num_attention_heads": 6, "num_key_value_heads": 2, "head_dim": 64, "rope_theta": 1000000.0,
  "rms_norm_eps": 1e-6, "max_position_embeddings": 4096, "tie_word_embeddings": true,
  "hidden_act": "silu", "initializer_range": 0.02}"#;

/// Qwen3-0.6B's published shape.
const QWEN3_0_6B: &str = r#"{"model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"],
  "vocab_size": 151936, "hidden_size": 1024, "intermediate_size": 3072, "num_hidden_layers": 28,
  "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128, "rope_theta": 1000000.0,
  "rms_norm_eps": 1e-6, "max_position_embeddings": 40960, "tie_word_embeddings": true,
  "hidden_act": "silu", "initializer_range": 0.02}"#;

#[derive(Debug, Args)]
pub struct BenchModelArgs {
    /// Model shapes to run: qwen3-25m, qwen3-0.6b (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "qwen3-25m,qwen3-0.6b")]
    pub configs: Vec<String>,
    /// Compute device for grlo (the peer uses the matching torch device).
    #[arg(long, default_value = "cpu")]
    pub device: DeviceArg,
    /// Timed rounds per workload (after one warm-up); the median is reported.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Threads for both sides (0: all cores). Sets RAYON_NUM_THREADS for grlo.
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Python interpreter for the transformers peer; "none" skips it.
    #[arg(long, default_value = "python3")]
    pub peer: String,
    /// Batch sizes of the decode workloads.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    pub decode_batches: Vec<usize>,
    /// Smaller workloads (for a quick look, and for the large config on a small CPU).
    #[arg(long)]
    pub quick: bool,
    /// Long-context training workloads: a forward+backward pass (next-token cross-entropy) over
    /// one sequence of each of these lengths (e.g. 512,1024,2048,4096), batch 1, beside PyTorch
    /// sdpa, with tokens/s and peak memory of both sides. Each runs in its own child process on
    /// each side; peak memory is the growth over the memory held with the model loaded (CPU:
    /// peak RSS; CUDA: the allocator pools' reserved bytes, and torch's max allocated too).
    /// Off by default: on 2 CPU cores qwen3-25m at 512..4096 takes ~6 minutes with --rounds 2
    /// and each side grows by 2–4 GiB at 4096; qwen3-0.6b at these lengths is for GPUs.
    #[arg(long, value_delimiter = ',', value_name = "LENGTHS")]
    pub long_context: Vec<usize>,
    /// Run only the --long-context workloads, not prefill, decode and the training workloads.
    #[arg(long, requires = "long_context")]
    pub long_context_only: bool,
    /// Print the results as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// One measured workload, with the same name on both sides.
#[derive(Clone, Debug, Serialize)]
pub(super) struct Workload {
    pub(super) name: String,
    pub(super) kind: &'static str,
    pub(super) batch: usize,
    pub(super) seq: usize,
    pub(super) steps: usize,
}

#[derive(Debug, Serialize)]
struct Row {
    config: String,
    workload: String,
    grlo_tokens_per_s: f64,
    peer_tokens_per_s: Option<f64>,
    ratio: Option<f64>,
}

fn plan(large: bool, quick: bool, decode_batches: &[usize]) -> Vec<Workload> {
    let (prefill, train, steps) = match (large, quick) {
        (false, false) => ((8, 128), (8, 128), 32),
        (true, false) | (false, true) => ((4, 128), (4, 64), 16),
        (true, true) => ((2, 64), (1, 64), 8),
    };
    let mut plan = vec![Workload {
        name: format!("prefill {}x{}", prefill.0, prefill.1),
        kind: "prefill",
        batch: prefill.0,
        seq: prefill.1,
        steps: 0,
    }];
    for &batch in decode_batches {
        plan.push(Workload {
            name: format!("decode b={batch} ({steps} steps)"),
            kind: "decode",
            batch,
            seq: 16,
            steps,
        });
    }
    plan.push(Workload {
        name: format!("fwd+bwd {}x{}", train.0, train.1),
        kind: "train",
        batch: train.0,
        seq: train.1,
        steps: 0,
    });
    plan.push(Workload {
        name: format!("train step {}x{}", train.0, train.1),
        kind: "step",
        batch: train.0,
        seq: train.1,
        steps: 0,
    });
    plan
}

/// Sets the CPU thread count a benchmark asked for (0: all cores); returns the count in use.
/// Call before any thread pool starts.
pub fn use_threads(threads: usize) -> usize {
    if threads > 0 {
        // SAFETY: set before any worker thread pool starts.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", threads.to_string()) };
        threads
    } else {
        std::thread::available_parallelism()
            .map(usize::from)
            .unwrap_or(1)
    }
}

pub fn run(args: BenchModelArgs) -> anyhow::Result<String> {
    let threads = use_threads(args.threads);
    // Every config and long-context length is checked before anything runs.
    let mut configs = Vec::new();
    for name in &args.configs {
        let (json, large) = bench_config(name)?;
        let config = ModelConfig::from_json_str(json, Path::new(name))?;
        let long_plan = bench_long::plan(&config, &args.long_context)?;
        configs.push((name, json, large, config, long_plan));
    }
    let mut rows = Vec::new();
    let mut long_rows = Vec::new();
    for (name, json, large, config, long_plan) in configs {
        if !args.long_context_only {
            rows.extend(standard_rows(&args, name, json, large, config, threads)?);
        }
        long_rows.extend(bench_long::run(&args, name, &long_plan, threads)?);
    }
    if args.json {
        if args.long_context.is_empty() {
            return Ok(serde_json::to_string(&rows)?);
        }
        return Ok(serde_json::to_string(
            &serde_json::json!({"workloads": rows, "long_context": long_rows}),
        )?);
    }
    let mut out = String::new();
    if !args.long_context_only {
        out += &table(&rows, &args.device, threads);
    }
    if !long_rows.is_empty() {
        out += &bench_long::table(&long_rows, &args.device, threads);
    }
    Ok(out.trim_end().to_string())
}

/// Prefill, decode and the training workloads of one config, on both sides.
fn standard_rows(
    args: &BenchModelArgs,
    name: &str,
    json: &str,
    large: bool,
    config: ModelConfig,
    threads: usize,
) -> anyhow::Result<Vec<Row>> {
    let plan = plan(large, args.quick, &args.decode_batches);
    eprintln!(
        "[bench] {name}: grlo on {:?}, {threads} threads",
        args.device
    );
    let ours = dispatch(
        &args.device,
        GrloSide {
            config,
            plan: plan.clone(),
            rounds: args.rounds,
        },
    )?;
    let peer = if args.peer == "none" {
        None
    } else {
        eprintln!("[bench] {name}: transformers peer");
        Some(run_peer(args, json, &plan, threads)?)
    };
    Ok(plan
        .iter()
        .zip(ours)
        .map(|(workload, grlo)| {
            let peer_value = peer
                .as_ref()
                .and_then(|p| p.get(&workload.name))
                .and_then(serde_json::Value::as_f64);
            Row {
                config: name.to_string(),
                workload: workload.name.clone(),
                grlo_tokens_per_s: grlo,
                peer_tokens_per_s: peer_value,
                ratio: peer_value.map(|p| grlo / p),
            }
        })
        .collect())
}

/// The config.json text of a bench shape, and whether it is the large one.
pub(super) fn bench_config(name: &str) -> anyhow::Result<(&'static str, bool)> {
    match name {
        "qwen3-25m" => Ok((QWEN3_25M, false)),
        "qwen3-0.6b" => Ok((QWEN3_0_6B, true)),
        other => bail!("unknown bench config \"{other}\" (use qwen3-25m or qwen3-0.6b)"),
    }
}

fn table(rows: &[Row], device: &DeviceArg, threads: usize) -> String {
    let mut out = format!(
        "device {device:?}, {threads} threads; tokens/s (median of rounds); ratio = grlo / transformers\n"
    );
    out += &format!(
        "{:<12} {:<24} {:>12} {:>14} {:>7}\n",
        "config", "workload", "grlo", "transformers", "ratio"
    );
    for r in rows {
        let peer = r
            .peer_tokens_per_s
            .map_or("-".into(), |p| format!("{p:.1}"));
        let ratio = r.ratio.map_or("-".into(), |x| format!("{x:.2}"));
        out += &format!(
            "{:<12} {:<24} {:>12.1} {:>14} {:>7}\n",
            r.config, r.workload, r.grlo_tokens_per_s, peer, ratio
        );
    }
    out
}

fn run_peer(
    args: &BenchModelArgs,
    config_json: &str,
    plan: &[Workload],
    threads: usize,
) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
    peer_output(args, config_json, plan, threads)?
        .get("tokens_per_second")
        .and_then(serde_json::Value::as_object)
        .cloned()
        .context("the transformers peer printed no tokens_per_second")
}

/// Runs the transformers peer over `plan` in a child process; the JSON object it printed.
pub(super) fn peer_output(
    args: &BenchModelArgs,
    config_json: &str,
    plan: &[Workload],
    threads: usize,
) -> anyhow::Result<serde_json::Value> {
    let dir = tempfile_dir()?;
    let config_path = dir.join("config.json");
    let plan_path = dir.join("plan.json");
    std::fs::write(&config_path, config_json)?;
    std::fs::write(&plan_path, serde_json::to_string(plan)?)?;
    let script = peer_script()?;
    let device = match args.device {
        DeviceArg::Cpu => "cpu".to_string(),
        DeviceArg::Cuda(i) => format!("cuda:{i}"),
    };
    let output = Command::new(&args.peer)
        .arg(&script)
        .args(["--config", &config_path.to_string_lossy()])
        .args(["--plan", &plan_path.to_string_lossy()])
        .args(["--threads", &threads.to_string()])
        .args(["--rounds", &args.rounds.to_string()])
        .args(["--device", &device])
        .output()
        .with_context(|| format!("failed to start the peer with {}", args.peer))?;
    let _ = std::fs::remove_dir_all(&dir);
    if !output.status.success() {
        bail!(
            "the transformers peer failed ({}; is torch installed? use --peer none to skip it): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
                .lines()
                .last()
                .unwrap_or("")
        );
    }
    serde_json::from_slice(&output.stdout).context("the transformers peer printed no JSON")
}

pub(super) fn peer_script() -> anyhow::Result<PathBuf> {
    let candidates = [
        PathBuf::from("bench/peer_transformers.py"),
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("bench/peer_transformers.py"),
    ];
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .context("bench/peer_transformers.py not found: run from the repository root")
}

pub(super) fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("grlo-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// grlo's side: the same workloads on the chosen backend.
struct GrloSide {
    config: ModelConfig,
    plan: Vec<Workload>,
    rounds: usize,
}

impl OnBackend for GrloSide {
    type Output = Vec<f64>;

    fn run<B: ModelBackend>(self, device: B::Device) -> anyhow::Result<Vec<f64>> {
        let mut results = Vec::new();
        let model = Model::<B>::random(self.config.clone(), 0, &device);
        for w in self
            .plan
            .iter()
            .filter(|w| w.kind == "prefill" || w.kind == "decode")
        {
            let prompts = random_rows(self.config.vocab_size, w.batch, w.seq);
            let prefill_seconds = median_seconds::<B>(&device, self.rounds, || {
                let batch = TokenBatch::left_padded(&prompts, 0);
                let hidden = model.forward_hidden(&batch, None);
                let last = last_positions::<B>(w.batch, w.seq, &device);
                to_f32_vec(model.lm_logits(hidden.select(0, last)));
            });
            let tokens_per_s = if w.kind == "prefill" {
                (w.batch * w.seq) as f64 / prefill_seconds
            } else {
                let params = GenerationParams {
                    sampling: SamplingParams::greedy(),
                    max_new_tokens: w.steps + 1,
                    n: 1,
                    stop_token_ids: Vec::new(),
                    top_logprobs: 0,
                };
                let total = median_seconds::<B>(&device, self.rounds, || {
                    grlo_model::generate(&model, &prompts, &params).expect("valid prompts");
                });
                (w.batch * w.steps) as f64 / (total - prefill_seconds).max(1e-9)
            };
            results.push(tokens_per_s);
        }
        drop(model);
        for w in self
            .plan
            .iter()
            .filter(|w| w.kind == "train" || w.kind == "step")
        {
            results.push(train_tokens_per_s::<Autodiff<B>>(
                &self.config,
                w,
                self.rounds,
                &device,
            ));
        }
        // Results in plan order: the training workloads come last in every plan.
        Ok(results)
    }
}

fn train_tokens_per_s<A: ModelAutodiffBackend>(
    config: &ModelConfig,
    w: &Workload,
    rounds: usize,
    device: &A::Device,
) -> f64 {
    let mut model = Model::<A>::random(config.clone(), 0, device);
    let rows = random_rows(config.vocab_size, w.batch, w.seq);
    let mut optim = AdamW::<A::InnerBackend>::new(OptimSection {
        lr: 1e-5,
        weight_decay: 0.01,
        betas: [0.9, 0.999],
        eps: 1e-8,
        grad_clip: 1.0,
        schedule: LrSchedule::default(),
    });
    let update = w.kind == "step";
    let seconds = median_seconds::<A>(device, rounds, || {
        let grads = forward_backward(&model, &rows);
        if update {
            let grads = GradientsParams::from_grads(grads, &model);
            let norm = AdamW::<A::InnerBackend>::grad_norm(&model, &grads);
            model = optim.update(model.clone(), grads, 1e-5, norm);
        }
    });
    (w.batch * w.seq) as f64 / seconds
}

/// One forward+backward pass of the next-token cross-entropy over `rows` (equal lengths): the
/// "train" and long-context workloads.
pub(super) fn forward_backward<A: ModelAutodiffBackend>(
    model: &Model<A>,
    rows: &[Vec<u32>],
) -> A::Gradients {
    let batch = TokenBatch::right_padded(rows, 0);
    next_token_loss(model, model.forward_hidden(&batch, None), rows).backward()
}

/// The next-token cross-entropy of equal-length `rows` (mean over every position but each row's
/// last) from the decoder's hidden states `[rows * seq, hidden]`, as the learner computes
/// log-probs: the LM head over every position, log-softmax, the target's entry. The one place
/// the training workloads compute their loss (a chunked log-prob API can replace its body).
pub(super) fn next_token_loss<B: ModelBackend>(
    model: &Model<B>,
    hidden: Tensor<B, 2>,
    rows: &[Vec<u32>],
) -> Tensor<B, 1> {
    let device = hidden.device();
    let seq = rows.first().map_or(0, Vec::len);
    // Every position but each row's last predicts the next token, through the chunked
    // log-prob head the learner uses (no whole `[tokens, vocab]` logits).
    let mut inputs = Vec::new();
    let mut targets = Vec::new();
    for (r, row) in rows.iter().enumerate() {
        for t in 0..seq - 1 {
            inputs.push((r * seq + t) as i64);
            targets.push(row[t + 1]);
        }
    }
    let n = inputs.len();
    let inputs = Tensor::<B, 1, Int>::from_data(TensorData::new(inputs, [n]), &device);
    let logp = model
        .token_logprobs(hidden.select(0, inputs), &targets, false)
        .logprobs; // [n]
    logp.mean().neg()
}

pub(super) fn random_rows(vocab: usize, batch: usize, seq: usize) -> Vec<Vec<u32>> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    (0..batch)
        .map(|_| {
            (0..seq)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    (state % vocab as u64) as u32
                })
                .collect()
        })
        .collect()
}

fn last_positions<B: ModelBackend>(
    batch: usize,
    seq: usize,
    device: &B::Device,
) -> Tensor<B, 1, Int> {
    let index: Vec<i64> = (0..batch).map(|b| (b * seq + seq - 1) as i64).collect();
    Tensor::from_data(TensorData::new(index, [batch]), device)
}

/// Median wall time of `rounds` runs after one warm-up, with the device synchronised.
pub(super) fn median_seconds<B: ModelBackend>(
    device: &B::Device,
    rounds: usize,
    mut f: impl FnMut(),
) -> f64 {
    f();
    let mut times: Vec<f64> = (0..rounds.max(1))
        .map(|_| {
            let _ = B::sync(device);
            let start = Instant::now();
            f();
            let _ = B::sync(device);
            start.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}
