//! Hugging Face-compatible decoder-only transformers (Qwen3, Llama 3.x) on Burn: configs,
//! safetensors checkpoints, tokenizers and chat templates, forward passes with a KV cache,
//! and batched generation.

pub mod attention;
pub mod backend;
pub mod chat_template;
pub mod checkpointing;
pub mod config;
pub mod engine;
pub mod error;
pub mod export;
pub mod footprint;
pub mod generate;
mod jinja_python;
pub mod layers;
pub mod lm_head;
pub mod memory;
pub mod model;
pub mod params;
pub mod pretrained;
pub mod rope;
pub mod safetensors_io;
pub mod sampling;
pub mod store;
pub mod tokenizer;
pub mod transfer;
pub mod weights_store;

pub use chat_template::{ChatMessage, ChatTemplate};
pub use config::{Architecture, HeadKind, ModelConfig};
pub use engine::{Engine, EngineLimits, EngineStats, Request};
pub use error::{Error, Result};
pub use generate::{
    Completion, FinishReason, GenerationParams, generate, generate_seeded, generate_with,
};
pub use model::{KvCache, Model, TokenBatch};
pub use pretrained::Pretrained;
pub use safetensors_io::StoredDtype;
pub use sampling::SamplingParams;
pub use tokenizer::Tokenizer;
