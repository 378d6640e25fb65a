//! The `grlo` binary as people use it: each command prints one JSON object, and bad input is a
//! one-line error naming the problem, with a non-zero exit and no panic trace.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn grlo(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_grlo"))
        .args(args)
        .current_dir(root())
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("grlo runs")
}

fn fixture(name: &str) -> String {
    root()
        .join("fixtures/models")
        .join(name)
        .display()
        .to_string()
}

fn json(output: &Output) -> serde_json::Value {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("one JSON object")
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

#[test]
fn logits_generate_and_score_print_json() {
    let logits = json(&grlo(&[
        "model",
        "logits",
        "--model",
        &fixture("qwen3-tiny"),
        "--ids",
        "1,2,3",
    ]));
    let rows = logits["logits"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0].as_array().unwrap().len(), 1024);

    let generated = json(&grlo(&[
        "model",
        "generate",
        "--model",
        &fixture("qwen3-chat-tiny"),
        "--prompt",
        "Hello!",
        "--chat",
        "--max-new-tokens",
        "5",
        "--seed",
        "3",
        "--n",
        "2",
        "--temperature",
        "0.8",
        "--top-p",
        "0.9",
    ]));
    let completions = generated["completions"].as_array().unwrap();
    assert_eq!(completions.len(), 2);
    for c in completions {
        let ids = c["completion_ids"].as_array().unwrap();
        assert_eq!(ids.len(), c["logprobs"].as_array().unwrap().len());
        assert!(c["text"].is_string());
        assert!(["stop", "length"].contains(&c["finish_reason"].as_str().unwrap()));
    }

    let dir = tempfile::tempdir().unwrap();
    let conversation = dir.path().join("conversation.json");
    std::fs::write(
        &conversation,
        r#"[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]"#,
    )
    .unwrap();
    let scored = json(&grlo(&[
        "model",
        "score",
        "--model",
        &fixture("llama31-rm-tiny"),
        "--conversation",
        conversation.to_str().unwrap(),
    ]));
    assert!(scored["score"].as_f64().unwrap().is_finite());
}

#[test]
fn bad_input_is_a_one_line_error() {
    let err = one_line_error(&grlo(&[
        "model",
        "logits",
        "--model",
        "/no/such/model",
        "--ids",
        "1",
    ]));
    assert!(err.contains("/no/such/model"), "{err}");

    let err = one_line_error(&grlo(&[
        "model",
        "logits",
        "--model",
        &fixture("qwen3-tiny"),
        "--ids",
        "1,5000",
    ]));
    assert!(
        err.contains("token id 5000") && err.contains("vocabulary"),
        "{err}"
    );

    let err = one_line_error(&grlo(&[
        "model",
        "generate",
        "--model",
        &fixture("qwen3-chat-tiny"),
        "--prompt",
        "",
        "--max-new-tokens",
        "3",
    ]));
    assert!(err.contains("empty"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let copy = |name: &str| {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        for f in ["config.json", "model.safetensors"] {
            std::fs::copy(Path::new(&fixture("qwen3-rm-tiny")).join(f), d.join(f)).unwrap();
        }
        d
    };
    let corrupt = copy("corrupt");
    std::fs::write(
        corrupt.join("model.safetensors"),
        b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}",
    )
    .unwrap();
    let err = one_line_error(&grlo(&[
        "model",
        "logits",
        "--model",
        corrupt.to_str().unwrap(),
        "--ids",
        "1",
    ]));
    assert!(
        err.contains("corrupt safetensors file") && err.contains("model.safetensors"),
        "{err}"
    );

    let unknown = copy("unknown");
    let config = std::fs::read_to_string(unknown.join("config.json"))
        .unwrap()
        .replace("\"qwen3\"", "\"mamba\"");
    std::fs::write(unknown.join("config.json"), config).unwrap();
    let err = one_line_error(&grlo(&[
        "model",
        "logits",
        "--model",
        unknown.to_str().unwrap(),
        "--ids",
        "1",
    ]));
    assert!(err.contains("unknown model_type \"mamba\""), "{err}");
}

#[test]
fn train_runs_the_default_job_and_refuses_bad_configs() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = format!("trainer.run_dir=\"{}\"", dir.path().join("run").display());
    let summary = json(&grlo(&[
        "train",
        "--set",
        "trainer.total_steps=2",
        "--set",
        &run_dir,
    ]));
    assert_eq!(summary["steps"], 2);
    let metrics = std::fs::read_to_string(dir.path().join("run/metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 2);
    let first: serde_json::Value = serde_json::from_str(metrics.lines().next().unwrap()).unwrap();
    for key in [
        "reward_mean",
        "policy_loss",
        "value_loss",
        "grad_norm",
        "tokens_per_s",
        "generate_s",
    ] {
        assert!(first.get(key).is_some(), "metrics.jsonl has {key}");
    }
    assert!(
        dir.path()
            .join("run/checkpoints/step-2/policy/model.safetensors")
            .is_file()
    );

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[model]\npolicy = \"x\"\n[data]\ntrain_files = [\"p.jsonl\"]\n[actor]\nlearnin_rate = 1.0\n").unwrap();
    let err = one_line_error(&grlo(&["train", "--config", bad.to_str().unwrap()]));
    assert!(
        err.contains("learnin_rate") && err.contains("bad.toml"),
        "{err}"
    );
}

#[test]
fn plan_prints_the_layout_and_fails_when_the_job_does_not_fit() {
    let args = |gpus: &'static str| {
        vec![
            "plan",
            "--config",
            "configs/grlo-qwen3-4b.toml",
            "--gpu",
            "h100-80gb",
            "--gpus",
            gpus,
            "--policy-shape",
            "configs/shapes/qwen3-4b-base.json",
            "--reward-shape",
            "configs/shapes/skywork-reward-v2-llama-3.1-8b.json",
        ]
    };
    let output = grlo(&args("4"));
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains("fits: yes") && text.contains("GPU 3:"),
        "{text}"
    );

    let mut json_args = args("4");
    json_args.push("--json");
    let plan = json(&grlo(&json_args));
    assert_eq!(plan["layout"].as_array().unwrap().len(), 4);
    assert!(plan["problems"].as_array().unwrap().is_empty());

    let output = grlo(&args("2"));
    assert!(String::from_utf8_lossy(&output.stdout).contains("fits: no"));
    let err = one_line_error(&output);
    assert!(err.contains("need 3 x h100-80gb"), "{err}");

    let mut unknown = args("4");
    unknown[4] = "tpu-v5";
    let err = one_line_error(&grlo(&unknown));
    assert!(
        err.contains("tpu-v5") && err.contains("h200-141gb"),
        "{err}"
    );
}

/// A checkpoint whose chat template loops for 10^10 iterations, or recurses without end: a
/// stranger's template stops at its limit with a one-line error instead of running forever.
#[test]
fn a_looping_chat_template_fails_fast() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("hostile");
    std::fs::create_dir_all(&model).unwrap();
    for entry in std::fs::read_dir(fixture("qwen3-chat-tiny")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), model.join(entry.file_name())).unwrap();
    }
    for (template, limit) in [
        (
            "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
            "instructions",
        ),
        (
            "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
            "levels",
        ),
    ] {
        // chat_template.jinja takes precedence over tokenizer_config.json's template.
        std::fs::write(model.join("chat_template.jinja"), template).unwrap();
        let error = one_line_error(&grlo(&[
            "model",
            "generate",
            "--model",
            &model.display().to_string(),
            "--prompt",
            "Hello!",
            "--chat",
            "--max-new-tokens",
            "2",
        ]));
        assert!(
            error.contains("chat template stopped at a limit") && error.contains(limit),
            "{error}"
        );
    }
}
