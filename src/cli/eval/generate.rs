//! Generation for `grlo eval`: the actors' engines (the built-in one on a device, or
//! OpenAI-compatible servers), behind [`grlo_actor::Generate`].

use std::time::{Duration, Instant};

use anyhow::Context;
use grlo_actor::Generate;
use grlo_eval::sandbox::{self, Sandbox};
use grlo_learner::rollout::RolloutParams;
use grlo_model::backend::ModelBackend;
use grlo_model::store::{Location, default_cache_root};
use grlo_model::{Pretrained, SamplingParams, Tokenizer};

use super::{RunArgs, ScoringArgs};
use crate::device::{DeviceArg, OnBackend, dispatch};

/// An engine, the tokenizer that renders its prompts, and how it samples.
pub(super) struct Generator {
    engine: Box<dyn Generate>,
    pub tokenizer: Tokenizer,
    params: RolloutParams,
    /// The model's context length, when it is known here (the built-in engine).
    max_positions: Option<usize>,
    /// The HTTP engine's runtime (it blocks on it; never entered by the caller).
    _runtime: Option<tokio::runtime::Runtime>,
}

struct LoadBuiltin {
    location: String,
}

impl OnBackend for LoadBuiltin {
    type Output = (Box<dyn Generate>, Tokenizer, usize);

    fn run<B: ModelBackend>(self, device: B::Device) -> anyhow::Result<Self::Output> {
        let pretrained = Pretrained::<B>::load(&self.location, &device)
            .with_context(|| format!("failed to load model {}", self.location))?;
        let tokenizer = pretrained.tokenizer()?.clone();
        let positions = pretrained.model.config.max_position_embeddings;
        Ok((
            grlo_actor::builtin(pretrained.model.for_inference()),
            tokenizer,
            positions,
        ))
    }
}

impl Generator {
    pub fn open(args: &RunArgs, model: &str, device: &DeviceArg) -> anyhow::Result<Self> {
        let greedy = args.temperature <= 0.0;
        let params = RolloutParams {
            sampling: SamplingParams {
                greedy,
                temperature: if greedy { 1.0 } else { args.temperature },
                top_p: args.top_p,
                top_k: 0,
                seed: args.seed,
            },
            max_new_tokens: args.max_new_tokens,
            n: 1,
            stop_token_ids: Vec::new(),
            max_batch_rows: args.max_batch_rows.max(1),
            max_cache_tokens: 0,
        };
        let (engine, tokenizer, max_positions, runtime) = match args.engine.as_str() {
            "builtin" => {
                if !args.endpoints.is_empty() {
                    anyhow::bail!("--endpoint is for --engine openai");
                }
                let (engine, tokenizer, positions) = dispatch(
                    device,
                    LoadBuiltin {
                        location: model.to_string(),
                    },
                )?;
                (engine, tokenizer, Some(positions), None)
            }
            "openai" => {
                let dir = Location::parse(model)?
                    .materialize(&default_cache_root())
                    .with_context(|| format!("fetching the tokenizer of {model}"))?;
                let tokenizer = Tokenizer::from_dir(&dir)
                    .with_context(|| format!("the tokenizer of {model}"))?;
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()?;
                let engine = {
                    let _entered = runtime.enter();
                    grlo_actor::http(&args.endpoints, 64, None)?
                };
                (engine, tokenizer, None, Some(runtime))
            }
            other => anyhow::bail!("unknown --engine {other:?}: use builtin or openai"),
        };
        let mut params = params;
        params.stop_token_ids = tokenizer.stop_token_ids().to_vec();
        Ok(Generator {
            engine,
            tokenizer,
            params,
            max_positions,
            _runtime: runtime,
        })
    }

    /// The longest prompt that leaves room for `max_new_tokens` (no bound when the engine's
    /// context length is not known here: the server says if a prompt is too long).
    pub fn max_prompt_tokens(&self, max_new_tokens: usize) -> usize {
        match self.max_positions {
            Some(positions) => positions.saturating_sub(max_new_tokens).max(1),
            None => usize::MAX,
        }
    }

    /// `n` samples of every prompt: their response token ids.
    pub fn generate(
        &self,
        prompts: &[Vec<u32>],
        n: usize,
    ) -> grlo_learner::Result<Vec<Vec<Vec<u32>>>> {
        let tasks = grlo_learner::evaluation::prompt_tasks(prompts, self.params.sampling.seed);
        let params = RolloutParams {
            n,
            ..self.params.clone()
        };
        let deadline = Instant::now() + Duration::from_secs(24 * 3600);
        let trajectories = self.engine.rollout(&tasks, &params, 0, deadline)?;
        let mut out = vec![Vec::new(); prompts.len()];
        for t in trajectories {
            if let Some(samples) = out.get_mut(t.group) {
                samples.push(t.response_ids);
            }
        }
        Ok(out)
    }
}

/// The sandbox code benchmarks run in: refuses to run unconfined unless told it may.
pub(super) fn sandbox(args: &ScoringArgs) -> anyhow::Result<Sandbox> {
    let config = sandbox::Config {
        python: args.python.clone(),
        allow_unconfined: args.allow_unconfined,
        ..sandbox::Config::default()
    };
    Ok(Sandbox::new(config)?)
}

/// What the sandbox enforces, in words.
pub(super) fn isolation(sandbox: &Sandbox) -> String {
    sandbox.isolation().to_string()
}
