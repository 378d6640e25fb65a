//! PLACEHOLDER: the chunked log-prob head's custom backward.

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::tensor::{Int, Tensor};

use super::TokenLogprobs;
use crate::backend::ModelBackend;

pub fn token_logprobs<B: ModelBackend, C: CheckpointStrategy>(
    hidden: Tensor<Autodiff<B, C>, 2>,
    weight: Tensor<Autodiff<B, C>, 2>,
    targets: Tensor<Autodiff<B, C>, 1, Int>,
    with_entropy: bool,
) -> TokenLogprobs<Autodiff<B, C>> {
    super::forward(hidden, weight, targets, with_entropy)
}
