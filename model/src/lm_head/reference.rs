//! The materialised log-prob head: the whole `[tokens, vocab]` logits, `log_softmax`, `gather`
//! and `-Σ p log p`, differentiated by Burn's autodiff. What the chunked computation is tested
//! against; never used for training (it is the memory the chunked one avoids).

use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Int, Tensor};

use super::TokenLogprobs;

/// `hidden: [tokens, d]`, `weight: [d, vocab]`, `targets: [tokens]` → `[tokens]` each, f32.
pub fn token_logprobs<B: Backend>(
    hidden: Tensor<B, 2>,
    weight: Tensor<B, 2>,
    targets: Tensor<B, 1, Int>,
    with_entropy: bool,
) -> TokenLogprobs<B> {
    let [tokens, _] = hidden.dims();
    let logits = hidden.matmul(weight); // [tokens, vocab]
    let logits = if logits.dtype() == DType::F32 {
        logits
    } else {
        logits.cast(DType::F32)
    };
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
