//! `grlo plan`: the GPU memory a job spec needs per role, whether it fits, and a layout.

use std::path::PathBuf;

use clap::Args;
use grlo_learner::config::TrainConfig;
use grlo_learner::plan::{Gpu, ShapeSources, plan, render};

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// The job spec (TOML), as `grlo train --config` and `grlo ctl job submit` take it.
    #[arg(long)]
    pub config: PathBuf,
    /// The kind of GPU: h100-80gb, h200-141gb or a100-80gb.
    #[arg(long)]
    pub gpu: String,
    /// How many of them.
    #[arg(long, default_value_t = 1)]
    pub gpus: usize,
    /// The policy's config.json (or its directory) when `model.policy` is not a local
    /// directory, e.g. configs/shapes/qwen3-4b-base.json.
    #[arg(long)]
    pub policy_shape: Option<PathBuf>,
    /// The critic's config.json when `model.critic` is set and not a local directory.
    #[arg(long)]
    pub critic_shape: Option<PathBuf>,
    /// The reward model's config.json when `reward.model` is not a local directory.
    #[arg(long)]
    pub reward_shape: Option<PathBuf>,
    /// Print the plan as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The plan's text (or JSON); an error when the job does not fit, after printing the plan.
pub fn run(args: PlanArgs) -> anyhow::Result<String> {
    let config = TrainConfig::from_file_for_planning(&args.config)?;
    let gpu = Gpu::named(&args.gpu)?;
    let shapes = ShapeSources {
        policy: args.policy_shape,
        critic: args.critic_shape,
        reward: args.reward_shape,
    };
    let plan = plan(&config, &shapes, gpu, args.gpus)?;
    let text = if args.json {
        serde_json::to_string_pretty(&plan)?
    } else {
        render(&plan)
    };
    if plan.fits() {
        Ok(text.trim_end().to_string())
    } else {
        println!("{}", text.trim_end());
        anyhow::bail!(
            "{} does not fit {} x {}: {}",
            args.config.display(),
            args.gpus,
            args.gpu,
            plan.problems.join("; ")
        )
    }
}
