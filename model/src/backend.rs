//! The Burn backends the binary is built with, chosen by cargo features.
//!
//! `flex` (pure Rust, `gemm` kernels) is the default CPU backend: measured faster than
//! `ndarray` on every workload here (see ARCHITECTURE.md). `cuda` adds NVIDIA GPUs.

/// The CPU backend.
#[cfg(feature = "flex")]
pub type Cpu = burn::backend::Flex;
/// The CPU backend.
#[cfg(all(feature = "ndarray", not(feature = "flex")))]
pub type Cpu = burn::backend::NdArray;

/// The CUDA backend, computing in f32.
#[cfg(feature = "cuda")]
pub type Cuda = burn::backend::Cuda<f32>;
/// The CUDA backend, computing in bf16.
#[cfg(feature = "cuda")]
pub type CudaBf16 = burn::backend::Cuda<half::bf16>;

#[cfg(not(any(feature = "flex", feature = "ndarray")))]
compile_error!("grlo-model needs a CPU backend: enable the `flex` or `ndarray` feature");
