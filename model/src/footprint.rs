//! How much memory a model needs, computed from its config: parameters, one training
//! micro-batch's activations (as this crate's training forward and backward allocate them),
//! and a KV cache. `grlo plan` adds these up per role and device.
//!
//! The activation figures follow the code, term by term: what each decoder layer keeps for its
//! backward pass (the norms' and rotations' inputs in f32, the matmuls' and attention's inputs
//! in the compute dtype, the SwiGLU intermediates), the block-wise attention's workspace (a
//! few blocks of scores, never `[t, t]`), the chunked LM head's workspace, and the gradients
//! flowing back through one layer. `model/tests/activation_estimate.rs` holds them against a
//! counting allocator's peak on the tiny configs.

use crate::attention::AttentionSpec;
use crate::config::{Architecture, HeadKind, ModelConfig};
use crate::lm_head::chunk_tokens;
use crate::model::Precision;

/// What is computed on top of the decoder's final hidden states.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Head {
    /// The policy: the log-probability of a target at every position, through the chunked LM
    /// head.
    LogProbs,
    /// The critic: a value at every position.
    Values,
    /// A reward model: a score at each row's last token.
    Score,
}

/// One training micro-batch: `rows` sequences padded to `seq` tokens.
#[derive(Clone, Debug)]
pub struct TrainingShape {
    pub rows: usize,
    pub seq: usize,
    pub head: Head,
    pub checkpointing: bool,
    pub precision: Precision,
    /// [`crate::backend::ModelBackend::attention_block_elements`] of the backend it runs on.
    pub attention_block_elements: usize,
    /// [`crate::backend::ModelBackend::logits_chunk_elements`] of the backend it runs on.
    pub logits_chunk_elements: usize,
}

/// Bytes of one micro-batch's training step, beyond the weights.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TrainingBytes {
    /// The peak of everything the forward keeps plus the backward's transient tensors.
    pub activations: u64,
    /// The parameters' f32 gradients.
    pub gradients: u64,
}

const F32: u64 = 4;

/// The model's parameter count, from its config (the same count as the loaded model's).
pub fn parameters(config: &ModelConfig) -> u64 {
    let c = config;
    let (hidden, inter) = (c.hidden_size as u64, c.intermediate_size as u64);
    let q = (c.num_attention_heads * c.head_dim) as u64;
    let kv = (c.num_key_value_heads * c.head_dim) as u64;
    let attention_bias = if c.attention_bias {
        q + 2 * kv + hidden
    } else {
        0
    };
    let mlp_bias = if c.mlp_bias { 3 * inter + hidden } else { 0 };
    // Qwen3 normalises every query and key head.
    let head_norms = match c.architecture {
        Architecture::Qwen3 => 2 * c.head_dim as u64,
        _ => 0,
    };
    let layer = hidden * (q + 2 * kv)
        + q * hidden
        + 3 * hidden * inter
        + 2 * hidden
        + attention_bias
        + mlp_bias
        + head_norms;
    let embedding = c.vocab_size as u64 * hidden;
    let head = match c.head {
        HeadKind::CausalLm if c.tie_word_embeddings => 0,
        HeadKind::CausalLm => embedding,
        HeadKind::SequenceClassification { num_labels } => hidden * num_labels as u64,
        HeadKind::TokenClassification { num_labels } => (hidden + 1) * num_labels as u64,
    };
    embedding + c.num_hidden_layers as u64 * layer + hidden + head
}

/// Bytes a KV cache of `tokens` positions (over all rows) holds in `precision`.
pub fn kv_cache_bytes(config: &ModelConfig, tokens: u64, precision: Precision) -> u64 {
    let per_token = 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim;
    per_token as u64 * tokens * dtype_bytes(precision)
}

/// Bytes of one training micro-batch (see the module documentation).
///
/// The peak comes at one of two moments: the head's backward (everything the forward kept,
/// and a chunk of logits with its gradient), or the last layer's attention backward (the same,
/// and a few blocks of scores). With checkpointing, what the forward keeps is every layer's
/// input, and one layer's graph is rebuilt at a time.
pub fn training_bytes(config: &ModelConfig, shape: &TrainingShape) -> TrainingBytes {
    let c = config;
    let compute = dtype_bytes(shape.precision);
    let tokens = (shape.rows * shape.seq) as u64;
    let (hidden, inter, vocab) = (
        c.hidden_size as u64,
        c.intermediate_size as u64,
        c.vocab_size as u64,
    );
    let heads = c.num_attention_heads as u64;
    let q = heads * c.head_dim as u64;
    let kv = (c.num_key_value_heads * c.head_dim) as u64;
    let head_norms = matches!(c.architecture, Architecture::Qwen3);

    // What one decoder layer keeps for its backward, per token.
    let norms = 2 * 2 * hidden * F32; // each norm: its input and x / rms
    let matmul_inputs = (2 * hidden + q + inter) * compute; // qkv, gate_up, o_proj, down
    let swiglu = 4 * inter * compute; // gate and up, silu(gate), its product's inputs
    let rotations = if head_norms { 3 } else { 1 } * (q + kv) * F32;
    let attention = (2 * q + 2 * kv) * compute + heads * F32; // q, k, v, out; log-sum-exp
    let layer_kept = tokens * (norms + matmul_inputs + swiglu + rotations + attention);

    // The attention pass: its cached block biases (alive as long as its graph) and, in the
    // backward, blocks of scores, probabilities and their gradients (about two and a half
    // blocks live at once), and the gradient of the q, k, v projection.
    let spec = attention_spec(c, shape);
    let biases = spec.bias_elements() as u64 * F32;
    let block = score_block_elements(c, shape, &spec);
    let attention_backward = 5 * block * F32 / 2 + tokens * (q + 2 * kv) * F32;

    // The head's backward: the final norm's input and output with their gradients, and for
    // log-probs a chunk of logits and its gradient.
    let head_backward = tokens * 4 * hidden * F32
        + match shape.head {
            Head::LogProbs => {
                let chunk = chunk_tokens(c.vocab_size, shape.logits_chunk_elements) as u64;
                2 * chunk.min(tokens) * vocab * F32 + 3 * tokens * F32
            }
            Head::Values | Head::Score => tokens * F32,
        };

    let layers = c.num_hidden_layers as u64;
    let embedded = tokens * hidden * F32;
    let activations = if shape.checkpointing {
        let inputs = layers * tokens * hidden * F32;
        embedded + inputs + head_backward.max(layer_kept + biases + attention_backward)
    } else {
        embedded + layers * layer_kept + biases + head_backward.max(attention_backward)
    };
    let gradients = parameters(c) * F32;
    TrainingBytes {
        activations,
        gradients: if shape.checkpointing {
            // A layer's gradients are summed into the running total.
            gradients + gradients / layers.max(1)
        } else {
            gradients
        },
    }
}

/// Peak bytes of one no-gradient forward pass (scoring, log-prob recomputation, prefill)
/// over `rows` sequences of `seq` tokens, beyond the weights: one layer's intermediates at a
/// time, the attention's blocks, and the head.
pub fn forward_bytes(config: &ModelConfig, shape: &TrainingShape) -> u64 {
    let c = config;
    let compute = dtype_bytes(shape.precision);
    let tokens = (shape.rows * shape.seq) as u64;
    let (hidden, inter) = (c.hidden_size as u64, c.intermediate_size as u64);
    let q = (c.num_attention_heads * c.head_dim) as u64;
    let kv = (c.num_key_value_heads * c.head_dim) as u64;
    // The residual stream in f32, a layer's normed input, projections and SwiGLU halves.
    let layer = tokens * (2 * hidden * F32 + (hidden + q + 2 * kv + 3 * inter) * compute);
    let spec = attention_spec(c, shape);
    let block = score_block_elements(c, shape, &spec);
    let attention = spec.bias_elements() as u64 * F32 + 3 * block * F32;
    let head = match shape.head {
        Head::LogProbs => {
            let chunk = chunk_tokens(c.vocab_size, shape.logits_chunk_elements) as u64;
            chunk.min(tokens) * c.vocab_size as u64 * F32
        }
        Head::Values | Head::Score => 0,
    };
    layer + attention.max(head)
}

fn dtype_bytes(precision: Precision) -> u64 {
    precision.dtype().size() as u64
}

/// The block-wise attention's blocking for `shape` (what `forward_training` would choose).
fn attention_spec(c: &ModelConfig, shape: &TrainingShape) -> AttentionSpec {
    AttentionSpec::new(
        shape.rows,
        c.num_attention_heads,
        c.num_key_value_heads,
        c.head_dim,
        shape.seq,
        shape.seq,
        None,
        shape.attention_block_elements,
    )
}

/// Elements of one block of scores over every row and head.
fn score_block_elements(c: &ModelConfig, shape: &TrainingShape, spec: &AttentionSpec) -> u64 {
    (shape.rows * c.num_attention_heads * spec.query_block * spec.key_block) as u64
}
