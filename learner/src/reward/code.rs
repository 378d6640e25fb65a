//! Code as a rule reward (the RLVR stage's coding prompts): a response's program is run
//! against the prompt's tests in the sandbox of [`grlo_eval::sandbox`], and scores 1.0 when
//! every test passes, else 0.0 (verl's default for code).
//!
//! A prompt is code when its `data_source` names a code dataset or its `ability` is code (see
//! [`is_code`]). Its tests are its `reward_model.ground_truth` — Python asserts, a list of
//! them, `{"test_list": [...]}`, or stdin/stdout cases `{"inputs": [...], "outputs": [...]}`
//! (the APPS / PRIME format), see [`grlo_eval::code::Tests::from_ground_truth`] — or, when
//! the ground truth is missing, the tests under one of [`EXTRA_INFO_TESTS`] in `extra_info`.
//!
//! The sandbox is made once per process and refuses to start where it cannot isolate the
//! programs: a code prompt then fails with that message rather than running unconfined.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use grlo_eval::code::{self, Tests};
use grlo_eval::sandbox::{Config, Sandbox};
use serde_json::Value;

/// Substrings of a `data_source` (lower-cased) that mark a code dataset.
const CODE_SOURCES: [&str; 11] = [
    "code",
    "coding",
    "coder",
    "apps",
    "taco",
    "mbpp",
    "humaneval",
    "leetcode",
    "codeforces",
    "livecodebench",
    "kodcode",
];

/// Keys of `extra_info` that may hold a code prompt's tests, in the order they are tried.
pub const EXTRA_INFO_TESTS: [&str; 4] = ["test_cases", "tests", "test_list", "input_output"];

/// Whether a prompt is scored by running code: its `data_source` contains one of
/// [`CODE_SOURCES`] (ignoring case) or its `ability` is `code` / `coding`.
pub fn is_code(data_source: &str, ability: Option<&str>) -> bool {
    let source = data_source.to_ascii_lowercase();
    CODE_SOURCES.iter().any(|name| source.contains(name))
        || ability.is_some_and(|a| {
            let a = a.trim();
            a.eq_ignore_ascii_case("code") || a.eq_ignore_ascii_case("coding")
        })
}

/// The tests of a code prompt found in its `extra_info`, as ground-truth text.
pub fn tests_in_extra_info(extra_info: &Value) -> Option<String> {
    EXTRA_INFO_TESTS
        .iter()
        .filter_map(|key| extra_info.get(key))
        .find(|v| !v.is_null())
        .map(|v| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
}

/// A code prompt's tests from its ground-truth text, or what is wrong with them.
pub fn parse_tests(ground_truth: &str) -> Result<Tests, String> {
    Tests::from_ground_truth(&Value::String(ground_truth.to_owned()))
}

/// The process's sandbox, made on first use.
fn sandbox() -> Result<&'static Sandbox, String> {
    static SANDBOX: OnceLock<Result<Sandbox, String>> = OnceLock::new();
    SANDBOX
        .get_or_init(|| {
            let sandbox = Sandbox::new(Config::default())
                .map_err(|e| format!("code rewards need the sandbox: {e}"))?;
            tracing::info!(isolation = %sandbox.isolation(), "code rewards run in the sandbox");
            Ok(sandbox)
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// The rewards of `(response, ground truth)` pairs, their programs run up to the CPU count at
/// once. Fails naming the pair whose tests cannot be read, or when there is no sandbox.
pub fn code_rewards(items: &[(&str, &str)]) -> Result<Vec<f32>, String> {
    let tests = items
        .iter()
        .enumerate()
        .map(|(i, (_, truth))| parse_tests(truth).map_err(|e| format!("item {i}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    if items.is_empty() {
        return Ok(Vec::new());
    }
    let sandbox = sandbox()?;
    let workers = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(items.len());
    let next = AtomicUsize::new(0);
    let mut rewards = vec![0f32; items.len()];
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= items.len() {
                            return done;
                        }
                        done.push((i, code::reward(sandbox, items[i].0, &tests[i])));
                    }
                })
            })
            .collect();
        for handle in handles {
            for (i, reward) in handle.join().expect("a code reward worker panicked") {
                rewards[i] = reward;
            }
        }
    });
    Ok(rewards)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn code_prompts_are_known_by_source_or_ability() {
        assert!(is_code("codecontests", None));
        assert!(is_code("PrimeIntellect/verifiable-coding-problems", None));
        assert!(is_code("likaixin/TACO-verified", None));
        assert!(is_code("my-set", Some("Code")));
        assert!(!is_code("openai/gsm8k", Some("math")));
        assert!(!is_code("chat", None));
    }

    #[test]
    fn tests_are_taken_from_extra_info_when_present() {
        let info = json!({"index": 3, "test_cases": {"inputs": ["1\n"], "outputs": ["2\n"]}});
        let text = tests_in_extra_info(&info).unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(&text).unwrap(),
            json!({"inputs": ["1\n"], "outputs": ["2\n"]})
        );
        assert_eq!(
            tests_in_extra_info(&json!({"tests": "assert f() == 1"})).as_deref(),
            Some("assert f() == 1")
        );
        assert_eq!(tests_in_extra_info(&json!({"index": 3})), None);
        assert_eq!(tests_in_extra_info(&Value::Null), None);
    }
}
