//! The decoder's building blocks: linear projections, RMSNorm, the SwiGLU MLP and
//! grouped-query attention with rotary embeddings and a KV cache.
//!
//! Hidden states travel as 2-D `[tokens, hidden]` tensors (tokens = batch × sequence): a
//! linear layer on a 3-D input would run a batched matmul against a broadcast weight, which
//! is several times slower on the CPU backends. Only attention reshapes to heads.

use burn::module::{Module, Param};
use burn::tensor::Tensor;
use burn::tensor::activation::{silu, softmax};
use burn::tensor::backend::Backend;

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
        let rms = x
            .clone()
            .square()
            .mean_dim(D - 1)
            .add_scalar(self.eps)
            .sqrt(); // [..., 1]
        let weight = self.weight.val().unsqueeze::<D>(); // [1, ..., d]
        x.div(rms).mul(weight)
    }
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

/// What masks attention scores `[batch, kv_heads, groups, queries, keys]`: both parts are
/// additive (0 or [`MASKED`]) and broadcast over heads.
#[derive(Clone, Debug)]
pub struct AttentionBias<B: Backend> {
    /// `[queries, keys]`: hides later keys from each query; `None` when every query may see
    /// every key (one-token decoding).
    pub causal: Option<Tensor<B, 2>>,
    /// `[batch, keys]`: hides padding keys; `None` when no row has padding on the left.
    pub keys: Option<Tensor<B, 2>>,
}

impl<B: Backend> AttentionBias<B> {
    /// The causal bias for `queries` new positions over `keys` keys (the last `queries` keys
    /// are the new ones) and an optional key bias.
    pub fn new(
        queries: usize,
        keys: usize,
        key_bias: Option<Tensor<B, 2>>,
        device: &B::Device,
    ) -> Self {
        let causal = (queries > 1).then(|| {
            let mask = Tensor::<B, 2, burn::tensor::Bool>::tril_mask(
                [queries, keys],
                (keys - queries) as i64,
                device,
            );
            Tensor::<B, 2>::zeros([queries, keys], device).mask_fill(mask, MASKED)
        });
        AttentionBias {
            causal,
            keys: key_bias,
        }
    }

    /// Adds the bias to scores `[batch, kv_heads, groups, queries, keys]`.
    fn apply(&self, scores: Tensor<B, 5>) -> Tensor<B, 5> {
        let [batch, _, _, queries, keys] = scores.dims();
        let mut scores = scores;
        if let Some(causal) = &self.causal {
            scores = scores.add(causal.clone().reshape([1, 1, 1, queries, keys]));
        }
        if let Some(key_bias) = &self.keys {
            scores = scores.add(key_bias.clone().reshape([batch, 1, 1, 1, keys]));
        }
        scores
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
        bias: &AttentionBias<B>,
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
        let q = rope.apply(q).swap_dims(1, 2); // [batch, h, seq, hd]
        let k = rope.apply(k).swap_dims(1, 2); // [batch, kv, seq, hd]
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
        let keys = k.dims()[2];
        let groups = h / kv;

        // Queries of the heads that share a kv head are stacked along the sequence axis, so the
        // shared keys and values are used as they are, without being repeated per head.
        let q = q.reshape([batch, kv, groups * seq, hd]);
        let scores = q
            .matmul(k.swap_dims(2, 3))
            .mul_scalar((hd as f64).powf(-0.5)); // [batch, kv, groups * seq, keys]
        let scores = bias.apply(scores.reshape([batch, kv, groups, seq, keys]));
        let probs = softmax(scores, 4).reshape([batch, kv, groups * seq, keys]);
        let out = probs.matmul(v); // [batch, kv, groups * seq, hd]
        let out = out
            .reshape([batch, h, seq, hd])
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
        bias: &AttentionBias<B>,
        cache: Option<&mut Option<LayerCache<B>>>,
    ) -> Tensor<B, 2> {
        let attended =
            self.attention
                .forward(self.input_norm.forward(x.clone()), batch, rope, bias, cache);
        let x = x.add(attended);
        let mlp = self
            .mlp
            .forward(self.post_attention_norm.forward(x.clone()));
        x.add(mlp)
    }
}
