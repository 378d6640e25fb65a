//! The decoder's building blocks: linear projections, RMSNorm, the SwiGLU MLP and
//! grouped-query attention with rotary embeddings and a KV cache.
//!
//! Hidden states travel as 2-D `[tokens, hidden]` tensors (tokens = batch × sequence): a
//! linear layer on a 3-D input would run a batched matmul against a broadcast weight, which
//! is several times slower on the CPU backends. Only attention reshapes to heads.
//!
//! Mixed precision: a linear layer computes in its input's dtype (an f32 weight is cast for
//! the product, so the parameters and their gradients stay f32); RMSNorm, rotary embeddings
//! and the residual stream are f32; [`Pass::compute`] says what the matmuls and attention use.

use burn::module::{Module, Param};
use burn::tensor::activation::silu;
use burn::tensor::backend::Backend;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{DType, Tensor};

use crate::attention::AttentionSpec;
use crate::backend::ModelBackend;
use crate::engine::SlotLayer;
use crate::rope::RopeTables;

/// `y = x W + b` with `W` stored `[in, out]` (the transpose of PyTorch's layout).
#[derive(Module, Debug)]
pub struct Linear<B: Backend> {
    /// `[d_in, d_out]`
    pub weight: Param<Tensor<B, 2>>,
    /// `[d_out]`
    pub bias: Option<Param<Tensor<B, 1>>>,
}

impl<B: Backend> Linear<B> {
    /// `[tokens, d_in] -> [tokens, d_out]`, in `x`'s dtype.
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let dtype = x.dtype();
        let weight = to_dtype(self.weight.val(), dtype);
        let bias = self.bias.as_ref().map(|b| to_dtype(b.val(), dtype));
        burn::tensor::module::linear(x, weight, bias)
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
    /// Normalises `[..., d]` over `d`: `x / sqrt(mean(x²) + eps) * weight`, in f32 whatever
    /// `x`'s dtype (the result is f32).
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let shape = x.shape();
        let d = shape[D - 1];
        let x = to_dtype(x, DType::F32).reshape([shape.num_elements() / d, d]); // [rows, d]
        let rms = x.clone().square().mean_dim(1).add_scalar(self.eps).sqrt(); // [rows, 1]
        let weight = to_dtype(self.weight.val(), DType::F32).unsqueeze::<2>(); // [1, d]
        x.div(rms).mul(weight).reshape(shape)
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

/// Where an attention layer keeps the keys and values of the tokens it processes.
pub enum KvSlot<'a, B: Backend> {
    /// Appended to what the cache holds (an empty cache is filled): prefill, and
    /// [`crate::KvCache`]'s step-by-step decoding.
    Append(&'a mut Option<LayerCache<B>>),
    /// Written in place into a preallocated slot cache at each row's length (one new token
    /// per row): the generation engine's decoding steps.
    Slots(&'a mut SlotLayer<B>, &'a [usize]),
}

/// What one forward pass shares across its layers: the row count, the rotary tables, which
/// keys each query sees, and the dtype matmuls and attention compute in.
#[derive(Clone, Debug)]
pub struct Pass<B: Backend> {
    pub batch: usize,
    pub rope: RopeTables<B>,
    pub attention: AttentionSpec,
    /// Use the backend's fused attention (no gradients, several tokens, no padding): fast on
    /// the CPU backend and for prefill; everything else goes block by block.
    pub fused: bool,
    /// `F32`, or `BF16` under mixed precision (norms, softmax statistics and the residual
    /// stream stay f32).
    pub compute: DType,
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

impl<B: ModelBackend> Attention<B> {
    /// `x: [batch * seq, hidden]` (in the compute dtype) → `[batch * seq, hidden]` (the same).
    ///
    /// With a cache, the new keys and values are stored in it (see [`KvSlot`]) and the queries
    /// attend to all cached positions as well; the pass's attention spec must cover the keys
    /// the cache then holds.
    pub fn forward(
        &self,
        x: Tensor<B, 2>,
        pass: &Pass<B>,
        cache: Option<KvSlot<'_, B>>,
    ) -> Tensor<B, 2> {
        let [tokens, _] = x.dims();
        let batch = pass.batch;
        let seq = tokens / batch;
        let (h, kv, hd) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let groups = h / kv;

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
        // Norms and rotations in f32, attention in the compute dtype.
        let (q, k) = match (&self.q_norm, &self.k_norm) {
            (Some(q_norm), Some(k_norm)) => (q_norm.forward(q), k_norm.forward(k)),
            _ => (to_dtype(q, DType::F32), to_dtype(k, DType::F32)),
        };
        let q = to_dtype(pass.rope.apply_q(q), pass.compute); // [batch, seq, h, hd]
        let k = to_dtype(pass.rope.apply_k(k), pass.compute).swap_dims(1, 2); // [batch, kv, seq, hd]
        let v = v.swap_dims(1, 2); // [batch, kv, seq, hd]

        let (k, v) = match cache {
            Some(KvSlot::Slots(layer, lengths)) => layer.write_step(k, v, lengths),
            Some(KvSlot::Append(slot)) => {
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
        let out = if pass.fused {
            // The backend's fused attention over key and value heads repeated per group.
            let q = q.swap_dims(1, 2); // [batch, h, seq, hd]
            let (k, v) = (repeat_kv(k, groups), repeat_kv(v, groups)); // [batch, h, keys, hd]
            let options = AttentionModuleOptions {
                scale: None,
                softcap: None,
                is_causal: true,
            };
            attention(q, k, v, None, None, options).swap_dims(1, 2) // [batch, seq, h, hd]
        } else {
            // The queries of the heads sharing a kv head are stacked along the sequence
            // (query-major), so the (cached) keys and values are used as they are.
            let q = q
                .reshape([batch, seq, kv, groups * hd])
                .swap_dims(1, 2)
                .reshape([batch, kv, seq * groups, hd]);
            B::block_attention(q, k, v, &pass.attention) // [batch, kv, seq * groups, hd]
                .reshape([batch, kv, seq, groups * hd])
                .swap_dims(1, 2) // [batch, seq, kv, groups * hd]
        };
        self.o_proj.forward(out.reshape([tokens, h * hd])) // [tokens, hidden]
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

impl<B: ModelBackend> DecoderLayer<B> {
    /// `[batch * seq, hidden] -> [batch * seq, hidden]`, the residual stream in f32.
    pub fn forward(
        &self,
        x: Tensor<B, 2>,
        pass: &Pass<B>,
        cache: Option<KvSlot<'_, B>>,
    ) -> Tensor<B, 2> {
        let normed = to_dtype(self.input_norm.forward(x.clone()), pass.compute);
        let attended = self.attention.forward(normed, pass, cache);
        let x = x.add(to_dtype(attended, DType::F32));
        let normed = to_dtype(self.post_attention_norm.forward(x.clone()), pass.compute);
        let mlp = self.mlp.forward(normed);
        x.add(to_dtype(mlp, DType::F32))
    }
}

/// `x` in `dtype` (unchanged when it already is).
pub fn to_dtype<B: Backend, const D: usize>(x: Tensor<B, D>, dtype: DType) -> Tensor<B, D> {
    if x.dtype() == dtype { x } else { x.cast(dtype) }
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
