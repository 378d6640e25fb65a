//! Conversions between the learner's trajectories and their gRPC form, with the checks a
//! service applies to what arrives from the network.

use grlo_model::FinishReason;
use grlo_proto::v1;

use crate::trajectory::Trajectory;

/// A trajectory as it travels to the learner.
pub fn to_wire(t: &Trajectory) -> v1::Trajectory {
    v1::Trajectory {
        prompt_id: t.prompt_id as u64,
        group: t.group as u32,
        sample_index: t.sample_index as u32,
        prompt_ids: t.prompt_ids.clone(),
        response_ids: t.response_ids.clone(),
        behaviour_logprobs: t.behaviour_logprobs.clone(),
        finish_reason: match t.finish_reason {
            FinishReason::Stop => v1::FinishReason::Stop,
            FinishReason::Length => v1::FinishReason::Length,
        } as i32,
        reward: t.reward.unwrap_or(f32::NAN),
        weight_version: t.weight_version,
    }
}

/// A trajectory received from the network, checked: the problem is described, with `index`
/// naming which one it was.
pub fn from_wire(t: v1::Trajectory, index: usize) -> Result<Trajectory, String> {
    if t.prompt_ids.is_empty() {
        return Err(format!("trajectories[{index}].prompt_ids is empty"));
    }
    if t.behaviour_logprobs.len() != t.response_ids.len() {
        return Err(format!(
            "trajectories[{index}] has {} response ids but {} behaviour log-probs",
            t.response_ids.len(),
            t.behaviour_logprobs.len()
        ));
    }
    if !t.reward.is_finite() {
        return Err(format!("trajectories[{index}].reward is {}", t.reward));
    }
    let finish_reason = match v1::FinishReason::try_from(t.finish_reason) {
        Ok(v1::FinishReason::Stop) => FinishReason::Stop,
        Ok(v1::FinishReason::Length) => FinishReason::Length,
        _ => return Err(format!("trajectories[{index}].finish_reason is unset")),
    };
    Ok(Trajectory {
        prompt_id: t.prompt_id as usize,
        group: t.group as usize,
        sample_index: t.sample_index as usize,
        prompt_ids: t.prompt_ids,
        response_ids: t.response_ids,
        behaviour_logprobs: t.behaviour_logprobs,
        finish_reason,
        reward: Some(t.reward),
        weight_version: t.weight_version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Trajectory {
        Trajectory {
            prompt_id: 4,
            group: 1,
            sample_index: 2,
            prompt_ids: vec![1, 2],
            response_ids: vec![3, 4, 5],
            behaviour_logprobs: vec![-0.1, -0.2, -0.3],
            finish_reason: FinishReason::Stop,
            reward: Some(0.5),
            weight_version: 7,
        }
    }

    #[test]
    fn round_trips_and_rejects_inconsistent_trajectories() {
        assert_eq!(from_wire(to_wire(&sample()), 0).unwrap(), sample());
        let mut bad = to_wire(&sample());
        bad.behaviour_logprobs.pop();
        let err = from_wire(bad, 3).unwrap_err();
        assert!(
            err.contains("trajectories[3]") && err.contains("log-probs"),
            "{err}"
        );
        let mut bad = to_wire(&sample());
        bad.reward = f32::NAN;
        assert!(from_wire(bad, 0).unwrap_err().contains("reward"));
    }
}
