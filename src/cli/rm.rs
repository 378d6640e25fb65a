//! `grlo rm ...`: reward models from preference pairs.

use grlo_model::backend::ModelBackend;
use std::path::PathBuf;

use anyhow::Context;
use burn::backend::Autodiff;
use clap::{Args, Subcommand};
use grlo_learner::data::{BadLinePolicy, load_prompts};
use grlo_learner::reward_training::{RewardTrainConfig, make_cheerful_pairs, train_reward_model};

use crate::device::{DeviceArg, OnBackend, dispatch};

#[derive(Debug, Subcommand)]
pub enum RmCommand {
    /// Write synthetic preference pairs that prefer cheerful replies (the default job's data).
    MakePairs(MakePairsArgs),
    /// Fit a sequence-classification reward model to preference pairs (Bradley–Terry loss).
    Train(RmTrainArgs),
}

#[derive(Debug, Args)]
pub struct MakePairsArgs {
    /// verl-format prompts to write the pairs for.
    #[arg(long)]
    pub prompts: PathBuf,
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 3000)]
    pub count: usize,
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
}

#[derive(Debug, Args)]
pub struct RmTrainArgs {
    /// The starting checkpoint (a sequence classifier, or a decoder that gets a fresh head).
    #[arg(long)]
    pub model: String,
    /// JSONL of {"prompt", "chosen", "rejected"}.
    #[arg(long)]
    pub pairs: PathBuf,
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 2)]
    pub epochs: usize,
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    #[arg(long, default_value_t = 0.01)]
    pub weight_decay: f64,
    /// Fraction of the pairs held out to measure pairwise accuracy.
    #[arg(long, default_value_t = 0.1)]
    pub eval_fraction: f64,
    #[arg(long, default_value_t = 1024)]
    pub max_length: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value = "cpu")]
    pub device: DeviceArg,
}

pub fn run(command: RmCommand) -> anyhow::Result<String> {
    match command {
        RmCommand::MakePairs(args) => {
            let (records, _) = load_prompts(&args.prompts, BadLinePolicy::Skip)?;
            let pairs = make_cheerful_pairs(&records, args.count, args.seed);
            let mut text = String::new();
            for pair in &pairs {
                text += &serde_json::to_string(pair)?;
                text.push('\n');
            }
            std::fs::write(&args.out, text)
                .with_context(|| format!("failed to write {}", args.out.display()))?;
            Ok(serde_json::json!({ "pairs": pairs.len(), "out": args.out }).to_string())
        }
        RmCommand::Train(args) => {
            let device = args.device.clone();
            let report = dispatch(&device, args)?;
            Ok(serde_json::to_string_pretty(&report)?)
        }
    }
}

impl OnBackend for RmTrainArgs {
    type Output = grlo_learner::reward_training::RewardTrainReport;

    fn run<B: ModelBackend>(self, device: B::Device) -> anyhow::Result<Self::Output> {
        let config = RewardTrainConfig {
            model: self.model,
            pairs: self.pairs,
            out: self.out,
            epochs: self.epochs,
            batch_size: self.batch_size,
            lr: self.lr,
            weight_decay: self.weight_decay,
            eval_fraction: self.eval_fraction,
            max_length: self.max_length,
            seed: self.seed,
        };
        Ok(train_reward_model::<Autodiff<B>>(&config, &device)?)
    }
}
