//! The decoder's building blocks: linear projections, RMSNorm, the SwiGLU MLP and
//! grouped-query attention with rotary embeddings and a KV cache.
//!
//! Hidden states travel as 2-D `[tokens, hidden]` tensors (tokens = batch × sequence): a
//! linear layer on a 3-D input would run a batched matmul against a broadcast weight, which
//! is several times slower on the CPU backends. Only attention reshapes to heads.

use burn::module::{Module, Param};
use burn::tensor::activation::{silu, softmax};
use burn::tensor::backend::Backend;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Tensor, TensorData};

use crate::rope::RopeTables;

/// A value added to attention scores to mask a key. Finite, so that a query whose keys are all
/// masked (a left-padding position) gets a uniform distribution instead of NaN.
pub const MASKED: f32 = -1e30;

/// `y = x W + b` with `W` stored `[in, out]` (the transpose of PyTorch's layout).
#[derive(Module, Debug)]
pub struct Linear<B: Backend> {
    /// `[d_in, d_out]`
    pub weight: Param<Tensor<B, 2>>,
    /// `[d_out]`
    pub bias: Option<Param<Tensor<B, 1>>>,
}

impl<B: Backend> Linear<B> {
    /// `[tokens, d_in] -> [tokens, d_out]`
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        burn::tensor::module::linear(x, self.weight.val(), self.bias.as_ref().map(|b| b.val()))
    }

    pub fn d_out(&self) -> usize {
        self.weight.dims()[1]
    }
}

/// Root-mean-square normalisation over the last dimension, with a learned scale.
#[derive(Module, Debug)]
pub struct RmsNorm<B: Backend> {
    /// `[d]`
    pub weight: Param<Tensor<B, 1>>,
    pub eps: f64,
}

impl<B: Backend> RmsNorm<B> {
    /// Normalises `[..., d]` over `d`: `x / sqrt(mean(x²) + eps) * weight`.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let shape = x.shape();
        let d = shape[D - 1];
        let x = x.reshape([shape.num_elements() / d, d]); // [rows, d]
        let rms = x.clone().square().mean_dim(1).add_scalar(self.eps).sqrt(); // [rows, 1]
        let weight = self.weight.val().unsqueeze::<2>(); // [1, d]
        x.div(rms).mul(weight).reshape(shape)
    }
}

/// Softmax over the last dimension, computed on a 2-D view: Burn's CPU backends broadcast
/// (`[rows, keys] / [rows, 1]`, and the same in the backward pass) far faster in two dimensions
/// than in four or five.
pub fn softmax_last<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let shape = x.shape();
    let last = shape[D - 1];
    softmax(x.reshape([shape.num_elements() / last, last]), 1).reshape(shape)
}

/// SwiGLU feed-forward: `down(silu(gate(x)) * up(x))`, with gate and up fused in one matmul.
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    /// `[hidden, 2 * intermediate]`: the gate projection's columns, then the up projection's.
    pub gate_up: Linear<B>,
    /// `[intermediate, hidden]`
    pub down: Linear<B>,
}

impl<B: Backend> Mlp<B> {
    /// `[tokens, hidden] -> [tokens, hidden]`
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let intermediate = self.gate_up.d_out() / 2;
        let gate_up = self.gate_up.forward(x); // [tokens, 2 * intermediate]
        let gate = gate_up.clone().narrow(1, 0, intermediate); // [tokens, intermediate]
        let up = gate_up.narrow(1, intermediate, intermediate); // [tokens, intermediate]
        self.down.forward(silu(gate).mul(up)) // [tokens, hidden]
    }
}

/// Keys and values of earlier positions for one layer, `[batch, kv_heads, cached, head_dim]`.
#[derive(Clone, Debug)]
pub struct LayerCache<B: Backend> {
    pub keys: Tensor<B, 4>,
    pub values: Tensor<B, 4>,
}

/// What each query may attend to in one forward pass, prepared once and shared by the layers.
///
/// Passes over several tokens are causal. Without gradients they run the backend's fused
/// attention, which takes padding keys (left padding in generation) as a boolean mask. With
/// gradients (Burn's fused attention is not differentiable, and its fallback masks through a
/// broadcast view that the CPU backend walks element by element), and for one-token decoding
/// steps, attention is computed per kv-head group with an additive bias laid out exactly like
/// the scores, so nothing broadcasts.
#[derive(Clone, Debug)]
pub struct AttentionMask<B: Backend> {
    /// Whether the pass uses the backend's fused attention.
    pub fused: bool,
    /// `[batch, heads, queries, keys]`, `true` where a key is padding (fused passes).
    pub padding: Option<Tensor<B, 4, Bool>>,
    /// `[batch, kv_heads, groups * queries, keys]`: 0 or [`MASKED`], the causal mask and the
    /// padding (grouped passes); `None` when nothing is hidden.
    pub grouped_bias: Option<Tensor<B, 4>>,
}

impl<B: Backend> AttentionMask<B> {
    /// The mask for `queries` new tokens per row over `keys` keys, given which keys of each row
    /// are padding (`[batch * keys]`, `None` when none are).
    pub fn new(
        batch: usize,
        queries: usize,
        keys: usize,
        heads: usize,
        kv_heads: usize,
        key_padding: Option<&[bool]>,
        device: &B::Device,
    ) -> Self {
        if queries > 1 && !B::ad_enabled(device) {
            let padding = key_padding.map(|key_padding| {
                let mut mask = Vec::with_capacity(batch * heads * queries * keys);
                for row in key_padding.chunks(keys) {
                    for _ in 0..heads * queries {
                        mask.extend_from_slice(row);
                    }
                }
                let shape = [batch, heads, queries, keys];
                Tensor::from_data(TensorData::new(mask, shape), device)
            });
            return AttentionMask {
                fused: true,
                padding,
                grouped_bias: None,
            };
        }
        let grouped_bias = (queries > 1 || key_padding.is_some())
            .then(|| grouped_bias(batch, queries, keys, heads, kv_heads, key_padding, device));
        AttentionMask {
            fused: false,
            padding: None,
            grouped_bias,
        }
    }
}

/// Grouped-query self-attention with rotary position embeddings; Qwen3 adds an RMSNorm on
/// every query and key head before the rotation.
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    /// `[hidden, (heads + 2 * kv_heads) * head_dim]`: q, k and v projections fused.
    pub qkv: Linear<B>,
    /// `[heads * head_dim, hidden]`
    pub o_proj: Linear<B>,
    pub q_norm: Option<RmsNorm<B>>,
    pub k_norm: Option<RmsNorm<B>>,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

impl<B: Backend> Attention<B> {
    /// `x: [batch * seq, hidden]` → `[batch * seq, hidden]`.
    ///
    /// With a cache slot, the new keys and values are appended to what it holds (an empty slot
    /// is filled) and the queries attend to all cached positions as well; the bias must cover
    /// `cached + seq` keys.
    pub fn forward(
        &self,
        x: Tensor<B, 2>,
        batch: usize,
        rope: &RopeTables<B>,
        mask: &AttentionMask<B>,
        cache: Option<&mut Option<LayerCache<B>>>,
    ) -> Tensor<B, 2> {
        let [tokens, _] = x.dims();
        let seq = tokens / batch;
        let (h, kv, hd) = (self.num_heads, self.num_kv_heads, self.head_dim);

        let qkv = self.qkv.forward(x); // [tokens, (h + 2kv) * hd]
        let q = qkv
            .clone()
            .narrow(1, 0, h * hd)
            .reshape([batch, seq, h, hd]);
        let k = qkv
            .clone()
            .narrow(1, h * hd, kv * hd)
            .reshape([batch, seq, kv, hd]);
        let v = qkv
            .narrow(1, (h + kv) * hd, kv * hd)
            .reshape([batch, seq, kv, hd]);
        let (q, k) = match (&self.q_norm, &self.k_norm) {
            (Some(q_norm), Some(k_norm)) => (q_norm.forward(q), k_norm.forward(k)),
            _ => (q, k),
        };
        let q = rope.apply_q(q).swap_dims(1, 2); // [batch, h, seq, hd]
        let k = rope.apply_k(k).swap_dims(1, 2); // [batch, kv, seq, hd]
        let v = v.swap_dims(1, 2); // [batch, kv, seq, hd]

        let (k, v) = match cache {
            Some(slot) => {
                let (k, v) = match slot.take() {
                    Some(cached) => (
                        Tensor::cat(vec![cached.keys, k], 2), // [batch, kv, keys, hd]
                        Tensor::cat(vec![cached.values, v], 2),
                    ),
                    None => (k, v),
                };
                *slot = Some(LayerCache {
                    keys: k.clone(),
                    values: v.clone(),
                });
                (k, v)
            }
            None => (k, v),
        };
        let groups = h / kv;
        let out = if mask.fused {
            // The backend's fused attention (flash attention on CUDA and for long rows on CPU)
            // over key and value heads repeated per group.
            let (k, v) = (repeat_kv(k, groups), repeat_kv(v, groups)); // [batch, h, keys, hd]
            let options = AttentionModuleOptions {
                scale: None,
                softcap: None,
                is_causal: true,
            };
            attention(q, k, v, mask.padding.clone(), None, options) // [batch, h, seq, hd]
        } else {
            // The queries of the heads sharing a kv head are stacked along the sequence, so the
            // (cached) keys and values are used as they are, not repeated per head.
            let q = q.reshape([batch, kv, groups * seq, hd]);
            let scores = q
                .matmul(k.swap_dims(2, 3))
                .mul_scalar((hd as f64).powf(-0.5)); // [batch, kv, groups * seq, keys]
            let scores = match &mask.grouped_bias {
                Some(bias) => scores.add(bias.clone()),
                None => scores,
            };
            softmax_last(scores).matmul(v).reshape([batch, h, seq, hd]) // [batch, h, seq, hd]
        };
        let out = out
            .swap_dims(1, 2) // [batch, seq, h, hd]
            .reshape([tokens, h * hd]);
        self.o_proj.forward(out) // [tokens, hidden]
    }
}

/// One pre-norm decoder block: attention then MLP, each with a residual connection.
#[derive(Module, Debug)]
pub struct DecoderLayer<B: Backend> {
    pub input_norm: RmsNorm<B>,
    pub attention: Attention<B>,
    pub post_attention_norm: RmsNorm<B>,
    pub mlp: Mlp<B>,
}

impl<B: Backend> DecoderLayer<B> {
    /// `[batch * seq, hidden] -> [batch * seq, hidden]`
    pub fn forward(
        &self,
        x: Tensor<B, 2>,
        batch: usize,
        rope: &RopeTables<B>,
        mask: &AttentionMask<B>,
        cache: Option<&mut Option<LayerCache<B>>>,
    ) -> Tensor<B, 2> {
        let attended =
            self.attention
                .forward(self.input_norm.forward(x.clone()), batch, rope, mask, cache);
        let x = x.add(attended);
        let mlp = self
            .mlp
            .forward(self.post_attention_norm.forward(x.clone()));
        x.add(mlp)
    }
}

/// `[batch, kv_heads, keys, hd]` → `[batch, kv_heads * groups, keys, hd]`, each kv head repeated
/// for the query heads of its group (transformers' `repeat_kv`).
fn repeat_kv<B: Backend>(x: Tensor<B, 4>, groups: usize) -> Tensor<B, 4> {
    if groups == 1 {
        return x;
    }
    let [batch, kv, keys, hd] = x.dims();
    x.unsqueeze_dim::<5>(2)
        .repeat_dim(2, groups) // [batch, kv, groups, keys, hd]
        .reshape([batch, kv * groups, keys, hd])
}

/// The additive causal (for several queries) and padding bias of a grouped pass, materialised
/// on the device in the layout of the grouped scores `[batch, kv_heads, groups * queries, keys]`.
fn grouped_bias<B: Backend>(
    batch: usize,
    queries: usize,
    keys: usize,
    heads: usize,
    kv_heads: usize,
    key_padding: Option<&[bool]>,
    device: &B::Device,
) -> Tensor<B, 4> {
    let groups = heads / kv_heads;
    let mut causal = Tensor::<B, 2>::zeros([queries, keys], device); // [q, k]
    if queries > 1 {
        let later =
            Tensor::<B, 2, Bool>::tril_mask([queries, keys], (keys - queries) as i64, device);
        causal = causal.mask_fill(later, MASKED);
    }
    let mut bias = causal
        .reshape([1, 1, queries, keys])
        .repeat_dim(0, batch)
        .repeat_dim(1, heads); // [batch, heads, q, k]
    if let Some(padding) = key_padding {
        let values: Vec<f32> = padding
            .iter()
            .map(|&p| if p { MASKED } else { 0.0 })
            .collect();
        let padding = Tensor::<B, 2>::from_data(TensorData::new(values, [batch, keys]), device)
            .reshape([batch, 1, 1, keys])
            .repeat_dim(1, heads)
            .repeat_dim(2, queries); // [batch, heads, q, k]
        bias = bias.add(padding);
    }
    bias.reshape([batch, kv_heads, groups * queries, keys])
}
