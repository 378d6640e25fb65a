//! The Burn backends the binary is built with, chosen by cargo features, and the operations
//! grlo adds to them.
//!
//! `flex` (pure Rust, `gemm` kernels) is the default CPU backend: measured faster than
//! `ndarray` on every workload here (see ARCHITECTURE.md). `cuda` adds NVIDIA GPUs.
//!
//! [`ModelBackend`] is a Burn backend plus the two operations whose memory decides how long a
//! sequence can be trained: block-wise attention and the language-model head's per-token
//! log-probabilities; and the in-place write of the generation engine's KV cache. Their default bodies are written in Burn tensor ops, so every backend
//! runs them as they are; the autodiff backend overrides both with a custom backward that
//! recomputes block by block instead of keeping `[t, t]` scores or `[tokens, vocab]` logits.

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor};

use std::ops::Range;

use crate::attention::{AttentionSpec, blockwise};
use crate::engine::slots;
use crate::lm_head::{self, TokenLogprobs};

/// The CPU backend.
#[cfg(feature = "flex")]
pub type Cpu = burn::backend::Flex;
/// The CPU backend.
#[cfg(all(feature = "ndarray", not(feature = "flex")))]
pub type Cpu = burn::backend::NdArray;

/// The CUDA backend, computing in f32.
#[cfg(feature = "cuda")]
pub type Cuda = burn::backend::Cuda<f32>;
/// The CUDA backend, computing in bf16.
#[cfg(feature = "cuda")]
pub type CudaBf16 = burn::backend::Cuda<half::bf16>;

#[cfg(not(any(feature = "flex", feature = "ndarray")))]
compile_error!("grlo-model needs a CPU backend: enable the `flex` or `ndarray` feature");

/// Scores per attention block on CUDA devices (`grlo plan` sizes GPU jobs with it too).
pub const CUDA_ATTENTION_BLOCK_ELEMENTS: usize = 1 << 26;
/// Logits per chunk of the LM head on CUDA devices.
pub const CUDA_LOGITS_CHUNK_ELEMENTS: usize = 1 << 27;

/// A Burn backend with grlo's memory-efficient operations.
pub trait ModelBackend: Backend {
    /// Elements of one block of attention scores (`batch × heads × query block × key block`):
    /// larger blocks mean fewer, larger operations (what a GPU wants), smaller ones less memory.
    fn attention_block_elements() -> usize {
        1 << 22
    }

    /// Elements of one chunk of vocabulary logits (`tokens × vocab`) in the log-prob head.
    fn logits_chunk_elements() -> usize {
        1 << 24
    }

    /// Whether inference models (actors' policies, reward models) are held in bf16 on this
    /// backend: on GPUs, half the memory and bandwidth; on the CPU backend bf16 products go
    /// through f32 conversions and would only be slower.
    fn holds_inference_models_in_bf16() -> bool {
        false
    }

    /// Grouped-query attention computed block by block (see [`crate::attention`]):
    /// `q: [batch, kv_heads, queries * groups, head_dim]` (query-major, the heads of a group
    /// adjacent), `k, v: [batch, kv_heads, keys, head_dim]` → the output in `q`'s layout.
    fn block_attention(
        q: Tensor<Self, 4>,
        k: Tensor<Self, 4>,
        v: Tensor<Self, 4>,
        spec: &AttentionSpec,
    ) -> Tensor<Self, 4> {
        blockwise::forward(q, k, v, spec).0
    }

    /// Writes `value` (`[rows.len(), kv_heads, positions, head_dim]`) into the slot cache
    /// tensor `cache` (`[slots, kv_heads, capacity, head_dim]`) at slots `rows`, positions
    /// `column..`, in place where the backend allows it (see [`crate::engine::slots`]).
    fn kv_write(
        cache: Tensor<Self, 4>,
        rows: Range<usize>,
        column: usize,
        value: Tensor<Self, 4>,
    ) -> Tensor<Self, 4> {
        slots::kv_write_sliced(cache, rows, column, value)
    }

    /// The log-probability of each target token under `hidden · weight` (and the entropy of
    /// that distribution when asked), computed a chunk of tokens at a time:
    /// `hidden: [tokens, d]`, `weight: [d, vocab]`, `targets: [tokens]`.
    fn token_logprobs(
        hidden: Tensor<Self, 2>,
        weight: Tensor<Self, 2>,
        targets: Tensor<Self, 1, Int>,
        with_entropy: bool,
    ) -> TokenLogprobs<Self> {
        lm_head::forward(hidden, weight, targets, with_entropy)
    }
}

/// An autodiff backend whose inner backend is a [`ModelBackend`] too (the learner's bound).
pub trait ModelAutodiffBackend: AutodiffBackend<InnerBackend: ModelBackend> + ModelBackend {}

impl<T> ModelAutodiffBackend for T
where
    T: AutodiffBackend + ModelBackend,
    T::InnerBackend: ModelBackend,
{
}

#[cfg(feature = "flex")]
impl ModelBackend for burn::backend::Flex {
    fn kv_write(
        cache: Tensor<Self, 4>,
        rows: Range<usize>,
        column: usize,
        value: Tensor<Self, 4>,
    ) -> Tensor<Self, 4> {
        slots::kv_write_flex(cache, rows, column, value)
    }
}

#[cfg(feature = "ndarray")]
impl ModelBackend for burn::backend::NdArray {}

#[cfg(feature = "cuda")]
impl ModelBackend for Cuda {
    fn holds_inference_models_in_bf16() -> bool {
        true
    }

    fn attention_block_elements() -> usize {
        CUDA_ATTENTION_BLOCK_ELEMENTS
    }

    fn logits_chunk_elements() -> usize {
        CUDA_LOGITS_CHUNK_ELEMENTS
    }
}

#[cfg(feature = "cuda")]
impl ModelBackend for CudaBf16 {
    fn attention_block_elements() -> usize {
        CUDA_ATTENTION_BLOCK_ELEMENTS
    }

    fn logits_chunk_elements() -> usize {
        CUDA_LOGITS_CHUNK_ELEMENTS
    }
}

impl<B: ModelBackend, C: CheckpointStrategy> ModelBackend for Autodiff<B, C> {
    fn holds_inference_models_in_bf16() -> bool {
        B::holds_inference_models_in_bf16()
    }

    fn attention_block_elements() -> usize {
        B::attention_block_elements()
    }

    fn logits_chunk_elements() -> usize {
        B::logits_chunk_elements()
    }

    fn block_attention(
        q: Tensor<Self, 4>,
        k: Tensor<Self, 4>,
        v: Tensor<Self, 4>,
        spec: &AttentionSpec,
    ) -> Tensor<Self, 4> {
        crate::attention::autodiff::block_attention::<B, C>(q, k, v, spec)
    }

    fn token_logprobs(
        hidden: Tensor<Self, 2>,
        weight: Tensor<Self, 2>,
        targets: Tensor<Self, 1, Int>,
        with_entropy: bool,
    ) -> TokenLogprobs<Self> {
        lm_head::autodiff::token_logprobs::<B, C>(hidden, weight, targets, with_entropy)
    }
}

/// Bytes the CUDA allocator pools of `device` have reserved, and of those in use (Burn keeps
/// freed memory in its pools until [`cuda_memory_cleanup`], so the reserved figure after a
/// workload is its high-water mark).
#[cfg(feature = "cuda")]
pub fn cuda_memory_usage(device: &burn::backend::cuda::CudaDevice) -> Result<(u64, u64), String> {
    use cubecl::Runtime;
    let usage = cubecl::cuda::CudaRuntime::client(device)
        .memory_usage()
        .map_err(|e| format!("cannot read the CUDA memory usage: {e:?}"))?;
    Ok((usage.bytes_reserved, usage.bytes_in_use))
}

/// Hands the pools' free memory of `device` back to the driver.
#[cfg(feature = "cuda")]
pub fn cuda_memory_cleanup(device: &burn::backend::cuda::CudaDevice) {
    use cubecl::Runtime;
    cubecl::cuda::CudaRuntime::client(device).memory_cleanup();
}
