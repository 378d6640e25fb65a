//! `grlo eval`: a model on the benchmarks of the GRLO paper's transfer claim, generated with
//! the actors' engines (the built-in one, or any OpenAI-compatible server) and scored as the
//! standard harnesses score; `grlo eval score` scores given responses without generating.

mod generate;
mod judge;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use grlo_eval::benchmark::{self, Benchmark, Format};
use grlo_eval::ifeval::Python;
use grlo_eval::sandbox::Sandbox;
use grlo_eval::{Options, Report};
use grlo_learner::evaluation::{BenchmarkSpec, Prompting, run_benchmark};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use crate::device::DeviceArg;

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct EvalArgs {
    #[command(subcommand)]
    pub command: Option<EvalCommand>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Subcommand)]
pub enum EvalCommand {
    /// Score given responses (`{"id": ..., "response": "..."}` lines) without generating.
    Score(ScoreArgs),
}

/// Where the benchmark data and the scoring helpers come from.
#[derive(Debug, Args)]
pub struct ScoringArgs {
    /// The benchmark data (from `scripts/fetch-eval-data.sh DIR`).
    #[arg(
        long = "data",
        env = "GRLO_EVAL_DATA",
        default_value = "target/eval-data"
    )]
    pub data: PathBuf,
    /// A Bradley–Terry reward model judging alpacaeval, arenahard and mtbench (a directory
    /// or object store URL).
    #[arg(long)]
    pub judge: Option<String>,
    /// The device of the judge.
    #[arg(long, default_value = "cpu")]
    pub judge_device: String,
    /// Programs of code benchmarks run at once in the sandbox (default: the CPU count).
    #[arg(long)]
    pub parallel: Option<usize>,
    /// The Python interpreter of the sandbox (default: one its unprivileged user can run).
    #[arg(long)]
    pub python: Option<PathBuf>,
    /// Run code without isolation where the sandbox cannot provide it (it refuses otherwise).
    #[arg(long)]
    pub allow_unconfined: bool,
    /// A Python with `nltk` (punkt_tab data) and `langdetect`: IFEval's sentence counting,
    /// word tokenizing and language detection run through it, as lm-eval does them (default:
    /// `python3` when it has them; otherwise Rust approximations, and the output says so).
    #[arg(long, env = "GRLO_IFEVAL_PYTHON")]
    pub ifeval_python: Option<PathBuf>,
    /// pass@k for these k beyond 1 (needs --n ≥ k samples).
    #[arg(long = "pass-at", value_delimiter = ',')]
    pub pass_at: Vec<usize>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The model: a checkpoint directory or object store URL (its tokenizer and chat template
    /// render the prompts; with --engine builtin it also generates).
    #[arg(long)]
    pub model: Option<String>,
    /// Comma-separated benchmarks, each optionally `name:N` (its first N items).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "gsm8k,math500,humaneval,mbpp,ifeval,alpacaeval,arenahard,mtbench"
    )]
    pub benchmarks: Vec<String>,
    /// At most this many items of each benchmark.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Per-item results (`<benchmark>.jsonl`) and `summary.json` go here.
    #[arg(long, default_value = "eval-results")]
    pub out: PathBuf,
    /// `chat` (the model's chat template) or `base` (the harnesses' few-shot plain text).
    #[arg(long, default_value = "chat")]
    pub format: String,
    /// `builtin` (this process, on --device) or `openai` (servers at --endpoint).
    #[arg(long, default_value = "builtin")]
    pub engine: String,
    /// An OpenAI-compatible server (repeatable): vLLM, SGLang, `grlo serve`, llama.cpp.
    #[arg(long = "endpoint")]
    pub endpoints: Vec<String>,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[arg(long, default_value_t = 1024)]
    pub max_new_tokens: usize,
    /// 0 is greedy (the default, as the harnesses generate).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Samples per item.
    #[arg(long, default_value_t = 1)]
    pub n: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Most sequences generated together by the built-in engine.
    #[arg(long, default_value_t = 32)]
    pub max_batch_rows: usize,
    #[command(flatten)]
    pub scoring: ScoringArgs,
}

#[derive(Debug, Args)]
pub struct ScoreArgs {
    #[arg(long)]
    pub benchmark: String,
    /// JSON lines: `{"id": ..., "response": "..."}` (or `"turns"` / `"responses"` lists).
    #[arg(long)]
    pub responses: PathBuf,
    /// Print `{"benchmark", "metrics", "items"}` instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub scoring: ScoringArgs,
}

pub fn run(args: EvalArgs) -> anyhow::Result<String> {
    match args.command {
        Some(EvalCommand::Score(score)) => run_score(score),
        None => run_eval(args.run),
    }
}

/// The scoring context of the benchmarks in `benchmarks`: a sandbox for code, a judge for
/// judged ones; built once, only when needed.
struct Scorers {
    sandbox: Option<Sandbox>,
    python: Option<Python>,
    judge: Option<Box<dyn grlo_eval::judge::Judge>>,
    parallel: usize,
    ks: Vec<usize>,
    notes: Vec<String>,
}

impl Scorers {
    fn new(
        args: &ScoringArgs,
        benchmarks: &[Benchmark],
        model: Option<&str>,
    ) -> anyhow::Result<Self> {
        use grlo_eval::benchmark::Kind;
        let mut notes = Vec::new();
        let sandbox = if benchmarks.iter().any(|b| b.kind() == Kind::Code) {
            let sandbox = generate::sandbox(args)?;
            notes.push(format!(
                "code runs in the sandbox: {}",
                generate::isolation(&sandbox)
            ));
            Some(sandbox)
        } else {
            None
        };
        let python = if benchmarks.contains(&Benchmark::IfEval) {
            ifeval_python(args.ifeval_python.as_deref(), &mut notes)?
        } else {
            None
        };
        let judged: Vec<&str> = benchmarks
            .iter()
            .filter(|b| b.kind() == Kind::Judged)
            .map(|b| b.name())
            .collect();
        let judge = match (&args.judge, judged.is_empty()) {
            (_, true) => None,
            (None, false) => bail!(
                "{} are judged by a reward model: give one with --judge DIR (or leave them out of --benchmarks)",
                judged.join(", ")
            ),
            (Some(location), false) => {
                if let Some(warning) = judge::trained_on(location, model) {
                    eprintln!("warning: {warning}");
                    notes.push(warning);
                }
                Some(judge::load(location, &args.judge_device)?)
            }
        };
        Ok(Scorers {
            sandbox,
            python,
            judge,
            parallel: args
                .parallel
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get())),
            ks: args.pass_at.clone(),
            notes,
        })
    }

    fn options(&self) -> Options<'_> {
        Options {
            sandbox: self.sandbox.as_ref(),
            judge: self.judge.as_deref(),
            python: self.python.as_ref(),
            ks: self.ks.clone(),
            parallel: self.parallel,
        }
    }
}

/// The Python of IFEval's two library checks: the one named (which must have the libraries),
/// else `python3` if it has them, else none (the checks are approximated, and a note says so).
fn ifeval_python(
    explicit: Option<&Path>,
    notes: &mut Vec<String>,
) -> anyhow::Result<Option<Python>> {
    match Python::find(explicit) {
        Ok(python) => Ok(Some(python)),
        Err(e) if explicit.is_some() => bail!("--ifeval-python: {e}"),
        Err(e) => {
            notes.push(format!("ifeval: {e}"));
            Ok(None)
        }
    }
}

fn run_score(args: ScoreArgs) -> anyhow::Result<String> {
    let benchmark = Benchmark::from_name(&args.benchmark)?;
    let items = benchmark::load(benchmark, &args.scoring.data)?;
    let text = std::fs::read_to_string(&args.responses)
        .with_context(|| format!("reading {}", args.responses.display()))?;
    let source = args.responses.display().to_string();
    let (items, samples) = grlo_eval::score::read_responses(benchmark, &items, &text, &source)?;
    let scorers = Scorers::new(&args.scoring, &[benchmark], None)?;
    let mut report = grlo_eval::score::score(benchmark, &items, &samples, &scorers.options())?;
    report.notes.extend(scorers.notes.iter().cloned());
    if args.json {
        let mut value = report.to_json();
        value["items_scored"] = json!(items.len());
        return Ok(serde_json::to_string(&value)?);
    }
    Ok(table(&[(&report, items.len())]))
}

fn run_eval(args: RunArgs) -> anyhow::Result<String> {
    let started = Instant::now();
    let Some(model) = args.model.clone() else {
        bail!("give the model to evaluate with --model DIR|URL");
    };
    let format = Format::from_name(&args.format)?;
    let specs = args
        .benchmarks
        .iter()
        .filter(|b| !b.trim().is_empty())
        .map(|b| BenchmarkSpec::parse(b.trim()).map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if specs.is_empty() {
        bail!("--benchmarks names no benchmark");
    }
    // Every benchmark's data before any generation: a missing file fails at once.
    let mut work = Vec::new();
    for spec in &specs {
        let mut items = benchmark::load(spec.benchmark, &args.scoring.data)?;
        let limit = spec.limit.into_iter().chain(args.limit).min();
        if let Some(limit) = limit {
            items.truncate(limit);
        }
        work.push((spec.benchmark, items));
    }
    let benchmarks: Vec<Benchmark> = work.iter().map(|(b, _)| *b).collect();
    let scorers = Scorers::new(&args.scoring, &benchmarks, Some(&model))?;
    let device: DeviceArg = args.device.parse().map_err(anyhow::Error::msg)?;
    let generator = generate::Generator::open(&args, &model, &device)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;

    let total: usize = work.iter().map(|(_, items)| items.len()).sum();
    let progress = progress_bar(total as u64);
    let prompting = Prompting {
        format,
        n: args.n.max(1),
        max_prompt_tokens: generator.max_prompt_tokens(args.max_new_tokens),
    };
    let mut reports = Vec::new();
    let mut summary = BTreeMap::new();
    for (benchmark, items) in &work {
        progress.set_message(benchmark.name());
        let bench_started = Instant::now();
        let tokenizer = generator.tokenizer.clone();
        let mut generate = |prompts: &[Vec<u32>], n: usize| {
            let out = generator.generate(prompts, n);
            if n > 0 {
                progress.inc(prompts.len() as u64);
            }
            out
        };
        let outcome = run_benchmark(
            *benchmark,
            items,
            &tokenizer,
            &prompting,
            &mut generate,
            &scorers.options(),
        )?;
        let mut report = outcome.report;
        if outcome.truncated > 0 {
            report.notes.push(format!(
                "{}: {} prompts were longer than {} tokens and kept their last ones",
                benchmark.name(),
                outcome.truncated,
                prompting.max_prompt_tokens
            ));
        }
        write_items(&args.out, &report, &outcome.transcripts)?;
        summary.insert(
            benchmark.name().to_string(),
            json!({
                "items": items.len(),
                "metrics": report.metrics,
                "notes": report.notes,
                "seconds": bench_started.elapsed().as_secs_f64(),
            }),
        );
        reports.push((report, items.len()));
    }
    progress.finish_and_clear();
    let summary = json!({
        "model": model,
        "engine": args.engine,
        "endpoints": args.endpoints,
        "format": args.format,
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "n": args.n,
        "benchmarks": summary,
        "notes": scorers.notes,
        "seconds": started.elapsed().as_secs_f64(),
    });
    let path = args.out.join("summary.json");
    std::fs::write(&path, serde_json::to_string_pretty(&summary)?)
        .with_context(|| format!("writing {}", path.display()))?;
    let rows: Vec<(&Report, usize)> = reports.iter().map(|(r, n)| (r, *n)).collect();
    let mut text = table(&rows);
    for note in &scorers.notes {
        text.push_str(&format!("\nnote: {note}"));
    }
    text.push_str(&format!("\nresults in {}", args.out.display()));
    Ok(text)
}

fn progress_bar(total: u64) -> ProgressBar {
    let bar = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        ProgressBar::new(total)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{msg:>10} [{bar:40}] {pos}/{len} prompts {elapsed}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar
}

/// `<out>/<benchmark>.jsonl`: each item's result with its prompts and answers.
fn write_items(
    out: &Path,
    report: &Report,
    transcripts: &[grlo_learner::evaluation::Transcript],
) -> anyhow::Result<()> {
    let mut text = String::new();
    for (item, transcript) in report.items.iter().zip(transcripts) {
        let mut line = item.clone();
        line["prompts"] = json!(transcript.prompts);
        line["responses"] = json!(transcript.samples);
        text.push_str(&serde_json::to_string(&line)?);
        text.push('\n');
    }
    let path = out.join(format!("{}.jsonl", report.benchmark.name()));
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
}

/// The benchmarks' metrics as an aligned table, then their notes.
fn table(reports: &[(&Report, usize)]) -> String {
    let mut lines = vec![format!(
        "{:<11} {:>6}  {:<26} {:>8}",
        "benchmark", "items", "metric", "value"
    )];
    let mut notes = Vec::new();
    for (report, items) in reports {
        for (i, (metric, value)) in report.metrics.iter().enumerate() {
            let (name, count) = if i == 0 {
                (report.benchmark.name().to_string(), items.to_string())
            } else {
                (String::new(), String::new())
            };
            lines.push(format!("{name:<11} {count:>6}  {metric:<26} {value:>8.4}"));
        }
        notes.extend(report.notes.iter().cloned());
    }
    for note in notes {
        lines.push(format!("note: {note}"));
    }
    lines.join("\n")
}
