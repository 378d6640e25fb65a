//! The language-model head's per-token log-probabilities (and entropies).
//!
//! PLACEHOLDER: materialises the whole `[tokens, vocab]` logits; being replaced by a chunked
//! computation with a custom backward.

pub mod autodiff;

use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};

/// Per-token log-probabilities of the targets, `[tokens]`, and the entropies when asked.
#[derive(Clone, Debug)]
pub struct TokenLogprobs<B: Backend> {
    pub logprobs: Tensor<B, 1>,
    pub entropy: Option<Tensor<B, 1>>,
}

/// `hidden: [tokens, d]`, `weight: [d, vocab]`, `targets: [tokens]`.
pub fn forward<B: Backend>(
    hidden: Tensor<B, 2>,
    weight: Tensor<B, 2>,
    targets: Tensor<B, 1, Int>,
    with_entropy: bool,
) -> TokenLogprobs<B> {
    let [tokens, _] = hidden.dims();
    let logits = hidden.matmul(weight); // [tokens, vocab]
    let logp = log_softmax(logits, 1); // [tokens, vocab]
    let entropy = with_entropy.then(|| {
        logp.clone()
            .exp()
            .mul(logp.clone())
            .sum_dim(1)
            .neg()
            .reshape([tokens])
    });
    let logprobs = logp
        .gather(1, targets.reshape([tokens, 1]))
        .reshape([tokens]);
    TokenLogprobs { logprobs, entropy }
}
