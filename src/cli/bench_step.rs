//! `grlo bench train-step`: the learner's PPO + GAE step at a chosen model shape and sequence
//! length on random weights: step time, tokens/s, model FLOPs utilisation and peak memory.
//!
//! The step is `Learner::train_on` itself (values and log-prob recomputation, advantages,
//! critic and policy updates with AdamW) on `rows` random trajectories of
//! `prompt_tokens + response_tokens` tokens, one sequence a micro-batch. Peak memory is the
//! growth over what the process holds with the models loaded: on CPU the peak resident set
//! (`VmHWM`, reset through `/proc/self/clear_refs`), on CUDA the bytes Burn's pools reserve
//! (they keep freed memory until a cleanup, so after the step this is its high-water mark).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use burn::backend::Autodiff;
use clap::Args;
use grlo_learner::config::TrainConfig;
use grlo_learner::learner::Learner;
use grlo_learner::optim::AdamW;
use grlo_learner::trajectory::Trajectory;
use grlo_model::backend::ModelBackend;
use grlo_model::model::Precision;
use grlo_model::{FinishReason, HeadKind, Model, ModelConfig};
use serde::Serialize;

use crate::device::{DeviceArg, OnBackend, dispatch};

#[derive(Debug, Args)]
pub struct BenchTrainStepArgs {
    /// The policy's `config.json` (e.g. configs/shapes/qwen3-4b-base.json).
    #[arg(long)]
    pub model_config: PathBuf,
    #[arg(long, default_value_t = 1024)]
    pub prompt_tokens: usize,
    #[arg(long, default_value_t = 3072)]
    pub response_tokens: usize,
    /// Sequences in the step, one micro-batch each.
    #[arg(long, default_value_t = 1)]
    pub rows: usize,
    /// Train a critic (the policy's decoder with a value head) too, as PPO + GAE does.
    #[arg(long)]
    pub critic: bool,
    /// Per-layer activation checkpointing for the policy and the critic.
    #[arg(long)]
    pub checkpointing: bool,
    /// `f32`, `bf16`, or `auto` (bf16 on CUDA, f32 on CPU).
    #[arg(long, default_value = "auto")]
    pub precision: String,
    #[arg(long, default_value = "cpu")]
    pub device: DeviceArg,
    /// Timed steps after one warm-up step.
    #[arg(long, default_value_t = 2)]
    pub steps: usize,
    /// The device's dense peak in TFLOP/s for the utilisation (H100/H200 SXM bf16: 989).
    #[arg(long, default_value_t = 989.0)]
    pub peak_tflops: f64,
}

#[derive(Debug, Serialize)]
pub struct StepReport {
    pub model_config: PathBuf,
    pub parameters: usize,
    pub models: usize,
    pub tokens_per_step: usize,
    pub precision: String,
    pub checkpointing: bool,
    pub step_seconds: f64,
    pub tokens_per_s: f64,
    pub model_tflops: f64,
    pub mfu: f64,
    pub peak_memory_bytes: u64,
    pub peak_memory_gib: f64,
    pub policy_loss: f64,
    pub value_loss: Option<f64>,
}

pub fn run(args: BenchTrainStepArgs) -> anyhow::Result<String> {
    let device = args.device.clone();
    let report = dispatch(&device, args)?;
    Ok(serde_json::to_string_pretty(&report)?)
}

impl OnBackend for BenchTrainStepArgs {
    type Output = StepReport;

    fn run<B: ModelBackend>(self, device: B::Device) -> anyhow::Result<StepReport> {
        let config = ModelConfig::from_file(&self.model_config)
            .with_context(|| format!("failed to read {}", self.model_config.display()))?;
        let precision = match (self.precision.as_str(), &self.device) {
            ("f32", _) | ("auto", DeviceArg::Cpu) => Precision::F32,
            ("bf16", _) | ("auto", _) => Precision::Bf16,
            (other, _) => anyhow::bail!("--precision must be f32, bf16 or auto, not {other}"),
        };
        let tokens = self.prompt_tokens + self.response_tokens;
        let train = step_config(&self, tokens)?;
        let meter = Meter::start(&self.device)?;
        let policy =
            Model::<Autodiff<B>>::random(config.clone(), 1, &device).with_precision(precision);
        let critic = self.critic.then(|| {
            let shape = config.with_head(HeadKind::TokenClassification { num_labels: 1 });
            Model::<Autodiff<B>>::random(shape, 2, &device).with_precision(precision)
        });
        let parameters = policy.num_parameters();
        let mut learner = Learner {
            policy_optim: AdamW::new(train.actor.optim.clone()),
            critic_optim: AdamW::new(train.critic.optim.clone()),
            config: train,
            policy,
            critic,
            reference: None,
            step: 0,
            total_steps: self.steps + 1,
            interrupt: Arc::default(),
        };
        let batch = trajectories(&self, config.vocab_size);
        let baseline = meter.reset::<B>(&device)?;
        learner.train_on(&batch); // warm-up (and the optimizer state's first allocation)
        let mut seconds = Vec::new();
        let mut last = None;
        for _ in 0..self.steps.max(1) {
            let _ = B::sync(&device);
            let start = Instant::now();
            let stats = learner.train_on(&batch);
            let _ = B::sync(&device);
            seconds.push(start.elapsed().as_secs_f64());
            if let Some(reason) = &stats.rejected {
                anyhow::bail!("the step was rejected: {reason}");
            }
            last = Some(stats);
        }
        let peak = meter.peak::<B>(&device)?.saturating_sub(baseline);
        seconds.sort_by(f64::total_cmp);
        let step_seconds = seconds[seconds.len() / 2];
        let models = 1 + usize::from(self.critic);
        let tokens_per_step = self.rows * tokens;
        let flops = training_flops(&config, parameters, tokens) * (self.rows * models) as f64;
        let model_tflops = flops / step_seconds / 1e12;
        let stats = last.expect("at least one step");
        Ok(StepReport {
            model_config: self.model_config.clone(),
            parameters,
            models,
            tokens_per_step,
            precision: format!("{precision:?}").to_lowercase(),
            checkpointing: self.checkpointing,
            step_seconds,
            tokens_per_s: tokens_per_step as f64 / step_seconds,
            model_tflops,
            mfu: model_tflops / self.peak_tflops,
            peak_memory_bytes: peak,
            peak_memory_gib: peak as f64 / (1u64 << 30) as f64,
            policy_loss: stats.policy_loss,
            value_loss: stats.value_loss,
        })
    }
}

/// The learner's configuration for the benchmark: the paper's losses and optimizer, one
/// sequence a micro-batch, the whole step one mini-batch.
fn step_config(args: &BenchTrainStepArgs, tokens: usize) -> anyhow::Result<TrainConfig> {
    let text = format!(
        r#"[model]
        policy = "random"
        [data]
        train_files = ["random"]
        max_prompt_length = {prompt}
        max_response_length = {response}
        [algorithm]
        advantage = "{advantage}"
        [rollout]
        batch_size = {rows}
        n = {n}
        [actor]
        ppo_mini_batch_size = {rows}
        micro_batch_tokens = {tokens}
        gradient_checkpointing = {checkpointing}
        [critic]
        micro_batch_tokens = {tokens}
        gradient_checkpointing = {checkpointing}
        "#,
        prompt = args.prompt_tokens.max(1),
        response = args.response_tokens.max(1),
        advantage = if args.critic { "gae" } else { "grpo" },
        rows = if args.critic {
            args.rows
        } else {
            args.rows.div_ceil(2)
        },
        n = if args.critic { 1 } else { 2 },
        checkpointing = args.checkpointing,
    );
    Ok(TrainConfig::from_toml(
        &text,
        "bench train-step",
        std::path::Path::new("."),
    )?)
}

fn trajectories(args: &BenchTrainStepArgs, vocab: usize) -> Vec<Trajectory> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut token = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % vocab as u64) as u32
    };
    let rows = if args.critic {
        args.rows
    } else {
        args.rows.div_ceil(2) * 2
    };
    (0..rows)
        .map(|i| Trajectory {
            prompt_id: i,
            group: if args.critic { i } else { i / 2 },
            sample_index: if args.critic { 0 } else { i % 2 },
            prompt_ids: (0..args.prompt_tokens).map(|_| token()).collect(),
            response_ids: (0..args.response_tokens).map(|_| token()).collect(),
            behaviour_logprobs: vec![-(vocab as f32).ln(); args.response_tokens],
            finish_reason: FinishReason::Length,
            reward: Some(if i % 2 == 0 { 1.0 } else { -1.0 }),
            weight_version: 0,
        })
        .collect()
}

/// Model FLOPs of training one sequence of `tokens`: `6 N` a token for the matmuls plus the
/// causal attention's `6 · layers · heads · head_dim · t` (forward and backward; recomputation
/// under checkpointing is not counted, as MFU does not count it).
pub fn training_flops(config: &ModelConfig, parameters: usize, tokens: usize) -> f64 {
    let attention = 6.0
        * config.num_hidden_layers as f64
        * (config.num_attention_heads * config.head_dim) as f64
        * tokens as f64;
    tokens as f64 * (6.0 * parameters as f64 + attention)
}

/// Peak memory of the device the step runs on.
enum Meter {
    Cpu,
    #[cfg(feature = "cuda")]
    Cuda(burn::backend::cuda::CudaDevice),
}

impl Meter {
    fn start(device: &DeviceArg) -> anyhow::Result<Self> {
        match device {
            DeviceArg::Cpu => Ok(Meter::Cpu),
            #[cfg(feature = "cuda")]
            DeviceArg::Cuda(index) => Ok(Meter::Cuda(burn::backend::cuda::CudaDevice::new(*index))),
            #[cfg(not(feature = "cuda"))]
            DeviceArg::Cuda(_) => anyhow::bail!("this grlo was built without CUDA support"),
        }
    }

    /// Frees what the pools hold and returns the baseline.
    fn reset<B: ModelBackend>(&self, device: &B::Device) -> anyhow::Result<u64> {
        let _ = B::sync(device);
        B::memory_cleanup(device);
        match self {
            Meter::Cpu => {
                std::fs::write("/proc/self/clear_refs", "5").context(
                    "resetting the peak resident set needs Linux's /proc/self/clear_refs",
                )?;
                status_bytes("VmRSS")
            }
            #[cfg(feature = "cuda")]
            Meter::Cuda(device) => Ok(grlo_model::backend::cuda_memory_usage(device)
                .map_err(anyhow::Error::msg)?
                .0),
        }
    }

    fn peak<B: ModelBackend>(&self, device: &B::Device) -> anyhow::Result<u64> {
        let _ = B::sync(device);
        match self {
            Meter::Cpu => status_bytes("VmHWM"),
            #[cfg(feature = "cuda")]
            Meter::Cuda(device) => Ok(grlo_model::backend::cuda_memory_usage(device)
                .map_err(anyhow::Error::msg)?
                .0),
        }
    }
}

/// A `kB` line of `/proc/self/status`, in bytes.
fn status_bytes(field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")
        .context("peak memory on CPU needs Linux's /proc/self/status")?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .with_context(|| format!("/proc/self/status has no {field} line"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_flops_count_the_matmuls_and_the_causal_attention() {
        let json = r#"{"model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"],
            "vocab_size": 100, "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "head_dim": 16}"#;
        let config = ModelConfig::from_json_str(json, std::path::Path::new("c.json")).unwrap();
        // 1000 parameters, 10 tokens: 6·1000·10 + 6·2·64·10·10.
        assert_eq!(training_flops(&config, 1000, 10), 60_000.0 + 76_800.0);
    }
}
