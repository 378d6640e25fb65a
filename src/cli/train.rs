//! `grlo train`: the whole GRLO loop in one process (generate, score, train, repeat), on the
//! embedded tiny default or a TOML configuration.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::Context;
use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing;
use burn::tensor::backend::Backend;
use clap::Args;
use grlo_learner::{StepMetrics, TrainConfig, Trainer};
use indicatif::{ProgressBar, ProgressStyle};

use crate::device::{DeviceArg, OnBackend, dispatch};

/// The embedded default job.
const TINY_TOML: &str = include_str!("../../configs/tiny.toml");

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// A TOML job configuration (default: the embedded configs/tiny.toml).
    #[arg(long, conflicts_with = "resume")]
    pub config: Option<PathBuf>,
    /// Continue the run in RUN_DIR from its newest checkpoint.
    #[arg(long, value_name = "RUN_DIR")]
    pub resume: Option<PathBuf>,
    /// Override a setting: `--set actor.optim.lr=1e-4` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
}

pub fn run(args: TrainArgs) -> anyhow::Result<String> {
    let (config, resume) = match (&args.config, &args.resume) {
        (_, Some(run_dir)) => {
            let path = run_dir.join("config.toml");
            let config = TrainConfig::from_file(&path)
                .with_context(|| format!("{} is not a grlo run directory", run_dir.display()))?;
            (config, true)
        }
        (Some(path), None) => (TrainConfig::from_file(path)?, false),
        (None, None) => (
            TrainConfig::from_toml(TINY_TOML, "configs/tiny.toml (embedded)", &embedded_base())?,
            false,
        ),
    };
    let config = config.with_overrides(&args.overrides, "the configuration")?;
    let device: DeviceArg = config.trainer.device.parse().map_err(anyhow::Error::msg)?;
    let summary = dispatch(&device, TrainJob { config, resume })?;
    Ok(serde_json::to_string_pretty(&summary)?)
}

/// Where the embedded config's relative paths point: the repository it was built from, or the
/// current directory's `configs/` when run elsewhere.
fn embedded_base() -> PathBuf {
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    if built.join("tiny").is_dir() {
        built
    } else {
        PathBuf::from("configs")
    }
}

struct TrainJob {
    config: TrainConfig,
    resume: bool,
}

impl OnBackend for TrainJob {
    type Output = grlo_learner::Summary;

    fn run<B: Backend>(self, device: B::Device) -> anyhow::Result<Self::Output> {
        if self.config.actor.gradient_checkpointing {
            train::<Autodiff<B, BalancedCheckpointing>>(self.config, self.resume, &device)
        } else {
            train::<Autodiff<B>>(self.config, self.resume, &device)
        }
    }
}

fn train<A: burn::tensor::backend::AutodiffBackend>(
    config: TrainConfig,
    resume: bool,
    device: &A::Device,
) -> anyhow::Result<grlo_learner::Summary> {
    let run_dir = config.trainer.run_dir.clone();
    let mut trainer =
        Trainer::<A>::new(config, device, resume).context("failed to set up the run")?;
    let total = trainer.total_steps() as u64;
    let done = trainer.step_index() as u64;
    let terminal = std::io::stderr().is_terminal();
    let bar = if terminal {
        let bar = ProgressBar::new(total).with_position(done);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} step {pos}/{len} [{bar:30}] {elapsed_precise} eta {eta} | {msg}",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
        bar
    } else {
        ProgressBar::hidden()
    };
    eprintln!(
        "grlo train: {} prompts, {} steps, run directory {run_dir}",
        trainer.records().len(),
        total
    );
    let summary = trainer.run(|m: &StepMetrics| {
        let line = progress_line(m);
        if terminal {
            bar.set_message(line);
            bar.inc(1);
        } else {
            eprintln!("step {}/{total} | {line}", m.step);
        }
    })?;
    bar.finish();
    Ok(summary)
}

fn progress_line(m: &StepMetrics) -> String {
    let mut line = format!(
        "reward {:.3} ± {:.3} | len {:.1} | kl {:.4} | clip {:.3} | {:.0} tok/s",
        m.reward_mean,
        m.reward_std,
        m.response_len_mean,
        m.train.approx_kl,
        m.train.clip_frac,
        m.tokens_per_s
    );
    if let Some(value_loss) = m.train.value_loss {
        line += &format!(" | vf {value_loss:.4}");
    }
    if let Some(reason) = &m.train.rejected {
        line += &format!(" | REJECTED: {reason}");
    }
    line
}
