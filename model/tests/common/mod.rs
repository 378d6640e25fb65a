//! Shared helpers for the model crate's integration tests: fixture paths and readers for the
//! reference files that `fixtures/make_fixtures.py` computed with HF transformers.
#![allow(dead_code)]

use std::path::PathBuf;

use grlo_model::Model;
use grlo_model::backend::Cpu;
use safetensors::{Dtype, SafeTensors};

pub type B = Cpu;

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

pub fn model_dir(name: &str) -> PathBuf {
    fixtures().join("models").join(name)
}

pub fn load(name: &str) -> Model<B> {
    Model::<B>::load(&model_dir(name), &Default::default()).expect("fixture loads")
}

pub fn reference_json(file: &str) -> serde_json::Value {
    let path = fixtures().join("reference").join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// The tensors of a reference safetensors file.
pub struct Reference {
    bytes: Vec<u8>,
}

impl Reference {
    pub fn open(file: &str) -> Self {
        let path = fixtures().join("reference").join(file);
        Reference {
            bytes: std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
        }
    }

    pub fn f32(&self, name: &str) -> (Vec<usize>, Vec<f32>) {
        let st = SafeTensors::deserialize(&self.bytes).unwrap();
        let t = st
            .tensor(name)
            .unwrap_or_else(|_| panic!("reference tensor {name}"));
        assert_eq!(t.dtype(), Dtype::F32, "{name}");
        let values = t
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        (t.shape().to_vec(), values)
    }

    pub fn i64(&self, name: &str) -> Vec<i64> {
        let st = SafeTensors::deserialize(&self.bytes).unwrap();
        let t = st
            .tensor(name)
            .unwrap_or_else(|_| panic!("reference tensor {name}"));
        assert_eq!(t.dtype(), Dtype::I64, "{name}");
        t.data()
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
            .collect()
    }

    pub fn ids(&self, name: &str) -> Vec<u32> {
        self.i64(name).into_iter().map(|v| v as u32).collect()
    }
}

/// The largest absolute difference between two equally long slices.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

pub fn json_ids(value: &serde_json::Value) -> Vec<u32> {
    value
        .as_array()
        .expect("a list of ids")
        .iter()
        .map(|v| v.as_u64().expect("an id") as u32)
        .collect()
}

/// `n` normal samples with standard deviation `std` from a generator of the caller's own.
/// Tests build random inputs with this rather than Burn's `Tensor::random`, whose backend seed
/// is global: test threads running in parallel would reseed each other's inputs.
pub fn normal_values(n: usize, std: f64, seed: u64) -> Vec<f32> {
    use rand_core::{RngCore, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut uniform = || (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    (0..n)
        .map(|_| {
            // Box–Muller; 1 - u keeps the logarithm finite.
            let (u, v) = (1.0 - uniform(), uniform());
            (std * (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
        })
        .collect()
}
