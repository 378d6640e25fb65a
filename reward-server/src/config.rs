//! The reward server's configuration: one serde struct (TOML keys as the field names, the batch
//! window as `batch_window_ms`), with defaults that work on a laptop and for the paper's job.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Result, RewardServerError};

/// How a reward server scores and how much it takes in.
///
/// Memory is bounded by these limits: a request is at most `max_request_bytes` on the wire
/// and `max_request_items` items of at most `max_item_bytes` each; at most `max_queue_items`
/// model items wait or are scored at once, each as at most `max_length` token ids.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RewardServerConfig {
    /// The reward model: a one-label sequence classifier with a tokenizer and a chat template,
    /// as a directory or an object store URL (`file://`, `s3://`). `None`: rule verifiers only,
    /// and items of style `model` are refused with FAILED_PRECONDITION.
    pub model: Option<String>,
    /// Longest conversation (tokens, in the reward model's chat template) scored in full;
    /// longer ones are cut from the left so that the scored last token stays.
    pub max_length: usize,
    /// Token budget of one reward-model forward pass, padding included (rows × longest row).
    /// A batch of requests is gathered up to this budget; one request longer than it is
    /// scored alone in several forwards.
    pub batch_tokens: usize,
    /// How long the batching task waits for more requests to join a batch that is not full.
    #[serde(rename = "batch_window_ms", with = "millis")]
    pub batch_window: Duration,
    /// Most model items queued or being scored at once; a request that would go past it is
    /// refused with RESOURCE_EXHAUSTED (retry later).
    pub max_queue_items: usize,
    /// Most items in one request (INVALID_ARGUMENT past it). At most `max_queue_items`.
    pub max_request_items: usize,
    /// Most bytes of text in one item: prompt messages, response, ground truth, data source
    /// and ability together (INVALID_ARGUMENT past it).
    pub max_item_bytes: usize,
    /// Most bytes of one encoded request message (gRPC's decoding limit).
    pub max_request_bytes: usize,
}

impl Default for RewardServerConfig {
    fn default() -> Self {
        RewardServerConfig {
            model: None,
            max_length: 8192,
            batch_tokens: 16384,
            batch_window: Duration::from_millis(5),
            max_queue_items: 4096,
            max_request_items: 1024,
            max_item_bytes: 256 << 10,
            max_request_bytes: 32 << 20,
        }
    }
}

/// Longest batch window accepted: a longer one only adds latency.
const MAX_BATCH_WINDOW: Duration = Duration::from_secs(10);

impl RewardServerConfig {
    /// Checks the values, listing every problem at once.
    pub fn validate(&self) -> Result<()> {
        let mut problems = Vec::new();
        let positive = [
            ("max_length", self.max_length),
            ("batch_tokens", self.batch_tokens),
            ("max_queue_items", self.max_queue_items),
            ("max_request_items", self.max_request_items),
            ("max_item_bytes", self.max_item_bytes),
            ("max_request_bytes", self.max_request_bytes),
        ];
        for (name, value) in positive {
            if value == 0 {
                problems.push(format!("{name} must be at least 1"));
            }
        }
        if self.max_request_items > self.max_queue_items {
            problems.push(format!(
                "max_request_items ({}) is more than max_queue_items ({}): a full request could never be queued",
                self.max_request_items, self.max_queue_items
            ));
        }
        if self.batch_window > MAX_BATCH_WINDOW {
            problems.push(format!(
                "batch_window_ms ({}) is more than {} ms",
                self.batch_window.as_millis(),
                MAX_BATCH_WINDOW.as_millis()
            ));
        }
        if self.model.as_deref().is_some_and(|m| m.trim().is_empty()) {
            problems.push("model is empty: leave it out to serve rule verifiers only".into());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(RewardServerError::Config(problems.join("; ")))
        }
    }
}

/// A `Duration` as whole milliseconds.
mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(duration.as_millis().try_into().unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        u64::deserialize(deserializer).map(Duration::from_millis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        RewardServerConfig::default().validate().unwrap();
    }

    #[test]
    fn every_problem_is_listed() {
        let config = RewardServerConfig {
            batch_tokens: 0,
            max_queue_items: 8,
            max_request_items: 16,
            batch_window: Duration::from_secs(60),
            ..Default::default()
        };
        let message = config.validate().unwrap_err().to_string();
        assert!(
            message.contains("batch_tokens must be at least 1"),
            "{message}"
        );
        assert!(message.contains("max_request_items (16)"), "{message}");
        assert!(message.contains("batch_window_ms (60000)"), "{message}");
    }

    #[test]
    fn reads_toml_with_the_window_in_milliseconds() {
        let config: RewardServerConfig = toml::from_str(
            "model = \"configs/tiny/reward-model\"\nbatch_window_ms = 20\nmax_queue_items = 64\n",
        )
        .unwrap();
        assert_eq!(config.model.as_deref(), Some("configs/tiny/reward-model"));
        assert_eq!(config.batch_window, Duration::from_millis(20));
        assert_eq!(config.max_queue_items, 64);
        assert_eq!(config.max_length, 8192);
        let text = toml::to_string(&config).unwrap();
        assert!(text.contains("batch_window_ms = 20"), "{text}");
        assert!(toml::from_str::<RewardServerConfig>("batch_window = 5").is_err());
    }
}
