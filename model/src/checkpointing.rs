//! Training forward passes, optionally with per-layer activation checkpointing.
//!
//! With checkpointing, the forward runs the decoder layers without a graph (on the autodiff
//! backend's inner backend) and keeps only each layer's input, `[tokens, hidden]` a layer; the
//! graph starts at the final norm. [`TrainingForward::gradients`] then backpropagates the
//! loss to the last layer's output and walks the layers backwards: each is recomputed from
//! its saved input with a graph of its own, backpropagated with the gradient of its output,
//! and its graph dropped before the next. Peak activation memory is one layer's graph plus
//! the saved inputs, instead of every layer's graph (Burn's `BalancedCheckpointing` only
//! recomputes memory-bound operations and keeps the matmul and attention inputs of every
//! layer).

use burn::module::AutodiffModule;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::Tensor;

use crate::backend::ModelAutodiffBackend;
use crate::model::{Model, TokenBatch};

/// The final-norm hidden states of a training forward pass, and how to get the gradients of
/// a loss computed from them.
pub struct TrainingForward<A: ModelAutodiffBackend> {
    /// `[batch * seq, hidden]`, in the graph.
    pub hidden: Tensor<A, 2>,
    tape: Option<LayerTape<A>>,
}

/// What checkpointing keeps: the input of every layer and the leaf the graph starts at.
struct LayerTape<A: ModelAutodiffBackend> {
    batch: TokenBatch,
    /// `inputs[i]` is layer `i`'s input, `[tokens, hidden]`.
    inputs: Vec<Tensor<A::InnerBackend, 2>>,
    /// The last layer's output as a leaf of the graph.
    last: Tensor<A, 2>,
}

impl<A: ModelAutodiffBackend> Model<A> {
    /// Runs the decoder for training: with `checkpoint_layers`, keeping only each layer's
    /// input (see the module documentation); without, keeping Burn's whole graph.
    pub fn forward_training(
        &self,
        batch: &TokenBatch,
        checkpoint_layers: bool,
    ) -> TrainingForward<A> {
        if !checkpoint_layers {
            return TrainingForward {
                hidden: self.forward_hidden(batch, None),
                tape: None,
            };
        }
        let inner = self.valid();
        // The same (block-wise) attention as the recomputation in the backward pass, so the
        // saved inputs are exactly what the graph would have seen.
        let mut pass = inner.pass(batch, 0);
        pass.fused = false;
        let mut x = inner.embed_tokens(batch); // [tokens, hidden]
        let mut inputs = Vec::with_capacity(inner.layers.len());
        for layer in &inner.layers {
            inputs.push(x.clone());
            x = layer.forward(x, &pass, None);
        }
        let last = Tensor::<A, 2>::from_inner(x).require_grad();
        TrainingForward {
            hidden: self.norm.forward(last.clone()),
            tape: Some(LayerTape {
                batch: batch.clone(),
                inputs,
                last,
            }),
        }
    }
}

impl<A: ModelAutodiffBackend> TrainingForward<A> {
    /// Backpropagates `loss` (computed from [`TrainingForward::hidden`]) into the gradients of
    /// `model`'s parameters.
    pub fn gradients(self, loss: Tensor<A, 1>, model: &Model<A>) -> GradientsParams {
        let Some(mut tape) = self.tape else {
            return GradientsParams::from_grads(loss.backward(), model);
        };
        let mut grads = loss.backward();
        let mut grad = tape
            .last
            .grad_remove(&mut grads)
            .expect("the loss depends on the last layer's output");
        let mut sum = GradientsAccumulator::<Model<A>>::new();
        // The heads and the final norm (and a tied embedding's use as the head).
        sum.accumulate(model, GradientsParams::from_grads(grads, model));
        let pass = model.pass(&tape.batch, 0);
        for layer in model.layers.iter().rev() {
            let input = tape.inputs.pop().expect("an input per layer");
            let x = Tensor::<A, 2>::from_inner(input).require_grad();
            let out = layer.forward(x.clone(), &pass, None); // [tokens, hidden]
            let mut grads = out.mul(Tensor::from_inner(grad)).sum().backward();
            grad = x
                .grad_remove(&mut grads)
                .expect("a layer's output depends on its input");
            sum.accumulate(model, GradientsParams::from_grads(grads, layer));
        }
        let embedded = model.embed_tokens(&tape.batch);
        let grads = embedded.mul(Tensor::from_inner(grad)).sum().backward();
        sum.accumulate(model, GradientsParams::from_grads(grads, model));
        sum.grads()
    }
}
