//! Block-wise attention as one operation of Burn's autodiff graph, with its own backward.
//!
//! The graph keeps `q`, `k`, `v` (which the projections before keep anyway), the output and
//! the per-query log-sum-exp: memory linear in the sequence length. The backward recomputes
//! the probabilities block by block ([`blockwise::backward`]).

use std::sync::Arc;

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorPrimitive};

use super::{AttentionSpec, blockwise};
use crate::backend::ModelBackend;

/// What the backward pass needs: the inputs, the output and its log-sum-exp.
#[derive(Clone, Debug)]
struct SavedAttention<B: Backend> {
    q: B::FloatTensorPrimitive,
    k: B::FloatTensorPrimitive,
    v: B::FloatTensorPrimitive,
    out: B::FloatTensorPrimitive,
    lse: B::FloatTensorPrimitive,
    spec: Arc<AttentionSpec>,
}

#[derive(Debug)]
struct BlockAttentionBackward;

impl<B: Backend> Backward<B, 3> for BlockAttentionBackward {
    type State = SavedAttention<B>;

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [node_q, node_k, node_v] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let s = ops.state;
        let float =
            |p: B::FloatTensorPrimitive| Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(p));
        let (dq, dk, dv) = blockwise::backward(
            float(s.q),
            float(s.k),
            float(s.v),
            float(s.out),
            float(s.lse),
            float(grad),
            &s.spec,
        );
        for (node, grad) in [(node_q, dq), (node_k, dk), (node_v, dv)] {
            if let Some(node) = node {
                grads.register::<B>(node.id, grad.into_primitive().tensor());
            }
        }
    }
}

/// Block-wise attention on the autodiff backend (see [`ModelBackend::block_attention`]).
pub fn block_attention<B: ModelBackend, C: CheckpointStrategy>(
    q: Tensor<Autodiff<B, C>, 4>,
    k: Tensor<Autodiff<B, C>, 4>,
    v: Tensor<Autodiff<B, C>, 4>,
    spec: &AttentionSpec,
) -> Tensor<Autodiff<B, C>, 4> {
    let (q, k, v) = (
        q.into_primitive().tensor(),
        k.into_primitive().tensor(),
        v.into_primitive().tensor(),
    );
    let inner = |p: &B::FloatTensorPrimitive| {
        Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(p.clone()))
    };
    let (out, lse) = blockwise::forward(
        inner(&q.primitive),
        inner(&k.primitive),
        inner(&v.primitive),
        spec,
    );
    let out = out.into_primitive().tensor();
    let prepared = BlockAttentionBackward
        .prepare::<C>([q.node.clone(), k.node.clone(), v.node.clone()])
        .compute_bound()
        .stateful();
    let output = match prepared {
        OpsKind::Tracked(prep) => {
            let state = SavedAttention::<B> {
                q: q.primitive,
                k: k.primitive,
                v: v.primitive,
                out: out.clone(),
                lse: lse.into_primitive().tensor(),
                spec: Arc::new(spec.clone()),
            };
            prep.finish(state, out)
        }
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    Tensor::from_primitive(TensorPrimitive::Float(output))
}
