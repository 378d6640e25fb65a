//! Block-wise attention in Burn tensor ops: the forward pass with an online softmax that keeps
//! each query's log-sum-exp, and the backward pass that recomputes the probabilities of one
//! block at a time from it (FlashAttention-2, Algorithms 1 and 2).
//!
//! Scores, probabilities and the softmax statistics are f32 whatever the inputs' dtype; the
//! matmuls run in the inputs' dtype (bf16 under mixed precision, accumulating in f32 inside
//! the backend's matmul). Row-wise work runs on 2-D `[rows, keys]` views, which Burn's CPU
//! backends broadcast far faster than 4-D ones.

use std::ops::Range;

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorCreationOptions};

use super::{AttentionSpec, MASKED};

/// The output `[batch, kv_heads, queries * groups, head_dim]` (in `q`'s dtype) and the f32
/// log-sum-exp of every query's scores `[batch, kv_heads, queries * groups, 1]`
/// ([`MASKED`] for a query that sees nothing).
pub fn forward<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    spec: &AttentionSpec,
) -> (Tensor<B, 4>, Tensor<B, 4>) {
    let [batch, kv, _, dim] = q.dims();
    let g = spec.groups;
    let dtype = q.dtype();
    let device = q.device();
    let key_blocks = spec.key_blocks();
    let mut outputs = Vec::new();
    let mut lses = Vec::new();
    for queries in spec.query_blocks() {
        let rows = queries.len() * g;
        let n = batch * kv * rows;
        let q_block = q.clone().narrow(2, queries.start * g, rows); // [b, kv, rows, d]
        // Running maximum, sum of exponentials and weighted values of each query row.
        let mut state: Option<(Tensor<B, 2>, Tensor<B, 2>, Tensor<B, 2>)> = None;
        for keys in key_blocks
            .iter()
            .filter(|keys| spec.visible(&queries, keys))
        {
            let k_block = k.clone().narrow(2, keys.start, keys.len()); // [b, kv, kb, d]
            let v_block = v.clone().narrow(2, keys.start, keys.len()); // [b, kv, kb, d]
            let scores = block_scores(&q_block, k_block, spec, &queries, keys); // [n, kb]
            let block_max = scores.clone().max_dim(1); // [n, 1]
            let max = match &state {
                Some((max, _, _)) => max.clone().max_pair(block_max),
                None => block_max,
            };
            let p = scores.sub(max.clone()).exp(); // [n, kb]
            let row_sum = p.clone().sum_dim(1); // [n, 1]
            let pv = to_dtype(p, dtype)
                .reshape([batch, kv, rows, keys.len()])
                .matmul(v_block); // [b, kv, rows, d]
            let pv = to_f32(pv).reshape([n, dim]);
            state = Some(match state {
                Some((old_max, sum, acc)) => {
                    let correction = old_max.sub(max.clone()).exp(); // [n, 1]
                    (
                        max,
                        sum.mul(correction.clone()).add(row_sum),
                        acc.mul(correction).add(pv),
                    )
                }
                None => (max, row_sum, pv),
            });
        }
        let (out, lse) = match state {
            Some((max, sum, acc)) => (acc.div(sum.clone()), max.add(sum.log())),
            None => (
                Tensor::<B, 2>::zeros([n, dim], f32_on::<B>(&device)),
                Tensor::<B, 2>::full([n, 1], MASKED, f32_on::<B>(&device)),
            ),
        };
        outputs.push(to_dtype(out, dtype).reshape([batch, kv, rows, dim]));
        lses.push(lse.reshape([batch, kv, rows, 1]));
    }
    let out = Tensor::cat(outputs, 2); // [b, kv, queries * g, d]
    let lse = Tensor::cat(lses, 2); // [b, kv, queries * g, 1]
    if spec.has_blind_queries() {
        (zero_blind(out, &lse), lse)
    } else {
        (out, lse)
    }
}

/// Gradients with respect to `q`, `k` and `v` given the forward's output and log-sum-exp and
/// the gradient of the output.
pub fn backward<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    out: Tensor<B, 4>,
    lse: Tensor<B, 4>,
    grad: Tensor<B, 4>,
    spec: &AttentionSpec,
) -> (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>) {
    let [batch, kv, _, dim] = q.dims();
    let g = spec.groups;
    let dtype = q.dtype();
    let device = q.device();
    let grad = if spec.has_blind_queries() {
        zero_blind(grad, &lse)
    } else {
        grad
    };
    // D = rowsum(dO ∘ O), the softmax backward's correction term.
    let correction = to_f32(grad.clone()).mul(to_f32(out)).sum_dim(3); // [b, kv, qg, 1]
    let query_blocks = spec.query_blocks();
    let mut grad_q: Vec<Option<Tensor<B, 2>>> = vec![None; query_blocks.len()];
    let mut grad_k = Vec::new();
    let mut grad_v = Vec::new();
    for keys in spec.key_blocks() {
        let k_block = k.clone().narrow(2, keys.start, keys.len()); // [b, kv, kb, d]
        let v_block = v.clone().narrow(2, keys.start, keys.len()); // [b, kv, kb, d]
        let mut block_grads: Option<(Tensor<B, 4>, Tensor<B, 4>)> = None;
        for (i, queries) in query_blocks.iter().enumerate() {
            if !spec.visible(queries, &keys) {
                continue;
            }
            let rows = queries.len() * g;
            let n = batch * kv * rows;
            let start = queries.start * g;
            let q_block = q.clone().narrow(2, start, rows); // [b, kv, rows, d]
            let grad_block = grad.clone().narrow(2, start, rows); // [b, kv, rows, d]
            let lse_block = lse.clone().narrow(2, start, rows).reshape([n, 1]);
            let d_block = correction.clone().narrow(2, start, rows).reshape([n, 1]);

            let scores = block_scores(&q_block, k_block.clone(), spec, queries, &keys); // [n, kb]
            let p = scores.sub(lse_block).exp(); // [n, kb]
            let p_4d = to_dtype(p.clone(), dtype).reshape([batch, kv, rows, keys.len()]);
            let dv = p_4d.swap_dims(2, 3).matmul(grad_block.clone()); // [b, kv, kb, d]
            let dp = to_f32(grad_block.matmul(v_block.clone().swap_dims(2, 3))); // [b, kv, rows, kb]
            let ds = p.mul(dp.reshape([n, keys.len()]).sub(d_block)); // [n, kb]
            let ds =
                to_dtype(ds.mul_scalar(spec.scale), dtype).reshape([batch, kv, rows, keys.len()]);
            let dq = to_f32(ds.clone().matmul(k_block.clone())).reshape([n, dim]); // [n, d]
            let dk = ds.swap_dims(2, 3).matmul(q_block); // [b, kv, kb, d]
            grad_q[i] = Some(match grad_q[i].take() {
                Some(sum) => sum.add(dq),
                None => dq,
            });
            let (dk, dv) = (to_f32(dk), to_f32(dv));
            block_grads = Some(match block_grads {
                Some((sum_k, sum_v)) => (sum_k.add(dk), sum_v.add(dv)),
                None => (dk, dv),
            });
        }
        let (dk, dv) = block_grads.unwrap_or_else(|| {
            let zeros = Tensor::<B, 4>::zeros([batch, kv, keys.len(), dim], f32_on::<B>(&device));
            (zeros.clone(), zeros)
        });
        grad_k.push(to_dtype(dk, dtype));
        grad_v.push(to_dtype(dv, dtype));
    }
    let grad_q: Vec<Tensor<B, 4>> = grad_q
        .into_iter()
        .zip(&query_blocks)
        .map(|(dq, queries)| {
            let rows = queries.len() * g;
            let dq =
                dq.unwrap_or_else(|| Tensor::zeros([batch * kv * rows, dim], f32_on::<B>(&device)));
            to_dtype(dq, dtype).reshape([batch, kv, rows, dim])
        })
        .collect();
    (
        Tensor::cat(grad_q, 2),
        Tensor::cat(grad_k, 2),
        Tensor::cat(grad_v, 2),
    )
}

/// The scaled, masked f32 scores of one block as `[batch * kv * rows, keys]`.
fn block_scores<B: Backend>(
    q_block: &Tensor<B, 4>,
    k_block: Tensor<B, 4>,
    spec: &AttentionSpec,
    queries: &Range<usize>,
    keys: &Range<usize>,
) -> Tensor<B, 2> {
    let [batch, kv, rows, _] = q_block.dims();
    let scores = to_f32(q_block.clone().matmul(k_block.swap_dims(2, 3))).mul_scalar(spec.scale); // [b, kv, rows, kb]
    let scores = match spec.bias::<B>(queries, keys, &q_block.device()) {
        Some(bias) => scores.reshape([batch, kv, rows * keys.len()]).add(bias), // bias [1, 1 | b, kv, rows * kb]
        None => scores.reshape([batch, kv, rows * keys.len()]),
    };
    scores.reshape([batch * kv * rows, keys.len()])
}

/// Zeroes the rows of `x` (`[b, kv, qg, d]`) whose query saw no key.
fn zero_blind<B: Backend>(x: Tensor<B, 4>, lse: &Tensor<B, 4>) -> Tensor<B, 4> {
    let shape = x.dims();
    let [b, kv, qg, d] = shape;
    let seen = lse
        .clone()
        .greater_elem(MASKED / 2.0)
        .float()
        .cast(DType::F32)
        .reshape([b * kv * qg, 1]);
    let dtype = x.dtype();
    to_dtype(to_f32(x).reshape([b * kv * qg, d]).mul(seen), dtype).reshape(shape)
}

fn to_f32<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    to_dtype(x, DType::F32)
}

fn to_dtype<B: Backend, const D: usize>(x: Tensor<B, D>, dtype: DType) -> Tensor<B, D> {
    if x.dtype() == dtype { x } else { x.cast(dtype) }
}

fn f32_on<B: Backend>(device: &B::Device) -> TensorCreationOptions<B> {
    TensorCreationOptions::new(device.clone()).with_dtype(DType::F32)
}
