//! Validation during training (verl's `val_files`, `test_freq`, `val_before_train`): the
//! current policy answers the validation prompts greedily and they are scored by the training
//! rewards; the `trainer.eval_benchmarks` are run and scored as `grlo eval` does. Results are
//! `val/...` keys of the step's `metrics.jsonl` line:
//! - `val/reward_mean`, `val/response_len_mean`, `val/<data_source>/reward_mean`;
//! - `val/<benchmark>/<metric>` (e.g. `val/gsm8k/accuracy`, `val/ifeval/prompt_level_strict_acc`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use grlo_eval::benchmark::{self, Benchmark, Format, Item, Kind};
use grlo_eval::judge::{Conversation, Judge};
use grlo_eval::sandbox::Sandbox;
use grlo_model::backend::ModelBackend;
use grlo_model::{ChatMessage, Model, Tokenizer};

use crate::config::TrainConfig;
use crate::data::PromptRecord;
use crate::error::{LearnerError, Result};
use crate::evaluation::{BenchmarkSpec, Prompting, prompt_tasks, run_benchmark};
use crate::reward::{RewardModel, Rewards};
use crate::rollout::{RolloutParams, rollout, score};

/// Validation prompts and benchmark items, loaded once at the start of a run.
pub struct Validation {
    records: Vec<PromptRecord>,
    prompt_ids: Vec<Vec<u32>>,
    benchmarks: Vec<(Benchmark, Vec<Item>)>,
    sandbox: Option<Sandbox>,
    /// IFEval's library checks, when a Python has the libraries (else approximated).
    python: Option<grlo_eval::ifeval::Python>,
    /// Greedy, one sample, the training response length.
    params: RolloutParams,
    max_prompt_tokens: usize,
}

impl Validation {
    /// What `config` validates on; `None` when it validates on nothing.
    pub fn load(
        config: &TrainConfig,
        tokenizer: &Tokenizer,
        training: &RolloutParams,
        max_positions: usize,
    ) -> Result<Option<Self>> {
        let trainer = &config.trainer;
        if config.data.val_files.is_empty() && trainer.eval_benchmarks.is_empty() {
            return Ok(None);
        }
        let (records, prompt_ids) = if config.data.val_files.is_empty() {
            (Vec::new(), Vec::new())
        } else {
            let (records, ids, filtered, skipped) =
                crate::trainer::load_prompt_files(config, &config.data.val_files, tokenizer)?;
            if filtered + skipped > 0 {
                tracing::warn!(filtered, skipped, "validation prompts left out");
            }
            (records, ids)
        };
        let data_dir = trainer
            .eval_data_dir
            .as_ref()
            .map(PathBuf::from)
            .unwrap_or_else(benchmark::default_data_dir);
        let mut benchmarks = Vec::new();
        for spec in &trainer.eval_benchmarks {
            let spec = BenchmarkSpec::parse(spec)
                .map_err(|e| LearnerError::Invalid(format!("trainer.eval_benchmarks: {e}")))?;
            let mut items = benchmark::load(spec.benchmark, &data_dir)
                .map_err(|e| LearnerError::Invalid(format!("trainer.eval_benchmarks: {e}")))?;
            if let Some(limit) = spec.limit {
                items.truncate(limit);
            }
            benchmarks.push((spec.benchmark, items));
        }
        let sandbox = if benchmarks.iter().any(|(b, _)| b.kind() == Kind::Code) {
            Some(crate::validation::code_sandbox()?)
        } else {
            None
        };
        let python = if benchmarks.iter().any(|(b, _)| *b == Benchmark::IfEval) {
            grlo_eval::ifeval::Python::find(None)
                .inspect_err(|e| {
                    tracing::warn!("ifeval: {e}; its two library checks are approximated")
                })
                .ok()
        } else {
            None
        };
        let mut params = training.clone();
        params.sampling.greedy = true;
        params.n = 1;
        Ok(Some(Validation {
            records,
            prompt_ids,
            benchmarks,
            sandbox,
            python,
            max_prompt_tokens: max_positions.saturating_sub(params.max_new_tokens).max(1),
            params,
        }))
    }

    /// Validates `policy` (weight version `version`): the `val/...` metrics.
    pub fn run<B: ModelBackend>(
        &self,
        policy: &Model<B>,
        tokenizer: &Tokenizer,
        rewards: &mut Rewards<B>,
        version: u64,
    ) -> Result<BTreeMap<String, f64>> {
        let mut metrics = BTreeMap::new();
        if !self.records.is_empty() {
            self.validation_set(policy, tokenizer, rewards, version, &mut metrics)?;
        }
        let options = grlo_eval::Options {
            sandbox: self.sandbox.as_ref(),
            judge: rewards.model.as_ref().map(|j| j as &dyn Judge),
            python: self.python.as_ref(),
            ks: Vec::new(),
            parallel: std::thread::available_parallelism().map_or(2, |n| n.get()),
        };
        let prompting = Prompting {
            format: Format::Chat,
            n: 1,
            max_prompt_tokens: self.max_prompt_tokens,
        };
        for (benchmark, items) in &self.benchmarks {
            let mut generate = |prompts: &[Vec<u32>], n: usize| {
                let tasks = prompt_tasks(prompts, 0);
                let params = RolloutParams {
                    n,
                    ..self.params.clone()
                };
                let trajectories = rollout(policy, &tasks, &params, version)?;
                let mut out = vec![Vec::new(); prompts.len()];
                for t in trajectories {
                    out[t.group].push(t.response_ids);
                }
                Ok(out)
            };
            let outcome = run_benchmark(
                *benchmark,
                items,
                tokenizer,
                &prompting,
                &mut generate,
                &options,
            )?;
            for (name, value) in outcome.report.metrics {
                metrics.insert(format!("val/{}/{name}", benchmark.name()), value);
            }
        }
        Ok(metrics)
    }

    fn validation_set<B: ModelBackend>(
        &self,
        policy: &Model<B>,
        tokenizer: &Tokenizer,
        rewards: &mut Rewards<B>,
        version: u64,
        metrics: &mut BTreeMap<String, f64>,
    ) -> Result<()> {
        let mut trajectories = rollout(
            policy,
            &prompt_tasks(&self.prompt_ids, 0),
            &self.params,
            version,
        )?;
        score(rewards, tokenizer, &self.records, &mut trajectories)?;
        let mut by_source: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
        let mut all = Vec::new();
        let mut lengths = 0usize;
        for t in &trajectories {
            let reward = f64::from(t.reward.unwrap_or(0.0));
            by_source
                .entry(self.records[t.prompt_id].data_source.as_str())
                .or_default()
                .push(reward);
            all.push(reward);
            lengths += t.response_ids.len();
        }
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        metrics.insert("val/reward_mean".into(), mean(&all));
        metrics.insert(
            "val/response_len_mean".into(),
            lengths as f64 / trajectories.len().max(1) as f64,
        );
        for (source, rewards) in by_source {
            metrics.insert(format!("val/{source}/reward_mean"), mean(&rewards));
        }
        Ok(())
    }
}

/// A reward model judges a conversation as it scores one: rendered with its own chat template
/// (the training reward model during validation, `--judge` in `grlo eval`).
impl<B: ModelBackend> Judge for RewardModel<B> {
    fn score(&self, conversations: &[Conversation]) -> std::result::Result<Vec<f32>, String> {
        let conversations: Vec<Vec<ChatMessage>> = conversations
            .iter()
            .map(|c| {
                c.iter()
                    .map(|(role, content)| ChatMessage::new(role.clone(), content.clone()))
                    .collect()
            })
            .collect();
        RewardModel::score(self, &conversations).map_err(|e| e.to_string())
    }
}

/// Reads the data of `config`'s `trainer.eval_benchmarks`: a missing or malformed file is an
/// error naming it (and the script that fetches it) before a run starts rather than when its
/// learner loads.
pub fn check_benchmark_data(config: &TrainConfig) -> Result<()> {
    let data_dir = config
        .trainer
        .eval_data_dir
        .as_ref()
        .map(PathBuf::from)
        .unwrap_or_else(benchmark::default_data_dir);
    for spec in &config.trainer.eval_benchmarks {
        let spec = BenchmarkSpec::parse(spec)
            .map_err(|e| LearnerError::Invalid(format!("trainer.eval_benchmarks: {e}")))?;
        benchmark::load(spec.benchmark, &data_dir)
            .map_err(|e| LearnerError::Invalid(format!("trainer.eval_benchmarks: {e}")))?;
    }
    Ok(())
}

/// The sandbox of code benchmarks during training: isolated, or an error saying why not
/// (training never runs untrusted code unconfined).
fn code_sandbox() -> Result<Sandbox> {
    let sandbox = Sandbox::new(grlo_eval::sandbox::Config::default())
        .map_err(|e| LearnerError::Invalid(format!("trainer.eval_benchmarks: {e}")))?;
    tracing::info!(isolation = %sandbox.isolation(), "code benchmarks run in the sandbox");
    Ok(sandbox)
}

/// The step whose `metric` is largest among `metrics.jsonl` lines, and its value (the
/// earliest on a tie); `None` when no line has it.
pub fn best_step(lines: &[serde_json::Value], metric: &str) -> Option<(u64, f64)> {
    lines
        .iter()
        .filter_map(|m| Some((m["step"].as_u64()?, m.get(metric)?.as_f64()?)))
        .fold(None, |best, (step, value)| match best {
            Some((_, top)) if top >= value => best,
            _ => Some((step, value)),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_best_step_has_the_largest_value_of_the_metric() {
        let lines = vec![
            json!({"step": 0, "val/reward_mean": 0.1}),
            json!({"step": 1, "reward_mean": 5.0}),
            json!({"step": 3, "val/reward_mean": 0.7}),
            json!({"step": 6, "val/reward_mean": 0.7}),
        ];
        assert_eq!(best_step(&lines, "val/reward_mean"), Some((3, 0.7)));
        assert_eq!(best_step(&lines, "reward_mean"), Some((1, 5.0)));
        assert_eq!(best_step(&lines, "val/gsm8k/accuracy"), None);
    }
}
