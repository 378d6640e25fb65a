//! `grlo model ...`: run a checkpoint by hand — logits, generation, reward scores, conversion.
//! Each command prints one JSON object on stdout.

use grlo_model::backend::ModelBackend;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use grlo_model::FinishReason;
use grlo_model::model::to_f32_vec;
use grlo_model::{ChatMessage, GenerationParams, Pretrained, SamplingParams, StoredDtype};
use serde::Serialize;
use serde_json::json;

use crate::device::{DeviceArg, OnBackend, dispatch};

#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Print the vocabulary logits at every position of a token sequence.
    Logits(LogitsArgs),
    /// Generate completions for a prompt given as ids or text.
    Generate(GenerateArgs),
    /// Score a sequence or a conversation with a sequence-classification (reward) model.
    Score(ScoreArgs),
    /// Load a checkpoint and save it again in the Hugging Face layout (optionally another dtype).
    Convert(ConvertArgs),
}

#[derive(Debug, Args)]
pub struct ModelArg {
    /// Model directory or object store URL (file://, s3://) in the Hugging Face layout.
    #[arg(long)]
    pub model: String,
    /// Compute device: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu", env = "GRLO_DEVICE")]
    pub device: DeviceArg,
}

#[derive(Debug, Args)]
pub struct LogitsArgs {
    #[command(flatten)]
    pub model: ModelArg,
    /// Comma-separated token ids, e.g. 1,2,3.
    #[arg(long, value_delimiter = ',', required = true)]
    pub ids: Vec<u32>,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArg,
    /// Prompt as comma-separated token ids.
    #[arg(
        long,
        value_delimiter = ',',
        conflicts_with = "prompt",
        required_unless_present = "prompt"
    )]
    pub ids: Option<Vec<u32>>,
    /// Prompt as text.
    #[arg(long)]
    pub prompt: Option<String>,
    /// Wrap the text prompt as a user message in the model's chat template.
    #[arg(long, requires = "prompt")]
    pub chat: bool,
    /// A system message to put before the user message (with --chat).
    #[arg(long, requires = "chat")]
    pub system: Option<String>,
    #[arg(long)]
    pub max_new_tokens: usize,
    /// Always take the most likely token.
    #[arg(long, conflicts_with_all = ["temperature", "top_p", "top_k"])]
    pub greedy: bool,
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// 0 disables top-k.
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Completions per prompt.
    #[arg(long, default_value_t = 1)]
    pub n: usize,
}

#[derive(Debug, Args)]
pub struct ScoreArgs {
    #[command(flatten)]
    pub model: ModelArg,
    /// The sequence as comma-separated token ids.
    #[arg(
        long,
        value_delimiter = ',',
        conflicts_with = "conversation",
        required_unless_present = "conversation"
    )]
    pub ids: Option<Vec<u32>>,
    /// A JSON file with a list of {"role", "content"} messages (or {"messages": [...]}),
    /// rendered with the reward model's own chat template.
    #[arg(long)]
    pub conversation: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ConvertArgs {
    #[command(flatten)]
    pub model: ModelArg,
    /// Output directory.
    #[arg(long)]
    pub out: PathBuf,
    /// Storage dtype: f32, bf16 or f16 (default: the dtype the checkpoint was stored in).
    #[arg(long)]
    pub dtype: Option<String>,
    /// Largest shard in bytes before the weights are split into several files.
    #[arg(long, default_value_t = 5_000_000_000)]
    pub max_shard_size: usize,
}

/// Runs one `grlo model` command and returns its JSON output.
pub fn run(command: ModelCommand) -> anyhow::Result<String> {
    match command {
        ModelCommand::Logits(args) => dispatch(&args.model.device.clone(), args),
        ModelCommand::Generate(args) => dispatch(&args.model.device.clone(), args),
        ModelCommand::Score(args) => dispatch(&args.model.device.clone(), args),
        ModelCommand::Convert(args) => dispatch(&args.model.device.clone(), args),
    }
}

fn load<B: ModelBackend>(arg: &ModelArg, device: &B::Device) -> anyhow::Result<Pretrained<B>> {
    Pretrained::load(&arg.model, device)
        .with_context(|| format!("failed to load model {}", arg.model))
}

impl OnBackend for LogitsArgs {
    type Output = String;

    fn run<B: ModelBackend>(self, device: B::Device) -> anyhow::Result<Self::Output> {
        let pretrained = load::<B>(&self.model, &device)?;
        let logits = pretrained.model.logits(&self.ids)?;
        let [rows, vocab] = logits.dims();
        let values = to_f32_vec(logits);
        let logits: Vec<&[f32]> = (0..rows)
            .map(|r| &values[r * vocab..(r + 1) * vocab])
            .collect();
        to_json(&LogitsOutput { logits })
    }
}

impl OnBackend for GenerateArgs {
    type Output = String;

    fn run<B: ModelBackend>(self, device: B::Device) -> anyhow::Result<Self::Output> {
        let pretrained = load::<B>(&self.model, &device)?;
        let prompt_ids = match (&self.ids, &self.prompt) {
            (Some(ids), _) => ids.clone(),
            (None, Some(text)) if self.chat => {
                let mut messages = Vec::new();
                if let Some(system) = &self.system {
                    messages.push(ChatMessage::system(system));
                }
                messages.push(ChatMessage::user(text));
                pretrained.tokenizer()?.encode_chat(&messages, true)?
            }
            (None, Some(text)) => pretrained.tokenizer()?.encode(text, true)?,
            (None, None) => bail!("give the prompt with --ids or --prompt"),
        };
        if prompt_ids.is_empty() {
            bail!("the prompt is empty");
        }
        let sampling = if self.greedy {
            SamplingParams::greedy()
        } else {
            SamplingParams {
                greedy: false,
                temperature: self.temperature,
                top_p: self.top_p,
                top_k: self.top_k,
                seed: self.seed,
            }
        };
        let params = GenerationParams {
            sampling,
            max_new_tokens: self.max_new_tokens,
            n: self.n,
            stop_token_ids: pretrained.stop_token_ids()?,
            top_logprobs: 0,
        };
        let completions = grlo_model::generate(
            &pretrained.model,
            std::slice::from_ref(&prompt_ids),
            &params,
        )?;
        let mut out = Vec::with_capacity(completions.len());
        for c in completions {
            let text = match &pretrained.tokenizer {
                Some(tokenizer) => Some(tokenizer.decode(&c.token_ids, true)?),
                None => None,
            };
            out.push(CompletionOutput {
                completion_ids: c.token_ids,
                text,
                logprobs: c.logprobs,
                sampling_logprobs: c.sampling_logprobs,
                finish_reason: c.finish_reason,
                sample_index: c.sample_index,
            });
        }
        to_json(&GenerateOutput {
            prompt_ids,
            completions: out,
        })
    }
}

impl OnBackend for ScoreArgs {
    type Output = String;

    fn run<B: ModelBackend>(self, device: B::Device) -> anyhow::Result<Self::Output> {
        let pretrained = load::<B>(&self.model, &device)?;
        let ids = match (&self.ids, &self.conversation) {
            (Some(ids), _) => ids.clone(),
            (None, Some(path)) => {
                let messages = read_conversation(path)?;
                pretrained.tokenizer()?.encode_chat(&messages, false)?
            }
            (None, None) => bail!("give the sequence with --ids or --conversation"),
        };
        let scores = to_f32_vec(
            pretrained
                .model
                .score_sequences(std::slice::from_ref(&ids))?,
        );
        if let [score] = scores[..] {
            to_json(&ScoreOutput { score, ids })
        } else {
            to_json(&ScoresOutput { scores, ids })
        }
    }
}

/// Reads `[{"role", "content"}, ...]` or `{"messages": [...]}` from a JSON file.
fn read_conversation(path: &std::path::Path) -> anyhow::Result<Vec<ChatMessage>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("failed to read {}", path.display()))?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("invalid JSON in {}", path.display()))?;
    let messages = match value {
        serde_json::Value::Object(mut object) => {
            object.remove("messages").unwrap_or(serde_json::Value::Null)
        }
        other => other,
    };
    let messages: Vec<ChatMessage> = serde_json::from_value(messages).with_context(|| {
        format!(
            "{} must hold a list of {{\"role\", \"content\"}} messages",
            path.display()
        )
    })?;
    if messages.is_empty() {
        bail!("{} holds no messages", path.display());
    }
    Ok(messages)
}

impl OnBackend for ConvertArgs {
    type Output = String;

    fn run<B: ModelBackend>(self, device: B::Device) -> anyhow::Result<Self::Output> {
        let pretrained = load::<B>(&self.model, &device)?;
        let dtype = match &self.dtype {
            Some(text) => StoredDtype::parse(text)
                .with_context(|| format!("unknown dtype \"{text}\" (use f32, bf16 or f16)"))?,
            None => pretrained
                .model
                .config
                .stored_dtype
                .as_deref()
                .and_then(StoredDtype::parse)
                .unwrap_or(StoredDtype::F32),
        };
        pretrained
            .save(&self.out, dtype, self.max_shard_size)
            .with_context(|| format!("failed to save to {}", self.out.display()))?;
        Ok(json!({
            "out": self.out,
            "dtype": dtype.torch_name(),
            "parameters": pretrained.model.num_parameters(),
        })
        .to_string())
    }
}

#[derive(Serialize)]
struct LogitsOutput<'a> {
    logits: Vec<&'a [f32]>,
}

#[derive(Serialize)]
struct GenerateOutput {
    prompt_ids: Vec<u32>,
    completions: Vec<CompletionOutput>,
}

#[derive(Serialize)]
struct CompletionOutput {
    completion_ids: Vec<u32>,
    text: Option<String>,
    /// Log-probabilities under the raw model (the behaviour policy).
    logprobs: Vec<f32>,
    /// Log-probabilities under the distribution sampled from (temperature, top-k, top-p).
    sampling_logprobs: Vec<f32>,
    finish_reason: FinishReason,
    sample_index: usize,
}

fn to_json<T: Serialize>(value: &T) -> anyhow::Result<String> {
    Ok(serde_json::to_string(value)?)
}

#[derive(Serialize)]
struct ScoreOutput {
    score: f32,
    ids: Vec<u32>,
}

#[derive(Serialize)]
struct ScoresOutput {
    /// One score per label of a multi-label classifier.
    scores: Vec<f32>,
    ids: Vec<u32>,
}
