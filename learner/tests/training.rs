//! The training loop end to end on the tiny policy: rewards rise on a toy rule task with PPO +
//! GAE and with GRPO; resuming from a checkpoint gives bit-identical weights; a NaN loss
//! rejects the step; overlong prompts are filtered and counted.

use std::path::{Path, PathBuf};

use burn::backend::{Autodiff, Flex};
use grlo_learner::reward::{RewardFunction, RewardInput, Rewards};
use grlo_learner::{Result, TrainConfig, Trainer};
use grlo_model::safetensors_io::read_safetensors_file;

type A = Autodiff<Flex>;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The toy task: the reward is the fraction of response tokens with an id below 64 (single
/// bytes: punctuation and digits), about 6% for the untrained policy.
struct LowIds;

impl RewardFunction for LowIds {
    fn score(&mut self, inputs: &[RewardInput<'_>]) -> Result<Vec<f32>> {
        Ok(inputs
            .iter()
            .map(|i| {
                let hits = i.response_ids.iter().filter(|&&t| t < 64).count();
                hits as f32 / i.response_ids.len().max(1) as f32
            })
            .collect())
    }
}

/// A reward that turns into NaN at one step.
struct NanAt {
    calls: usize,
    at: usize,
}

impl RewardFunction for NanAt {
    fn score(&mut self, inputs: &[RewardInput<'_>]) -> Result<Vec<f32>> {
        self.calls += 1;
        let value = if self.calls == self.at { f32::NAN } else { 0.5 };
        Ok(inputs
            .iter()
            .enumerate()
            .map(|(i, _)| value + i as f32 * 0.01)
            .collect())
    }
}

fn write_prompts(dir: &Path, count: usize) -> PathBuf {
    let path = dir.join("prompts.jsonl");
    let mut text = String::new();
    for i in 0..count {
        text += &format!(
            "{{\"data_source\": \"toy\", \"prompt\": [{{\"role\": \"user\", \"content\": \"Task {i}: say something.\"}}], \"reward_model\": {{\"style\": \"rule\", \"ground_truth\": \"x\"}}}}\n"
        );
    }
    std::fs::write(&path, text).unwrap();
    path
}

fn config(dir: &Path, advantage: &str, n: usize, steps: usize, extra: &str) -> TrainConfig {
    let prompts = write_prompts(dir, 64);
    let policy = root().join("configs/tiny/policy");
    let text = format!(
        r#"
        [model]
        policy = "{policy}"
        [data]
        train_files = ["{prompts}"]
        max_prompt_length = 64
        max_response_length = 4
        [algorithm]
        advantage = "{advantage}"
        [rollout]
        batch_size = {batch}
        n = {n}
        max_batch_rows = 64
        [actor]
        ppo_mini_batch_size = {mini}
        micro_batch_tokens = 4096
        [actor.optim]
        lr = 1e-2
        [critic.optim]
        lr = 1e-2
        [trainer]
        total_epochs = 100
        total_steps = {steps}
        save_every = 0
        run_dir = "{run}"
        seed = 7
        {extra}
        "#,
        policy = policy.display(),
        prompts = prompts.display(),
        batch = 32 / n,
        mini = 16 / n,
        run = dir.join("run").display(),
    );
    TrainConfig::from_toml(&text, "test config", dir).unwrap()
}

fn rewards_over_a_run(advantage: &str, n: usize, steps: usize) -> Vec<f64> {
    let dir = tempfile::tempdir().unwrap();
    let mut trainer = Trainer::<A>::new(
        config(dir.path(), advantage, n, steps, ""),
        &Default::default(),
        false,
    )
    .unwrap();
    trainer.set_rewards(Rewards::custom(Box::new(LowIds)));
    let mut rewards = Vec::new();
    trainer.run(|m| rewards.push(m.reward_mean)).unwrap();
    rewards
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len() as f64
}

#[test]
fn ppo_with_gae_learns_a_rule_reward() {
    let rewards = rewards_over_a_run("gae", 1, 40);
    let (start, end) = (mean(&rewards[..3]), mean(&rewards[rewards.len() - 3..]));
    eprintln!("ppo+gae rewards: {rewards:?}");
    assert!(start < 0.2, "starts near chance, got {start}");
    assert!(end > 0.6, "ends high, got {end} (from {start})");
}

#[test]
fn grpo_learns_a_rule_reward() {
    let rewards = rewards_over_a_run("grpo", 4, 40);
    let (start, end) = (mean(&rewards[..3]), mean(&rewards[rewards.len() - 3..]));
    eprintln!("grpo rewards: {rewards:?}");
    assert!(start < 0.2, "starts near chance, got {start}");
    assert!(end > 0.6, "ends high, got {end} (from {start})");
}

fn final_policy(run: &Path) -> Vec<grlo_model::safetensors_io::NamedTensor> {
    let latest = std::fs::read_to_string(run.join("checkpoints/latest")).unwrap();
    read_safetensors_file(
        &run.join("checkpoints")
            .join(latest.trim())
            .join("policy/model.safetensors"),
    )
    .unwrap()
}

#[test]
fn resuming_gives_the_same_weights_as_running_straight() {
    let straight = tempfile::tempdir().unwrap();
    let mut trainer = Trainer::<A>::new(
        config(straight.path(), "gae", 1, 4, ""),
        &Default::default(),
        false,
    )
    .unwrap();
    trainer.set_rewards(Rewards::custom(Box::new(LowIds)));
    trainer.run(|_| {}).unwrap();

    let split = tempfile::tempdir().unwrap();
    let first = config(split.path(), "gae", 1, 2, "");
    let mut trainer = Trainer::<A>::new(first, &Default::default(), false).unwrap();
    trainer.set_rewards(Rewards::custom(Box::new(LowIds)));
    trainer.run(|_| {}).unwrap();
    drop(trainer);
    let resumed = config(split.path(), "gae", 1, 4, "");
    let mut trainer = Trainer::<A>::new(resumed, &Default::default(), true).unwrap();
    assert_eq!(trainer.step_index(), 2, "resumes after step 2");
    trainer.set_rewards(Rewards::custom(Box::new(LowIds)));
    trainer.run(|_| {}).unwrap();

    let (a, b) = (
        final_policy(&straight.path().join("run")),
        final_policy(&split.path().join("run")),
    );
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.name, y.name);
        assert!(
            x.values
                .iter()
                .zip(&y.values)
                .all(|(p, q)| p.to_bits() == q.to_bits()),
            "{} differs",
            x.name
        );
    }
}

#[test]
fn a_nan_loss_rejects_the_step_and_keeps_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), "gae", 1, 3, "");
    let config = config
        .with_overrides(&["trainer.save_every=1".into()], "test")
        .unwrap();
    let mut trainer = Trainer::<A>::new(config, &Default::default(), false).unwrap();
    trainer.set_rewards(Rewards::custom(Box::new(NanAt { calls: 0, at: 2 })));
    let mut seen = Vec::new();
    let summary = trainer.run(|m| seen.push(m.clone())).unwrap();
    assert_eq!(summary.rejected_steps, 1);
    let rejected = seen[1].train.rejected.as_deref().unwrap_or_default();
    assert!(rejected.contains("NaN"), "the run says why: {rejected}");
    assert!(seen[0].train.rejected.is_none() && seen[2].train.rejected.is_none());
    // No checkpoint was written for the rejected step.
    let checkpoints = dir.path().join("run/checkpoints");
    assert!(checkpoints.join("step-1").is_dir());
    assert!(
        !checkpoints.join("step-2").exists(),
        "a rejected step does not overwrite the checkpoint"
    );
}

#[test]
fn overlong_prompts_are_filtered_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), "gae", 1, 1, "");
    let long = dir.path().join("long.jsonl");
    let words = "word ".repeat(200);
    std::fs::write(
        &long,
        format!("{{\"prompt\": [{{\"role\": \"user\", \"content\": \"{words}\"}}], \"reward_model\": {{\"style\": \"rule\", \"ground_truth\": \"x\"}}}}\n{{broken json\n"),
    )
    .unwrap();
    config.data.train_files.push(long.display().to_string());
    let mut trainer = Trainer::<A>::new(config, &Default::default(), false).unwrap();
    trainer.set_rewards(Rewards::custom(Box::new(LowIds)));
    let summary = trainer.run(|_| {}).unwrap();
    assert_eq!(summary.prompts_filtered_overlong, 1);
    assert_eq!(summary.prompts_skipped_malformed, 1);
    assert_eq!(summary.prompts, 64);
}

/// `data.val_files` with `trainer.test_freq`: the untrained policy is validated (step 0),
/// then every `test_freq` steps and after the last; the summary's best step is the one with
/// the largest `trainer.best_metric` among those lines.
#[test]
fn validation_lands_in_the_metrics_and_names_the_best_step() {
    let dir = tempfile::tempdir().unwrap();
    let val = dir.path().join("val");
    std::fs::create_dir_all(&val).unwrap();
    let val_file = write_prompts(&val, 6);
    let mut config = config(dir.path(), "gae", 1, 3, "");
    config.data.val_files = vec![val_file.display().to_string()];
    config.trainer.test_freq = 2;
    config.trainer.best_metric = "val/toy/reward_mean".into();
    let mut trainer = Trainer::<A>::new(config, &Default::default(), false).unwrap();
    trainer.set_rewards(Rewards::custom(Box::new(LowIds)));
    let summary = trainer.run(|_| {}).unwrap();
    let text = std::fs::read_to_string(dir.path().join("run/metrics.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let validated: Vec<(u64, f64)> = lines
        .iter()
        .filter_map(|l| Some((l["step"].as_u64()?, l.get("val/toy/reward_mean")?.as_f64()?)))
        .collect();
    assert_eq!(validated.iter().map(|v| v.0).collect::<Vec<_>>(), [0, 2, 3]);
    for line in lines.iter().filter(|l| l.get("val/reward_mean").is_some()) {
        assert_eq!(
            line["val/reward_mean"], line["val/toy/reward_mean"],
            "one data source"
        );
        assert!(line["val/response_len_mean"].as_f64().unwrap() > 0.0);
    }
    let top = validated.iter().map(|v| v.1).fold(f64::MIN, f64::max);
    let best = validated.iter().find(|v| v.1 == top).unwrap();
    let got = summary.best_step.expect("a best step");
    assert_eq!(
        (got.metric.as_str(), got.step, got.value),
        ("val/toy/reward_mean", best.0, best.1)
    );
}
