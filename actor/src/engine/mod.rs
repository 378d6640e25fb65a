//! The actor's generation engines: what turns a rollout task's prompts into trajectories with
//! one weight version. The task loop in `lib.rs` only loads a version and calls
//! [`Generate::rollout`].
//!
//! - `rollout.engine = "builtin"`: [`grlo_model::engine`] (continuous batching) on the
//!   actor's own device.
//! - `rollout.engine = "openai"`: [`openai`], OpenAI-compatible servers over HTTP.

mod openai;

use std::time::Instant;

use grlo_learner::config::RolloutReload;
use grlo_learner::rollout::{PromptTask, RolloutParams, rollout};
use grlo_learner::trajectory::Trajectory;
use grlo_model::backend::ModelBackend;
use grlo_model::{Model, Pretrained, Tokenizer};
use grlo_proto::v1;

use crate::ActorConfig;

/// A weight version in memory, on the actor's backend.
pub(crate) struct LoadedPolicy {
    pub job_id: String,
    pub version: u64,
    pub tokenizer: Tokenizer,
    pub generator: Box<dyn Generate>,
}

/// Generation on whichever backend the policy was loaded on.
pub trait Generate: Send {
    /// `n` samples of every task, in task order; gives up at `deadline` (the task's lease).
    fn rollout(
        &self,
        tasks: &[PromptTask],
        params: &RolloutParams,
        version: u64,
        deadline: Instant,
    ) -> grlo_learner::Result<Vec<Trajectory>>;
}

struct OnBackend<B: ModelBackend> {
    model: Model<B>,
}

impl<B: ModelBackend> Generate for OnBackend<B> {
    fn rollout(
        &self,
        tasks: &[PromptTask],
        params: &RolloutParams,
        version: u64,
        _deadline: Instant,
    ) -> grlo_learner::Result<Vec<Trajectory>> {
        rollout(&self.model, tasks, params, version)
    }
}

/// The built-in engine on a loaded model, for generation outside the task loop (`grlo eval`).
pub fn builtin<B: ModelBackend>(model: Model<B>) -> Box<dyn Generate> {
    Box::new(OnBackend { model })
}

/// OpenAI-compatible servers that keep their own weights (`rollout.reload = "none"`), for
/// generation outside the task loop (`grlo eval --engine openai`). Must be called inside a
/// tokio runtime, and [`Generate::rollout`] outside one (it blocks on that runtime).
pub fn http(
    endpoints: &[String],
    max_in_flight: usize,
    authorization: Option<String>,
) -> anyhow::Result<Box<dyn Generate>> {
    let weights = openai::Weights {
        path: String::new(),
        version: 0,
        reload: RolloutReload::None,
    };
    Ok(Box::new(openai::HttpEngine::new(
        endpoints,
        weights,
        max_in_flight,
        authorization,
    )?))
}

/// The CUDA device `cuda` or `cuda:N` names (N defaults to 0).
#[cfg(feature = "cuda")]
pub(crate) fn cuda_device(name: &str) -> burn::backend::cuda::CudaDevice {
    let index = name
        .strip_prefix("cuda:")
        .and_then(|i| i.parse().ok())
        .unwrap_or(0);
    burn::backend::cuda::CudaDevice::new(index)
}

/// Downloads (verified) and loads a weight version.
pub(crate) fn load_policy(
    config: &ActorConfig,
    task: &v1::RolloutTask,
) -> anyhow::Result<LoadedPolicy> {
    let started = Instant::now();
    // The job id names a directory of the cache whose other entries are deleted below.
    grlo_proto::check_plain_id("job_id", &task.job_id).map_err(anyhow::Error::msg)?;
    let dir = config
        .cache_dir
        .join(&task.job_id)
        .join(format!("v{}", task.weight_version));
    grlo_model::weights_store::fetch_verified_blocking(&task.weights_location, &dir).map_err(
        |e| {
            anyhow::anyhow!(
                "weights v{} of job {}: {e}",
                task.weight_version,
                task.job_id
            )
        },
    )?;
    let location = dir.display().to_string();
    let sampling = task.sampling.clone().unwrap_or_default();
    let (generator, tokenizer): (Box<dyn Generate>, Tokenizer) = match config.device.as_str() {
        _ if sampling.engine == "openai" => {
            // The servers read the checkpoint from this directory (a volume they share).
            let path = std::fs::canonicalize(&dir)
                .map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
            let reload = RolloutReload::from_name(&sampling.reload).ok_or_else(|| {
                anyhow::anyhow!(
                    "rollout.reload {:?}: not sglang, vllm or none",
                    sampling.reload
                )
            })?;
            let engine = openai::HttpEngine::new(
                &sampling.endpoints,
                openai::Weights {
                    path: path.display().to_string(),
                    version: task.weight_version,
                    reload,
                },
                match sampling.max_in_flight {
                    0 => 64,
                    n => n as usize,
                },
                config.client.authorization(),
            )?;
            (Box::new(engine), Tokenizer::from_dir(&dir)?)
        }
        "cpu" => {
            let pretrained =
                Pretrained::<grlo_model::backend::Cpu>::load(&location, &Default::default())?;
            let tokenizer = pretrained.tokenizer()?.clone();
            (
                Box::new(OnBackend {
                    model: pretrained.model,
                }),
                tokenizer,
            )
        }
        #[cfg(feature = "cuda")]
        device if device.starts_with("cuda") => {
            let device = cuda_device(device);
            let pretrained = Pretrained::<grlo_model::backend::Cuda>::load(&location, &device)?;
            let tokenizer = pretrained.tokenizer()?.clone();
            (
                Box::new(OnBackend {
                    model: pretrained.model.for_inference(), // bf16
                }),
                tokenizer,
            )
        }
        other => anyhow::bail!("device {other} is not available in this build"),
    };
    tracing::info!(
        job = %task.job_id,
        version = task.weight_version,
        seconds = started.elapsed().as_secs_f64(),
        "weights loaded"
    );
    // Older versions of the job in the cache are no longer needed.
    if let Ok(entries) = std::fs::read_dir(config.cache_dir.join(&task.job_id)) {
        for entry in entries.flatten() {
            if entry.path() != dir {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    Ok(LoadedPolicy {
        job_id: task.job_id.clone(),
        version: task.weight_version,
        tokenizer,
        generator,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A job id is a directory of the cache whose siblings are deleted after a load: `..` would
    /// have deleted everything beside the cache.
    #[test]
    fn a_job_id_that_is_a_path_is_refused_before_the_cache_is_touched() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("cache")).unwrap();
        std::fs::create_dir_all(root.path().join("beside-the-cache")).unwrap();
        let config = ActorConfig {
            coordinator: "http://127.0.0.1:1".into(),
            cache_dir: root.path().join("cache"),
            device: "cpu".into(),
            accelerators: Vec::new(),
            name: "a1".into(),
            client: grlo_proto::security::ClientSecurity::default(),
            metrics: crate::telemetry::ActorMetrics::default(),
        };
        for job_id in ["..", "../beside-the-cache", "/tmp", ""] {
            let task = v1::RolloutTask {
                job_id: job_id.into(),
                weight_version: 1,
                weights_location: root.path().join("weights").display().to_string(),
                ..Default::default()
            };
            let Err(error) = load_policy(&config, &task) else {
                panic!("{job_id:?} was loaded");
            };
            assert!(
                error.to_string().contains("is not an id"),
                "{job_id:?}: {error}"
            );
        }
        assert!(root.path().join("beside-the-cache").is_dir());
        assert_eq!(
            std::fs::read_dir(root.path().join("cache"))
                .unwrap()
                .count(),
            0
        );
    }
}
