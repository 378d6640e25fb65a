//! The materialised attention the block-wise one is checked against: the whole
//! `[batch, kv_heads, queries * groups, keys]` score matrix, a full mask built from the same
//! [`AttentionSpec`], a softmax, and Burn's own autodiff for the gradients. Quadratic in
//! memory: for tests only.

use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use super::{AttentionSpec, MASKED};

/// `q: [b, kv, queries * groups, d]`, `k, v: [b, kv, keys, d]` → `[b, kv, queries * groups, d]`.
pub fn attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    spec: &AttentionSpec,
) -> Tensor<B, 4> {
    let [b, kv, qg, d] = q.dims();
    let keys = spec.keys;
    let device = q.device();
    let mut bias = Vec::with_capacity(b * qg * keys);
    let mut seen = Vec::with_capacity(b * qg);
    for row in 0..b {
        for query in 0..spec.queries {
            for _ in 0..spec.groups {
                let mut any = false;
                for key in 0..keys {
                    let sees = spec.sees(row, query, key);
                    any |= sees;
                    bias.push(if sees { 0.0 } else { MASKED });
                }
                seen.push(if any { 1.0f32 } else { 0.0 });
            }
        }
    }
    let bias = Tensor::<B, 4>::from_data(TensorData::new(bias, [b, 1, qg, keys]), &device)
        .repeat_dim(1, kv);
    let seen = Tensor::<B, 4>::from_data(TensorData::new(seen, [b, 1, qg, 1]), &device)
        .repeat_dim(1, kv)
        .repeat_dim(3, d);
    let scores = q.matmul(k.swap_dims(2, 3)).mul_scalar(spec.scale).add(bias);
    softmax(scores, 3).matmul(v).mul(seen)
}
