//! Choosing the Burn backend and device from `--device`.

use grlo_model::backend::ModelBackend;

/// A compute device named on the command line: `cpu`, `cuda` or `cuda:N`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceArg {
    Cpu,
    Cuda(usize),
}

impl std::str::FromStr for DeviceArg {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "cpu" => Ok(DeviceArg::Cpu),
            "cuda" | "gpu" => Ok(DeviceArg::Cuda(0)),
            other => match other.strip_prefix("cuda:").map(str::parse) {
                Some(Ok(index)) => Ok(DeviceArg::Cuda(index)),
                _ => Err(format!(
                    "unknown device \"{other}\" (use cpu, cuda or cuda:N)"
                )),
            },
        }
    }
}

/// Work that runs on whichever backend the device selects.
pub trait OnBackend {
    type Output;
    fn run<B: ModelBackend>(self, device: B::Device) -> anyhow::Result<Self::Output>;
}

/// Runs `work` on the backend of `device`.
pub fn dispatch<W: OnBackend>(device: &DeviceArg, work: W) -> anyhow::Result<W::Output> {
    match device {
        DeviceArg::Cpu => work.run::<grlo_model::backend::Cpu>(Default::default()),
        #[cfg(feature = "cuda")]
        DeviceArg::Cuda(index) => {
            work.run::<grlo_model::backend::Cuda>(burn_backend_cuda_device(*index))
        }
        #[cfg(not(feature = "cuda"))]
        DeviceArg::Cuda(_) => anyhow::bail!(
            "this grlo was built without CUDA support: rebuild with `--features cuda` or use --device cpu"
        ),
    }
}

#[cfg(feature = "cuda")]
fn burn_backend_cuda_device(index: usize) -> burn::backend::cuda::CudaDevice {
    burn::backend::cuda::CudaDevice::new(index)
}
