//! `grlo plan`: the GPU memory a job needs, per role, computed from its models' configs
//! ([`grlo_model::footprint`]) and its job spec, whether it fits a kind of GPU, and a layout
//! of its roles over N of them.
//!
//! Roles: the policy and the critic train in the learner (f32 weights, gradients and AdamW
//! moments; activations of one micro-batch), a reference policy (when a KL term needs one)
//! sits beside them in bf16, the reward server scores in bf16, and every actor holds the
//! policy in bf16 with a KV cache for its batch. Each role must fit one GPU (grlo does not
//! shard a model); roles then share GPUs where they fit together, and spare GPUs get more
//! actors.

mod report;

use std::path::{Path, PathBuf};

use grlo_model::backend::{CUDA_ATTENTION_BLOCK_ELEMENTS, CUDA_LOGITS_CHUNK_ELEMENTS};
use grlo_model::config::HeadKind;
use grlo_model::footprint::{self, Head, TrainingShape};
use grlo_model::model::Precision;
use grlo_model::{EngineLimits, ModelConfig};

use crate::config::{PrecisionSetting, RolloutEngine, TrainConfig};

pub use report::render;

const GIB: f64 = (1u64 << 30) as f64;

/// A kind of GPU, by the memory its driver reports.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Gpu {
    pub name: &'static str,
    pub bytes: u64,
}

/// The GPUs `grlo plan --gpu` knows (memory as `nvidia-smi` reports it).
pub const GPUS: &[Gpu] = &[
    Gpu {
        name: "h100-80gb",
        bytes: 81_559 << 20,
    },
    Gpu {
        name: "a100-80gb",
        bytes: 81_920 << 20,
    },
    Gpu {
        name: "h200-141gb",
        bytes: 143_771 << 20,
    },
];

impl Gpu {
    pub fn named(name: &str) -> Result<Gpu, PlanError> {
        GPUS.iter()
            .find(|g| g.name == name)
            .copied()
            .ok_or_else(|| PlanError::UnknownGpu(name.to_string()))
    }

    /// What a role may use: the card less the CUDA context and the allocator's slack (5% and
    /// 1 GiB).
    pub fn usable(&self) -> u64 {
        self.bytes - self.bytes / 20 - (1 << 30)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("unknown GPU {0:?}: grlo plan knows {known}", known = known_gpus())]
    UnknownGpu(String),
    #[error("--gpus must be at least 1")]
    NoGpus,
    #[error(
        "the {role} model's shape: {what} is {location:?}; give its config.json with {flag} \
         (configs/shapes/ has the paper's models)"
    )]
    NoShape {
        role: &'static str,
        what: &'static str,
        location: String,
        flag: &'static str,
    },
    #[error("the {role} model's config {path}: {message}")]
    BadShape {
        role: &'static str,
        path: PathBuf,
        message: String,
    },
}

fn known_gpus() -> String {
    GPUS.iter().map(|g| g.name).collect::<Vec<_>>().join(", ")
}

/// Where the models' shapes come from: config files given on the command line, else the
/// `config.json` of the job's local model directories.
#[derive(Clone, Debug, Default)]
pub struct ShapeSources {
    pub policy: Option<PathBuf>,
    pub critic: Option<PathBuf>,
    pub reward: Option<PathBuf>,
}

/// The roles of a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Policy,
    Critic,
    Reference,
    RewardServer,
    Actor,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Policy => "policy (learner)",
            Role::Critic => "critic (learner)",
            Role::Reference => "reference (learner)",
            Role::RewardServer => "reward server",
            Role::Actor => "actor",
        }
    }

    fn in_learner(self) -> bool {
        matches!(self, Role::Policy | Role::Critic | Role::Reference)
    }
}

/// One line of a role's memory.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Item {
    pub what: String,
    pub bytes: u64,
}

/// What one role needs on its GPU.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RoleMemory {
    pub role: Role,
    pub parameters: u64,
    /// Counted in [`RoleMemory::total`].
    pub items: Vec<Item>,
    /// Shown beside the items, not counted (the other checkpointing setting).
    pub notes: Vec<Item>,
    pub total: u64,
}

/// A GPU of the proposed layout and the roles on it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct GpuLoad {
    pub index: usize,
    pub roles: Vec<Role>,
    pub bytes: u64,
}

/// `grlo plan`'s answer.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Plan {
    pub gpu: Gpu,
    pub gpus: usize,
    pub usable_per_gpu: u64,
    pub precision: Precision,
    pub roles: Vec<RoleMemory>,
    /// One GPU per entry, `None` when the roles cannot be placed on `gpus` GPUs.
    pub layout: Option<Vec<GpuLoad>>,
    /// Config lines that place the learner's models as the layout does.
    pub settings: Vec<String>,
    /// What does not fit, by how much, and what to change.
    pub problems: Vec<String>,
}

impl Plan {
    pub fn fits(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Plans `config` on `gpus` GPUs of kind `gpu`.
pub fn plan(
    config: &TrainConfig,
    shapes: &ShapeSources,
    gpu: Gpu,
    gpus: usize,
) -> Result<Plan, PlanError> {
    if gpus == 0 {
        return Err(PlanError::NoGpus);
    }
    let models = Models::load(config, shapes)?;
    let job = Job::of(config);
    let usable = gpu.usable();
    let mut roles = vec![job.learner(Role::Policy, &models.policy, config)];
    if let Some(critic) = &models.critic {
        roles.push(job.learner(Role::Critic, critic, config));
    }
    if config.uses_reference() {
        roles.push(job.reference(&models.policy));
    }
    if let Some(reward) = &models.reward {
        roles.push(job.reward_server(reward, config.reward.batch_tokens));
    }
    roles.push(match config.rollout.engine {
        RolloutEngine::Builtin => job.actor(
            &models.policy,
            config.rollout.max_batch_rows,
            config.rollout.max_cache_tokens,
        ),
        RolloutEngine::Openai => external_engine(&models.policy, usable),
    });

    let mut problems = Vec::new();
    for role in &roles {
        if role.total > usable {
            problems.push(job.advice(role, &models, config, gpu));
        }
    }
    let layout = if problems.is_empty() {
        let layout = pack(&roles, usable, gpus);
        if layout.is_none() {
            problems.push(too_few_gpus(&roles, usable, gpus, gpu));
        }
        layout
    } else {
        None
    };
    let settings = layout.as_deref().map(settings_for).unwrap_or_default();
    Ok(Plan {
        gpu,
        gpus,
        usable_per_gpu: usable,
        precision: job.precision,
        roles,
        layout,
        settings,
        problems,
    })
}

/// The shapes of the job's models.
struct Models {
    policy: ModelConfig,
    critic: Option<ModelConfig>,
    reward: Option<ModelConfig>,
}

impl Models {
    fn load(config: &TrainConfig, shapes: &ShapeSources) -> Result<Models, PlanError> {
        let policy = shape(
            "policy",
            shapes.policy.as_deref(),
            Some(&config.model.policy),
            "model.policy",
            "--policy-shape",
        )?;
        let critic = if config.uses_critic() {
            let critic = match (&shapes.critic, &config.model.critic) {
                (None, None) => policy.clone(),
                (given, location) => shape(
                    "critic",
                    given.as_deref(),
                    location.as_ref(),
                    "model.critic",
                    "--critic-shape",
                )?,
            };
            Some(critic.with_head(HeadKind::TokenClassification { num_labels: 1 }))
        } else {
            None
        };
        let reward = match (&shapes.reward, &config.reward.model) {
            (None, None) => None,
            (given, location) => Some(shape(
                "reward",
                given.as_deref(),
                location.as_ref(),
                "reward.model",
                "--reward-shape",
            )?),
        };
        Ok(Models {
            policy,
            critic,
            reward,
        })
    }
}

/// A model's config from `given`, else from the local directory `location`.
fn shape(
    role: &'static str,
    given: Option<&Path>,
    location: Option<&String>,
    what: &'static str,
    flag: &'static str,
) -> Result<ModelConfig, PlanError> {
    let path = match given {
        Some(path) if path.is_dir() => grlo_model::config::config_path(path),
        Some(path) => path.to_path_buf(),
        None => {
            let location = location.map(String::as_str).unwrap_or("");
            let dir = Path::new(location);
            if location.is_empty() || location.contains("://") || !dir.is_dir() {
                return Err(PlanError::NoShape {
                    role,
                    what,
                    location: location.to_string(),
                    flag,
                });
            }
            grlo_model::config::config_path(dir)
        }
    };
    ModelConfig::from_file(&path).map_err(|e| PlanError::BadShape {
        role,
        path,
        message: e.to_string(),
    })
}

/// The job's sizes that memory depends on.
struct Job {
    precision: Precision,
    /// Prompt and response: the longest sequence a micro-batch holds.
    seq: usize,
    prompt: usize,
    reward_seq: usize,
}

impl Job {
    fn of(config: &TrainConfig) -> Job {
        // A plan is for GPUs: `auto` computes in bf16 there.
        let precision = match config.trainer.precision {
            PrecisionSetting::F32 => Precision::F32,
            PrecisionSetting::Bf16 | PrecisionSetting::Auto => Precision::Bf16,
        };
        let seq = config.data.max_prompt_length + config.data.max_response_length;
        Job {
            precision,
            seq,
            prompt: config.data.max_prompt_length,
            reward_seq: seq.min(config.reward.max_length),
        }
    }

    fn shape(&self, rows: usize, seq: usize, head: Head, checkpointing: bool) -> TrainingShape {
        TrainingShape {
            rows,
            seq,
            head,
            checkpointing,
            precision: self.precision,
            attention_block_elements: CUDA_ATTENTION_BLOCK_ELEMENTS,
            logits_chunk_elements: CUDA_LOGITS_CHUNK_ELEMENTS,
        }
    }

    /// Rows of full-length sequences in a micro-batch of `budget` tokens (a sequence longer
    /// than the budget is a micro-batch of its own).
    fn rows(&self, budget: usize) -> usize {
        (budget / self.seq).max(1)
    }

    /// The policy or the critic in the learner, at its configured micro-batch and
    /// checkpointing (the other setting as a note).
    fn learner(&self, role: Role, model: &ModelConfig, config: &TrainConfig) -> RoleMemory {
        let (budget, checkpointing) = self.training_settings(role, config);
        self.learner_at(role, model, budget, checkpointing)
    }

    fn training_settings(&self, role: Role, config: &TrainConfig) -> (usize, bool) {
        match role {
            Role::Critic => (
                config.critic.micro_batch_tokens,
                config.critic.gradient_checkpointing,
            ),
            _ => (
                config.actor.micro_batch_tokens,
                config.actor.gradient_checkpointing,
            ),
        }
    }

    fn learner_at(
        &self,
        role: Role,
        model: &ModelConfig,
        budget: usize,
        checkpointing: bool,
    ) -> RoleMemory {
        let head = if role == Role::Critic {
            Head::Values
        } else {
            Head::LogProbs
        };
        let rows = self.rows(budget);
        let parameters = footprint::parameters(model);
        let step =
            footprint::training_bytes(model, &self.shape(rows, self.seq, head, checkpointing));
        let other =
            footprint::training_bytes(model, &self.shape(rows, self.seq, head, !checkpointing));
        let on_off = |on: bool| if on { "on" } else { "off" };
        let tokens = format!("{rows} x {} tokens", self.seq);
        let mut items = vec![
            item("weights (f32 master copy)", 4 * parameters),
            item("gradients (f32)", step.gradients),
            item("AdamW moments (f32)", 8 * parameters),
            item(
                format!(
                    "activations, {tokens}, checkpointing {}",
                    on_off(checkpointing)
                ),
                step.activations,
            ),
        ];
        if self.precision == Precision::Bf16 {
            // Each matmul casts its f32 weight; the largest is the embedding used as the head.
            let largest = (model.vocab_size * model.hidden_size) as u64;
            items.push(item("bf16 copy of the largest weight", 2 * largest));
        }
        let notes = vec![item(
            format!(
                "activations, {tokens}, checkpointing {} (not counted)",
                on_off(!checkpointing)
            ),
            other.activations,
        )];
        memory(role, parameters, items, notes)
    }

    fn reference(&self, model: &ModelConfig) -> RoleMemory {
        let parameters = footprint::parameters(model);
        let forward =
            footprint::forward_bytes(model, &self.shape(1, self.seq, Head::LogProbs, false));
        let items = vec![
            item("weights (bf16)", 2 * parameters),
            item(format!("forward, 1 x {} tokens", self.seq), forward),
        ];
        memory(Role::Reference, parameters, items, Vec::new())
    }

    fn reward_server(&self, model: &ModelConfig, batch_tokens: usize) -> RoleMemory {
        let parameters = footprint::parameters(model);
        let rows = (batch_tokens / self.reward_seq).max(1);
        let forward = footprint::forward_bytes(
            model,
            &self.shape(rows, self.reward_seq, Head::Score, false),
        );
        let items = vec![
            item("weights (bf16)", 2 * parameters),
            item(
                format!("scoring, {rows} x {} tokens", self.reward_seq),
                forward,
            ),
        ];
        memory(Role::RewardServer, parameters, items, Vec::new())
    }

    fn actor(&self, model: &ModelConfig, rows: usize, max_cache_tokens: usize) -> RoleMemory {
        let parameters = footprint::parameters(model);
        // The engine's slot cache: every row reserves its prompt and response, within the
        // token budget when one is set.
        let tokens = match max_cache_tokens {
            0 => rows * self.seq,
            budget => budget.min(rows * self.seq),
        };
        let cache = footprint::kv_cache_bytes(model, tokens as u64, Precision::Bf16);
        // Prompts are prefilled a batch of at most `max_prefill_tokens` positions at a time.
        let prefill_rows =
            (EngineLimits::default().max_prefill_tokens / self.prompt.max(1)).clamp(1, rows.max(1));
        let prefill = footprint::forward_bytes(
            model,
            &self.shape(prefill_rows, self.prompt, Head::Score, false),
        );
        let logits = (rows * model.vocab_size) as u64 * 4;
        let cached_rows = tokens / self.seq.max(1);
        let items = vec![
            item("weights (bf16)", 2 * parameters),
            item(
                format!("KV cache, {cached_rows} rows x {} tokens (bf16)", self.seq),
                cache,
            ),
            item(
                format!("prefill, {prefill_rows} x {} tokens", self.prompt),
                prefill,
            ),
            item("logits of one decoding step (f32)", logits),
        ];
        memory(Role::Actor, parameters, items, Vec::new())
    }

    /// Why `role` does not fit one GPU, by how much, and what would make it fit.
    fn advice(&self, role: &RoleMemory, models: &Models, config: &TrainConfig, gpu: Gpu) -> String {
        let usable = gpu.usable();
        let over = format!(
            "{} needs {} on one {} ({} usable): {} over",
            role.role.name(),
            gib(role.total),
            gpu.name,
            gib(usable),
            gib(role.total - usable)
        );
        // The smallest GPU grlo knows that holds the role.
        let bigger = GPUS
            .iter()
            .filter(|g| g.usable() >= role.total)
            .min_by_key(|g| g.bytes);
        let larger = match bigger {
            Some(g) => format!("a GPU with more memory ({})", g.name),
            None => "a smaller model (no GPU grlo knows holds it)".to_string(),
        };
        let mut changes = Vec::new();
        match role.role {
            Role::Policy | Role::Critic => {
                let (model, section) = if role.role == Role::Critic {
                    let critic = models.critic.as_ref().expect("a critic role has a critic");
                    (critic, "critic")
                } else {
                    (&models.policy, "actor")
                };
                let (budget, checkpointing) = self.training_settings(role.role, config);
                if !checkpointing {
                    let on = self.learner_at(role.role, model, budget, true);
                    if on.total <= usable {
                        changes.push(format!(
                            "{section}.gradient_checkpointing = true (needs {})",
                            gib(on.total)
                        ));
                    }
                }
                let fit = first_halving_that_fits(budget, self.seq, usable, |tokens| {
                    self.learner_at(role.role, model, tokens, true).total
                });
                if let Some((smaller, total)) = fit {
                    let also = if checkpointing {
                        ""
                    } else {
                        " with gradient_checkpointing = true"
                    };
                    changes.push(format!(
                        "{section}.micro_batch_tokens = {smaller}{also} (needs {})",
                        gib(total)
                    ));
                }
                let state = 16 * role.parameters;
                if state > usable {
                    changes.push(format!(
                        "nothing in the job spec: the weights, gradients and AdamW moments alone \
                         take {} (grlo keeps a model's training state on one device); use {larger}",
                        gib(state)
                    ));
                } else if changes.is_empty() || bigger.is_some() {
                    changes.push(larger);
                }
            }
            Role::Actor => {
                let rows = config.rollout.max_batch_rows;
                let fit = (1..rows)
                    .rev()
                    .map(|r| (r, self.actor(&models.policy, r, 0).total))
                    .find(|&(_, total)| total <= usable);
                if let Some((fit, total)) = fit {
                    changes.push(format!(
                        "rollout.max_batch_rows = {fit} (needs {})",
                        gib(total)
                    ));
                }
                changes.push("shorter data.max_prompt_length + data.max_response_length".into());
                if bigger.is_some() {
                    changes.push(larger);
                }
            }
            Role::RewardServer => {
                let reward = models.reward.as_ref().expect("a reward role has a model");
                let fit = first_halving_that_fits(
                    config.reward.batch_tokens,
                    self.reward_seq,
                    usable,
                    |tokens| self.reward_server(reward, tokens).total,
                );
                if let Some((tokens, total)) = fit {
                    changes.push(format!(
                        "reward.batch_tokens = {tokens} (needs {})",
                        gib(total)
                    ));
                }
                if changes.is_empty() || bigger.is_some() {
                    changes.push(larger);
                }
            }
            Role::Reference => {
                changes.push(format!(
                    "actor.reference_device on a GPU of its own, or {larger}"
                ));
            }
        }
        format!("{over}; change: {}", changes.join(", or "))
    }
}

/// Halves a token budget from `budget` down to `floor` (one sequence) and returns the first
/// that fits `usable`, with what it needs.
fn first_halving_that_fits(
    budget: usize,
    floor: usize,
    usable: u64,
    needs: impl Fn(usize) -> u64,
) -> Option<(usize, u64)> {
    let mut tokens = budget;
    while tokens > floor {
        tokens = (tokens / 2).max(floor);
        let total = needs(tokens);
        if total <= usable {
            return Some((tokens, total));
        }
    }
    None
}

/// An actor whose engine is an external server (`rollout.engine = "openai"`, e.g. an SGLang
/// sidecar): the GPU is the engine's, which sizes its own memory (weights, KV cache) from a
/// fraction of the whole, so the role takes a GPU of its own and grlo holds nothing on it.
fn external_engine(model: &ModelConfig, usable: u64) -> RoleMemory {
    let items = vec![item(
        "the external engine's GPU (the engine sizes its own memory: SGLang's \
         --mem-fraction-static)",
        usable,
    )];
    memory(Role::Actor, footprint::parameters(model), items, Vec::new())
}

fn item(what: impl Into<String>, bytes: u64) -> Item {
    Item {
        what: what.into(),
        bytes,
    }
}

fn memory(role: Role, parameters: u64, items: Vec<Item>, notes: Vec<Item>) -> RoleMemory {
    let total = items.iter().map(|i| i.bytes).sum();
    RoleMemory {
        role,
        parameters,
        items,
        notes,
        total,
    }
}

/// Places the roles, largest first, each on the first GPU with room (learner models only
/// with each other: the learner is one process), then one more actor on every GPU that can
/// hold one. `None` when some role finds no GPU.
fn pack(roles: &[RoleMemory], usable: u64, gpus: usize) -> Option<Vec<GpuLoad>> {
    let mut loads: Vec<GpuLoad> = (0..gpus)
        .map(|index| GpuLoad {
            index,
            roles: Vec::new(),
            bytes: 0,
        })
        .collect();
    let mut order: Vec<&RoleMemory> = roles.iter().collect();
    order.sort_by_key(|r| std::cmp::Reverse(r.total));
    for role in order {
        let slot = loads.iter_mut().find(|load| {
            load.bytes + role.total <= usable
                && load
                    .roles
                    .iter()
                    .all(|other| other.in_learner() == role.role.in_learner())
        })?;
        slot.roles.push(role.role);
        slot.bytes += role.total;
    }
    // Spare GPUs run more actors.
    let actor = roles.iter().find(|r| r.role == Role::Actor)?;
    for load in loads.iter_mut().filter(|l| l.roles.is_empty()) {
        if actor.total <= usable {
            load.roles.push(Role::Actor);
            load.bytes += actor.total;
        }
    }
    Some(loads)
}

/// How many GPUs the roles need, when `gpus` are too few.
fn too_few_gpus(roles: &[RoleMemory], usable: u64, gpus: usize, gpu: Gpu) -> String {
    let needed = (gpus + 1..gpus + roles.len() + 1)
        .find(|&n| pack(roles, usable, n).is_some())
        .unwrap_or(gpus + roles.len());
    format!(
        "the roles need {needed} x {} (have {gpus}): {}; change: --gpus {needed}, or the changes \
         that make a role smaller",
        gpu.name,
        roles
            .iter()
            .map(|r| format!("{} {}", r.role.name(), gib(r.total)))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// `actor.device` / `critic.device` / `actor.reference_device` as the layout places them,
/// numbered among the learner's GPUs.
fn settings_for(layout: &[GpuLoad]) -> Vec<String> {
    let learner: Vec<&GpuLoad> = layout
        .iter()
        .filter(|l| l.roles.iter().any(|r| r.in_learner()))
        .collect();
    let device = |role: Role| {
        learner
            .iter()
            .position(|l| l.roles.contains(&role))
            .map(|i| format!("\"cuda:{i}\""))
    };
    let mut settings = Vec::new();
    for (role, key) in [
        (Role::Policy, "actor.device"),
        (Role::Critic, "critic.device"),
        (Role::Reference, "actor.reference_device"),
    ] {
        if let Some(device) = device(role) {
            settings.push(format!("{key} = {device}"));
        }
    }
    settings
}

/// Bytes in GiB, for people.
pub fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / GIB)
}
