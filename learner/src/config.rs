//! The training configuration: one TOML schema for `grlo train`, the paper's job
//! (`configs/grlo-qwen3-4b.toml`) and the embedded default (`configs/tiny.toml`).
//!
//! Names follow verl's where there is one (`ppo_mini_batch_size`, `clip_ratio_c`,
//! `loss_agg_mode`, ...). Unknown keys are errors (`deny_unknown_fields`), so a typo never
//! silently trains with a default.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::advantage::AdvantageEstimator;
use crate::data::BadLinePolicy;
use crate::loss::{KlEstimator, LossAggregation};
use crate::tracking::Logger;

/// Everything `grlo train` needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub model: ModelSection,
    #[serde(default)]
    pub reward: RewardSection,
    pub data: DataSection,
    #[serde(default)]
    pub algorithm: AlgorithmSection,
    #[serde(default)]
    pub rollout: RolloutSection,
    #[serde(default)]
    pub actor: ActorSection,
    #[serde(default)]
    pub critic: CriticSection,
    #[serde(default)]
    pub trainer: TrainerSection,
    /// How the service runs the configuration as a job (ignored by `grlo train`).
    #[serde(default)]
    pub job: JobSection,
}

/// A job's name, budget and staleness bound, for the coordinator.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobSection {
    /// A name for people; the coordinator makes one up when empty.
    pub name: String,
    /// The GPU-hour budget; 0 means none.
    pub gpu_hours: f64,
    /// The CPU-hour budget (CPU-only workers are counted apart); 0 means none.
    pub cpu_hours: f64,
    /// Price of a GPU-hour, to report the spend; 0 means unknown.
    pub price_per_gpu_hour: f64,
    /// How many weight versions a trajectory may lag behind the one being trained:
    /// 0 is strictly on-policy (the paper), k > 0 lets actors generate while the learner trains.
    pub staleness: u64,
    /// Prompts in one rollout task (an actor's unit of work); 0 picks `max_batch_rows / n`.
    pub prompts_per_task: usize,
}

impl Default for JobSection {
    fn default() -> Self {
        JobSection {
            name: String::new(),
            gpu_hours: 0.0,
            cpu_hours: 0.0,
            price_per_gpu_hour: 0.0,
            staleness: 0,
            prompts_per_task: 0,
        }
    }
}

/// Which checkpoints play which part.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// The policy to train (Hugging Face directory or object store URL), with its tokenizer.
    pub policy: String,
    /// Where the critic starts; by default the policy's decoder with a fresh value head (as
    /// the paper does).
    #[serde(default)]
    pub critic: Option<String>,
    /// The frozen reference for KL terms; by default the starting policy.
    #[serde(default)]
    pub reference: Option<String>,
}

/// Where rewards come from.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewardSection {
    /// A Bradley–Terry reward model (a sequence-classification checkpoint) for prompts whose
    /// `reward_model.style` is `model`.
    #[serde(default)]
    pub model: Option<String>,
    /// Longest conversation (tokens, in the reward model's template) scored in full; longer
    /// ones are cut from the left of the response, as a reward server with a context limit would.
    #[serde(default = "defaults::reward_max_length")]
    pub max_length: usize,
    /// Token budget of one reward-model forward pass.
    #[serde(default = "defaults::reward_batch_tokens")]
    pub batch_tokens: usize,
}

/// The prompt dataset.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// verl-format JSONL prompt files.
    pub train_files: Vec<String>,
    #[serde(default = "defaults::max_prompt_length")]
    pub max_prompt_length: usize,
    #[serde(default = "defaults::max_response_length")]
    pub max_response_length: usize,
    /// Drop prompts longer than `max_prompt_length` (counted and reported), as verl's
    /// `filter_overlong_prompts`; when off, an overlong prompt is an error.
    #[serde(default = "defaults::yes")]
    pub filter_overlong_prompts: bool,
    /// What a malformed JSONL line does: `skip` it (reported) or `stop` the run.
    #[serde(default = "defaults::on_bad_line")]
    pub on_bad_line: BadLinePolicy,
    #[serde(default = "defaults::yes")]
    pub shuffle: bool,
    /// Extra arguments of the chat template, e.g. `{ enable_thinking = false }`.
    #[serde(default)]
    pub chat_template_kwargs: toml::Table,
    /// verl-format JSONL prompt files of the validation set: answered greedily every
    /// `trainer.test_freq` steps and scored by the training rewards (`val/reward_mean`).
    #[serde(default)]
    pub val_files: Vec<String>,
}

/// Advantages and rewards.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlgorithmSection {
    pub advantage: AdvantageEstimator,
    pub gamma: f32,
    pub lambda: f32,
    /// GRPO: divide by the group's standard deviation.
    pub norm_adv_by_std_in_grpo: bool,
    /// Subtract `kl_coef · KL(policy ‖ reference)` from the token rewards.
    pub use_kl_in_reward: bool,
    pub kl_coef: f32,
    pub kl_penalty: KlEstimator,
}

impl Default for AlgorithmSection {
    fn default() -> Self {
        AlgorithmSection {
            advantage: AdvantageEstimator::Gae,
            gamma: 1.0,
            lambda: 1.0,
            norm_adv_by_std_in_grpo: true,
            use_kl_in_reward: false,
            kl_coef: 0.001,
            kl_penalty: KlEstimator::K1,
        }
    }
}

/// Generation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RolloutSection {
    /// Prompts per training step (verl's `data.train_batch_size`).
    pub batch_size: usize,
    /// Samples per prompt.
    pub n: usize,
    pub temperature: f32,
    pub top_p: f32,
    /// 0 disables top-k (verl's -1).
    pub top_k: usize,
    /// Most sequences generated together (bounds the KV cache's memory). Rows that finish
    /// are refilled from the waiting prompts at once (continuous batching).
    pub max_batch_rows: usize,
    /// Most KV-cache positions an actor holds: running rows × the longest row's prompt plus
    /// `data.max_response_length`; 0 leaves only `max_batch_rows` as the bound.
    pub max_cache_tokens: usize,
    /// What generates: the actor's built-in engine, or OpenAI-compatible servers (vLLM,
    /// SGLang, `grlo serve`) at `endpoints`.
    pub engine: RolloutEngine,
    /// With `engine = "openai"`: the actor's engines, e.g. `["http://127.0.0.1:30000"]`. Each
    /// new weight version reaches them as `reload` says.
    pub endpoints: Vec<String>,
    /// With `engine = "openai"`: most requests (one prompt, `n` samples each) an actor has in
    /// flight across its endpoints.
    pub max_in_flight: usize,
    /// With `engine = "openai"`: how a new weight version reaches the endpoints.
    pub reload: RolloutReload,
}

/// `rollout.reload`: the route by which an external engine loads a weight version from the
/// checkpoint directory the actor wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RolloutReload {
    /// SGLang's `POST /update_weights_from_disk {"model_path": ...}` (also `grlo serve`'s).
    #[default]
    Sglang,
    /// vLLM's development routes (`VLLM_SERVER_DEV_MODE=1`): `POST /collective_rpc`
    /// `update_config` (the model path) then `reload_weights`, then `POST /reset_prefix_cache`.
    Vllm,
    /// None: the engines keep the weights they were started with (a frozen policy, e.g. for
    /// generating data or evaluating; an RL job's responses then come from an older policy
    /// than their version says).
    None,
}

impl RolloutReload {
    pub fn name(self) -> &'static str {
        match self {
            RolloutReload::Sglang => "sglang",
            RolloutReload::Vllm => "vllm",
            RolloutReload::None => "none",
        }
    }

    /// The mode a task names (empty: the default).
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "" | "sglang" => Some(RolloutReload::Sglang),
            "vllm" => Some(RolloutReload::Vllm),
            "none" => Some(RolloutReload::None),
            _ => None,
        }
    }
}

/// `rollout.engine`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RolloutEngine {
    #[default]
    Builtin,
    Openai,
}

impl RolloutEngine {
    pub fn name(self) -> &'static str {
        match self {
            RolloutEngine::Builtin => "builtin",
            RolloutEngine::Openai => "openai",
        }
    }
}

impl Default for RolloutSection {
    fn default() -> Self {
        RolloutSection {
            batch_size: 1024,
            n: 1,
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            max_batch_rows: 256,
            max_cache_tokens: 0,
            engine: RolloutEngine::Builtin,
            endpoints: Vec::new(),
            max_in_flight: 64,
            reload: RolloutReload::Sglang,
        }
    }
}

/// A learning-rate schedule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LrSchedule {
    pub kind: LrScheduleKind,
    /// Warm-up steps (linear from 0); `warmup_ratio` of the total steps when unset.
    #[serde(default)]
    pub warmup_steps: Option<usize>,
    #[serde(default)]
    pub warmup_ratio: f64,
    /// Cosine: the floor as a fraction of the peak rate.
    #[serde(default)]
    pub min_lr_ratio: f64,
}

impl Default for LrSchedule {
    fn default() -> Self {
        LrSchedule {
            kind: LrScheduleKind::Constant,
            warmup_steps: None,
            warmup_ratio: 0.0,
            min_lr_ratio: 0.0,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LrScheduleKind {
    /// Linear warm-up (if any) then constant.
    Constant,
    /// Linear warm-up (if any) then cosine decay to `min_lr_ratio`.
    Cosine,
}

/// AdamW and gradient clipping, shared by actor and critic.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimSection {
    pub lr: f64,
    #[serde(default = "defaults::weight_decay")]
    pub weight_decay: f64,
    #[serde(default = "defaults::betas")]
    pub betas: [f64; 2],
    #[serde(default = "defaults::eps")]
    pub eps: f64,
    /// Global gradient-norm clip; 0 disables.
    #[serde(default = "defaults::grad_clip")]
    pub grad_clip: f64,
    #[serde(default)]
    pub schedule: LrSchedule,
}

/// The policy update.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ActorSection {
    pub optim: OptimSection,
    /// Prompts per mini-batch (one optimizer update each; × n samples).
    pub ppo_mini_batch_size: usize,
    pub ppo_epochs: usize,
    /// Token budget of one micro-batch (gradients accumulate over micro-batches).
    pub micro_batch_tokens: usize,
    pub clip_ratio_low: f32,
    pub clip_ratio_high: f32,
    /// Dual-clip constant for negative advantages; 0 disables.
    pub clip_ratio_c: f32,
    /// Truncated importance sampling against the behaviour log-probs; 0 disables.
    pub tis_cap: f32,
    pub loss_agg_mode: LossAggregation,
    pub entropy_coeff: f32,
    pub use_kl_loss: bool,
    pub kl_loss_coef: f32,
    pub kl_loss_type: KlEstimator,
    /// Keep only each decoder layer's input during the forward and recompute the layer in
    /// the backward pass (see `grlo_model::checkpointing`).
    pub gradient_checkpointing: bool,
    /// Where the policy trains (`cpu`, `cuda`, `cuda:N`); default `trainer.device`.
    pub device: Option<String>,
    /// Where the frozen reference (for KL terms) lives; default the policy's device. It is
    /// held in bf16 on CUDA.
    pub reference_device: Option<String>,
}

impl Default for ActorSection {
    fn default() -> Self {
        ActorSection {
            optim: OptimSection {
                lr: 1e-6,
                weight_decay: defaults::weight_decay(),
                betas: defaults::betas(),
                eps: defaults::eps(),
                grad_clip: defaults::grad_clip(),
                schedule: LrSchedule::default(),
            },
            ppo_mini_batch_size: 256,
            ppo_epochs: 1,
            micro_batch_tokens: 16384,
            clip_ratio_low: 0.2,
            clip_ratio_high: 0.2,
            clip_ratio_c: 3.0,
            tis_cap: 0.0,
            loss_agg_mode: LossAggregation::TokenMean,
            entropy_coeff: 0.0,
            use_kl_loss: false,
            kl_loss_coef: 0.001,
            kl_loss_type: KlEstimator::K3,
            gradient_checkpointing: false,
            device: None,
            reference_device: None,
        }
    }
}

/// The value model (used by GAE; other estimators need none).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CriticSection {
    pub optim: OptimSection,
    pub ppo_epochs: usize,
    pub micro_batch_tokens: usize,
    pub cliprange_value: f32,
    pub loss_agg_mode: LossAggregation,
    /// As `actor.gradient_checkpointing`, for the value model.
    pub gradient_checkpointing: bool,
    /// Where the critic trains; default `trainer.device` (e.g. `cuda:1` beside a policy on
    /// `cuda:0`).
    pub device: Option<String>,
}

impl Default for CriticSection {
    fn default() -> Self {
        CriticSection {
            optim: OptimSection {
                lr: 1e-5,
                ..ActorSection::default().optim
            },
            ppo_epochs: 1,
            micro_batch_tokens: 16384,
            cliprange_value: 0.5,
            loss_agg_mode: LossAggregation::TokenMean,
            gradient_checkpointing: false,
            device: None,
        }
    }
}

/// The run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainerSection {
    pub total_epochs: usize,
    /// Stop after this many steps even if epochs remain.
    pub total_steps: Option<usize>,
    /// Save a checkpoint every this many steps (and at the end); 0 saves only at the end.
    pub save_every: usize,
    /// Checkpoints kept: after each checkpoint the oldest beyond this many are deleted (never
    /// the one `latest` names); 0 keeps all (verl's `max_actor_ckpt_to_keep`).
    pub max_checkpoints_to_keep: usize,
    /// Run directory: resolved config, metrics.jsonl, checkpoints.
    pub run_dir: String,
    /// Where checkpoints go if not under the run directory (an object store URL).
    pub checkpoint_location: Option<String>,
    /// `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    pub seed: u64,
    /// Storage dtype of saved weights (`f32`, `bf16`).
    pub save_dtype: String,
    /// What matmuls and attention compute in: `bf16` (mixed precision: f32 master weights,
    /// gradients and AdamW moments; norms, softmax, log-probs, values and losses in f32),
    /// `f32`, or `auto` (bf16 on CUDA, f32 on CPU).
    pub precision: PrecisionSetting,
    /// Validate every this many steps (and after the last one): `data.val_files` and
    /// `eval_benchmarks`, into `metrics.jsonl` as `val/...` keys; 0 never validates.
    pub test_freq: usize,
    /// Also validate before the first step (a `metrics.jsonl` line of step 0), as verl does.
    pub val_before_train: bool,
    /// Benchmarks scored at each validation, `name` or `name:N` (its first N items), e.g.
    /// `["gsm8k:200", "ifeval:100"]`; judged ones use the training reward model as judge.
    pub eval_benchmarks: Vec<String>,
    /// Where the benchmarks' data is (`scripts/fetch-eval-data.sh DIR`); default
    /// `$GRLO_EVAL_DATA`, else `target/eval-data`.
    pub eval_data_dir: Option<String>,
    /// The metric that picks a run's best step in its summary (largest wins).
    pub best_metric: String,
    /// Where each step's metrics go besides `metrics.jsonl` (always written): any of
    /// `console`, `jsonl`, `tensorboard` (`RUN_DIR/tensorboard/`), `mlflow` (verl's names).
    pub logger: Vec<Logger>,
    /// The MLflow tracking server (`http://host:5000`); default `$MLFLOW_TRACKING_URI`.
    pub mlflow_uri: Option<String>,
    /// The project: MLflow's experiment (verl's `trainer.project_name`).
    pub project_name: String,
    /// The run's name in MLflow; default the run directory's name (verl's
    /// `trainer.experiment_name`).
    pub experiment_name: String,
}

/// `trainer.precision`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PrecisionSetting {
    #[default]
    Auto,
    F32,
    Bf16,
}

impl Default for TrainerSection {
    fn default() -> Self {
        TrainerSection {
            total_epochs: 1,
            total_steps: None,
            save_every: 0,
            max_checkpoints_to_keep: 0,
            run_dir: "runs/default".into(),
            checkpoint_location: None,
            device: "cpu".into(),
            seed: 42,
            save_dtype: "f32".into(),
            precision: PrecisionSetting::Auto,
            test_freq: 0,
            val_before_train: true,
            eval_benchmarks: Vec::new(),
            eval_data_dir: None,
            best_metric: "val/reward_mean".into(),
            logger: vec![Logger::Console, Logger::Jsonl],
            mlflow_uri: None,
            project_name: "grlo".into(),
            experiment_name: String::new(),
        }
    }
}

mod defaults {
    use crate::data::BadLinePolicy;

    pub fn yes() -> bool {
        true
    }
    pub fn max_prompt_length() -> usize {
        1024
    }
    pub fn max_response_length() -> usize {
        3072
    }
    pub fn on_bad_line() -> BadLinePolicy {
        BadLinePolicy::Skip
    }
    pub fn reward_max_length() -> usize {
        8192
    }
    pub fn reward_batch_tokens() -> usize {
        16384
    }
    pub fn weight_decay() -> f64 {
        0.01
    }
    pub fn betas() -> [f64; 2] {
        [0.9, 0.999]
    }
    pub fn eps() -> f64 {
        1e-8
    }
    pub fn grad_clip() -> f64 {
        1.0
    }
}

/// A compute device as the configuration names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DeviceName {
    Cpu,
    Cuda(usize),
}

impl DeviceName {
    /// `cpu`, `cuda` (device 0) or `cuda:N`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "cpu" => Some(DeviceName::Cpu),
            "cuda" => Some(DeviceName::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|i| i.parse().ok())
                .map(DeviceName::Cuda),
        }
    }

    pub fn is_cuda(self) -> bool {
        matches!(self, DeviceName::Cuda(_))
    }
}

impl std::fmt::Display for DeviceName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceName::Cpu => write!(f, "cpu"),
            DeviceName::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

/// A configuration error, naming the file and the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("failed to read config {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("invalid config {source_name}: {message}")]
    Parse {
        source_name: String,
        message: String,
    },
    #[error("invalid config {source_name}: {}", .problems.join("; "))]
    Invalid {
        source_name: String,
        problems: Vec<String>,
    },
}

impl TrainConfig {
    /// Reads a TOML file; relative paths inside are taken relative to the file's directory.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        Self::read(path, false)
    }

    /// Reads a job spec for `grlo plan`, which needs its sizes, not its data: blank model
    /// and data locations (as in a template such as configs/grlo-qwen3-4b.toml) are allowed;
    /// everything else is checked as [`TrainConfig::from_file`] checks it.
    pub fn from_file_for_planning(path: &Path) -> Result<Self, ConfigError> {
        Self::read(path, true)
    }

    fn read(path: &Path, blank_locations: bool) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, &path.display().to_string(), base, blank_locations)
    }

    /// Parses TOML text; `source_name` names it in errors and `base` anchors relative paths.
    pub fn from_toml(text: &str, source_name: &str, base: &Path) -> Result<Self, ConfigError> {
        Self::parse(text, source_name, base, false)
    }

    fn parse(
        text: &str,
        source_name: &str,
        base: &Path,
        blank_locations: bool,
    ) -> Result<Self, ConfigError> {
        let mut config: TrainConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            source_name: source_name.into(),
            message: e.to_string().trim().replace('\n', " "),
        })?;
        config.resolve_paths(base);
        config.validate_with(source_name, blank_locations)?;
        Ok(config)
    }

    /// The settings `other` changes from this configuration, when a run continues with it
    /// (`grlo train --resume RUN_DIR --set ...`): the keys whose values differ, each as
    /// `key: old -> new`. Only [`RESUMABLE`] keys may change, as the rest would make the
    /// checkpoint, the dataset order or the trained steps mean something else; any other
    /// change is an error naming every such key.
    pub fn changes_on_resume(&self, other: &TrainConfig) -> Result<Vec<String>, ConfigError> {
        let flat = |config: &TrainConfig| {
            let mut out = std::collections::BTreeMap::new();
            if let Ok(table) = toml::Table::try_from(config) {
                flatten("", &toml::Value::Table(table), &mut out);
            }
            out
        };
        let (before, after) = (flat(self), flat(other));
        let keys: std::collections::BTreeSet<&String> = before.keys().chain(after.keys()).collect();
        let mut changed = Vec::new();
        let mut refused = Vec::new();
        for key in keys {
            let (old, new) = (before.get(key), after.get(key));
            if old == new {
                continue;
            }
            let shown = |v: Option<&String>| v.cloned().unwrap_or_else(|| "(unset)".into());
            let line = format!("{key}: {} -> {}", shown(old), shown(new));
            if RESUMABLE
                .iter()
                .any(|k| key == k || key.starts_with(&format!("{k}.")))
            {
                changed.push(line);
            } else {
                refused.push(line);
            }
        }
        if refused.is_empty() {
            return Ok(changed);
        }
        Err(ConfigError::Invalid {
            source_name: "--set".into(),
            problems: vec![format!(
                "a resumed run cannot change {} (only {} can change between runs)",
                refused.join(", "),
                RESUMABLE.join(", ")
            )],
        })
    }

    /// Applies `section.key=value` overrides (TOML values), as given on the command line.
    pub fn with_overrides(
        self,
        overrides: &[String],
        source_name: &str,
    ) -> Result<Self, ConfigError> {
        if overrides.is_empty() {
            return Ok(self);
        }
        let mut table = toml::Table::try_from(&self).map_err(|e| ConfigError::Parse {
            source_name: source_name.into(),
            message: e.to_string(),
        })?;
        for item in overrides {
            let Some((key, value)) = item.split_once('=') else {
                return Err(ConfigError::Parse {
                    source_name: "--set".into(),
                    message: format!("expected section.key=value, got \"{item}\""),
                });
            };
            let value: toml::Value = format!("v = {value}")
                .parse::<toml::Table>()
                .map(|mut t| t.remove("v").expect("the key just parsed"))
                .unwrap_or_else(|_| toml::Value::String(value.to_string()));
            let mut node = &mut table;
            let parts: Vec<&str> = key.trim().split('.').collect();
            for part in &parts[..parts.len() - 1] {
                node = node
                    .entry(part.to_string())
                    .or_insert_with(|| toml::Value::Table(Default::default()))
                    .as_table_mut()
                    .ok_or_else(|| ConfigError::Parse {
                        source_name: "--set".into(),
                        message: format!("{key}: {part} is not a section"),
                    })?;
            }
            node.insert(parts[parts.len() - 1].to_string(), value);
        }
        let config: TrainConfig =
            table
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Parse {
                    source_name: format!("{source_name} with --set overrides"),
                    message: e.to_string().trim().replace('\n', " "),
                })?;
        config.validate(source_name)?;
        Ok(config)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let resolve = |p: &mut String| {
            // An empty path stays empty, for `validate` to name.
            if !p.is_empty() && !p.contains("://") && Path::new(p.as_str()).is_relative() {
                *p = base.join(&*p).display().to_string();
            }
        };
        resolve(&mut self.model.policy);
        self.model.critic.iter_mut().for_each(resolve);
        self.model.reference.iter_mut().for_each(resolve);
        self.reward.model.iter_mut().for_each(resolve);
        self.data.train_files.iter_mut().for_each(resolve);
        self.data.val_files.iter_mut().for_each(resolve);
        self.trainer.eval_data_dir.iter_mut().for_each(resolve);
    }

    /// Every problem at once, so a person fixes the file in one go.
    pub fn validate(&self, source_name: &str) -> Result<(), ConfigError> {
        self.validate_with(source_name, false)
    }

    /// [`TrainConfig::validate`], with `blank_locations` allowing empty model and data paths.
    fn validate_with(&self, source_name: &str, blank_locations: bool) -> Result<(), ConfigError> {
        let mut problems: Vec<String> = Vec::new();
        let check = |problems: &mut Vec<String>, ok: bool, message: &str| {
            if !ok {
                problems.push(message.to_string());
            }
        };
        let r = &self.rollout;
        let a = &self.actor;
        check(
            &mut problems,
            blank_locations || !self.model.policy.is_empty(),
            "model.policy is empty (give a model directory or object store URL)",
        );
        check(
            &mut problems,
            !self.data.train_files.is_empty(),
            "data.train_files is empty",
        );
        check(
            &mut problems,
            blank_locations || !self.data.train_files.iter().any(String::is_empty),
            "data.train_files holds an empty path",
        );
        check(
            &mut problems,
            blank_locations || !self.data.val_files.iter().any(String::is_empty),
            "data.val_files holds an empty path",
        );
        let t = &self.trainer;
        check(
            &mut problems,
            t.test_freq == 0 || !self.data.val_files.is_empty() || !t.eval_benchmarks.is_empty(),
            "trainer.test_freq is set but there is nothing to validate on \
             (give data.val_files or trainer.eval_benchmarks)",
        );
        for spec in &t.eval_benchmarks {
            match crate::evaluation::BenchmarkSpec::parse(spec) {
                Err(e) => problems.push(format!("trainer.eval_benchmarks: {e}")),
                Ok(spec) => check(
                    &mut problems,
                    spec.benchmark.kind() != grlo_eval::benchmark::Kind::Judged
                        || self.reward.model.is_some(),
                    &format!(
                        "trainer.eval_benchmarks: {} is judged by the reward model, and \
                         reward.model is not set",
                        spec.benchmark.name()
                    ),
                ),
            }
        }
        if let Some(uri) = &t.mlflow_uri {
            check(
                &mut problems,
                url::Url::parse(uri).is_ok_and(|u| matches!(u.scheme(), "http" | "https")),
                &format!(
                    "trainer.mlflow_uri = {uri:?} is not the http(s):// address of an MLflow \
                     tracking server"
                ),
            );
        }
        check(
            &mut problems,
            t.test_freq > 0
                || t.val_before_train
                || (self.data.val_files.is_empty() && t.eval_benchmarks.is_empty()),
            "data.val_files or trainer.eval_benchmarks is set but never used \
             (trainer.test_freq = 0 and trainer.val_before_train = false)",
        );
        check(
            &mut problems,
            self.data.max_prompt_length > 0,
            "data.max_prompt_length must be positive",
        );
        check(
            &mut problems,
            self.data.max_response_length > 0,
            "data.max_response_length must be positive",
        );
        check(
            &mut problems,
            r.batch_size > 0,
            "rollout.batch_size must be positive",
        );
        check(&mut problems, r.n > 0, "rollout.n must be positive");
        check(
            &mut problems,
            r.temperature >= 0.0,
            "rollout.temperature must be >= 0",
        );
        check(
            &mut problems,
            r.top_p > 0.0 && r.top_p <= 1.0,
            "rollout.top_p must be in (0, 1]",
        );
        check(
            &mut problems,
            r.max_batch_rows > 0,
            "rollout.max_batch_rows must be positive",
        );
        match r.engine {
            RolloutEngine::Builtin => {
                check(
                    &mut problems,
                    r.endpoints.is_empty(),
                    "rollout.endpoints is set but rollout.engine = \"builtin\" does not use it \
                     (set rollout.engine = \"openai\")",
                );
                check(
                    &mut problems,
                    r.reload == RolloutReload::Sglang,
                    "rollout.reload is set but rollout.engine = \"builtin\" does not use it \
                     (it says how external engines load a weight version)",
                );
            }
            RolloutEngine::Openai => {
                check(
                    &mut problems,
                    !r.endpoints.is_empty(),
                    "rollout.engine = \"openai\" needs rollout.endpoints (e.g. \
                     [\"http://127.0.0.1:30000\"])",
                );
                for endpoint in &r.endpoints {
                    check(
                        &mut problems,
                        endpoint.starts_with("http://") || endpoint.starts_with("https://"),
                        &format!("rollout.endpoints: {endpoint:?} is not an http(s):// URL"),
                    );
                }
                check(
                    &mut problems,
                    r.max_in_flight > 0,
                    "rollout.max_in_flight must be positive",
                );
            }
        }
        check(
            &mut problems,
            a.ppo_mini_batch_size > 0,
            "actor.ppo_mini_batch_size must be positive",
        );
        check(
            &mut problems,
            a.ppo_mini_batch_size <= r.batch_size,
            "actor.ppo_mini_batch_size must not exceed rollout.batch_size",
        );
        check(
            &mut problems,
            a.ppo_epochs > 0,
            "actor.ppo_epochs must be positive",
        );
        check(
            &mut problems,
            a.micro_batch_tokens > 0,
            "actor.micro_batch_tokens must be positive",
        );
        check(
            &mut problems,
            a.clip_ratio_low >= 0.0 && a.clip_ratio_low < 1.0,
            "actor.clip_ratio_low must be in [0, 1)",
        );
        check(
            &mut problems,
            a.clip_ratio_high >= 0.0,
            "actor.clip_ratio_high must be >= 0",
        );
        check(
            &mut problems,
            a.clip_ratio_c == 0.0 || a.clip_ratio_c > 1.0,
            "actor.clip_ratio_c must be 0 (off) or greater than 1",
        );
        check(
            &mut problems,
            a.tis_cap >= 0.0,
            "actor.tis_cap must be >= 0",
        );
        for (name, optim) in [("actor", &a.optim), ("critic", &self.critic.optim)] {
            if optim.lr.is_nan() || optim.lr <= 0.0 {
                problems.push(format!("{name}.optim.lr must be positive"));
            }
            if !(0.0..1.0).contains(&optim.betas[0]) || !(0.0..1.0).contains(&optim.betas[1]) {
                problems.push(format!("{name}.optim.betas must be in [0, 1)"));
            }
        }
        check(
            &mut problems,
            self.critic.micro_batch_tokens > 0,
            "critic.micro_batch_tokens must be positive",
        );
        check(
            &mut problems,
            self.critic.ppo_epochs > 0,
            "critic.ppo_epochs must be positive",
        );
        check(
            &mut problems,
            self.job.gpu_hours >= 0.0 && self.job.cpu_hours >= 0.0,
            "job.gpu_hours and job.cpu_hours must be >= 0",
        );
        check(
            &mut problems,
            self.trainer.total_epochs > 0,
            "trainer.total_epochs must be positive",
        );
        check(
            &mut problems,
            ["f32", "bf16", "f16", "float32", "bfloat16", "float16"]
                .contains(&self.trainer.save_dtype.as_str()),
            "trainer.save_dtype must be f32, bf16 or f16",
        );
        let devices = [
            ("trainer.device", Some(&self.trainer.device)),
            ("actor.device", a.device.as_ref()),
            ("critic.device", self.critic.device.as_ref()),
            ("actor.reference_device", a.reference_device.as_ref()),
        ];
        let mut kinds = Vec::new();
        for (key, device) in devices {
            let Some(device) = device else { continue };
            match DeviceName::parse(device) {
                Some(parsed) => kinds.push((key, parsed.is_cuda())),
                None => problems.push(format!(
                    "{key} must be cpu, cuda or cuda:N (got \"{device}\")"
                )),
            }
        }
        if kinds.iter().any(|(_, cuda)| *cuda) && kinds.iter().any(|(_, cuda)| !*cuda) {
            let names: Vec<String> = kinds
                .iter()
                .map(|(key, cuda)| format!("{key} = {}", if *cuda { "cuda" } else { "cpu" }))
                .collect();
            problems.push(format!(
                "one learner trains on CPU or on CUDA devices, not both: {}",
                names.join(", ")
            ));
        }
        if self.trainer.precision == PrecisionSetting::Bf16 && !self.trains_on_cuda() {
            problems.push(
                "trainer.precision = \"bf16\" needs a CUDA device: the CPU backend computes in f32 \
                 (use \"f32\" or \"auto\")"
                    .into(),
            );
        }
        let group_estimators = [
            AdvantageEstimator::Grpo,
            AdvantageEstimator::DrGrpo,
            AdvantageEstimator::Rloo,
            AdvantageEstimator::ReinforcePlusPlusBaseline,
        ];
        if group_estimators.contains(&self.algorithm.advantage) && r.n < 2 {
            problems.push(format!(
                "algorithm.advantage {:?} compares the samples of a prompt: set rollout.n >= 2",
                self.algorithm.advantage
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid {
                source_name: source_name.into(),
                problems,
            })
        }
    }

    /// Whether the models train on CUDA devices.
    pub fn trains_on_cuda(&self) -> bool {
        self.policy_device().is_cuda()
    }

    /// Where the policy trains.
    pub fn policy_device(&self) -> DeviceName {
        let name = self.actor.device.as_ref().unwrap_or(&self.trainer.device);
        DeviceName::parse(name).unwrap_or(DeviceName::Cpu)
    }

    /// Where the critic trains.
    pub fn critic_device(&self) -> DeviceName {
        let name = self.critic.device.as_ref().unwrap_or(&self.trainer.device);
        DeviceName::parse(name).unwrap_or(DeviceName::Cpu)
    }

    /// Where the reference policy lives.
    pub fn reference_device(&self) -> DeviceName {
        match &self.actor.reference_device {
            Some(name) => DeviceName::parse(name).unwrap_or(DeviceName::Cpu),
            None => self.policy_device(),
        }
    }

    /// The distinct devices the learner's models use.
    pub fn learner_devices(&self) -> Vec<DeviceName> {
        let mut devices = vec![self.policy_device()];
        if self.uses_critic() {
            devices.push(self.critic_device());
        }
        if self.uses_reference() {
            devices.push(self.reference_device());
        }
        devices.sort();
        devices.dedup();
        devices
    }

    /// What the models compute in: `auto` is bf16 on CUDA and f32 on CPU.
    pub fn precision(&self) -> grlo_model::model::Precision {
        use grlo_model::model::Precision;
        match self.trainer.precision {
            PrecisionSetting::F32 => Precision::F32,
            PrecisionSetting::Bf16 => Precision::Bf16,
            PrecisionSetting::Auto if self.trains_on_cuda() => Precision::Bf16,
            PrecisionSetting::Auto => Precision::F32,
        }
    }

    /// Whether this configuration trains a critic.
    pub fn uses_critic(&self) -> bool {
        self.algorithm.advantage == AdvantageEstimator::Gae
    }

    /// Whether a frozen reference policy is needed.
    pub fn uses_reference(&self) -> bool {
        self.algorithm.use_kl_in_reward || self.actor.use_kl_loss
    }
}

/// The settings a resumed run may change (a key, or a section whose keys all may): how long it
/// runs, how often it saves and validates, where it logs, the learning rates and their
/// schedules, and the job's name and budgets. Everything else (models, data, batch shapes,
/// seeds, losses) would make the checkpoint and the trained steps mean something else.
pub const RESUMABLE: &[&str] = &[
    "trainer.total_steps",
    "trainer.total_epochs",
    "trainer.save_every",
    "trainer.max_checkpoints_to_keep",
    "trainer.test_freq",
    "trainer.best_metric",
    "trainer.logger",
    "trainer.mlflow_uri",
    "trainer.project_name",
    "trainer.experiment_name",
    "actor.optim.lr",
    "actor.optim.schedule",
    "critic.optim.lr",
    "critic.optim.schedule",
    "job.name",
    "job.gpu_hours",
    "job.cpu_hours",
    "job.price_per_gpu_hour",
];

/// Every leaf of a TOML value as `a.b.c` → its TOML text (arrays whole).
fn flatten(
    prefix: &str,
    value: &toml::Value,
    out: &mut std::collections::BTreeMap<String, String>,
) {
    match value {
        toml::Value::Table(table) => {
            for (key, value) in table {
                let key = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                flatten(&key, value, out);
            }
        }
        leaf => {
            out.insert(prefix.to_string(), leaf.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [model]
        policy = "models/policy"
        [data]
        train_files = ["prompts.jsonl"]
    "#;

    #[test]
    fn a_resumed_run_may_change_only_the_resumable_keys() {
        let base = TrainConfig::from_toml(MINIMAL, "test", Path::new("/base")).unwrap();
        let set = |items: &[&str]| {
            let items: Vec<String> = items.iter().map(|s| s.to_string()).collect();
            base.clone().with_overrides(&items, "test").unwrap()
        };
        assert_eq!(
            base.changes_on_resume(&base.clone()).unwrap(),
            Vec::<String>::new()
        );
        let longer = set(&[
            "trainer.total_steps=8",
            "trainer.save_every=2",
            "actor.optim.schedule.warmup_steps=3",
        ]);
        assert_eq!(
            base.changes_on_resume(&longer).unwrap(),
            [
                "actor.optim.schedule.warmup_steps: (unset) -> 3",
                "trainer.save_every: 0 -> 2",
                "trainer.total_steps: (unset) -> 8",
            ]
        );
        let other = set(&["rollout.n=4", "trainer.seed=7", "trainer.total_steps=8"]);
        let message = base.changes_on_resume(&other).unwrap_err().to_string();
        assert!(
            message.contains("cannot change rollout.n: 1 -> 4, trainer.seed: 42 -> 7 (only"),
            "{message}"
        );
        assert!(
            !message.contains("cannot change trainer.total_steps"),
            "{message}"
        );
    }

    #[test]
    fn a_minimal_config_takes_the_papers_defaults() {
        let c = TrainConfig::from_toml(MINIMAL, "minimal.toml", Path::new("/base")).unwrap();
        assert_eq!(c.model.policy, "/base/models/policy");
        assert_eq!(c.algorithm.advantage, AdvantageEstimator::Gae);
        assert_eq!((c.actor.optim.lr, c.critic.optim.lr), (1e-6, 1e-5));
        assert_eq!(c.actor.clip_ratio_c, 3.0);
        assert_eq!(c.rollout.batch_size, 1024);
        assert!(c.uses_critic() && !c.uses_reference());
    }

    #[test]
    fn the_rollout_engine_and_its_endpoints_go_together() {
        let parse = |rollout: &str| {
            let text = format!("{MINIMAL}\n[rollout]\n{rollout}\n");
            TrainConfig::from_toml(&text, "x.toml", Path::new("."))
        };
        let ok = parse("engine = \"openai\"\nendpoints = [\"http://127.0.0.1:30000\"]").unwrap();
        assert_eq!(ok.rollout.engine, RolloutEngine::Openai);
        assert_eq!(ok.rollout.max_in_flight, 64);
        assert_eq!(ok.rollout.reload, RolloutReload::Sglang);
        assert_eq!(parse("").unwrap().rollout.engine, RolloutEngine::Builtin);
        let vllm = "engine = \"openai\"\nendpoints = [\"http://a:1\"]\nreload = \"vllm\"";
        assert_eq!(parse(vllm).unwrap().rollout.reload, RolloutReload::Vllm);
        for (rollout, expected) in [
            ("engine = \"openai\"", "needs rollout.endpoints"),
            ("endpoints = [\"http://a:1\"]", "does not use it"),
            (
                "engine = \"openai\"\nendpoints = [\"a:1\"]",
                "not an http(s):// URL",
            ),
            (
                "engine = \"openai\"\nendpoints = [\"http://a:1\"]\nmax_in_flight = 0",
                "rollout.max_in_flight",
            ),
            ("engine = \"vllm\"", "engine"),
            ("reload = \"vllm\"", "rollout.reload is set"),
            (
                "engine = \"openai\"\nendpoints = [\"http://a:1\"]\nreload = \"disk\"",
                "reload",
            ),
        ] {
            let err = parse(rollout).unwrap_err().to_string();
            assert!(err.contains(expected), "{rollout}: {err}");
        }
    }

    #[test]
    fn unknown_keys_are_errors_naming_the_key() {
        let text = format!("{MINIMAL}\n[actor]\nlearning_rate = 1.0\n");
        let err = TrainConfig::from_toml(&text, "x.toml", Path::new("."))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("x.toml") && err.contains("learning_rate"),
            "{err}"
        );
    }

    #[test]
    fn every_invalid_value_is_listed() {
        let text = format!(
            "{MINIMAL}\n[rollout]\nbatch_size = 0\nn = 0\ntemperature = 1.0\ntop_p = 2.0\ntop_k = 0\nmax_batch_rows = 8\n"
        );
        let err = TrainConfig::from_toml(&text, "x.toml", Path::new("."))
            .unwrap_err()
            .to_string();
        for expected in ["rollout.batch_size", "rollout.n", "rollout.top_p"] {
            assert!(err.contains(expected), "{err} should list {expected}");
        }
    }

    #[test]
    fn overrides_set_nested_keys_and_are_validated() {
        let c = TrainConfig::from_toml(MINIMAL, "m.toml", Path::new(".")).unwrap();
        let c = c
            .with_overrides(
                &["actor.optim.lr=0.5".into(), "trainer.run_dir=runs/x".into()],
                "m.toml",
            )
            .unwrap();
        assert_eq!(c.actor.optim.lr, 0.5);
        assert_eq!(c.trainer.run_dir, "runs/x");
        let err = c
            .with_overrides(&["rollout.n=0".into()], "m.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("rollout.n"), "{err}");
    }
}
