//! `grlo bench rollout`: rollout throughput of the built-in engine (continuous and static
//! batching) beside transformers' `generate` on the same requests, and the decoding step time
//! against the memory-bandwidth floor.
//!
//! The requests are a realistic length mix: prompts drawn (seeded, with repetition) from
//! `configs/data/grlo-train.jsonl` (the GRLO paper's prompts, verl's JSONL format), rendered
//! with the Qwen3 chat template and tokenised with the Qwen3 tokenizer; their ids are mapped
//! modulo the model's vocabulary (the bench models have smaller vocabularies than Qwen3's, and
//! random or tiny weights, so only the lengths matter). Each request's response limit is drawn
//! too: a quarter of them run to `--max-new-tokens` (responses cut at the limit, as in RL
//! rollouts), the rest are log-uniform between a sixteenth of it and all of it. Generation
//! samples at temperature 1.0 with no top-k / top-p and never stops at EOS, on both sides, so
//! every request produces exactly its limit and both sides produce the same tokens counts.
//!
//! A batch of `B` rows gets `B × --requests-per-row` requests (the first ones of one drawn
//! sequence), so continuous batching has waiting requests to refill finished rows with; static
//! batching and transformers take them in the same order, `B` at a time. transformers cannot
//! take a limit per row: each padded batch runs to its longest limit, and only the tokens each
//! request is entitled to count (tokens/s = useful tokens / wall time, prefill included).
//!
//! The floor of a decoding step is what it must read from memory, the weights (f32, the
//! embedding table only when it is also the LM head) and the KV cache at the rows' positions,
//! divided by this machine's copy bandwidth, measured in the same run (a large buffer copied
//! with the bench's thread count; bytes read + written per second, the STREAM "copy"
//! convention). The measured step is the mean of the engine steps that decoded without
//! admitting anything (prefill excluded; token choice included).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Args;
use grlo_model::backend::ModelBackend;
use grlo_model::{
    ChatMessage, Engine, EngineLimits, GenerationParams, Model, ModelConfig, Request,
    SamplingParams, StoredDtype, Tokenizer,
};
use serde::{Deserialize, Serialize};

use super::bench::bench_config;
use super::bench_long::last_line;
use crate::device::{DeviceArg, OnBackend, dispatch};

/// The tiny checkpoint `--config tiny` loads.
const TINY: &str = "fixtures/models/qwen3-tiny";
/// Bytes of one f32 weight or cache element.
const F32_BYTES: usize = 4;

#[derive(Debug, Args)]
pub struct BenchRolloutArgs {
    /// The model: `tiny` (fixtures/models/qwen3-tiny), a `grlo bench model` shape with random
    /// weights (`qwen3-25m`, `qwen3-0.6b`), or a model directory.
    #[arg(long, default_value = "tiny")]
    pub config: String,
    /// Rows generated together (comma-separated); one measurement per value.
    #[arg(long, value_delimiter = ',', default_value = "8,32,128")]
    pub batch: Vec<usize>,
    /// Requests per batch row: a batch of B rows gets B × this many requests.
    #[arg(long, default_value_t = 2)]
    pub requests_per_row: usize,
    /// The longest response; each request's limit is drawn up to it (see the module docs).
    #[arg(long, default_value_t = 96)]
    pub max_new_tokens: usize,
    /// The prompts: verl-format JSONL, a `prompt` list of chat messages per line.
    #[arg(long, default_value = "configs/data/grlo-train.jsonl")]
    pub data: PathBuf,
    /// The tokenizer (and chat template) the prompts are tokenised with.
    #[arg(long, default_value = "fixtures/qwen3-tokenizer")]
    pub tokenizer: PathBuf,
    /// Seed of the request draw and of the samples.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Compute device for grlo (the peer uses the matching torch device).
    #[arg(long, default_value = "cpu")]
    pub device: DeviceArg,
    /// Threads for both sides and the bandwidth copy (0: all cores). Sets RAYON_NUM_THREADS.
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Python interpreter for the transformers peer.
    #[arg(long, default_value = "python3")]
    pub peer: String,
    /// Skip the transformers peer.
    #[arg(long)]
    pub no_peer: bool,
    /// Size of the buffer copied to measure the memory bandwidth.
    #[arg(long, default_value_t = 512)]
    pub bandwidth_mib: usize,
    /// Print the results as JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// One request, the same on both sides.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RolloutRequest {
    pub prompt: Vec<u32>,
    pub max_new_tokens: usize,
    pub seed: u64,
}

/// A drawn request before tokenisation: which prompt, its response limit, its seed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Draw {
    prompt: usize,
    max_new_tokens: usize,
    seed: u64,
}

/// splitmix64: a small seeded stream for the draw (the same on every platform).
struct SplitMix(u64);

impl SplitMix {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The smallest response limit drawn for a cap of `max_new_tokens`.
fn shortest_limit(max_new_tokens: usize) -> usize {
    (max_new_tokens / 16).max(1)
}

/// `count` requests over `prompts` prompts: a prompt index drawn uniformly, a response limit
/// (a quarter at `max_new_tokens`, the rest log-uniform in [`shortest_limit`, `max_new_tokens`])
/// and a seed, the same for the same arguments.
fn draw(prompts: usize, count: usize, max_new_tokens: usize, seed: u64) -> Vec<Draw> {
    let mut rng = SplitMix(seed);
    let low = shortest_limit(max_new_tokens) as f64;
    let high = max_new_tokens as f64;
    (0..count)
        .map(|_| {
            let prompt = (rng.next_u64() % prompts as u64) as usize;
            let max_new_tokens = if rng.next_f64() < 0.25 {
                max_new_tokens
            } else {
                let limit = low * (high / low).powf(rng.next_f64());
                (limit.round() as usize).clamp(low as usize, max_new_tokens)
            };
            Draw {
                prompt,
                max_new_tokens,
                seed: rng.next_u64(),
            }
        })
        .collect()
}

/// The chat messages of every line of a verl-format JSONL file.
fn read_prompts(path: &Path) -> anyhow::Result<Vec<Vec<ChatMessage>>> {
    #[derive(Deserialize)]
    struct Line {
        prompt: Vec<ChatMessage>,
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("failed to read prompts from {}", path.display()))?;
    let prompts: Vec<Vec<ChatMessage>> = text
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            serde_json::from_str::<Line>(line)
                .map(|l| l.prompt)
                .with_context(|| format!("{}:{}: not a verl prompt line", path.display(), i + 1))
        })
        .collect::<anyhow::Result<_>>()?;
    if prompts.is_empty() {
        bail!("no prompts in {}", path.display());
    }
    Ok(prompts)
}

/// Tokenises the drawn prompts with the chat template, maps their ids modulo `vocab` and keeps
/// at most `max_positions - max_new_tokens` of their last tokens (so every row fits the model).
fn requests(
    draws: &[Draw],
    prompts: &[Vec<ChatMessage>],
    tokenizer: &Tokenizer,
    vocab: usize,
    max_positions: usize,
) -> anyhow::Result<Vec<RolloutRequest>> {
    let mut encoded: Vec<Option<Vec<u32>>> = vec![None; prompts.len()];
    draws
        .iter()
        .map(|d| {
            let ids = match &encoded[d.prompt] {
                Some(ids) => ids.clone(),
                None => {
                    let ids = tokenizer
                        .encode_chat(&prompts[d.prompt], true)
                        .with_context(|| format!("failed to tokenise prompt {}", d.prompt))?;
                    encoded[d.prompt] = Some(ids.clone());
                    ids
                }
            };
            let room = max_positions.saturating_sub(d.max_new_tokens).max(1);
            let start = ids.len().saturating_sub(room);
            Ok(RolloutRequest {
                prompt: ids[start..].iter().map(|&id| id % vocab as u32).collect(),
                max_new_tokens: d.max_new_tokens,
                seed: d.seed,
            })
        })
        .collect()
}

/// The memory a decoding step must read: the weights, and the KV cache per cached position.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct StepBytes {
    pub weights: usize,
    pub kv_per_position: usize,
}

impl StepBytes {
    /// f32 weights, without the embedding table when the LM head is a separate matrix (a step
    /// reads only the rows' embeddings then); keys and values of every layer per position.
    fn of(config: &ModelConfig, parameters: usize) -> Self {
        let embedding = if config.tie_word_embeddings {
            0
        } else {
            config.vocab_size * config.hidden_size
        };
        StepBytes {
            weights: (parameters - embedding) * F32_BYTES,
            kv_per_position: config.num_hidden_layers
                * 2
                * config.num_key_value_heads
                * config.head_dim
                * F32_BYTES,
        }
    }

    /// Seconds a step over `rows` rows of `mean_keys` cached positions each takes at least, at
    /// `bandwidth` bytes per second.
    fn floor_seconds(&self, rows: f64, mean_keys: f64, bandwidth: f64) -> f64 {
        (self.weights as f64 + rows * mean_keys * self.kv_per_position as f64) / bandwidth
    }
}

/// Bytes read + written per second copying a `mib` MiB buffer with `threads` threads (the best
/// of five copies after one that touches the pages).
fn copy_bandwidth(mib: usize, threads: usize) -> f64 {
    let len = mib.max(1) << 20;
    let src = vec![1u8; len];
    let mut dst = vec![0u8; len];
    let chunk = len.div_ceil(threads.max(1));
    let mut best = f64::INFINITY;
    for round in 0..6 {
        let start = Instant::now();
        std::thread::scope(|scope| {
            for (d, s) in dst.chunks_mut(chunk).zip(src.chunks(chunk)) {
                scope.spawn(move || d.copy_from_slice(s));
            }
        });
        let seconds = start.elapsed().as_secs_f64();
        std::hint::black_box(&dst);
        if round > 0 {
            best = best.min(seconds);
        }
    }
    2.0 * len as f64 / best
}

/// One engine run over a batch size's requests.
#[derive(Clone, Debug, Default, Serialize)]
pub struct EngineRun {
    pub seconds: f64,
    pub useful_tokens: usize,
    pub tokens_per_s: f64,
    pub prefill_passes: usize,
    /// Steps that decoded without admitting anything, and their total time.
    pub decode_steps: usize,
    pub decode_seconds: f64,
    /// Mean rows of those steps, and mean cached positions a row's attention read.
    pub mean_rows: f64,
    pub mean_keys: f64,
}

impl EngineRun {
    fn step_seconds(&self) -> f64 {
        self.decode_seconds / self.decode_steps.max(1) as f64
    }
}

/// Runs `requests` through the engine with `batch` rows; times each step.
fn run_engine<B: ModelBackend>(
    model: &Model<B>,
    requests: &[RolloutRequest],
    batch: usize,
    continuous: bool,
) -> anyhow::Result<EngineRun> {
    let device = model.device();
    let longest_prompt = requests.iter().map(|r| r.prompt.len()).max().unwrap_or(1);
    let limits = EngineLimits {
        max_batch_rows: batch,
        max_cache_tokens: usize::MAX,
        // A whole batch of prompts prefills in one pass, as transformers' batches do.
        max_prefill_tokens: batch * longest_prompt,
        continuous,
    };
    let mut engine = Engine::new(model, limits)?;
    for r in requests {
        engine.submit(Request {
            prompt: r.prompt.clone(),
            params: GenerationParams {
                sampling: SamplingParams::default(), // temperature 1.0, no top-k / top-p
                max_new_tokens: r.max_new_tokens,
                n: 1,
                stop_token_ids: Vec::new(),
                top_logprobs: 0,
            },
            seed: r.seed,
        })?;
    }
    let mut generated = vec![0usize; requests.len()];
    let mut run = EngineRun {
        useful_tokens: requests.iter().map(|r| r.max_new_tokens).sum(),
        ..EngineRun::default()
    };
    let (mut rows, mut keys) = (0usize, 0usize);
    let _ = B::sync(&device);
    let start = Instant::now();
    while !engine.is_idle() {
        let before = engine.stats();
        let step_start = Instant::now();
        let out = engine.step()?;
        let _ = B::sync(&device);
        let seconds = step_start.elapsed().as_secs_f64();
        let after = engine.stats();
        let mut step_keys = 0;
        for event in &out.tokens {
            generated[event.request] += 1;
            if event.finished.is_none() {
                // This row's next step feeds its newest token and attends to every position.
                step_keys += requests[event.request].prompt.len() + generated[event.request];
            }
        }
        if after.decode_steps > before.decode_steps && after.prefill_passes == before.prefill_passes
        {
            run.decode_steps += 1;
            run.decode_seconds += seconds;
            rows += engine.running_rows();
            keys += step_keys;
        }
    }
    run.seconds = start.elapsed().as_secs_f64();
    run.prefill_passes = engine.stats().prefill_passes;
    let counted: usize = generated.iter().sum();
    if counted != run.useful_tokens {
        bail!(
            "the engine generated {counted} tokens, the requests are entitled to {}",
            run.useful_tokens
        );
    }
    run.tokens_per_s = run.useful_tokens as f64 / run.seconds;
    run.mean_rows = rows as f64 / run.decode_steps.max(1) as f64;
    run.mean_keys = keys as f64 / rows.max(1) as f64;
    Ok(run)
}

/// Where the model comes from.
enum Source {
    /// A checkpoint directory (the peer loads the same directory).
    Dir(PathBuf),
    /// A bench shape with random weights (seed 0), written to `save` for the peer.
    Random {
        config: ModelConfig,
        save: Option<PathBuf>,
    },
}

/// grlo's side: every batch size, continuous then static.
struct GrloSide {
    source: Source,
    plans: Vec<(usize, Vec<RolloutRequest>)>,
}

struct GrloResults {
    parameters: usize,
    config: ModelConfig,
    runs: Vec<(EngineRun, EngineRun)>,
}

impl OnBackend for GrloSide {
    type Output = GrloResults;

    fn run<B: ModelBackend>(self, device: B::Device) -> anyhow::Result<GrloResults> {
        let model = match &self.source {
            Source::Dir(dir) => Model::<B>::load(dir, &device)
                .with_context(|| format!("failed to load the model from {}", dir.display()))?,
            Source::Random { config, save } => {
                let model = Model::<B>::random(config.clone(), 0, &device);
                if let Some(dir) = save {
                    model
                        .save(dir, StoredDtype::F32, usize::MAX)
                        .with_context(|| {
                            format!("failed to save the weights to {}", dir.display())
                        })?;
                }
                model
            }
        };
        let mut runs = Vec::new();
        for (batch, requests) in &self.plans {
            // Warm-up: one short batch of this shape on each mode.
            let warm: Vec<RolloutRequest> = requests
                .iter()
                .take(*batch)
                .map(|r| RolloutRequest {
                    max_new_tokens: r.max_new_tokens.min(4),
                    ..r.clone()
                })
                .collect();
            eprintln!("[bench] batch {batch}: grlo continuous");
            run_engine(&model, &warm, *batch, true)?;
            let continuous = run_engine(&model, requests, *batch, true)?;
            eprintln!("[bench] batch {batch}: grlo static");
            run_engine(&model, &warm, *batch, false)?;
            let fixed = run_engine(&model, requests, *batch, false)?;
            runs.push((continuous, fixed));
        }
        Ok(GrloResults {
            parameters: model.num_parameters(),
            config: model.config.clone(),
            runs,
        })
    }
}

/// What the peer measured for one batch size.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct PeerRun {
    pub seconds: f64,
    pub useful_tokens: usize,
    pub generated_tokens: usize,
}

#[derive(Debug, Serialize)]
pub struct Row {
    pub batch: usize,
    pub requests: usize,
    pub continuous: EngineRun,
    #[serde(rename = "static")]
    pub fixed: EngineRun,
    pub transformers: Option<PeerRun>,
    pub transformers_tokens_per_s: Option<f64>,
    /// ours continuous / transformers tokens/s.
    pub ratio: Option<f64>,
    /// Decoding step floors (seconds) of the continuous and static runs.
    pub continuous_floor_s: f64,
    pub static_floor_s: f64,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub config: String,
    pub parameters: usize,
    pub threads: usize,
    pub prompt_tokens_mean: f64,
    pub max_new_tokens: usize,
    pub bandwidth_bytes_per_s: f64,
    pub step_bytes: StepBytes,
    pub rows: Vec<Row>,
}

/// A path relative to the repository root, found from the working directory or the source tree.
fn repo_path(path: &Path) -> PathBuf {
    if path.is_absolute() || path.exists() {
        return path.to_path_buf();
    }
    let beside = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    if beside.exists() {
        beside
    } else {
        path.to_path_buf()
    }
}

pub fn run(args: BenchRolloutArgs) -> anyhow::Result<String> {
    let threads = crate::cli::bench::use_threads(args.threads);
    if args.batch.is_empty() || args.batch.contains(&0) {
        bail!("--batch needs row counts above 0");
    }
    if args.max_new_tokens == 0 || args.requests_per_row == 0 {
        bail!("--max-new-tokens and --requests-per-row must be above 0");
    }
    let peer = (!args.no_peer)
        .then(|| check_peer(&args.peer))
        .transpose()?;
    let work = tempfile::tempdir().context("failed to create a temporary directory")?;
    let (source, peer_model, config) = if args.config == "tiny" || Path::new(&args.config).is_dir()
    {
        let dir = repo_path(Path::new(if args.config == "tiny" {
            TINY
        } else {
            &args.config
        }));
        let config = ModelConfig::from_file(&dir.join("config.json"))
            .with_context(|| format!("failed to read {}/config.json", dir.display()))?;
        (Source::Dir(dir.clone()), dir, config)
    } else {
        let (json, _) = bench_config(&args.config)?;
        let config = ModelConfig::from_json_str(json, Path::new(&args.config))?;
        let dir = work.path().join("model");
        let save = peer.is_some().then(|| dir.clone());
        let source = Source::Random {
            config: config.clone(),
            save,
        };
        (source, dir, config)
    };
    if args.max_new_tokens >= config.max_position_embeddings {
        bail!(
            "--max-new-tokens {} leaves no room for a prompt in the model's {} positions",
            args.max_new_tokens,
            config.max_position_embeddings
        );
    }

    let prompts = read_prompts(&repo_path(&args.data))?;
    let tokenizer_dir = repo_path(&args.tokenizer);
    let tokenizer = Tokenizer::from_dir(&tokenizer_dir).with_context(|| {
        format!(
            "failed to load the tokenizer from {}",
            tokenizer_dir.display()
        )
    })?;
    let most = args.batch.iter().max().expect("a batch") * args.requests_per_row;
    let draws = draw(prompts.len(), most, args.max_new_tokens, args.seed);
    let all = requests(
        &draws,
        &prompts,
        &tokenizer,
        config.vocab_size,
        config.max_position_embeddings,
    )?;
    let prompt_tokens_mean =
        all.iter().map(|r| r.prompt.len()).sum::<usize>() as f64 / all.len() as f64;
    let plans: Vec<(usize, Vec<RolloutRequest>)> = args
        .batch
        .iter()
        .map(|&b| (b, all[..b * args.requests_per_row].to_vec()))
        .collect();

    eprintln!("[bench] copy bandwidth ({} MiB)", args.bandwidth_mib);
    let bandwidth = copy_bandwidth(args.bandwidth_mib, threads);
    eprintln!(
        "[bench] {}: grlo on {:?}, {threads} threads",
        args.config, args.device
    );
    let ours = dispatch(
        &args.device,
        GrloSide {
            source,
            plans: plans.clone(),
        },
    )?;
    let peer_runs = match &peer {
        Some(python) => {
            eprintln!("[bench] {}: transformers peer", args.config);
            Some(run_peer(
                python,
                &args,
                &peer_model,
                &plans,
                threads,
                work.path(),
            )?)
        }
        None => None,
    };
    let step_bytes = StepBytes::of(&ours.config, ours.parameters);
    let rows = plans
        .iter()
        .zip(ours.runs)
        .map(|((batch, requests), (continuous, fixed))| {
            let transformers = peer_runs
                .as_ref()
                .and_then(|p| p.get(&batch.to_string()))
                .cloned();
            let peer_tokens_per_s = transformers
                .as_ref()
                .map(|p| p.useful_tokens as f64 / p.seconds);
            let floor =
                |r: &EngineRun| step_bytes.floor_seconds(r.mean_rows, r.mean_keys, bandwidth);
            Row {
                batch: *batch,
                requests: requests.len(),
                continuous_floor_s: floor(&continuous),
                static_floor_s: floor(&fixed),
                ratio: peer_tokens_per_s.map(|p| continuous.tokens_per_s / p),
                continuous,
                fixed,
                transformers,
                transformers_tokens_per_s: peer_tokens_per_s,
            }
        })
        .collect();
    let report = Report {
        config: args.config.clone(),
        parameters: ours.parameters,
        threads,
        prompt_tokens_mean,
        max_new_tokens: args.max_new_tokens,
        bandwidth_bytes_per_s: bandwidth,
        step_bytes,
        rows,
    };
    if args.json {
        return Ok(serde_json::to_string(&report)?);
    }
    Ok(tables(&report, &args, ours.config.vocab_size))
}

fn tables(report: &Report, args: &BenchRolloutArgs, vocab: usize) -> String {
    let mut out = format!(
        "rollout: {} ({:.1}M parameters), device {:?}, {} threads; {} requests per row\n",
        report.config,
        report.parameters as f64 / 1e6,
        args.device,
        report.threads,
        args.requests_per_row
    );
    out += &format!(
        "prompts: {} (Qwen3 chat template, ids mod {vocab}), mean {:.1} tokens; response limits: \
         1/4 at {}, the rest log-uniform in [{}, {}]; temperature 1.0, no EOS\n",
        args.data.display(),
        report.prompt_tokens_mean,
        report.max_new_tokens,
        shortest_limit(report.max_new_tokens),
        report.max_new_tokens
    );
    out += "tokens/s = tokens the requests are entitled to / wall time (prefill included); \
            transformers runs each padded batch to its longest limit, its extra tokens not counted\n";
    out += &format!(
        "{:>6} {:>9} {:>8} {:>12} {:>12} {:>13} {:>9} {:>12}\n",
        "batch",
        "requests",
        "tokens",
        "continuous",
        "static",
        "transformers",
        "cont/tf",
        "cont/static"
    );
    for r in &report.rows {
        let peer = r
            .transformers_tokens_per_s
            .map_or("-".into(), |p| format!("{p:.1}"));
        let ratio = r.ratio.map_or("-".into(), |x| format!("{x:.2}"));
        out += &format!(
            "{:>6} {:>9} {:>8} {:>12.1} {:>12.1} {:>13} {:>9} {:>12.2}\n",
            r.batch,
            r.requests,
            r.continuous.useful_tokens,
            r.continuous.tokens_per_s,
            r.fixed.tokens_per_s,
            peer,
            ratio,
            r.continuous.tokens_per_s / r.fixed.tokens_per_s
        );
    }
    out += &format!(
        "\ndecode step vs memory floor: copy bandwidth {:.1} GB/s ({} MiB, {} threads); per step \
         {:.2} MB of f32 weights + {} B of KV cache per cached position and row\n",
        report.bandwidth_bytes_per_s / 1e9,
        args.bandwidth_mib,
        report.threads,
        report.step_bytes.weights as f64 / 1e6,
        report.step_bytes.kv_per_position
    );
    out += &format!(
        "{:>6} {:>11} {:>7} {:>10} {:>10} {:>10} {:>10} {:>11}\n",
        "batch", "mode", "steps", "mean rows", "mean keys", "step ms", "floor ms", "step/floor"
    );
    for r in &report.rows {
        for (mode, run, floor) in [
            ("continuous", &r.continuous, r.continuous_floor_s),
            ("static", &r.fixed, r.static_floor_s),
        ] {
            out += &format!(
                "{:>6} {:>11} {:>7} {:>10.1} {:>10.1} {:>10.3} {:>10.3} {:>11.1}\n",
                r.batch,
                mode,
                run.decode_steps,
                run.mean_rows,
                run.mean_keys,
                run.step_seconds() * 1e3,
                floor * 1e3,
                run.step_seconds() / floor
            );
        }
    }
    out.trim_end().to_string()
}

/// Checks that `python` runs and has torch and transformers, before anything is measured.
fn check_peer(python: &str) -> anyhow::Result<String> {
    let output = Command::new(python)
        .args(["-c", "import torch, transformers"])
        .output()
        .with_context(|| {
            format!(
                "failed to start the peer with {python} (is python installed? --no-peer skips it)"
            )
        })?;
    if !output.status.success() {
        bail!(
            "{python} cannot import torch and transformers (pip install torch transformers, or \
             --no-peer to skip the peer): {}",
            last_line(&output.stderr)
        );
    }
    Ok(python.to_string())
}

/// Runs `bench/peer_rollout.py` over every batch size's requests; its runs by batch size.
fn run_peer(
    python: &str,
    args: &BenchRolloutArgs,
    model: &Path,
    plans: &[(usize, Vec<RolloutRequest>)],
    threads: usize,
    work: &Path,
) -> anyhow::Result<HashMap<String, PeerRun>> {
    #[derive(Serialize)]
    struct Plan<'a> {
        batch: usize,
        requests: &'a [RolloutRequest],
    }
    let plan: Vec<Plan> = plans
        .iter()
        .map(|(batch, requests)| Plan {
            batch: *batch,
            requests,
        })
        .collect();
    let requests_path = work.join("requests.json");
    std::fs::write(&requests_path, serde_json::to_string(&plan)?)
        .with_context(|| format!("failed to write {}", requests_path.display()))?;
    let script = repo_path(Path::new("bench/peer_rollout.py"));
    if !script.is_file() {
        bail!("bench/peer_rollout.py not found: run from the repository root");
    }
    let device = match args.device {
        DeviceArg::Cpu => "cpu".to_string(),
        DeviceArg::Cuda(i) => format!("cuda:{i}"),
    };
    let output = Command::new(python)
        .arg(&script)
        .arg("--model")
        .arg(model)
        .arg("--requests")
        .arg(&requests_path)
        .args(["--threads", &threads.to_string()])
        .args(["--device", &device])
        .args(["--seed", &args.seed.to_string()])
        .output()
        .with_context(|| format!("failed to start the peer with {python}"))?;
    if !output.status.success() {
        bail!(
            "the transformers peer failed ({}; --no-peer skips it): {}",
            output.status,
            last_line(&output.stderr)
        );
    }
    #[derive(Deserialize)]
    struct Printed {
        batches: HashMap<String, PeerRun>,
    }
    let printed: Printed = serde_json::from_slice(&output.stdout)
        .context("the transformers peer printed no JSON with its batches")?;
    Ok(printed.batches)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_draw_is_deterministic_and_within_bounds() {
        let a = draw(1000, 512, 96, 7);
        assert_eq!(a, draw(1000, 512, 96, 7));
        assert_ne!(a, draw(1000, 512, 96, 8));
        assert!(a.iter().all(|d| d.prompt < 1000));
        assert!(a.iter().all(|d| (6..=96).contains(&d.max_new_tokens)));
        // A quarter at the cap (plus the log-uniform draws that round to it), a spread below.
        let at_cap = a.iter().filter(|d| d.max_new_tokens == 96).count();
        assert!((100..=180).contains(&at_cap), "{at_cap} of 512 at the cap");
        assert!(a.iter().any(|d| d.max_new_tokens < 12));
        // Log-uniform in [6, 96]: the median of the rest is near sqrt(6 * 96) = 24.
        let mut rest: Vec<usize> = a
            .iter()
            .map(|d| d.max_new_tokens)
            .filter(|&l| l < 96)
            .collect();
        rest.sort_unstable();
        let median = rest[rest.len() / 2];
        assert!((18..=32).contains(&median), "median {median}");
        // Requests of a smaller batch are the first of the larger one's.
        assert_eq!(draw(1000, 16, 96, 7), a[..16]);
    }

    #[test]
    fn the_prompts_are_the_training_files_chat_templated_and_mapped_into_the_vocab() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let prompts = read_prompts(&root.join("configs/data/grlo-train.jsonl")).unwrap();
        assert_eq!(prompts.len(), 1000);
        let tokenizer = Tokenizer::from_dir(&root.join("fixtures/qwen3-tokenizer")).unwrap();
        let draws = draw(prompts.len(), 8, 64, 0);
        let ours = requests(&draws, &prompts, &tokenizer, 1024, 512).unwrap();
        for (d, r) in draws.iter().zip(&ours) {
            let full = tokenizer.encode_chat(&prompts[d.prompt], true).unwrap();
            let mapped: Vec<u32> = full.iter().map(|id| id % 1024).collect();
            assert_eq!(r.prompt, mapped);
            assert_eq!((r.max_new_tokens, r.seed), (d.max_new_tokens, d.seed));
            // The file's chat-templated prompts are 43 to 239 Qwen3 tokens long.
            assert!((43..=239).contains(&r.prompt.len()), "{}", r.prompt.len());
        }
        // A prompt longer than the room the response leaves keeps its last tokens.
        let cut = requests(&draws[..1], &prompts, &tokenizer, 1024, 64 + 10).unwrap();
        assert_eq!(cut[0].prompt.len(), 74 - draws[0].max_new_tokens);
        assert!(ours[0].prompt.ends_with(&cut[0].prompt));
    }

    #[test]
    fn the_floor_is_the_bytes_read_over_the_bandwidth() {
        let json = r#"{"model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"],
          "vocab_size": 1000, "hidden_size": 64, "intermediate_size": 128,
          "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2,
          "head_dim": 16, "max_position_embeddings": 256, "tie_word_embeddings": false}"#;
        let config = ModelConfig::from_json_str(json, Path::new("test")).unwrap();
        let bytes = StepBytes::of(&config, 200_000);
        // 200000 - 1000 * 64 untied embedding parameters, 4 bytes each.
        assert_eq!(bytes.weights, 544_000);
        // 3 layers × (keys + values) × 2 heads × 16 dims × 4 bytes.
        assert_eq!(bytes.kv_per_position, 768);
        // (544000 + 8 rows × 100 positions × 768) / 1e9 B/s = 1.1584 ms.
        let floor = bytes.floor_seconds(8.0, 100.0, 1e9);
        assert!((floor - 1.1584e-3).abs() < 1e-12, "{floor}");
        let tied = ModelConfig {
            tie_word_embeddings: true,
            ..config
        };
        assert_eq!(StepBytes::of(&tied, 200_000).weights, 800_000);
    }
}
