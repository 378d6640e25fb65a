//! The language-model head's per-token log-probabilities (and entropies), a chunk of tokens at
//! a time.
//!
//! The learner needs `log p(target)` of every response token under `hidden · weight`, not the
//! `[tokens, vocab]` logits themselves: at the paper's size (vocab 151,936, 24,576 tokens a
//! micro-batch) one f32 copy of those logits is 14.9 GB, and the materialised
//! `log_softmax` + `gather` under autodiff keeps several. Here the logits of one chunk of
//! tokens are built, reduced to the target's logit, the log-sum-exp and (when asked) the
//! entropy, and dropped before the next chunk; the backward pass recomputes each chunk's logits
//! from `hidden`, `weight` and the saved log-sum-exp (as Liger's fused linear cross-entropy and
//! verl's fused kernels do). No tensor larger than a chunk (`tokens × vocab` elements, see
//! [`ModelBackend::logits_chunk_elements`]) or the weight's gradient lives at once.
//!
//! Logits are f32 whatever the inputs' dtype: the matmuls run in the inputs' dtype (bf16 under
//! mixed precision, accumulating in f32 inside the backend's matmul) and their results are cast
//! to f32 before any reduction; log-probabilities, entropies and the log-sum-exp are f32.
//!
//! - [`forward_chunked`] / [`backward_chunked`]: the two passes in Burn tensor ops (every
//!   backend).
//! - [`autodiff`]: the custom backward that makes them one differentiable operation.
//! - [`reference`]: the materialised computation the chunked one is tested against.

pub mod autodiff;
pub mod reference;

use burn::tensor::backend::Backend;
use burn::tensor::{DType, IndexingUpdateOp, Int, Tensor};

use crate::backend::ModelBackend;

/// Per-token log-probabilities of the targets, `[tokens]`, and the entropies when asked.
#[derive(Clone, Debug)]
pub struct TokenLogprobs<B: Backend> {
    pub logprobs: Tensor<B, 1>,
    pub entropy: Option<Tensor<B, 1>>,
}

/// What the forward pass computed: the log-probabilities and entropies, and the log-sum-exp
/// of every token's logits (`[tokens]`, f32) that the backward pass recomputes from.
#[derive(Clone, Debug)]
pub struct HeadForward<B: Backend> {
    pub logprobs: Tensor<B, 1>,
    pub entropy: Option<Tensor<B, 1>>,
    pub lse: Tensor<B, 1>,
}

/// Gradients with respect to the inputs that asked for one, in the inputs' dtypes.
#[derive(Clone, Debug)]
pub struct HeadGrads<B: Backend> {
    /// `[tokens, d]`.
    pub hidden: Option<Tensor<B, 2>>,
    /// `[d, vocab]`.
    pub weight: Option<Tensor<B, 2>>,
}

/// Tokens per chunk so that one chunk of logits holds about `chunk_elements` values (at least
/// one token).
pub fn chunk_tokens(vocab: usize, chunk_elements: usize) -> usize {
    (chunk_elements / vocab.max(1)).max(1)
}

/// `hidden: [tokens, d]`, `weight: [d, vocab]`, `targets: [tokens]`, in chunks of
/// [`ModelBackend::logits_chunk_elements`] logits (see [`forward_chunked`]).
pub fn forward<B: ModelBackend>(
    hidden: Tensor<B, 2>,
    weight: Tensor<B, 2>,
    targets: Tensor<B, 1, Int>,
    with_entropy: bool,
) -> TokenLogprobs<B> {
    let [_, vocab] = weight.dims();
    let chunk = chunk_tokens(vocab, B::logits_chunk_elements());
    forward_chunked(hidden, weight, targets, with_entropy, chunk)
}

/// The log-probability of each target (and the entropy of each token's distribution when
/// asked), computed `chunk_tokens` tokens at a time: `hidden: [tokens, d]`,
/// `weight: [d, vocab]`, `targets: [tokens]` → `[tokens]` each, f32. No autodiff graph is
/// recorded through the chunks: on an autodiff backend use [`ModelBackend::token_logprobs`].
pub fn forward_chunked<B: Backend>(
    hidden: Tensor<B, 2>,
    weight: Tensor<B, 2>,
    targets: Tensor<B, 1, Int>,
    with_entropy: bool,
    chunk_tokens: usize,
) -> TokenLogprobs<B> {
    let out = forward_with_lse(hidden, weight, targets, with_entropy, chunk_tokens);
    TokenLogprobs {
        logprobs: out.logprobs,
        entropy: out.entropy,
    }
}

/// [`forward_chunked`], also returning each token's log-sum-exp for [`backward_chunked`].
pub fn forward_with_lse<B: Backend>(
    hidden: Tensor<B, 2>,
    weight: Tensor<B, 2>,
    targets: Tensor<B, 1, Int>,
    with_entropy: bool,
    chunk_tokens: usize,
) -> HeadForward<B> {
    let [tokens, _] = hidden.dims();
    let weight = to_dtype(weight, hidden.dtype());
    let mut logprobs = Vec::new();
    let mut entropies = Vec::new();
    let mut lses = Vec::new();
    for (start, len) in chunks(tokens, chunk_tokens) {
        let h = hidden.clone().narrow(0, start, len); // [c, d]
        let t = targets.clone().narrow(0, start, len).reshape([len, 1]); // [c, 1]
        let z = to_f32(h.matmul(weight.clone())); // [c, vocab]
        let target = z.clone().gather(1, t); // [c, 1]
        let max = z.clone().max_dim(1); // [c, 1]
        let shifted = z.sub(max.clone()); // [c, vocab], z's buffer
        let exp = shifted.clone().exp(); // [c, vocab]
        let sum = exp.clone().sum_dim(1); // [c, 1]
        let log_sum = sum.clone().log(); // [c, 1]
        if with_entropy {
            // H = lse - Σ softmax·z = log S - Σ e^s·s / S with s = z - max, S = Σ e^s.
            let expected = exp.mul(shifted).sum_dim(1).div(sum); // [c, 1]
            entropies.push(log_sum.clone().sub(expected).reshape([len]));
        }
        let lse = max.add(log_sum); // [c, 1]
        logprobs.push(target.sub(lse.clone()).reshape([len]));
        lses.push(lse.reshape([len]));
    }
    let device = hidden.device();
    let cat = |parts: Vec<Tensor<B, 1>>| {
        if parts.is_empty() {
            Tensor::<B, 1>::empty([0], (&device, DType::F32))
        } else {
            Tensor::cat(parts, 0)
        }
    };
    HeadForward {
        logprobs: cat(logprobs),
        entropy: with_entropy.then(|| cat(entropies)),
        lse: cat(lses),
    }
}

/// Gradients of a loss with respect to `hidden` and/or `weight` (those whose `need_*` is set),
/// given the forward's log-sum-exp (and entropy) and the loss's gradients with respect to the
/// log-probabilities (`grad_logprobs`) and entropies (`grad_entropy`, `None` when the loss does
/// not use them: then nothing of the entropy's gradient is computed).
///
/// Per chunk, with `z` the recomputed f32 logits, `log p = z - lse` and `p = exp(log p)`:
/// `∂lp/∂z_k = 1[k = target] - p_k` and `∂H/∂z_k = -p_k (log p_k + H)`, so
/// `dz = g_lp · (onehot - p) - g_H · p · (log p + H)`; then `d hidden = dz · weightᵀ` and
/// `d weight += hiddenᵀ · dz` (accumulated in f32, cast to the weight's dtype at the end).
#[allow(clippy::too_many_arguments)]
pub fn backward_chunked<B: Backend>(
    hidden: Tensor<B, 2>,
    weight: Tensor<B, 2>,
    targets: Tensor<B, 1, Int>,
    lse: Tensor<B, 1>,
    entropy: Option<Tensor<B, 1>>,
    grad_logprobs: Tensor<B, 1>,
    grad_entropy: Option<Tensor<B, 1>>,
    need_hidden: bool,
    need_weight: bool,
    chunk_tokens: usize,
) -> HeadGrads<B> {
    let [tokens, d] = hidden.dims();
    let [_, vocab] = weight.dims();
    let dtype = hidden.dtype();
    let weight_dtype = weight.dtype();
    let device = hidden.device();
    if !(need_hidden || need_weight) {
        return HeadGrads {
            hidden: None,
            weight: None,
        };
    }
    let weight = to_dtype(weight, dtype);
    let grad_logprobs = to_f32(grad_logprobs);
    let grad_entropy = grad_entropy.map(|g| {
        let entropy = entropy.expect("the entropy's gradient needs the forward's entropy");
        (to_f32(g), entropy)
    });
    let mut grad_hidden = Vec::new();
    let mut grad_weight: Option<Tensor<B, 2>> = None;
    for (start, len) in chunks(tokens, chunk_tokens) {
        let h = hidden.clone().narrow(0, start, len); // [c, d]
        let t = targets.clone().narrow(0, start, len).reshape([len, 1]); // [c, 1]
        let lse = lse.clone().narrow(0, start, len).reshape([len, 1]); // [c, 1]
        let g_lp = grad_logprobs
            .clone()
            .narrow(0, start, len)
            .reshape([len, 1]); // [c, 1]
        let z = to_f32(h.clone().matmul(weight.clone())); // [c, vocab]
        let logp = z.sub(lse); // [c, vocab], z's buffer
        let p = logp.clone().exp(); // [c, vocab]
        let neg_coef = match &grad_entropy {
            // -(g_lp + g_H · (log p + H)) = log p · (-g_H) - (g_lp + g_H · H)
            Some((g_ent, entropy)) => {
                let g_ent = g_ent.clone().narrow(0, start, len).reshape([len, 1]); // [c, 1]
                let entropy = entropy.clone().narrow(0, start, len).reshape([len, 1]); // [c, 1]
                let row = g_lp.clone().add(g_ent.clone().mul(entropy)); // [c, 1]
                logp.mul(g_ent.neg()).sub(row) // [c, vocab], log p's buffer
            }
            None => {
                drop(logp);
                g_lp.clone().neg() // [c, 1]
            }
        };
        let dz = p.mul(neg_coef); // [c, vocab], p's buffer
        let dz = dz.scatter(1, t, g_lp, IndexingUpdateOp::Add); // [c, vocab]
        let dz = to_dtype(dz, dtype);
        if need_weight {
            let part = to_f32(h.transpose().matmul(dz.clone())); // [d, vocab]
            grad_weight = Some(match grad_weight.take() {
                Some(sum) => sum.add(part),
                None => part,
            });
        }
        if need_hidden {
            grad_hidden.push(dz.matmul(weight.clone().transpose())); // [c, d]
        }
    }
    HeadGrads {
        hidden: need_hidden.then(|| {
            if grad_hidden.is_empty() {
                Tensor::zeros([tokens, d], (&device, dtype))
            } else {
                Tensor::cat(grad_hidden, 0)
            }
        }),
        weight: need_weight.then(|| match grad_weight {
            Some(sum) => to_dtype(sum, weight_dtype),
            None => Tensor::zeros([d, vocab], (&device, weight_dtype)),
        }),
    }
}

/// `(start, len)` of each chunk of `chunk_tokens` tokens (the last one shorter).
fn chunks(tokens: usize, chunk_tokens: usize) -> impl Iterator<Item = (usize, usize)> {
    let chunk = chunk_tokens.max(1);
    (0..tokens)
        .step_by(chunk)
        .map(move |start| (start, chunk.min(tokens - start)))
}

fn to_f32<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    to_dtype(x, DType::F32)
}

fn to_dtype<B: Backend, const D: usize>(x: Tensor<B, D>, dtype: DType) -> Tensor<B, D> {
    if x.dtype() == dtype { x } else { x.cast(dtype) }
}
