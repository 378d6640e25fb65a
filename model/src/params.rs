//! Where a model's parameters come from: a checkpoint, or a seeded random initialisation that
//! follows transformers' `_init_weights` (normal weights, zero biases, unit norms).

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use crate::config::ModelConfig;
use crate::error::Result;
use crate::safetensors_io::WeightFiles;

/// Anything that can hand out a Hugging Face-named tensor of a given shape as f32 values.
pub trait ParamSource {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>>;
}

impl ParamSource for WeightFiles {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        self.read_f32(name, shape)
    }
}

/// Seeded random parameters. Each tensor draws from its own stream (derived from its name), so
/// a tensor's values do not depend on which other tensors were drawn before it.
pub struct RandomInit {
    seed: u64,
    std: f32,
}

impl RandomInit {
    pub fn new(config: &ModelConfig, seed: u64) -> Self {
        let std = config
            .raw
            .get("initializer_range")
            .and_then(serde_json::Value::as_f64)
            .unwrap_or(0.02) as f32;
        RandomInit { seed, std }
    }
}

impl ParamSource for RandomInit {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let len = shape.iter().product();
        if name.ends_with("norm.weight") || name.ends_with("layernorm.weight") {
            return Ok(vec![1.0; len]);
        }
        if name.ends_with(".bias") {
            return Ok(vec![0.0; len]);
        }
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream(fnv1a(name));
        Ok(normal_samples(&mut rng, len, self.std))
    }
}

/// `len` samples of N(0, std²) by the Box–Muller transform.
pub fn normal_samples(rng: &mut ChaCha8Rng, len: usize, std: f32) -> Vec<f32> {
    let mut out = Vec::with_capacity(len + 1);
    while out.len() < len {
        let u1 = uniform_open(rng);
        let u2 = uniform_open(rng);
        let radius = (-2.0 * u1.ln()).sqrt();
        let angle = 2.0 * std::f64::consts::PI * u2;
        out.push((radius * angle.cos()) as f32 * std);
        out.push((radius * angle.sin()) as f32 * std);
    }
    out.truncate(len);
    out
}

/// A uniform sample in (0, 1) with 53 bits of precision.
pub fn uniform_open(rng: &mut ChaCha8Rng) -> f64 {
    ((rng.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
}

fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ byte as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Hugging Face parameter names of the Qwen3 / Llama decoders.
pub mod hf_names {
    pub const EMBED: &str = "model.embed_tokens.weight";
    pub const NORM: &str = "model.norm.weight";
    pub const LM_HEAD: &str = "lm_head.weight";

    /// The names inside `model.layers.{i}`.
    pub struct Layer(String);

    pub fn layer(i: usize) -> Layer {
        Layer(format!("model.layers.{i}"))
    }

    impl Layer {
        pub fn q_proj(&self) -> String {
            format!("{}.self_attn.q_proj", self.0)
        }
        pub fn k_proj(&self) -> String {
            format!("{}.self_attn.k_proj", self.0)
        }
        pub fn v_proj(&self) -> String {
            format!("{}.self_attn.v_proj", self.0)
        }
        pub fn o_proj(&self) -> String {
            format!("{}.self_attn.o_proj", self.0)
        }
        pub fn q_norm(&self) -> String {
            format!("{}.self_attn.q_norm.weight", self.0)
        }
        pub fn k_norm(&self) -> String {
            format!("{}.self_attn.k_norm.weight", self.0)
        }
        pub fn gate_proj(&self) -> String {
            format!("{}.mlp.gate_proj", self.0)
        }
        pub fn up_proj(&self) -> String {
            format!("{}.mlp.up_proj", self.0)
        }
        pub fn down_proj(&self) -> String {
            format!("{}.mlp.down_proj", self.0)
        }
        pub fn input_norm(&self) -> String {
            format!("{}.input_layernorm.weight", self.0)
        }
        pub fn post_attention_norm(&self) -> String {
            format!("{}.post_attention_layernorm.weight", self.0)
        }
    }
}
