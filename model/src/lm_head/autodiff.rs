//! The chunked log-prob head as operations of Burn's autodiff graph, with their own backward.
//!
//! The graph keeps `hidden` and `weight` (alive in the graph anyway), the targets, each token's
//! f32 log-sum-exp and, when computed, its entropy: memory linear in the tokens. The backward
//! recomputes the logits chunk by chunk ([`lm_head::backward_chunked`]).
//!
//! Burn's custom operations have one output, and the loss may use the log-probabilities, the
//! entropies, or both. So there are two operations: the log-prob operation (parents `hidden`
//! and `weight`, output the log-probabilities) does all the work, and the entropy operation
//! (parent: the log-prob operation's output, output the entropies) only hands the entropy's
//! gradient to it through a slot they share. A child's backward runs before its parent's, so
//! when the log-prob backward runs the slot holds the entropy's gradient if and only if the
//! loss used the entropy: an unused (or detached) entropy costs nothing in the backward pass.

use std::sync::{Arc, Mutex, PoisonError};

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Int, Tensor, TensorPrimitive};

use super::{TokenLogprobs, chunk_tokens};
use crate::backend::ModelBackend;
use crate::lm_head;

/// Where the entropy operation's backward leaves the entropy's gradient (`[tokens]`) for the
/// log-prob operation's backward.
type EntropyGradSlot<B> = Arc<Mutex<Option<FloatTensor<B>>>>;

/// What the log-prob operation's backward needs.
#[derive(Clone, Debug)]
struct SavedHead<B: Backend> {
    hidden: B::FloatTensorPrimitive,
    weight: B::FloatTensorPrimitive,
    targets: B::IntTensorPrimitive,
    lse: B::FloatTensorPrimitive,
    /// The forward's entropies and the slot of their gradient, when they were computed.
    entropy: Option<(B::FloatTensorPrimitive, EntropyGradSlot<B>)>,
    chunk_tokens: usize,
}

#[derive(Debug)]
struct LogprobBackward;

impl<B: Backend> Backward<B, 2> for LogprobBackward {
    type State = SavedHead<B>;

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [node_hidden, node_weight] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let s = ops.state;
        let (entropy, grad_entropy) = match s.entropy {
            Some((entropy, slot)) => (
                Some(float(entropy)),
                slot.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .take()
                    .map(float),
            ),
            None => (None, None),
        };
        let out = lm_head::backward_chunked(
            float::<B, 2>(s.hidden),
            float(s.weight),
            Tensor::<B, 1, Int>::from_primitive(s.targets),
            float(s.lse),
            entropy,
            float(grad),
            grad_entropy,
            node_hidden.is_some(),
            node_weight.is_some(),
            s.chunk_tokens,
        );
        for (node, grad) in [(node_hidden, out.hidden), (node_weight, out.weight)] {
            if let (Some(node), Some(grad)) = (node, grad) {
                grads.register::<B>(node.id, grad.into_primitive().tensor());
            }
        }
    }
}

#[derive(Debug)]
struct EntropyBackward;

impl<B: Backend> Backward<B, 1> for EntropyBackward {
    type State = EntropyGradSlot<B>;

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [node_logprobs] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        if let Some(node) = node_logprobs {
            // A zero gradient for the log-probabilities makes sure their backward runs (and
            // picks up the entropy's gradient) even when the loss uses only the entropy.
            let zeros = float::<B, 1>(grad.clone()).zeros_like();
            *ops.state.lock().unwrap_or_else(PoisonError::into_inner) = Some(grad);
            grads.register::<B>(node.id, zeros.into_primitive().tensor());
        }
    }
}

/// The log-prob head on the autodiff backend (see [`ModelBackend::token_logprobs`]), in chunks
/// of [`ModelBackend::logits_chunk_elements`] logits.
pub fn token_logprobs<B: ModelBackend, C: CheckpointStrategy>(
    hidden: Tensor<Autodiff<B, C>, 2>,
    weight: Tensor<Autodiff<B, C>, 2>,
    targets: Tensor<Autodiff<B, C>, 1, Int>,
    with_entropy: bool,
) -> TokenLogprobs<Autodiff<B, C>> {
    let [_, vocab] = weight.dims();
    let chunk = chunk_tokens(vocab, B::logits_chunk_elements());
    token_logprobs_chunked::<B, C>(hidden, weight, targets, with_entropy, chunk)
}

/// [`token_logprobs`] with `chunk_tokens` tokens a chunk.
pub fn token_logprobs_chunked<B: Backend, C: CheckpointStrategy>(
    hidden: Tensor<Autodiff<B, C>, 2>,
    weight: Tensor<Autodiff<B, C>, 2>,
    targets: Tensor<Autodiff<B, C>, 1, Int>,
    with_entropy: bool,
    chunk_tokens: usize,
) -> TokenLogprobs<Autodiff<B, C>> {
    let hidden = hidden.into_primitive().tensor();
    let weight = weight.into_primitive().tensor();
    let targets: B::IntTensorPrimitive = targets.into_primitive();
    let out = lm_head::forward_with_lse(
        float::<B, 2>(hidden.primitive.clone()),
        float(weight.primitive.clone()),
        Tensor::<B, 1, Int>::from_primitive(targets.clone()),
        with_entropy,
        chunk_tokens,
    );
    let logprobs = out.logprobs.into_primitive().tensor();
    let entropy = out.entropy.map(|e| e.into_primitive().tensor());
    let slot: Option<EntropyGradSlot<B>> = entropy.as_ref().map(|_| Arc::default());
    let prepared = LogprobBackward
        .prepare::<C>([hidden.node.clone(), weight.node.clone()])
        .compute_bound()
        .stateful();
    let logprobs = match prepared {
        OpsKind::Tracked(prep) => {
            let state = SavedHead::<B> {
                hidden: hidden.primitive,
                weight: weight.primitive,
                targets,
                lse: out.lse.into_primitive().tensor(),
                entropy: entropy.clone().zip(slot.clone()),
                chunk_tokens,
            };
            prep.finish(state, logprobs)
        }
        OpsKind::UnTracked(prep) => prep.finish(logprobs),
    };
    let entropy = entropy.zip(slot).map(|(entropy, slot)| {
        let prepared = EntropyBackward
            .prepare::<C>([logprobs.node.clone()])
            .compute_bound()
            .stateful();
        let entropy = match prepared {
            OpsKind::Tracked(prep) => prep.finish(slot, entropy),
            OpsKind::UnTracked(prep) => prep.finish(entropy),
        };
        Tensor::from_primitive(TensorPrimitive::Float(entropy))
    });
    TokenLogprobs {
        logprobs: Tensor::from_primitive(TensorPrimitive::Float(logprobs)),
        entropy,
    }
}

fn float<B: Backend, const D: usize>(p: B::FloatTensorPrimitive) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(p))
}
