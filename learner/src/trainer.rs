//! The single-process training loop behind `grlo train`: prompts → rollout → rewards →
//! learner step → metrics and checkpoints, repeated.
//!
//! The pieces it strings together (rollout::rollout, rollout::score, Learner::train_on) pass
//! plain trajectories between them, so the distributed roles can run the same code apart.

use grlo_model::backend::ModelAutodiffBackend;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::AutodiffModule;
use grlo_model::pretrained::copy_auxiliary_files;
use grlo_model::safetensors_io::{StoredDtype, write_safetensors_file};
use grlo_model::{FinishReason, HeadKind, Model, Pretrained, SamplingParams, Tokenizer};
use serde::Serialize;

use crate::checkpoint::{CheckpointStore, TrainState};
use crate::config::TrainConfig;
use crate::data::{DatasetCursor, PromptRecord, filter_overlong, load_prompts};
use crate::error::{LearnerError, Result};
use crate::learner::{Learner, TrainStats};
use crate::optim::AdamW;
use crate::reward::{RewardModel, Rewards};
use crate::rollout::{PromptTask, RolloutParams, rollout, score};
use crate::tracking::{BackendReport, RunEnd, Tracking};
use crate::trajectory::Trajectory;
use crate::validation::Validation;

/// Rewrites `metrics.jsonl` without the lines of steps after `step` (none when fresh).
fn keep_metrics_up_to(path: &Path, step: usize) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: Vec<&str> = text
        .lines()
        .filter(|line| {
            serde_json::from_str::<serde_json::Value>(line)
                .ok()
                .and_then(|m| m["step"].as_u64())
                .is_some_and(|s| s as usize <= step)
        })
        .collect();
    if kept.len() == text.lines().count() {
        return Ok(());
    }
    let mut rewritten = kept.join("\n");
    if !rewritten.is_empty() {
        rewritten.push('\n');
    }
    grlo_model::safetensors_io::write_atomically(path, rewritten.as_bytes())
        .map_err(|e| LearnerError::Invalid(format!("rewriting {}: {e}", path.display())))
}

/// One line of `metrics.jsonl`.
#[derive(Clone, Debug, Serialize)]
pub struct StepMetrics {
    pub step: usize,
    pub epoch: usize,
    pub reward_mean: f64,
    pub reward_std: f64,
    pub response_len_mean: f64,
    /// Fraction of responses cut by the length limit.
    pub response_clip_frac: f64,
    #[serde(flatten)]
    pub train: TrainStats,
    /// Generated tokens per second of the whole step.
    pub tokens_per_s: f64,
    /// `val/...` metrics, on the steps that validate (`trainer.test_freq`).
    #[serde(flatten)]
    pub validation: BTreeMap<String, f64>,
    pub generate_s: f64,
    pub score_s: f64,
    pub train_s: f64,
    pub step_s: f64,
}

/// What a finished run reports.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub steps: usize,
    pub first_reward_mean: Option<f64>,
    pub last_reward_mean: Option<f64>,
    pub best_reward_mean: Option<f64>,
    pub rejected_steps: usize,
    pub prompts: usize,
    pub prompts_filtered_overlong: usize,
    pub prompts_skipped_malformed: usize,
    pub run_dir: PathBuf,
    pub checkpoint: Option<String>,
    /// The validated step with the largest `trainer.best_metric`, over the whole run
    /// (`metrics.jsonl`, resumed parts included); `None` when no step has it.
    pub best_step: Option<BestStep>,
    pub seconds: f64,
    /// What each tracking backend of `trainer.logger` delivered and lost (none listed: empty).
    pub tracking: BTreeMap<String, BackendReport>,
}

/// A run's best step by a validation metric.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BestStep {
    pub metric: String,
    pub step: u64,
    pub value: f64,
}

/// Everything one training run holds.
pub struct Trainer<A: ModelAutodiffBackend> {
    pub learner: Learner<A>,
    pub tokenizer: Tokenizer,
    policy_dir: PathBuf,
    rewards: Rewards<A::InnerBackend>,
    records: Vec<PromptRecord>,
    prompt_ids: Vec<Vec<u32>>,
    cursor: DatasetCursor,
    rollout_params: RolloutParams,
    run_dir: PathBuf,
    checkpoints: CheckpointStore,
    metrics: std::fs::File,
    /// Where each metrics line goes besides `metrics.jsonl` (`trainer.logger`).
    tracking: Tracking,
    filtered_overlong: usize,
    skipped_malformed: usize,
    history: Vec<f64>,
    rejected: usize,
    last_checkpoint: Option<String>,
    validation: Option<Validation>,
}

/// Which device each of the learner's models lives on (`actor.device`, `critic.device`,
/// `actor.reference_device`).
#[derive(Clone, Debug)]
pub struct Placement<A: ModelAutodiffBackend> {
    pub policy: A::Device,
    pub critic: A::Device,
    pub reference: A::Device,
}

impl<A: ModelAutodiffBackend> Placement<A> {
    /// Every model on one device.
    pub fn single(device: &A::Device) -> Self {
        Placement {
            policy: device.clone(),
            critic: device.clone(),
            reference: device.clone(),
        }
    }
}

impl<A: ModelAutodiffBackend> Trainer<A> {
    /// Sets up a run from its configuration with every model on `device`; with `resume`,
    /// continues from the newest checkpoint of the run.
    pub fn new(config: TrainConfig, device: &A::Device, resume: bool) -> Result<Self> {
        Self::placed(config, &Placement::single(device), resume)
    }

    /// [`Trainer::new`] with the models placed on their own devices.
    pub fn placed(config: TrainConfig, placement: &Placement<A>, resume: bool) -> Result<Self> {
        let device = &placement.policy;
        let precision = config.precision();
        let run_dir = PathBuf::from(&config.trainer.run_dir);
        std::fs::create_dir_all(&run_dir).map_err(|e| LearnerError::write(&run_dir, e))?;
        let checkpoints = CheckpointStore::open(&checkpoint_location(&config))?;
        let restored = if resume {
            let name = checkpoints
                .latest()?
                .ok_or_else(|| LearnerError::Checkpoint {
                    path: checkpoints.location().to_string(),
                    message: "no checkpoint to resume from (no `latest`)".into(),
                })?;
            let local = run_dir.join(".resume").join(&name);
            let _ = std::fs::remove_dir_all(&local);
            checkpoints.download(&name, &local)?;
            tracing::info!(checkpoint = %name, "resuming");
            Some((local, name))
        } else {
            None
        };
        let (restored, resumed_from) = match restored {
            Some((local, name)) => (Some(local), Some(name)),
            None => (None, None),
        };

        // Models: from the checkpoint when resuming, else from the configured locations.
        let policy_location = match &restored {
            Some(dir) => dir.join("policy").display().to_string(),
            None => config.model.policy.clone(),
        };
        let pretrained = Pretrained::<A>::load(&policy_location, device)?;
        let tokenizer = pretrained.tokenizer()?.clone();
        let policy_dir = pretrained.dir.clone();
        let max_positions = pretrained.model.config.max_position_embeddings;
        let stop_token_ids = pretrained.stop_token_ids()?;
        if stop_token_ids.is_empty() {
            return Err(LearnerError::Invalid(format!(
                "policy {policy_location} names no stop token (eos) in its tokenizer or generation config"
            )));
        }
        let policy = pretrained.model.with_precision(precision);
        let critic = if config.uses_critic() {
            let device = &placement.critic;
            let critic = match (&restored, &config.model.critic) {
                (Some(dir), _) => Model::<A>::load(&dir.join("critic"), device)?,
                (None, Some(location)) => {
                    load_as_critic::<A>(location, config.trainer.seed, device)?
                }
                (None, None) => {
                    load_as_critic::<A>(&config.model.policy, config.trainer.seed, device)?
                }
            };
            Some(critic.with_precision(precision))
        } else {
            None
        };
        let reference = if config.uses_reference() {
            let location = config
                .model
                .reference
                .as_deref()
                .unwrap_or(&config.model.policy);
            let reference =
                Pretrained::<A::InnerBackend>::load(location, &placement.reference)?.model;
            // Frozen: held in the compute dtype (bf16 on CUDA) to halve its memory.
            Some(reference.cast_params(precision.dtype()))
        } else {
            None
        };
        let reward_model = match &config.reward.model {
            Some(location) => Some(RewardModel::load(
                location,
                config.reward.max_length,
                config.reward.batch_tokens,
                device,
            )?),
            None => None,
        };

        // Prompts: loaded, rendered with the policy's chat template, overlong ones filtered.
        let Dataset {
            records,
            prompt_ids,
            filtered_overlong,
            skipped_malformed,
        } = load_dataset(&config, &tokenizer)?;
        let mut cursor =
            DatasetCursor::new(records.len(), config.data.shuffle, config.trainer.seed);
        let steps_per_epoch = cursor.steps_per_epoch(config.rollout.batch_size);
        if steps_per_epoch == 0 {
            return Err(LearnerError::Invalid(format!(
                "{} prompts are fewer than one batch (rollout.batch_size = {})",
                records.len(),
                config.rollout.batch_size
            )));
        }
        let mut total_steps = steps_per_epoch * config.trainer.total_epochs;
        if let Some(cap) = config.trainer.total_steps {
            total_steps = total_steps.min(cap);
        }

        let mut learner = Learner {
            policy,
            critic,
            reference,
            policy_optim: AdamW::new(config.actor.optim.clone()),
            critic_optim: AdamW::new(config.critic.optim.clone()),
            step: 0,
            total_steps,
            config: config.clone(),
            interrupt: Default::default(),
        };
        if let Some(dir) = &restored {
            let state = read_state(dir)?;
            learner.step = state.step;
            let inner_device = device.clone();
            learner.policy_optim.load_state(
                state.policy_optimizer_step,
                &dir.join("optimizer/policy.safetensors"),
                &inner_device,
            )?;
            if learner.critic.is_some() {
                learner.critic_optim.load_state(
                    state.critic_optimizer_step,
                    &dir.join("optimizer/critic.safetensors"),
                    &placement.critic,
                )?;
            }
            if state.cursor.len() != records.len() {
                return Err(LearnerError::Checkpoint {
                    path: dir.display().to_string(),
                    message: format!(
                        "its dataset cursor covers {} prompts but the data now has {}",
                        state.cursor.len(),
                        records.len()
                    ),
                });
            }
            cursor = state.cursor;
        }

        let rollout_params = RolloutParams {
            sampling: SamplingParams {
                greedy: false,
                temperature: config.rollout.temperature,
                top_p: config.rollout.top_p,
                top_k: config.rollout.top_k,
                seed: config.trainer.seed,
            },
            max_new_tokens: config.data.max_response_length,
            n: config.rollout.n,
            stop_token_ids,
            max_batch_rows: config.rollout.max_batch_rows,
            max_cache_tokens: config.rollout.max_cache_tokens,
        };
        let validation = Validation::load(&config, &tokenizer, &rollout_params, max_positions)?;
        let resolved = toml::to_string_pretty(&config).expect("a config serialises");
        std::fs::write(run_dir.join("config.toml"), resolved)
            .map_err(|e| LearnerError::write(&run_dir, e))?;
        let metrics_path = run_dir.join("metrics.jsonl");
        // Lines of steps after the checkpoint (a run stopped between writing a step's metrics
        // and checkpointing it) are dropped: those steps run again.
        keep_metrics_up_to(&metrics_path, learner.step)?;
        let metrics = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&metrics_path)
            .map_err(|e| LearnerError::write(&metrics_path, e))?;
        let tracking = Tracking::open(&config, &run_dir)?;

        Ok(Trainer {
            learner,
            tokenizer,
            policy_dir,
            rewards: Rewards::new(reward_model),
            records,
            prompt_ids,
            cursor,
            rollout_params,
            run_dir,
            checkpoints,
            metrics,
            tracking,
            filtered_overlong,
            skipped_malformed,
            history: Vec::new(),
            rejected: 0,
            last_checkpoint: resumed_from,
            validation,
        })
    }

    /// Replaces the reward sources (a custom task, a test).
    pub fn set_rewards(&mut self, rewards: Rewards<A::InnerBackend>) {
        self.rewards = rewards;
    }

    pub fn records(&self) -> &[PromptRecord] {
        &self.records
    }

    pub fn total_steps(&self) -> usize {
        self.learner.total_steps
    }

    /// Token ids a trajectory may hold are below this (the policy's embedding rows).
    pub fn vocab_size(&self) -> usize {
        self.learner.policy.config.vocab_size
    }

    pub fn step_index(&self) -> usize {
        self.learner.step
    }

    /// The current policy's `val/...` metrics (none when nothing is validated on).
    pub fn validate(&mut self) -> Result<BTreeMap<String, f64>> {
        let Some(validation) = &self.validation else {
            return Ok(BTreeMap::new());
        };
        let started = Instant::now();
        let policy = self.learner.policy.valid();
        let metrics = validation.run(
            &policy,
            &self.tokenizer,
            &mut self.rewards,
            self.learner.step as u64,
        )?;
        tracing::info!(step = self.learner.step, seconds = started.elapsed().as_secs_f64(),
            metrics = ?metrics, "validated");
        Ok(metrics)
    }

    /// The best step so far by `trainer.best_metric`, from `metrics.jsonl`.
    fn best_step(&self) -> Option<BestStep> {
        let metric = &self.learner.config.trainer.best_metric;
        let text = std::fs::read_to_string(self.run_dir.join("metrics.jsonl")).ok()?;
        let lines: Vec<serde_json::Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        crate::validation::best_step(&lines, metric).map(|(step, value)| BestStep {
            metric: metric.clone(),
            step,
            value,
        })
    }

    /// Whether the step just trained (`learner.step`) validates: every `trainer.test_freq`
    /// steps and after the last.
    fn validates_now(&self) -> bool {
        let every = self.learner.config.trainer.test_freq;
        self.validation.is_some()
            && every > 0
            && (self.learner.step.is_multiple_of(every)
                || self.learner.step == self.learner.total_steps)
    }

    /// With `trainer.val_before_train`, validates the untrained policy of a fresh run into a
    /// `metrics.jsonl` line of step 0.
    pub fn validate_before_training(&mut self) -> Result<Option<serde_json::Value>> {
        let path = self.run_dir.join("metrics.jsonl");
        let done_before = std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .any(|l| serde_json::from_str::<serde_json::Value>(l).is_ok_and(|m| m["step"] == 0));
        if self.validation.is_none()
            || !self.learner.config.trainer.val_before_train
            || self.learner.step != 0
            || done_before
        {
            return Ok(None);
        }
        let mut line = serde_json::Map::new();
        line.insert("step".into(), 0.into());
        for (key, value) in self.validate()? {
            line.insert(key, value.into());
        }
        let line = serde_json::Value::Object(line);
        writeln!(self.metrics, "{line}")
            .map_err(|e| LearnerError::write(self.run_dir.join("metrics.jsonl"), e))?;
        self.tracking.log(&line);
        Ok(Some(line))
    }

    /// Runs the remaining steps, saving every `save_every` steps and at the end;
    /// `on_step` sees each step's metrics (for progress display).
    pub fn run(&mut self, mut on_step: impl FnMut(&StepMetrics)) -> Result<Summary> {
        let start = Instant::now();
        self.validate_before_training()?;
        let save_every = self.learner.config.trainer.save_every;
        while self.learner.step < self.learner.total_steps {
            let metrics = self.step()?;
            on_step(&metrics);
            let done = self.learner.step;
            if metrics.train.rejected.is_none()
                && save_every > 0
                && done.is_multiple_of(save_every)
                && done < self.learner.total_steps
            {
                self.save()?;
            }
        }
        if self.last_checkpoint.as_deref() != Some(&format!("step-{}", self.learner.step)) {
            self.save()?;
        }
        let tracking = self.finish_tracking(RunEnd::Finished);
        let summary = Summary {
            steps: self.learner.step,
            first_reward_mean: self.history.first().copied(),
            last_reward_mean: self.history.last().copied(),
            best_reward_mean: self.history.iter().copied().reduce(f64::max),
            rejected_steps: self.rejected,
            prompts: self.records.len(),
            prompts_filtered_overlong: self.filtered_overlong,
            prompts_skipped_malformed: self.skipped_malformed,
            run_dir: self.run_dir.clone(),
            checkpoint: self.last_checkpoint.clone(),
            best_step: self.best_step(),
            seconds: start.elapsed().as_secs_f64(),
            tracking,
        };
        let text = serde_json::to_string_pretty(&summary).expect("a summary serialises");
        let path = self.run_dir.join("summary.json");
        std::fs::write(&path, text).map_err(|e| LearnerError::write(&path, e))?;
        Ok(summary)
    }

    /// Ends the run for the tracking backends (MLflow's run is closed with `end` and the
    /// run's summary), with what each delivered and lost; also in `RUN_DIR/tracking.json`.
    pub fn finish_tracking(&mut self, end: RunEnd) -> BTreeMap<String, BackendReport> {
        let summary = serde_json::json!({
            "steps": self.learner.step,
            "first_reward_mean": self.history.first(),
            "last_reward_mean": self.history.last(),
            "best_reward_mean": self.history.iter().copied().reduce(f64::max),
            "rejected_steps": self.rejected,
            "checkpoint": self.last_checkpoint,
            "best_step": self.best_step(),
        });
        self.tracking.finish(end, &summary)
    }

    /// The prompts of the next step.
    fn next_tasks(&mut self) -> (Vec<PromptTask>, usize) {
        let (indices, epoch) = self
            .cursor
            .next_batch(self.learner.config.rollout.batch_size);
        let seed = self.learner.config.trainer.seed;
        let step = self.learner.step as u64;
        let tasks = indices
            .into_iter()
            .enumerate()
            .map(|(group, id)| PromptTask {
                prompt_id: id,
                group,
                prompt_ids: self.prompt_ids[id].clone(),
                seed: rollout_seed(seed, step, id as u64),
            })
            .collect();
        (tasks, epoch)
    }

    /// One full step: generate, score, train; appends a line to `metrics.jsonl`.
    pub fn step(&mut self) -> Result<StepMetrics> {
        let engine = self.learner.config.rollout.engine;
        if engine != crate::config::RolloutEngine::Builtin {
            return Err(LearnerError::Invalid(format!(
                "rollout.engine = \"{}\" runs on actors (grlo train, or a coordinator's job); \
                 Trainer::step generates in process with the built-in engine",
                engine.name()
            )));
        }
        let step_start = Instant::now();
        let (tasks, epoch) = self.next_tasks();

        let start = Instant::now();
        let policy = self.learner.policy.valid();
        let mut trajectories = rollout(
            &policy,
            &tasks,
            &self.rollout_params,
            self.learner.step as u64,
        )?;
        drop(policy);
        let generate_s = start.elapsed().as_secs_f64();

        let start = Instant::now();
        score(
            &mut self.rewards,
            &self.tokenizer,
            &self.records,
            &mut trajectories,
        )?;
        let score_s = start.elapsed().as_secs_f64();

        self.train_step(&trajectories, epoch, generate_s, score_s, step_start)
    }

    /// Trains on scored trajectories generated elsewhere (the distributed learner's step) and
    /// appends the step's metrics to `metrics.jsonl`. The trajectories are put in a canonical
    /// order (by prompt position and sample), so the step does not depend on which actor sent
    /// what first.
    pub fn train_on_trajectories(
        &mut self,
        mut trajectories: Vec<Trajectory>,
        epoch: usize,
    ) -> Result<StepMetrics> {
        trajectories.sort_by_key(|t| (t.group, t.sample_index));
        self.train_step(&trajectories, epoch, 0.0, 0.0, Instant::now())
    }

    fn train_step(
        &mut self,
        trajectories: &[Trajectory],
        epoch: usize,
        generate_s: f64,
        score_s: f64,
        step_start: Instant,
    ) -> Result<StepMetrics> {
        let start = Instant::now();
        let train = self.learner.train_on(trajectories);
        if train.interrupted {
            return Err(LearnerError::Interrupted);
        }
        let train_s = start.elapsed().as_secs_f64();
        if train.rejected.is_some() {
            self.rejected += 1;
        }

        let mut metrics = step_metrics(
            trajectories,
            self.learner.step,
            epoch,
            train,
            generate_s,
            score_s,
            train_s,
            step_start,
        );
        if self.validates_now() {
            metrics.validation = self.validate()?;
        }
        self.history.push(metrics.reward_mean);
        let line = serde_json::to_value(&metrics).expect("metrics serialise");
        writeln!(self.metrics, "{line}")
            .map_err(|e| LearnerError::write(self.run_dir.join("metrics.jsonl"), e))?;
        self.tracking.log(&line);
        Ok(metrics)
    }

    fn save_dtype(&self) -> StoredDtype {
        StoredDtype::parse(&self.learner.config.trainer.save_dtype).unwrap_or(StoredDtype::F32)
    }

    /// Writes the current policy, in the Hugging Face layout with its tokenizer, to `dir`
    /// (streamed: one tensor at a time on the host).
    pub fn export_policy(&self, dir: &Path) -> Result<()> {
        self.learner
            .policy
            .valid()
            .save(dir, self.save_dtype(), MAX_SHARD_BYTES)?;
        copy_auxiliary_files(&self.policy_dir, dir)?;
        Ok(())
    }

    /// Exports the current policy once into the run directory's staging area: the files that
    /// both the published weight version and the checkpoint's `policy/` are made of.
    pub fn stage_policy(&self) -> Result<StagedPolicy> {
        let dir = self.run_dir.join(".staging");
        let _ = std::fs::remove_dir_all(&dir);
        let staged = StagedPolicy {
            dir,
            step: self.learner.step,
        };
        self.export_policy(&staged.policy_dir())?;
        Ok(staged)
    }

    /// Writes a full-state checkpoint `step-N` and points `latest` at it.
    pub fn save(&mut self) -> Result<()> {
        let staged = self.stage_policy()?;
        self.checkpoint(&staged)
    }

    /// Writes a full-state checkpoint `step-N` around a policy staged at this step: the
    /// critic, the AdamW moments of both and `state.json` join it in the staging area, which
    /// is uploaded; `latest` is written last, and then the checkpoints beyond
    /// `trainer.max_checkpoints_to_keep` are deleted, oldest first.
    pub fn checkpoint(&mut self, staged: &StagedPolicy) -> Result<()> {
        if staged.step != self.learner.step {
            return Err(LearnerError::Invalid(format!(
                "the staged policy is of step {}, the learner is at step {}",
                staged.step, self.learner.step
            )));
        }
        let name = format!("step-{}", self.learner.step);
        let local = &staged.dir;
        if let Some(critic) = &self.learner.critic {
            critic
                .valid()
                .save(&local.join("critic"), self.save_dtype(), MAX_SHARD_BYTES)?;
        }
        let optimizer_dir = local.join("optimizer");
        std::fs::create_dir_all(&optimizer_dir)
            .map_err(|e| LearnerError::write(&optimizer_dir, e))?;
        write_safetensors_file(
            &optimizer_dir.join("policy.safetensors"),
            self.learner.policy_optim.state_tensors(),
            StoredDtype::F32,
        )?;
        if self.learner.critic.is_some() {
            write_safetensors_file(
                &optimizer_dir.join("critic.safetensors"),
                self.learner.critic_optim.state_tensors(),
                StoredDtype::F32,
            )?;
        }
        let state = TrainState {
            step: self.learner.step,
            policy_optimizer_step: self.learner.policy_optim.step,
            critic_optimizer_step: self.learner.critic_optim.step,
            cursor: self.cursor.clone(),
            seed: self.learner.config.trainer.seed,
        };
        let path = local.join("state.json");
        grlo_model::safetensors_io::write_atomically(
            &path,
            serde_json::to_string_pretty(&state)
                .expect("state serialises")
                .as_bytes(),
        )?;
        self.checkpoints.save(&name, local)?;
        tracing::info!(checkpoint = %name, location = self.checkpoints.location(), "checkpoint saved");
        self.last_checkpoint = Some(name);
        let keep = self.learner.config.trainer.max_checkpoints_to_keep;
        match self.checkpoints.prune(keep) {
            Ok(removed) if !removed.is_empty() => {
                tracing::info!(?removed, keep, "old checkpoints deleted");
            }
            Ok(_) => {}
            // The new checkpoint is complete and named by `latest`: a failed delete costs
            // space, not state, and the next checkpoint tries again.
            Err(e) => tracing::warn!(error = %e, keep, "could not delete old checkpoints"),
        }
        Ok(())
    }

    /// The newest checkpoint this run wrote or resumed from.
    pub fn last_checkpoint(&self) -> Option<&str> {
        self.last_checkpoint.as_deref()
    }
}

/// Shards of saved models (transformers' default is 5 GB).
const MAX_SHARD_BYTES: usize = 5_000_000_000;

/// A policy exported at one step into `RUN_DIR/.staging/policy`; the staging area is removed
/// when this is dropped.
pub struct StagedPolicy {
    dir: PathBuf,
    step: usize,
}

impl StagedPolicy {
    /// The policy's Hugging Face directory.
    pub fn policy_dir(&self) -> PathBuf {
        self.dir.join("policy")
    }

    /// The step whose policy this is.
    pub fn step(&self) -> usize {
        self.step
    }
}

impl Drop for StagedPolicy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The checkpoint location of a run: the configured one, or `RUN_DIR/checkpoints`.
pub fn checkpoint_location(config: &TrainConfig) -> String {
    config
        .trainer
        .checkpoint_location
        .clone()
        .unwrap_or_else(|| {
            Path::new(&config.trainer.run_dir)
                .join("checkpoints")
                .display()
                .to_string()
        })
}

/// A critic made from a checkpoint: its own value head if it is one, else its decoder with a
/// fresh value head.
fn load_as_critic<A: ModelAutodiffBackend>(
    location: &str,
    seed: u64,
    device: &A::Device,
) -> Result<Model<A>> {
    let dir = grlo_model::store::Location::parse(location)?
        .materialize(&grlo_model::store::default_cache_root())?;
    Ok(Model::<A>::load_with_head(
        &dir,
        HeadKind::TokenClassification { num_labels: 1 },
        seed,
        device,
    )?)
}

/// A job's prompts: the records, their rendered token ids, and how many prompts were dropped
/// (overlong) or skipped (malformed lines).
pub struct Dataset {
    pub records: Vec<PromptRecord>,
    pub prompt_ids: Vec<Vec<u32>>,
    pub filtered_overlong: usize,
    pub skipped_malformed: usize,
}

/// Loads every prompt file, renders each prompt with the chat template and filters overlong ones.
pub fn load_dataset(config: &TrainConfig, tokenizer: &Tokenizer) -> Result<Dataset> {
    let (records, prompt_ids, filtered_overlong, skipped_malformed) =
        load_prompt_files(config, &config.data.train_files, tokenizer)?;
    Ok(Dataset {
        records,
        prompt_ids,
        filtered_overlong,
        skipped_malformed,
    })
}

/// Loads prompt `files` (the training or the validation set) as `config.data` says: rendered
/// with the chat template, overlong ones filtered.
#[allow(clippy::type_complexity)]
pub(crate) fn load_prompt_files(
    config: &TrainConfig,
    files: &[String],
    tokenizer: &Tokenizer,
) -> Result<(Vec<PromptRecord>, Vec<Vec<u32>>, usize, usize)> {
    let mut records = Vec::new();
    let mut skipped = 0;
    for file in files {
        let (loaded, report) = load_prompts(Path::new(file), config.data.on_bad_line)?;
        skipped += report.skipped.len();
        records.extend(loaded);
    }
    let template = tokenizer.chat_template().ok_or_else(|| {
        LearnerError::Invalid(
            "the policy's tokenizer has no chat template to render prompts with".into(),
        )
    })?;
    let kwargs: serde_json::Map<String, serde_json::Value> =
        serde_json::to_value(&config.data.chat_template_kwargs)
            .ok()
            .and_then(|v| v.as_object().cloned())
            .unwrap_or_default();
    let render = |record: &PromptRecord| -> Result<Vec<u32>> {
        let text = template.render_with_kwargs(&record.messages, true, &kwargs)?;
        Ok(tokenizer.encode(&text, false)?)
    };
    let max = config.data.max_prompt_length;
    let (records, filtered) = if config.data.filter_overlong_prompts {
        filter_overlong(records, max, |r| render(r).map(|ids| ids.len()))?
    } else {
        (records, 0)
    };
    let mut prompt_ids = Vec::with_capacity(records.len());
    for record in &records {
        let ids = render(record)?;
        if ids.len() > max {
            return Err(LearnerError::Invalid(format!(
                "prompt at line {} has {} tokens, more than data.max_prompt_length = {max} \
                 (set data.filter_overlong_prompts = true to drop such prompts)",
                record.line,
                ids.len()
            )));
        }
        prompt_ids.push(ids);
    }
    if filtered > 0 {
        tracing::warn!(
            filtered,
            max,
            "prompts longer than data.max_prompt_length were dropped"
        );
    }
    if records.is_empty() {
        return Err(LearnerError::Invalid(
            "no prompts left after filtering".into(),
        ));
    }
    Ok((records, prompt_ids, filtered, skipped))
}

fn read_state(dir: &Path) -> Result<TrainState> {
    let path = dir.join("state.json");
    let text = std::fs::read_to_string(&path).map_err(|e| LearnerError::Checkpoint {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    serde_json::from_str(&text).map_err(|e| LearnerError::Checkpoint {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

#[allow(clippy::too_many_arguments)]
fn step_metrics(
    trajectories: &[Trajectory],
    step: usize,
    epoch: usize,
    train: TrainStats,
    generate_s: f64,
    score_s: f64,
    train_s: f64,
    step_start: Instant,
) -> StepMetrics {
    let rewards: Vec<f64> = trajectories
        .iter()
        .map(|t| t.reward.unwrap_or(0.0) as f64)
        .collect();
    let n = rewards.len().max(1) as f64;
    let mean = rewards.iter().sum::<f64>() / n;
    let std = (rewards.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / n).sqrt();
    let generated: usize = trajectories.iter().map(|t| t.response_ids.len()).sum();
    let clipped = trajectories
        .iter()
        .filter(|t| t.finish_reason == FinishReason::Length)
        .count();
    let step_s = step_start.elapsed().as_secs_f64();
    StepMetrics {
        step,
        epoch,
        reward_mean: mean,
        reward_std: std,
        response_len_mean: generated as f64 / n,
        response_clip_frac: clipped as f64 / n,
        train,
        tokens_per_s: generated as f64 / step_s.max(1e-9),
        validation: BTreeMap::new(),
        generate_s,
        score_s,
        train_s,
        step_s,
    }
}

/// The seed of a prompt's samples at a step: the run seed, the step and the prompt mixed
/// (splitmix64), so that where and with what a prompt is generated changes nothing.
pub fn rollout_seed(seed: u64, step: u64, prompt: u64) -> u64 {
    let mut z = seed
        ^ step.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ prompt.wrapping_mul(0xc2b2_ae3d_27d4_eb4f);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
