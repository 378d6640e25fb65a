//! Where the learner's models live: the devices a job's configuration names for the policy,
//! the critic and the reference, checked against the machine, and the accelerators the
//! learner then registers for budget accounting.

use crate::config::{DeviceName, TrainConfig};

/// The accelerators to register for a job: the ones the learner was started with, with the
/// count of its (first) GPU kind raised to the CUDA devices the job's models occupy. A learner
/// that trains the policy on `cuda:0` and the critic on `cuda:1` is charged two GPUs.
pub fn accelerators_for(registered: &[(String, u32)], config: &TrainConfig) -> Vec<(String, u32)> {
    let used = config
        .learner_devices()
        .into_iter()
        .filter(|d| d.is_cuda())
        .count() as u32;
    let mut out = registered.to_vec();
    if used == 0 {
        return out;
    }
    match out.iter_mut().find(|(kind, _)| kind != "cpu") {
        Some((_, count)) => *count = (*count).max(used),
        None => out.push(("cuda".to_string(), used)),
    }
    out
}

/// Checks that every CUDA device the configuration names exists among `count` devices.
pub fn check_devices(config: &TrainConfig, count: usize) -> Result<(), String> {
    let named = [
        ("actor.device", config.policy_device()),
        ("critic.device", config.critic_device()),
        ("actor.reference_device", config.reference_device()),
    ];
    for (key, device) in named {
        if let DeviceName::Cuda(index) = device
            && index >= count
        {
            let plural = if count == 1 { "device" } else { "devices" };
            return Err(format!(
                "{key} = {device} does not exist: this machine has {count} CUDA {plural}{}",
                if count > 0 {
                    format!(" (cuda:0 to cuda:{})", count - 1)
                } else {
                    String::new()
                }
            ));
        }
    }
    Ok(())
}

/// The placement of a CUDA job, its devices checked.
#[cfg(feature = "cuda")]
pub fn cuda(
    config: &TrainConfig,
) -> anyhow::Result<crate::trainer::Placement<burn::backend::Autodiff<grlo_model::backend::Cuda>>> {
    use burn::backend::cuda::CudaDevice;
    use burn::tensor::backend::Backend;
    let count =
        std::panic::catch_unwind(|| grlo_model::backend::Cuda::device_count(0)).unwrap_or(0);
    check_devices(config, count).map_err(anyhow::Error::msg)?;
    let device = |name: DeviceName| match name {
        DeviceName::Cuda(index) => CudaDevice::new(index),
        DeviceName::Cpu => CudaDevice::new(0),
    };
    Ok(crate::trainer::Placement {
        policy: device(config.policy_device()),
        critic: device(config.critic_device()),
        reference: device(config.reference_device()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> TrainConfig {
        let text = format!(
            "[model]\npolicy = \"p\"\n[data]\ntrain_files = [\"d.jsonl\"]\n[trainer]\ndevice = \"cuda\"\n{extra}"
        );
        TrainConfig::from_toml(&text, "t.toml", std::path::Path::new(".")).unwrap()
    }

    #[test]
    fn a_learner_is_charged_every_gpu_its_models_use() {
        let registered = vec![("nvidia-h100".to_string(), 1)];
        let one = config("");
        assert_eq!(accelerators_for(&registered, &one), registered);
        let two = config("[critic]\ndevice = \"cuda:1\"\n");
        assert_eq!(
            accelerators_for(&registered, &two),
            vec![("nvidia-h100".to_string(), 2)]
        );
        assert_eq!(accelerators_for(&[], &two), vec![("cuda".to_string(), 2)]);
        // More registered than used stays as registered.
        let many = vec![("nvidia-h100".to_string(), 4)];
        assert_eq!(accelerators_for(&many, &two), many);
    }

    #[test]
    fn a_device_that_does_not_exist_is_named() {
        let c = config("[critic]\ndevice = \"cuda:3\"\n");
        let err = check_devices(&c, 2).unwrap_err();
        assert!(
            err.contains("critic.device = cuda:3") && err.contains("2 CUDA devices"),
            "{err}"
        );
        assert!(check_devices(&c, 4).is_ok());
        let err = check_devices(&config(""), 0).unwrap_err();
        assert!(err.contains("0 CUDA devices"), "{err}");
    }
}
