//! AdamW with global gradient-norm clipping and learning-rate schedules, written to match
//! PyTorch's `torch.optim.AdamW` and `clip_grad_norm_` step for step.
//!
//! Burn's own optimizers clip each tensor's gradient separately and key their state by
//! `ParamId`, which changes whenever a model is rebuilt from a checkpoint. Here the moments are
//! keyed by the parameter's path in the module (`layers.3.mlp.down.weight`), so a run resumed
//! from saved weights finds its optimizer state again, and the clip is global, as PyTorch's.

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::{AutodiffModule, ModuleMapper, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor, TensorData};
use grlo_model::safetensors_io::{LazyTensor, WeightFiles};

use crate::config::{LrSchedule, LrScheduleKind, OptimSection};
use crate::error::Result;

/// First and second moments of one parameter, flattened.
#[derive(Clone, Debug)]
struct Moments<B: Backend> {
    m: Tensor<B, 1>,
    v: Tensor<B, 1>,
}

/// AdamW state for one model.
#[derive(Clone, Debug)]
pub struct AdamW<B: Backend> {
    config: OptimSection,
    /// Updates applied so far (PyTorch's per-parameter `step`, shared by all parameters).
    pub step: u64,
    moments: BTreeMap<String, Moments<B>>,
}

/// What one update did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct UpdateStats {
    /// The global L2 norm of the gradients before clipping.
    pub grad_norm: f64,
    pub lr: f64,
}

impl<B: Backend> AdamW<B> {
    pub fn new(config: OptimSection) -> Self {
        AdamW {
            config,
            step: 0,
            moments: BTreeMap::new(),
        }
    }

    /// The global gradient norm of `module`'s parameters in `grads`.
    pub fn grad_norm<A, M>(module: &M, grads: &GradientsParams) -> f64
    where
        A: AutodiffBackend<InnerBackend = B>,
        M: AutodiffModule<A>,
    {
        let mut visitor = SquaredNorm::<B> { grads, total: None };
        module.visit(&mut visitor);
        visitor
            .total
            .map(|t| t.into_scalar().elem::<f64>().sqrt())
            .unwrap_or(0.0)
    }

    /// Applies one AdamW update with learning rate `lr` after clipping the global gradient
    /// norm to `config.grad_clip` (when positive). Returns the updated module.
    pub fn update<A, M>(&mut self, module: M, grads: GradientsParams, lr: f64, grad_norm: f64) -> M
    where
        A: AutodiffBackend<InnerBackend = B>,
        M: AutodiffModule<A>,
    {
        let clip = self.config.grad_clip;
        // PyTorch: clip_coef = max_norm / (total_norm + 1e-6), clamped to 1.
        let scale = if clip > 0.0 {
            (clip / (grad_norm + 1e-6)).min(1.0)
        } else {
            1.0
        };
        self.step += 1;
        let mut mapper = UpdateMapper::<B> {
            grads,
            moments: &mut self.moments,
            path: Vec::new(),
            config: &self.config,
            step: self.step,
            lr,
            scale,
        };
        module.map(&mut mapper)
    }

    /// The moments as tensors named `exp_avg.PATH` and `exp_avg_sq.PATH` (flat), for a
    /// checkpoint; each is read to the host only when the writer reaches it.
    pub fn state_tensors(&self) -> Vec<LazyTensor> {
        let mut out = Vec::with_capacity(self.moments.len() * 2);
        for (path, moments) in &self.moments {
            for (kind, tensor) in [("exp_avg", &moments.m), ("exp_avg_sq", &moments.v)] {
                let tensor = tensor.clone();
                out.push(LazyTensor::new(
                    format!("{kind}.{path}"),
                    tensor.dims().to_vec(),
                    move || tensor.into_data(),
                ));
            }
        }
        out
    }

    /// Restores the step count and the moments saved from [`AdamW::state_tensors`] in the
    /// safetensors file `path`, one tensor at a time (the file is mapped, not read whole).
    pub fn load_state(&mut self, step: u64, path: &Path, device: &B::Device) -> Result<()> {
        let files = WeightFiles::open_file(path)?;
        self.step = step;
        self.moments.clear();
        let mut first: BTreeMap<String, Tensor<B, 1>> = BTreeMap::new();
        let mut second: BTreeMap<String, Tensor<B, 1>> = BTreeMap::new();
        for name in files.names() {
            let (kind, path) = if let Some(path) = name.strip_prefix("exp_avg_sq.") {
                (&mut second, path)
            } else if let Some(path) = name.strip_prefix("exp_avg.") {
                (&mut first, path)
            } else {
                continue;
            };
            let shape = files.shape(name).unwrap_or_default();
            let values = files.read_f32(name, &shape)?;
            let len = values.len();
            kind.insert(
                path.to_string(),
                Tensor::from_data(TensorData::new(values, [len]), device),
            );
        }
        for (path, m) in first {
            if let Some(v) = second.remove(&path) {
                self.moments.insert(path, Moments { m, v });
            }
        }
        Ok(())
    }
}

/// The learning rate at update `step` (0-based) of `total` under a schedule.
pub fn scheduled_lr(peak: f64, schedule: &LrSchedule, step: usize, total: usize) -> f64 {
    let warmup = schedule
        .warmup_steps
        .unwrap_or((schedule.warmup_ratio * total as f64) as usize);
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    match schedule.kind {
        LrScheduleKind::Constant => peak,
        LrScheduleKind::Cosine => {
            let span = total.saturating_sub(warmup).max(1);
            let progress = ((step - warmup) as f64 / span as f64).min(1.0);
            let floor = schedule.min_lr_ratio;
            let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
            peak * (floor + (1.0 - floor) * cosine)
        }
    }
}

/// Sums the squared gradients of every float parameter.
struct SquaredNorm<'a, B: Backend> {
    grads: &'a GradientsParams,
    total: Option<Tensor<B, 1>>,
}

impl<A: AutodiffBackend> ModuleVisitor<A> for SquaredNorm<'_, A::InnerBackend> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<A, D>>) {
        if let Some(grad) = self.grads.get::<A::InnerBackend, D>(param.id) {
            let squared = grad.square().sum();
            self.total = Some(match self.total.take() {
                Some(total) => total.add(squared),
                None => squared,
            });
        }
    }
}

/// Replaces every parameter that has a gradient by its AdamW update.
struct UpdateMapper<'a, B: Backend> {
    grads: GradientsParams,
    moments: &'a mut BTreeMap<String, Moments<B>>,
    path: Vec<String>,
    config: &'a OptimSection,
    step: u64,
    lr: f64,
    scale: f64,
}

impl<A: AutodiffBackend> ModuleMapper<A> for UpdateMapper<'_, A::InnerBackend> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<A, D>>) -> Param<Tensor<A, D>> {
        let (id, tensor, mapper) = param.consume();
        let Some(grad) = self.grads.remove::<A::InnerBackend, D>(id) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let require_grad = tensor.is_require_grad();
        let shape = tensor.shape();
        let numel = shape.num_elements();
        let c = self.config;
        let (beta1, beta2) = (c.betas[0], c.betas[1]);

        let value = tensor.inner().reshape([numel]); // [numel]
        let grad = grad.reshape([numel]).mul_scalar(self.scale);
        let path = self.path.join(".");
        let moments = self.moments.remove(&path).unwrap_or_else(|| Moments {
            m: value.zeros_like(),
            v: value.zeros_like(),
        });
        // PyTorch's single-tensor AdamW, in the same order of operations.
        let value = value.mul_scalar(1.0 - self.lr * c.weight_decay);
        let m = moments
            .m
            .mul_scalar(beta1)
            .add(grad.clone().mul_scalar(1.0 - beta1));
        let v = moments
            .v
            .mul_scalar(beta2)
            .add(grad.square().mul_scalar(1.0 - beta2));
        let bias1 = 1.0 - beta1.powi(self.step as i32);
        let bias2_sqrt = (1.0 - beta2.powi(self.step as i32)).sqrt();
        let denom = v.clone().sqrt().div_scalar(bias2_sqrt).add_scalar(c.eps);
        let value = value.sub(m.clone().div(denom).mul_scalar(self.lr / bias1));
        self.moments.insert(path, Moments { m, v });

        let mut updated = Tensor::<A, D>::from_inner(value.reshape(shape));
        if require_grad {
            updated = updated.require_grad();
        }
        Param::from_mapped_value(id, updated, mapper)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(kind: LrScheduleKind, warmup: usize) -> LrSchedule {
        LrSchedule {
            kind,
            warmup_steps: Some(warmup),
            warmup_ratio: 0.0,
            min_lr_ratio: 0.1,
        }
    }

    #[test]
    fn schedules() {
        let constant = schedule(LrScheduleKind::Constant, 0);
        assert_eq!(scheduled_lr(1.0, &constant, 0, 10), 1.0);
        let warm = schedule(LrScheduleKind::Constant, 4);
        let lrs: Vec<f64> = (0..6).map(|s| scheduled_lr(1.0, &warm, s, 10)).collect();
        assert_eq!(lrs, vec![0.25, 0.5, 0.75, 1.0, 1.0, 1.0]);
        let cosine = schedule(LrScheduleKind::Cosine, 0);
        assert_eq!(scheduled_lr(1.0, &cosine, 0, 10), 1.0);
        assert!((scheduled_lr(1.0, &cosine, 5, 10) - 0.55).abs() < 1e-12);
        assert!((scheduled_lr(1.0, &cosine, 10, 10) - 0.1).abs() < 1e-12);
    }
}
