//! A model directory as people hand it around: weights and config, plus the tokenizer, chat
//! template and generation config when present. Loads from a local directory or an object
//! store URL; saves a directory that transformers and vLLM load.

use crate::backend::ModelBackend;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::model::Model;
use crate::safetensors_io::StoredDtype;
use crate::store::{Location, default_cache_root};
use crate::tokenizer::Tokenizer;

/// The files besides weights and `config.json` that a saved model directory carries over.
pub const AUXILIARY_FILES: [&str; 7] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "vocab.json",
    "merges.txt",
];

/// A loaded model with what came beside it.
pub struct Pretrained<B: ModelBackend> {
    pub model: Model<B>,
    pub tokenizer: Option<Tokenizer>,
    /// The local directory it was loaded from (a cache directory for remote models).
    pub dir: PathBuf,
}

impl<B: ModelBackend> Pretrained<B> {
    /// Loads from a local directory or an object store URL.
    pub fn load(location: &str, device: &B::Device) -> Result<Self> {
        let dir = Location::parse(location)?.materialize(&default_cache_root())?;
        let model = Model::load(&dir, device)?;
        let tokenizer = if dir.join("tokenizer.json").is_file() {
            Some(Tokenizer::from_dir(&dir)?)
        } else {
            None
        };
        Ok(Pretrained {
            model,
            tokenizer,
            dir,
        })
    }

    /// The tokenizer, or an error saying the model directory has none.
    pub fn tokenizer(&self) -> Result<&Tokenizer> {
        self.tokenizer.as_ref().ok_or_else(|| {
            Error::InvalidInput(format!(
                "{} has no tokenizer.json: pass token ids instead of text",
                self.dir.display()
            ))
        })
    }

    /// Tokens that end generation: the tokenizer's (generation config, eos, end of turn), or
    /// without a tokenizer those of `generation_config.json` / `config.json`.
    pub fn stop_token_ids(&self) -> Result<Vec<u32>> {
        if let Some(tokenizer) = &self.tokenizer {
            return Ok(tokenizer.stop_token_ids().to_vec());
        }
        let generation_config = self.dir.join("generation_config.json");
        let eos = if generation_config.is_file() {
            let text = std::fs::read_to_string(&generation_config)
                .map_err(|e| Error::read(&generation_config, e))?;
            let value: serde_json::Value =
                serde_json::from_str(&text).map_err(|error| Error::Json {
                    path: generation_config.clone(),
                    error,
                })?;
            value.get("eos_token_id").cloned()
        } else {
            self.model.config.raw.get("eos_token_id").cloned()
        };
        let mut ids: Vec<u32> = match eos {
            Some(serde_json::Value::Number(n)) => {
                n.as_u64().into_iter().map(|v| v as u32).collect()
            }
            Some(serde_json::Value::Array(items)) => items
                .iter()
                .filter_map(|v| v.as_u64())
                .map(|v| v as u32)
                .collect(),
            _ => Vec::new(),
        };
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }

    /// Saves the model in the Hugging Face layout and copies the auxiliary files beside it.
    pub fn save(&self, out: &Path, dtype: StoredDtype, max_shard_bytes: usize) -> Result<()> {
        self.model.save(out, dtype, max_shard_bytes)?;
        copy_auxiliary_files(&self.dir, out)
    }
}

/// Copies the tokenizer and generation files of `from` into `to` (those that exist).
pub fn copy_auxiliary_files(from: &Path, to: &Path) -> Result<()> {
    if from == to {
        return Ok(());
    }
    for name in AUXILIARY_FILES {
        let src = from.join(name);
        if src.is_file() {
            std::fs::copy(&src, to.join(name)).map_err(|e| Error::write(to.join(name), e))?;
        }
    }
    Ok(())
}
