//! `grlo bench attention-parity`: the block-wise attention and its gradients on a device
//! against the same computation on the CPU backend, for the GPU check (on a CPU-only build it
//! compares the CPU with itself).

use burn::backend::Autodiff;
use burn::tensor::{Tensor, TensorData};
use clap::Args;
use grlo_model::attention::AttentionSpec;
use grlo_model::backend::{Cpu, ModelBackend};
use grlo_model::model::to_f32_vec;
use serde::Serialize;

use crate::device::{DeviceArg, OnBackend, dispatch};

#[derive(Debug, Args)]
pub struct AttentionParityArgs {
    #[arg(long, default_value = "cpu")]
    pub device: DeviceArg,
    /// Sequence lengths to compare.
    #[arg(long, value_delimiter = ',', default_value = "1,37,300,1024")]
    pub lengths: Vec<usize>,
    /// Largest |difference| accepted (TF32 matmuls on GPUs round to about 1e-3).
    #[arg(long, default_value_t = 5e-3)]
    pub tolerance: f32,
}

#[derive(Debug, Serialize)]
pub struct ParityRow {
    pub length: usize,
    /// Max |device - cpu| of the output and of the gradients w.r.t. q, k, v.
    pub max_diff: [f32; 4],
}

pub fn run(args: AttentionParityArgs) -> anyhow::Result<String> {
    let tolerance = args.tolerance;
    let rows = dispatch(&args.device.clone(), args)?;
    // `f32::max` would skip a NaN: a non-finite difference counts as the worst.
    let worst = rows
        .iter()
        .flat_map(|r| r.max_diff)
        .map(|d| if d.is_finite() { d } else { f32::INFINITY })
        .fold(0f32, f32::max);
    let report = serde_json::json!({ "rows": rows, "worst": worst, "tolerance": tolerance });
    if worst > tolerance {
        anyhow::bail!("attention parity failed: {report}");
    }
    Ok(report.to_string())
}

/// `(output, dq, dk, dv)` of one pass on backend `B`, as host values.
fn pass<B: ModelBackend>(
    inputs: &[Vec<f32>; 4],
    shape_q: [usize; 4],
    shape_kv: [usize; 4],
    spec: &AttentionSpec,
    device: &B::Device,
) -> [Vec<f32>; 4] {
    let tensor = |values: &Vec<f32>, shape: [usize; 4]| {
        Tensor::<Autodiff<B>, 4>::from_data(TensorData::new(values.clone(), shape), device)
    };
    let q = tensor(&inputs[0], shape_q).require_grad();
    let k = tensor(&inputs[1], shape_kv).require_grad();
    let v = tensor(&inputs[2], shape_kv).require_grad();
    let w = tensor(&inputs[3], shape_q);
    let out = Autodiff::<B>::block_attention(q.clone(), k.clone(), v.clone(), spec);
    let grads = out.clone().mul(w).sum().backward();
    [
        to_f32_vec(out),
        to_f32_vec(q.grad(&grads).expect("q requires grad")),
        to_f32_vec(k.grad(&grads).expect("k requires grad")),
        to_f32_vec(v.grad(&grads).expect("v requires grad")),
    ]
}

impl OnBackend for AttentionParityArgs {
    type Output = Vec<ParityRow>;

    fn run<B: ModelBackend>(self, device: B::Device) -> anyhow::Result<Vec<ParityRow>> {
        let (batch, heads, kv, dim) = (2, 8, 2, 64);
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut random = |n: usize| -> Vec<f32> {
            (0..n)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    (state % 2001) as f32 / 1000.0 - 1.0
                })
                .collect()
        };
        let mut rows = Vec::new();
        for &t in &self.lengths {
            let groups = heads / kv;
            let shape_q = [batch, kv, t * groups, dim];
            let shape_kv = [batch, kv, t, dim];
            let inputs = [
                random(batch * kv * t * groups * dim),
                random(batch * kv * t * dim),
                random(batch * kv * t * dim),
                random(batch * kv * t * groups * dim),
            ];
            // Left padding on the second row, and blocks of 128, so masks and skips run.
            let windows = Some(vec![(0, t), (t / 3, t)]);
            let spec = AttentionSpec::new(batch, heads, kv, dim, t, t, windows, 1 << 22)
                .with_blocks(128, 128);
            let ours = pass::<B>(&inputs, shape_q, shape_kv, &spec, &device);
            let cpu = pass::<Cpu>(&inputs, shape_q, shape_kv, &spec, &Default::default());
            let mut max_diff = [0f32; 4];
            for (i, (a, b)) in ours.iter().zip(&cpu).enumerate() {
                max_diff[i] = a
                    .iter()
                    .zip(b)
                    .map(|(x, y)| (x - y).abs())
                    .fold(0.0, f32::max);
            }
            rows.push(ParityRow {
                length: t,
                max_diff,
            });
        }
        Ok(rows)
    }
}
