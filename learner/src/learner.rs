//! The learner: policy and critic with their optimizers, and the training step that turns a
//! batch of scored trajectories into updated weights.
//!
//! One step: values of the current critic and log-probs of the reference (when a KL term asks
//! for them), token rewards, advantages, then `ppo_epochs` passes over the batch in
//! mini-batches (one optimizer update each), every mini-batch split into micro-batches within
//! a token budget whose gradients accumulate.
//!
//! Nothing is copied to be able to undo a step (at 4B parameters a copy of the policy, the
//! critic and both AdamW moment sets is ~96 GB). Instead a step is checked before it is
//! applied: non-finite rewards, values, advantages or returns reject the step before any
//! update, and a non-finite loss or gradient norm in a mini-batch rejects that update before
//! it is applied (verl checks the gradient norm the same way); the step's later updates are
//! then skipped too, and its earlier ones stay. An interrupted step (see `Learner::interrupt`)
//! leaves the learner part-way through: the caller reloads from its last checkpoint.

use grlo_model::backend::{ModelAutodiffBackend, ModelBackend};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use burn::module::AutodiffModule;
use burn::optim::GradientsAccumulator;
use burn::tensor::{ElementConversion, Tensor};
use grlo_model::Model;
use grlo_model::checkpointing::TrainingForward;
use grlo_model::model::to_f32_vec;
use serde::Serialize;

use crate::advantage::{self, AdvantageEstimator};
use crate::config::TrainConfig;
use crate::loss::{
    AggregationScale, LossAggregation, PolicyLossConfig, PolicyLossMetrics, ValueLossMetrics,
    aggregate, kl_penalty, kl_penalty_host, policy_loss, truncated_is_weights, value_loss,
};
use crate::optim::{AdamW, scheduled_lr};
use crate::sequences::{
    SequenceBatch, response_logprobs, response_logprobs_training, response_values,
    response_values_training, split_by_tokens,
};
use crate::trajectory::Trajectory;

/// Policy, critic, reference and optimizers.
pub struct Learner<A: ModelAutodiffBackend> {
    pub config: TrainConfig,
    pub policy: Model<A>,
    pub critic: Option<Model<A>>,
    pub reference: Option<Model<A::InnerBackend>>,
    pub policy_optim: AdamW<A::InnerBackend>,
    pub critic_optim: AdamW<A::InnerBackend>,
    /// Training steps taken (each one or more optimizer updates).
    pub step: usize,
    /// Steps the run will take, for learning-rate schedules.
    pub total_steps: usize,
    /// Set from another thread to abandon the step in progress (checked between micro-batches).
    /// The updates the step applied before it stay, so an interrupted learner must not be
    /// saved or trained further: reload it from its last checkpoint.
    pub interrupt: Arc<AtomicBool>,
}

/// What one training step measured (means over the step's mini-batches and tokens).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct TrainStats {
    pub policy_loss: f64,
    pub value_loss: Option<f64>,
    pub clip_frac: f64,
    pub dual_clip_frac: f64,
    pub approx_kl: f64,
    pub entropy: f64,
    pub kl_to_reference: Option<f64>,
    pub value_clip_frac: Option<f64>,
    pub grad_norm: f64,
    pub critic_grad_norm: Option<f64>,
    pub lr: f64,
    pub critic_lr: Option<f64>,
    pub advantage_mean: f64,
    pub return_mean: f64,
    pub updates: usize,
    /// Set when non-finite inputs rejected the step (nothing was applied), or a non-finite loss
    /// or gradient rejected one of its updates (that one and the rest were not applied).
    pub rejected: Option<String>,
    /// Set when `interrupt` abandoned the step (the step not counted; see `Learner::interrupt`).
    #[serde(skip)]
    pub interrupted: bool,
}

/// Per-sample quantities of a step, all `[sample][token]`.
struct StepData {
    sequences: Vec<SequenceRef>,
    /// What the generator recorded.
    behaviour_logprobs: Vec<Vec<f32>>,
    /// The PPO ratio's denominator: the behaviour log-probs, or with truncated importance
    /// sampling on, the current policy's recomputed before any update of the step.
    old_logprobs: Vec<Vec<f32>>,
    old_values: Option<Vec<Vec<f32>>>,
    ref_logprobs: Option<Vec<Vec<f32>>>,
    advantages: Vec<Vec<f32>>,
    returns: Vec<Vec<f32>>,
}

impl StepData {
    /// Rejects a step whose inputs are not finite, before anything is applied.
    fn check_finite(&self) -> Result<(), String> {
        let rows: [(&str, Option<&Vec<Vec<f32>>>); 5] = [
            ("advantages", Some(&self.advantages)),
            ("returns", Some(&self.returns)),
            ("behaviour log-probs", Some(&self.behaviour_logprobs)),
            ("values", self.old_values.as_ref()),
            ("reference log-probs", self.ref_logprobs.as_ref()),
        ];
        for (what, values) in rows {
            let Some(values) = values else { continue };
            for (sample, row) in values.iter().enumerate() {
                if let Some(bad) = row.iter().find(|v| !v.is_finite()) {
                    return Err(format!(
                        "{what} of sample {sample} hold {bad}: nothing applied"
                    ));
                }
            }
        }
        Ok(())
    }
}

#[derive(Clone)]
struct SequenceRef {
    prompt: Vec<u32>,
    response: Vec<u32>,
}

impl<A: ModelAutodiffBackend> Learner<A> {
    fn device(&self) -> A::Device {
        self.policy.device()
    }

    /// One training step on scored trajectories.
    pub fn train_on(&mut self, trajectories: &[Trajectory]) -> TrainStats {
        let data = self.prepare(trajectories);
        let mut stats = TrainStats {
            advantage_mean: mean_over_tokens(&data.advantages),
            return_mean: mean_over_tokens(&data.returns),
            ..TrainStats::default()
        };
        let outcome = data
            .check_finite()
            .and_then(|()| self.update_critic(&data, &mut stats))
            .and_then(|()| self.update_policy(&data, &mut stats));
        if outcome.is_err() && self.interrupt.load(Ordering::SeqCst) {
            stats.interrupted = true;
            return stats;
        }
        if let Err(reason) = outcome {
            tracing::warn!(step = self.step, %reason, "step rejected");
            stats.rejected = Some(reason);
        }
        self.step += 1;
        stats
    }

    /// Values, reference log-probs, rewards and advantages of the batch.
    fn prepare(&self, trajectories: &[Trajectory]) -> StepData {
        let c = &self.config;
        let sequences: Vec<SequenceRef> = trajectories
            .iter()
            .map(|t| SequenceRef {
                prompt: t.prompt_ids.clone(),
                response: t.response_ids.clone(),
            })
            .collect();
        let lengths: Vec<usize> = sequences.iter().map(|s| s.response.len()).collect();
        let behaviour_logprobs: Vec<Vec<f32>> = trajectories
            .iter()
            .map(|t| t.behaviour_logprobs.clone())
            .collect();
        let old_logprobs = if c.actor.tis_cap > 0.0 {
            let policy = self.policy.valid();
            per_sample(&sequences, c.actor.micro_batch_tokens, |batch| {
                response_logprobs(&policy, batch, false).0
            })
        } else {
            behaviour_logprobs.clone()
        };
        let scores: Vec<f32> = trajectories
            .iter()
            .map(|t| t.reward.unwrap_or(0.0))
            .collect();
        let groups: Vec<usize> = trajectories.iter().map(|t| t.group).collect();

        let old_values = self.critic.as_ref().map(|critic| {
            let critic = critic.valid();
            per_sample(&sequences, c.critic.micro_batch_tokens, |batch| {
                response_values(&critic, batch)
            })
        });
        let ref_logprobs = self.reference.as_ref().map(|reference| {
            per_sample(&sequences, c.actor.micro_batch_tokens, |batch| {
                response_logprobs(reference, batch, false).0
            })
        });

        let kl_in_reward = match (&ref_logprobs, c.algorithm.use_kl_in_reward) {
            (Some(reference), true) => Some(
                old_logprobs
                    .iter()
                    .zip(reference)
                    .map(|(lp, rp)| kl_penalty_host(lp, rp, c.algorithm.kl_penalty))
                    .collect::<Vec<_>>(),
            ),
            _ => None,
        };
        let token_rewards = advantage::token_rewards(
            &scores,
            &lengths,
            kl_in_reward
                .as_ref()
                .map(|kl| (kl.as_slice(), c.algorithm.kl_coef)),
        );
        let (advantages, returns) = match c.algorithm.advantage {
            AdvantageEstimator::Gae => {
                let values = old_values.as_ref().expect("GAE runs with a critic");
                let (mut adv, ret) = advantage::gae(
                    &token_rewards,
                    values,
                    c.algorithm.gamma,
                    c.algorithm.lambda,
                );
                advantage::whiten(&mut adv, true);
                (adv, ret)
            }
            AdvantageEstimator::Grpo => advantage::grpo(
                &scores,
                &groups,
                &lengths,
                c.algorithm.norm_adv_by_std_in_grpo,
                1e-6,
            ),
            AdvantageEstimator::DrGrpo => advantage::dr_grpo(&scores, &groups, &lengths),
            AdvantageEstimator::Rloo => advantage::rloo(&scores, &groups, &lengths),
            AdvantageEstimator::ReinforcePlusPlus => {
                advantage::reinforce_plus_plus(&token_rewards, c.algorithm.gamma)
            }
            AdvantageEstimator::ReinforcePlusPlusBaseline => {
                advantage::reinforce_plus_plus_baseline(&scores, &groups, &lengths)
            }
        };
        StepData {
            sequences,
            behaviour_logprobs,
            old_logprobs,
            old_values,
            ref_logprobs,
            advantages,
            returns,
        }
    }

    fn update_policy(&mut self, data: &StepData, stats: &mut TrainStats) -> Result<(), String> {
        let c = self.config.actor.clone();
        let device = self.device();
        let loss_config = PolicyLossConfig {
            clip_low: c.clip_ratio_low,
            clip_high: c.clip_ratio_high,
            clip_ratio_c: (c.clip_ratio_c > 0.0).then_some(c.clip_ratio_c),
        };
        let lr = scheduled_lr(c.optim.lr, &c.optim.schedule, self.step, self.total_steps);
        let mut metrics = PolicyLossMetrics::default();
        let (mut entropy_sum, mut ref_kl_sum) = (0.0, 0.0);
        let plan = UpdatePlan {
            epochs: c.ppo_epochs,
            mini_batch: self.config.actor.ppo_mini_batch_size * self.config.rollout.n,
            micro_batch_tokens: c.micro_batch_tokens,
            mode: c.loss_agg_mode,
            norm_length: self.config.data.max_response_length as f32,
            lr,
            what: "policy",
            step: self.step,
            interrupt: self.interrupt.clone(),
        };
        let policy = self.policy.clone();
        let (policy, grad_norms, loss_sum) = plan.run(
            policy,
            &mut self.policy_optim,
            data,
            |policy, batch, micro, scale| {
                let rows = |v: &Vec<Vec<f32>>| pad_rows(batch, micro, v, &device);
                let mask = batch.mask::<A>(&device);
                // The entropy is always computed, for the `entropy` metric: the chunked head
                // reduces each chunk's logits to it in the forward pass it makes anyway, with no
                // `[tokens, vocab]` memory of its own. It enters the graph only when it enters
                // the loss (`entropy_coeff != 0`); otherwise it is detached at once and the
                // backward pass does no entropy work.
                let (logprobs, entropy, forward) =
                    response_logprobs_training(policy, batch, true, c.gradient_checkpointing);
                let entropy = entropy.expect("asked for");
                let entropy = if c.entropy_coeff != 0.0 {
                    entropy
                } else {
                    entropy.detach()
                };
                let old = rows(&data.old_logprobs);
                let is_weights = (c.tis_cap > 0.0).then(|| {
                    truncated_is_weights(old.clone(), rows(&data.behaviour_logprobs), c.tis_cap)
                });
                let (mut loss, micro_metrics) = policy_loss(
                    logprobs.clone(),
                    old,
                    rows(&data.advantages),
                    mask.clone(),
                    &loss_config,
                    is_weights,
                    scale,
                );
                metrics += micro_metrics;
                entropy_sum += masked_sum(entropy.clone().detach(), mask.clone());
                if c.entropy_coeff != 0.0 {
                    loss = loss
                        .sub(aggregate(entropy, mask.clone(), scale).mul_scalar(c.entropy_coeff));
                }
                if let Some(reference) = &data.ref_logprobs {
                    let kl = kl_penalty(logprobs, rows(reference), c.kl_loss_type);
                    ref_kl_sum += masked_sum(kl.clone().detach(), mask.clone());
                    if c.use_kl_loss {
                        loss = loss.add(aggregate(kl, mask, scale).mul_scalar(c.kl_loss_coef));
                    }
                }
                (loss, forward)
            },
        )?;
        self.policy = policy;
        let tokens = (metrics.tokens as f64).max(1.0);
        stats.lr = lr;
        stats.updates += grad_norms.len();
        stats.policy_loss = loss_sum / grad_norms.len().max(1) as f64;
        stats.clip_frac = metrics.clipped_tokens as f64 / tokens;
        stats.dual_clip_frac = metrics.dual_clipped_tokens as f64 / tokens;
        stats.approx_kl = metrics.approx_kl_sum as f64 / tokens;
        stats.entropy = entropy_sum / tokens;
        stats.kl_to_reference = data.ref_logprobs.as_ref().map(|_| ref_kl_sum / tokens);
        stats.grad_norm = mean(&grad_norms);
        Ok(())
    }

    fn update_critic(&mut self, data: &StepData, stats: &mut TrainStats) -> Result<(), String> {
        let (Some(critic), Some(old_values)) = (self.critic.clone(), data.old_values.as_ref())
        else {
            return Ok(());
        };
        let c = self.config.critic.clone();
        let device = critic.device();
        let lr = scheduled_lr(c.optim.lr, &c.optim.schedule, self.step, self.total_steps);
        let mut metrics = ValueLossMetrics::default();
        let plan = UpdatePlan {
            epochs: c.ppo_epochs,
            mini_batch: self.config.actor.ppo_mini_batch_size * self.config.rollout.n,
            micro_batch_tokens: c.micro_batch_tokens,
            mode: c.loss_agg_mode,
            norm_length: self.config.data.max_response_length as f32,
            lr,
            what: "critic",
            step: self.step,
            interrupt: self.interrupt.clone(),
        };
        let (critic, grad_norms, loss_sum) = plan.run(
            critic,
            &mut self.critic_optim,
            data,
            |critic, batch, micro, scale| {
                let rows = |v: &Vec<Vec<f32>>| pad_rows(batch, micro, v, &device);
                let (values, forward) =
                    response_values_training(critic, batch, c.gradient_checkpointing);
                let (loss, micro_metrics) = value_loss(
                    values,
                    rows(old_values),
                    rows(&data.returns),
                    batch.mask(&device),
                    c.cliprange_value,
                    scale,
                );
                metrics += micro_metrics;
                (loss, forward)
            },
        )?;
        self.critic = Some(critic);
        stats.value_loss = Some(loss_sum / grad_norms.len().max(1) as f64);
        stats.value_clip_frac =
            Some(metrics.clipped_tokens as f64 / (metrics.tokens as f64).max(1.0));
        stats.critic_grad_norm = Some(mean(&grad_norms));
        stats.critic_lr = Some(lr);
        Ok(())
    }
}

/// How a model is updated on a step's samples: `epochs` passes in mini-batches of
/// `mini_batch` samples (one optimizer update each), every mini-batch split into micro-batches
/// within `micro_batch_tokens` whose gradients accumulate.
struct UpdatePlan {
    epochs: usize,
    mini_batch: usize,
    micro_batch_tokens: usize,
    mode: LossAggregation,
    norm_length: f32,
    lr: f64,
    what: &'static str,
    step: usize,
    interrupt: Arc<AtomicBool>,
}

impl UpdatePlan {
    /// Runs the updates; `loss_of` gives a micro-batch's loss (scaled for its whole mini-batch)
    /// and the forward pass it came from. Returns the updated model, the gradient norm of every
    /// update and the sum of the micro-batch losses, or why an update is rejected (a non-finite
    /// loss or gradient: that update and the later ones are not applied).
    fn run<A: ModelAutodiffBackend>(
        &self,
        mut model: Model<A>,
        optim: &mut AdamW<A::InnerBackend>,
        data: &StepData,
        mut loss_of: impl FnMut(
            &Model<A>,
            &SequenceBatch,
            &[usize],
            &AggregationScale,
        ) -> (Tensor<A, 1>, TrainingForward<A>),
    ) -> Result<(Model<A>, Vec<f64>, f64), String> {
        let (mut grad_norms, mut loss_sum) = (Vec::new(), 0.0);
        let samples: Vec<usize> = (0..data.sequences.len()).collect();
        for _epoch in 0..self.epochs {
            for mini in samples.chunks(self.mini_batch.max(1)) {
                let lengths: Vec<usize> = mini
                    .iter()
                    .map(|&i| data.sequences[i].response.len())
                    .collect();
                // Denominators of the whole mini-batch, shared by its micro-batches.
                let scale = AggregationScale::from_lengths(self.mode, &lengths, self.norm_length);
                let mut accumulator = GradientsAccumulator::<Model<A>>::new();
                for micro in micro_batches(data, mini, self.micro_batch_tokens) {
                    if self.interrupt.load(Ordering::SeqCst) {
                        return Err(format!("{} update interrupted", self.what));
                    }
                    let batch = sequence_batch(data, &micro);
                    let (loss, forward) = loss_of(&model, &batch, &micro, &scale);
                    let value = loss.clone().into_scalar().elem::<f64>();
                    if !value.is_finite() {
                        return Err(format!(
                            "{} loss is {value} at step {}",
                            self.what, self.step
                        ));
                    }
                    loss_sum += value;
                    let grads = forward.gradients(loss, &model);
                    accumulator.accumulate(&model, grads);
                }
                let grads = accumulator.grads();
                let norm = AdamW::<A::InnerBackend>::grad_norm(&model, &grads);
                if !norm.is_finite() {
                    return Err(format!(
                        "{} gradient norm is {norm} at step {}",
                        self.what, self.step
                    ));
                }
                grad_norms.push(norm);
                model = optim.update(model, grads, self.lr, norm);
            }
        }
        Ok((model, grad_norms, loss_sum))
    }
}

/// Micro-batches of a mini-batch: sorted by length, split within the token budget.
fn micro_batches(data: &StepData, mini: &[usize], budget: usize) -> Vec<Vec<usize>> {
    let mut order = mini.to_vec();
    let total = |i: &usize| data.sequences[*i].prompt.len() + data.sequences[*i].response.len();
    order.sort_by_key(total);
    let lengths: Vec<usize> = order.iter().map(total).collect();
    split_by_tokens(&lengths, budget)
        .into_iter()
        .map(|r| order[r].to_vec())
        .collect()
}

/// Per-token values of the samples of a micro-batch, padded to `[rows, max_response]`.
fn pad_rows<B: ModelBackend>(
    batch: &SequenceBatch,
    micro: &[usize],
    values: &[Vec<f32>],
    device: &B::Device,
) -> Tensor<B, 2> {
    let rows: Vec<&[f32]> = micro.iter().map(|&i| values[i].as_slice()).collect();
    batch.pad(&rows, device)
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len().max(1) as f64
}

fn sequence_batch(data: &StepData, indices: &[usize]) -> SequenceBatch {
    let prompts: Vec<&[u32]> = indices
        .iter()
        .map(|&i| data.sequences[i].prompt.as_slice())
        .collect();
    let responses: Vec<&[u32]> = indices
        .iter()
        .map(|&i| data.sequences[i].response.as_slice())
        .collect();
    SequenceBatch::new(&prompts, &responses)
}

/// Runs a per-token computation over all samples in token-budgeted batches (no gradients) and
/// returns each sample's values, unpadded.
fn per_sample<B: ModelBackend>(
    sequences: &[SequenceRef],
    budget: usize,
    mut compute: impl FnMut(&SequenceBatch) -> Tensor<B, 2>,
) -> Vec<Vec<f32>> {
    let mut order: Vec<usize> = (0..sequences.len()).collect();
    let total = |i: &usize| sequences[*i].prompt.len() + sequences[*i].response.len();
    order.sort_by_key(total);
    let lengths: Vec<usize> = order.iter().map(total).collect();
    let mut out = vec![Vec::new(); sequences.len()];
    for range in split_by_tokens(&lengths, budget) {
        let indices = &order[range];
        let prompts: Vec<&[u32]> = indices
            .iter()
            .map(|&i| sequences[i].prompt.as_slice())
            .collect();
        let responses: Vec<&[u32]> = indices
            .iter()
            .map(|&i| sequences[i].response.as_slice())
            .collect();
        let batch = SequenceBatch::new(&prompts, &responses);
        let width = batch.max_response();
        let values = to_f32_vec(compute(&batch));
        for (k, &i) in indices.iter().enumerate() {
            let len = sequences[i].response.len();
            out[i] = values[k * width..k * width + len].to_vec();
        }
    }
    out
}

fn masked_sum<B: ModelBackend>(values: Tensor<B, 2>, mask: Tensor<B, 2>) -> f64 {
    values.mul(mask).sum().into_scalar().elem::<f64>()
}

fn mean_over_tokens(rows: &[Vec<f32>]) -> f64 {
    let count: usize = rows.iter().map(Vec::len).sum();
    let sum: f64 = rows.iter().flatten().map(|&v| v as f64).sum();
    sum / count.max(1) as f64
}
