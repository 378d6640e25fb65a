//! Rotary position embeddings in Hugging Face's "rotate half" convention, with Llama 3's
//! frequency-dependent scaling.
//!
//! The inverse frequencies are computed once, in f32 as transformers does; the cos/sin
//! tables are built on the host for exactly the positions of each forward pass, so there is
//! no maximum length baked into the model and left-padded rows get their own positions.

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use crate::config::{Llama3RopeScaling, ModelConfig};

/// The inverse frequencies of one model's rotary embedding.
#[derive(Clone, Debug, PartialEq)]
pub struct Rope {
    /// `[head_dim / 2]`
    inv_freq: Vec<f32>,
}

impl Rope {
    pub fn new(config: &ModelConfig) -> Self {
        let dim = config.head_dim;
        let base = config.rope_theta as f32;
        let mut inv_freq: Vec<f32> = (0..dim)
            .step_by(2)
            .map(|i| 1.0 / base.powf(i as f32 / dim as f32))
            .collect();
        if let Some(scaling) = &config.rope_scaling {
            inv_freq = llama3_scaled(&inv_freq, scaling);
        }
        Rope { inv_freq }
    }

    /// The cos and sin tables for `positions` (`batch * seq` of them, row-major), laid out per
    /// query head and per key head so that applying them broadcasts nothing.
    pub fn tables<B: Backend>(
        &self,
        positions: &[usize],
        batch: usize,
        heads: usize,
        kv_heads: usize,
        device: &B::Device,
    ) -> RopeTables<B> {
        let half = self.inv_freq.len();
        let dim = 2 * half;
        let mut cos = Vec::with_capacity(positions.len() * dim);
        let mut sin = Vec::with_capacity(positions.len() * dim);
        let mut angles = vec![0f32; half];
        for &position in positions {
            for (angle, f) in angles.iter_mut().zip(&self.inv_freq) {
                *angle = position as f32 * f;
            }
            // `cat(freqs, freqs)`: both halves of the head use the same angles; the sign of
            // `rotate_half` is folded into the first half of sin.
            for _ in 0..2 {
                cos.extend(angles.iter().map(|a| a.cos()));
            }
            sin.extend(angles.iter().map(|a| -a.sin()));
            sin.extend(angles.iter().map(|a| a.sin()));
        }
        let seq = positions.len() / batch.max(1);
        let shape = [batch, seq, 1, dim];
        let cos = Tensor::<B, 4>::from_data(TensorData::new(cos, shape), device);
        let sin = Tensor::<B, 4>::from_data(TensorData::new(sin, shape), device);
        RopeTables {
            cos_q: cos.clone().repeat_dim(2, heads),
            sin_q: sin.clone().repeat_dim(2, heads),
            cos_k: cos.repeat_dim(2, kv_heads),
            sin_k: sin.repeat_dim(2, kv_heads),
        }
    }
}

/// Llama 3.1's scaling: long wavelengths are divided by `factor`, short ones kept, and the
/// band between interpolated smoothly (transformers' `_compute_llama3_parameters`).
fn llama3_scaled(inv_freq: &[f32], s: &Llama3RopeScaling) -> Vec<f32> {
    let old = s.original_max_position_embeddings as f32;
    let low_freq_wavelen = old / s.low_freq_factor as f32;
    let high_freq_wavelen = old / s.high_freq_factor as f32;
    let factor = s.factor as f32;
    inv_freq
        .iter()
        .map(|&f| {
            let wavelen = 2.0 * std::f32::consts::PI / f;
            if wavelen < high_freq_wavelen {
                f
            } else if wavelen > low_freq_wavelen {
                f / factor
            } else {
                let smooth = (old / wavelen - s.low_freq_factor as f32)
                    / (s.high_freq_factor - s.low_freq_factor) as f32;
                (1.0 - smooth) * f / factor + smooth * f
            }
        })
        .collect()
}

/// cos and sign-folded sin for the positions of one forward pass, repeated per head:
/// `[batch, seq, heads, head_dim]` for queries and `[batch, seq, kv_heads, head_dim]` for keys.
#[derive(Clone, Debug)]
pub struct RopeTables<B: Backend> {
    cos_q: Tensor<B, 4>,
    sin_q: Tensor<B, 4>,
    cos_k: Tensor<B, 4>,
    sin_k: Tensor<B, 4>,
}

impl<B: Backend> RopeTables<B> {
    /// Rotates queries `[batch, seq, heads, head_dim]`.
    pub fn apply_q(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        rotate(x, &self.cos_q, &self.sin_q)
    }

    /// Rotates keys `[batch, seq, kv_heads, head_dim]`.
    pub fn apply_k(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        rotate(x, &self.cos_k, &self.sin_k)
    }
}

/// `x * cos + rotate_half(x) * sin` with `rotate_half(x) = cat(-x2, x1)`; the minus sign lives in
/// `sin`, so the rotation is only a swap of the halves.
fn rotate<B: Backend>(x: Tensor<B, 4>, cos: &Tensor<B, 4>, sin: &Tensor<B, 4>) -> Tensor<B, 4> {
    let half = x.dims()[3] / 2;
    let x1 = x.clone().narrow(3, 0, half);
    let x2 = x.clone().narrow(3, half, half);
    let swapped = Tensor::cat(vec![x2, x1], 3);
    x.mul(cos.clone()).add(swapped.mul(sin.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama3_scaling_keeps_high_and_divides_low_frequencies() {
        let s = Llama3RopeScaling {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192.0,
        };
        let high = 1.0; // wavelength 2π, far below 8192 / 4
        let low = 1e-5; // wavelength ~628k, far above 8192
        let scaled = llama3_scaled(&[high, low], &s);
        assert_eq!(scaled[0], high);
        assert!((scaled[1] - low / 8.0).abs() < 1e-12);
        // In the band, the result lies between f / factor and f.
        let mid = 2.0 * std::f32::consts::PI / 4000.0;
        let m = llama3_scaled(&[mid], &s)[0];
        assert!(m < mid && m > mid / 8.0, "{m}");
    }
}
