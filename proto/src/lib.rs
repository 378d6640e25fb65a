//! The `grlo.v1` protocol: generated messages, clients and servers of the Coordinator,
//! RewardServer and Learner services, and the mapping of errors to gRPC status codes.

/// Generated from `protos/grlo/v1/*.proto`.
pub mod v1 {
    tonic::include_proto!("grlo.v1");
}

pub mod status;

pub use v1::*;

/// The largest `TrajectoryBatch` an actor sends and a learner accepts (tonic's default of
/// 4 MiB is below one batch of the paper's job: 256 prompts × 3,072 tokens is about 5.5 MB).
pub const MAX_TRAJECTORY_BATCH_BYTES: usize = 256 << 20;

/// The message a panic carried: its payload as `panic!` makes it (a `&str` or a `String`), or
/// `None` for any other payload. For the threads that catch a panic and report it.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> Option<String> {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
}

/// Checks that an id from a peer (a job's, a task's) is a plain name, as the coordinator makes
/// them: ids become file and directory names, so anything else (`../x`, `/etc`, a name of
/// 10 MB) is refused before it reaches a path. `what` names the field in the message.
pub fn check_plain_id(what: &str, id: &str) -> Result<(), String> {
    let plain = !id.is_empty()
        && id.len() <= 64
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if plain {
        Ok(())
    } else {
        let shown: String = id.chars().take(64).collect();
        Err(format!(
            "{what} {shown:?} is not an id (1 to 64 of A-Z a-z 0-9 - _ ., not starting with .)"
        ))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn plain_ids_pass_and_paths_do_not() {
        for id in ["1-0", "job-3", "j_1.v2", "a"] {
            assert_eq!(super::check_plain_id("task_id", id), Ok(()));
        }
        let long = "x".repeat(65);
        for id in [
            "", "..", "../x", "/etc", "a/b", "a\\b", ".hidden", "a\0", "é", &long,
        ] {
            let message = super::check_plain_id("job_id", id).unwrap_err();
            assert!(message.starts_with("job_id "), "{message}");
        }
    }
}
pub mod metrics;
pub mod reflection;
pub mod security;
pub mod worker;
