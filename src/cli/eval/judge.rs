//! The judge of `alpacaeval`, `arenahard` and `mtbench`: a Bradley–Terry reward model that
//! scores each conversation with its own chat template.

use std::path::{Path, PathBuf};

use anyhow::Context;
use grlo_eval::judge::Judge;
use grlo_learner::reward::RewardModel;
use grlo_model::backend::ModelBackend;

use crate::device::{DeviceArg, OnBackend, dispatch};

/// Longest conversation the judge reads (cut from the left, as the reward server does).
const JUDGE_MAX_LENGTH: usize = 4096;
/// Tokens the judge scores in one batch.
const JUDGE_BATCH_TOKENS: usize = 16384;

struct LoadJudge {
    location: String,
}

impl OnBackend for LoadJudge {
    type Output = Box<dyn Judge>;

    fn run<B: ModelBackend>(self, device: B::Device) -> anyhow::Result<Self::Output> {
        let model = RewardModel::<B>::load(
            &self.location,
            JUDGE_MAX_LENGTH,
            JUDGE_BATCH_TOKENS,
            &device,
        )
        .with_context(|| format!("the judge {}", self.location))?;
        Ok(Box::new(model))
    }
}

/// Loads the judge; one that is not a one-label sequence classifier is an error.
pub(super) fn load(location: &str, device: &str) -> anyhow::Result<Box<dyn Judge>> {
    let device: DeviceArg = device.parse().map_err(anyhow::Error::msg)?;
    dispatch(
        &device,
        LoadJudge {
            location: location.to_string(),
        },
    )
}

/// A warning when `judge` is the reward model `model` was trained on: the run directory's
/// `config.toml` (found above a checkpoint of `grlo train`) names it as `reward.model`.
pub(super) fn trained_on(judge: &str, model: Option<&str>) -> Option<String> {
    let judge_path = std::fs::canonicalize(judge).ok()?;
    let mut dir: PathBuf = std::fs::canonicalize(model?).ok()?;
    for _ in 0..6 {
        if let Some(reward) = reward_model_of(&dir.join("config.toml"))
            && reward == judge_path
        {
            return Some(format!(
                "the judge {judge} is the reward model the policy was trained on (reward.model in {}): its win rates measure how well the policy fits that model, not answer quality",
                dir.join("config.toml").display()
            ));
        }
        dir = dir.parent()?.to_path_buf();
    }
    None
}

/// The canonical path of `reward.model` in a grlo job configuration, relative paths taken
/// from the file's directory.
fn reward_model_of(config: &Path) -> Option<PathBuf> {
    let text = std::fs::read_to_string(config).ok()?;
    let value: toml::Value = toml::from_str(&text).ok()?;
    let model = value.get("reward")?.get("model")?.as_str()?;
    let path = Path::new(model);
    let path = if path.is_absolute() {
        path.to_path_buf()
    } else {
        config.parent()?.join(path)
    };
    std::fs::canonicalize(path).ok()
}
