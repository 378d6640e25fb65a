//! One benchmark's answers to per-item results and metrics.
//!
//! An item may have several samples (pass@k); a sample has one answer per user turn (two
//! for MT-Bench). Metrics by kind:
//! - math: `accuracy` (the mean over items of the fraction of correct samples: pass@1), and
//!   `pass@k` for each asked k ≤ n;
//! - code: `pass@1` and `pass@k` (the unbiased estimator);
//! - IFEval: `prompt_level_strict_acc`, `inst_level_strict_acc`, `prompt_level_loose_acc`,
//!   `inst_level_loose_acc`;
//! - judged: `win_rate` against the shipped baseline answers, `reward_mean`,
//!   `baseline_reward_mean`; for MT-Bench also `turn1_score`, `turn2_score` (the judge's mean
//!   reward per turn), over every question, and the win rate over the questions with a
//!   reference answer.

use std::collections::{BTreeMap, HashMap};

use serde_json::{Value, json};

use crate::benchmark::{Benchmark, Gold, Item, id_key};
use crate::error::{Error, Result};
use crate::judge::{Conversation, Judge, win_rate};
use crate::sandbox::Sandbox;
use crate::values::strings;
use crate::{code, ifeval, math};

/// One sample: the answer to each user turn.
pub type Sample = Vec<String>;

/// What scoring may need besides the answers.
#[derive(Default)]
pub struct Options<'a> {
    /// Runs code benchmarks' programs.
    pub sandbox: Option<&'a Sandbox>,
    /// Scores judged benchmarks' conversations.
    pub judge: Option<&'a dyn Judge>,
    /// IFEval's checks that lm-eval does with Python packages.
    pub python: Option<&'a ifeval::Python>,
    /// The k of pass@k beyond 1 (each ≤ the samples per item).
    pub ks: Vec<usize>,
    /// Most programs run at once.
    pub parallel: usize,
}

/// A benchmark's results.
#[derive(Clone, Debug)]
pub struct Report {
    pub benchmark: Benchmark,
    pub metrics: BTreeMap<String, f64>,
    /// Per item: `id`, `correct` (or `score` where the benchmark gives a number), and what
    /// led to it.
    pub items: Vec<Value>,
    /// Caveats the reader must see (how checks were done, what could not be).
    pub notes: Vec<String>,
}

impl Report {
    /// `{"benchmark", "metrics", "items", "notes"}`.
    pub fn to_json(&self) -> Value {
        json!({
            "benchmark": self.benchmark.name(),
            "metrics": self.metrics,
            "items": self.items,
            "notes": self.notes,
        })
    }
}

/// Scores `samples[i]` (one or more samples) against `items[i]`.
pub fn score(
    benchmark: Benchmark,
    items: &[Item],
    samples: &[Vec<Sample>],
    options: &Options,
) -> Result<Report> {
    if items.len() != samples.len() {
        return Err(Error::Invalid(format!(
            "{} items but {} answers",
            items.len(),
            samples.len()
        )));
    }
    if let Some(i) = samples.iter().position(|s| s.is_empty()) {
        return Err(Error::Invalid(format!(
            "item {} has no sample",
            items[i].key()
        )));
    }
    let mut report = Report {
        benchmark,
        metrics: BTreeMap::new(),
        items: Vec::new(),
        notes: Vec::new(),
    };
    match benchmark {
        Benchmark::Gsm8k | Benchmark::Math500 => score_math(items, samples, options, &mut report),
        Benchmark::HumanEval | Benchmark::Mbpp => score_code(items, samples, options, &mut report)?,
        Benchmark::IfEval => score_ifeval(items, samples, options, &mut report)?,
        Benchmark::AlpacaEval | Benchmark::ArenaHard | Benchmark::MtBench => {
            score_judged(items, samples, options, &mut report)?
        }
    }
    Ok(report)
}

fn first_turn(sample: &Sample) -> &str {
    sample.first().map(String::as_str).unwrap_or_default()
}

fn score_math(items: &[Item], samples: &[Vec<Sample>], options: &Options, report: &mut Report) {
    let mut counts = Vec::new();
    for (item, samples) in items.iter().zip(samples) {
        let (correct, answers): (Vec<bool>, Vec<Option<String>>) = samples
            .iter()
            .map(|s| match &item.gold {
                Gold::Number(gold) => (
                    math::gsm8k_correct(first_turn(s), gold),
                    math::gsm8k_answer(first_turn(s)),
                ),
                Gold::Math(gold) => (
                    math::math_correct(first_turn(s), gold),
                    math::math_answer(first_turn(s)),
                ),
                _ => (false, None),
            })
            .unzip();
        let gold = match &item.gold {
            Gold::Number(g) | Gold::Math(g) => g.clone(),
            _ => String::new(),
        };
        let c = correct.iter().filter(|&&c| c).count();
        counts.push((samples.len(), c));
        report.items.push(json!({
            "id": item.id,
            "correct": correct[0],
            "answer": answers[0],
            "gold": gold,
            "samples_correct": c,
            "samples": samples.len(),
        }));
    }
    report
        .metrics
        .insert("accuracy".into(), mean_pass_at(&counts, 1));
    add_pass_at_ks(&counts, options, report);
}

/// The mean over items of pass@k, for items with at least k samples.
fn mean_pass_at(counts: &[(usize, usize)], k: usize) -> f64 {
    let values: Vec<f64> = counts
        .iter()
        .filter(|(n, _)| *n >= k)
        .map(|&(n, c)| code::pass_at_k(n, c, k))
        .collect();
    if values.is_empty() {
        return 0.0;
    }
    values.iter().sum::<f64>() / values.len() as f64
}

fn add_pass_at_ks(counts: &[(usize, usize)], options: &Options, report: &mut Report) {
    let fewest = counts.iter().map(|(n, _)| *n).min().unwrap_or(0);
    for &k in &options.ks {
        if k > 1 && k <= fewest {
            report
                .metrics
                .insert(format!("pass@{k}"), mean_pass_at(counts, k));
        } else if k > fewest {
            report.notes.push(format!(
                "pass@{k} needs at least {k} samples per item; there are {fewest}"
            ));
        }
    }
}

fn score_code(
    items: &[Item],
    samples: &[Vec<Sample>],
    options: &Options,
    report: &mut Report,
) -> Result<()> {
    let sandbox = options.sandbox.ok_or_else(|| {
        Error::Invalid(format!(
            "{} runs programs: it needs the sandbox",
            report.benchmark.name()
        ))
    })?;
    let mut pairs = Vec::new();
    for (item, samples) in items.iter().zip(samples) {
        let Gold::Code(problem) = &item.gold else {
            continue;
        };
        for sample in samples {
            pairs.push((problem, first_turn(sample)));
        }
    }
    let results = code::score(sandbox, &pairs, options.parallel.max(1));
    let mut results = results.into_iter();
    let mut counts = Vec::new();
    for (item, samples) in items.iter().zip(samples) {
        let ran: Vec<code::CodeResult> = results.by_ref().take(samples.len()).collect();
        let c = ran.iter().filter(|r| r.passed).count();
        counts.push((samples.len(), c));
        report.items.push(json!({
            "id": item.id,
            "correct": ran.first().is_some_and(|r| r.passed),
            "status": ran.first().map(|r| r.status.clone()),
            "samples_correct": c,
            "samples": samples.len(),
        }));
    }
    report
        .metrics
        .insert("pass@1".into(), mean_pass_at(&counts, 1));
    add_pass_at_ks(&counts, options, report);
    Ok(())
}

fn score_ifeval(
    items: &[Item],
    samples: &[Vec<Sample>],
    options: &Options,
    report: &mut Report,
) -> Result<()> {
    let mut judgements = Vec::new();
    for (item, samples) in items.iter().zip(samples) {
        let Gold::Instructions(instructions) = &item.gold else {
            continue;
        };
        let judgement = ifeval::evaluate(instructions, first_turn(&samples[0]), options.python)
            .map_err(|e| Error::Invalid(format!("ifeval item {}: {e}", item.key())))?;
        report.items.push(json!({
            "id": item.id,
            "correct": judgement.strict.iter().all(|&s| s),
            "correct_loose": judgement.loose.iter().all(|&s| s),
            "instructions": instructions.instruction_ids,
            "strict": judgement.strict,
            "loose": judgement.loose,
        }));
        judgements.push(judgement);
    }
    let library_checked = items
        .iter()
        .filter(|item| matches!(&item.gold, Gold::Instructions(i) if ifeval::needs_python(i)))
        .count();
    if library_checked > 0 {
        report.notes.push(match options.python {
            Some(python) => format!(
                "ifeval: the checks that lm-eval does with nltk and langdetect (number_sentences, capital_word_frequency, response_language, english_capital, english_lowercase; {library_checked} items) ran through those libraries in {}",
                python.describe()
            ),
            None => format!(
                "ifeval: the checks that lm-eval does with nltk and langdetect (number_sentences, capital_word_frequency, response_language, english_capital, english_lowercase; {library_checked} items) were approximated in Rust, without those libraries: give --ifeval-python"
            ),
        });
    }
    let metrics = ifeval::metrics(&judgements);
    for (name, value) in [
        ("prompt_level_strict_acc", metrics.prompt_level_strict_acc),
        ("inst_level_strict_acc", metrics.inst_level_strict_acc),
        ("prompt_level_loose_acc", metrics.prompt_level_loose_acc),
        ("inst_level_loose_acc", metrics.inst_level_loose_acc),
    ] {
        report.metrics.insert(name.into(), value);
    }
    Ok(())
}

/// The conversation of `turns` questions with `answers`, up to and including turn `upto`.
fn conversation(turns: &[String], answers: &[String], upto: usize) -> Conversation {
    let mut messages = Vec::new();
    for (t, turn) in turns.iter().enumerate().take(upto + 1) {
        messages.push(("user".to_string(), turn.clone()));
        messages.push((
            "assistant".to_string(),
            answers.get(t).cloned().unwrap_or_default(),
        ));
    }
    messages
}

fn score_judged(
    items: &[Item],
    samples: &[Vec<Sample>],
    options: &Options,
    report: &mut Report,
) -> Result<()> {
    let judge = options.judge.ok_or_else(|| {
        Error::Invalid(format!(
            "{} is judged: give a reward model with --judge DIR",
            report.benchmark.name()
        ))
    })?;
    // Every turn of our first sample, and of the baseline where there is one, in one batch.
    let mut conversations = Vec::new();
    let mut slots = Vec::new(); // (item, turn, is_baseline)
    for (i, (item, samples)) in items.iter().zip(samples).enumerate() {
        let Gold::Baseline(baseline) = &item.gold else {
            continue;
        };
        let ours = &samples[0];
        for t in 0..item.turns.len() {
            conversations.push(conversation(&item.turns, ours, t));
            slots.push((i, t, false));
            if baseline.len() == item.turns.len() {
                conversations.push(conversation(&item.turns, baseline, t));
                slots.push((i, t, true));
            }
        }
    }
    let rewards = judge
        .score(&conversations)
        .map_err(|e| Error::Invalid(format!("the judge: {e}")))?;
    if rewards.len() != conversations.len() {
        return Err(Error::Invalid(format!(
            "the judge gave {} scores for {} conversations",
            rewards.len(),
            conversations.len()
        )));
    }
    let mut ours: HashMap<(usize, usize), f32> = HashMap::new();
    let mut theirs: HashMap<(usize, usize), f32> = HashMap::new();
    for (&(i, t, baseline), &r) in slots.iter().zip(&rewards) {
        if baseline {
            theirs.insert((i, t), r);
        } else {
            ours.insert((i, t), r);
        }
    }
    let mut pairs = Vec::new();
    let mut turn_rewards: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    for (i, item) in items.iter().enumerate() {
        let turns = item.turns.len();
        let our_rewards: Vec<f32> = (0..turns).map(|t| ours[&(i, t)]).collect();
        let their_rewards: Option<Vec<f32>> =
            (0..turns).map(|t| theirs.get(&(i, t)).copied()).collect();
        for (t, &r) in our_rewards.iter().enumerate() {
            turn_rewards.entry(t + 1).or_default().push(f64::from(r));
        }
        let win = their_rewards.as_ref().map(|theirs| {
            let item_pairs: Vec<(f32, f32)> = our_rewards
                .iter()
                .copied()
                .zip(theirs.iter().copied())
                .collect();
            pairs.extend(item_pairs.iter().copied());
            win_rate(&item_pairs)
        });
        report.items.push(json!({
            "id": item.id,
            "score": win.unwrap_or_else(|| our_rewards.iter().map(|&r| f64::from(r)).sum::<f64>() / turns as f64),
            "win_probability": win,
            "rewards": our_rewards,
            "baseline_rewards": their_rewards,
        }));
    }
    let mean = |values: &[f64]| values.iter().sum::<f64>() / values.len().max(1) as f64;
    let all: Vec<f64> = turn_rewards.values().flatten().copied().collect();
    report.metrics.insert("reward_mean".into(), mean(&all));
    if !pairs.is_empty() {
        report.metrics.insert("win_rate".into(), win_rate(&pairs));
        let baseline: Vec<f64> = pairs.iter().map(|&(_, b)| f64::from(b)).collect();
        report
            .metrics
            .insert("baseline_reward_mean".into(), mean(&baseline));
    }
    if report.benchmark == Benchmark::MtBench {
        for (turn, values) in &turn_rewards {
            report
                .metrics
                .insert(format!("turn{turn}_score"), mean(values));
        }
        report.notes.push(format!(
            "mtbench: win_rate is against GPT-4's reference answers, on the {} of {} questions that have one; turn scores cover every question",
            report.items.iter().filter(|i| !i["win_probability"].is_null()).count(),
            items.len()
        ));
    }
    report.notes.push(format!(
        "{}: judged by a reward model (Bradley-Terry win probability sigmoid(r - r_baseline)), not by GPT-4 as the published leaderboards are",
        report.benchmark.name()
    ));
    Ok(())
}

/// Reads a responses file for `grlo eval score`: one JSON object a line, `{"id": ...,
/// "response": "..."}`, or `"turns": [...]` (MT-Bench's two answers), or `"responses":
/// [...]` (several samples, for pass@k). Returns the items answered, in the benchmark's
/// order, and their samples. Unknown and repeated ids are errors naming the line.
pub fn read_responses(
    benchmark: Benchmark,
    items: &[Item],
    text: &str,
    source: &str,
) -> Result<(Vec<Item>, Vec<Vec<Sample>>)> {
    let index: HashMap<String, usize> = items
        .iter()
        .enumerate()
        .map(|(i, item)| (item.key(), i))
        .collect();
    let mut answered: BTreeMap<usize, (usize, Vec<Sample>)> = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line_no = n + 1;
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{source} line {line_no}");
        let record: Value = serde_json::from_str(line)
            .map_err(|e| Error::Invalid(format!("{}: not JSON: {e}", at())))?;
        let id = record
            .get("id")
            .ok_or_else(|| Error::Invalid(format!("{}: no \"id\"", at())))?;
        let key = id_key(id);
        let position = *index.get(&key).ok_or_else(|| {
            Error::Invalid(format!(
                "{}: id {id} is not a {} item",
                at(),
                benchmark.name()
            ))
        })?;
        let samples = samples_of(&record).ok_or_else(|| {
            Error::Invalid(format!(
                "{}: needs \"response\" (a string), \"turns\" or \"responses\" (lists of strings)",
                at()
            ))
        })?;
        if let Some((first, _)) = answered.get(&position) {
            return Err(Error::Invalid(format!(
                "{}: id {id} again (first on line {first})",
                at()
            )));
        }
        answered.insert(position, (line_no, samples));
    }
    if answered.is_empty() {
        return Err(Error::Invalid(format!("{source} has no responses")));
    }
    let (chosen, samples) = answered
        .into_iter()
        .map(|(i, (_, samples))| (items[i].clone(), samples))
        .unzip();
    Ok((chosen, samples))
}

fn samples_of(record: &Value) -> Option<Vec<Sample>> {
    if let Some(response) = record.get("response") {
        return Some(vec![vec![response.as_str()?.to_string()]]);
    }
    if let Some(turns) = record.get("turns") {
        return Some(vec![strings(turns).ok()?]);
    }
    let responses = strings(record.get("responses")?).ok()?;
    (!responses.is_empty()).then(|| responses.into_iter().map(|r| vec![r]).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gsm8k_items() -> Vec<Item> {
        ["18", "3"]
            .iter()
            .enumerate()
            .map(|(i, gold)| Item {
                id: Value::from(i),
                turns: vec![format!("question {i}")],
                base_prompt: String::new(),
                base_stops: vec![],
                gold: Gold::Number(gold.to_string()),
            })
            .collect()
    }

    #[test]
    fn responses_are_matched_by_id_and_bad_ids_name_their_line() {
        let items = gsm8k_items();
        let text = "{\"id\": 1, \"response\": \"#### 3\"}\n{\"id\": 0, \"response\": \"18\"}\n";
        let (chosen, samples) = read_responses(Benchmark::Gsm8k, &items, text, "r.jsonl").unwrap();
        assert_eq!(chosen[0].key(), "0", "in the benchmark's order");
        let report = score(Benchmark::Gsm8k, &chosen, &samples, &Options::default()).unwrap();
        assert_eq!(report.metrics["accuracy"], 1.0);

        let unknown = "{\"id\": 7, \"response\": \"x\"}";
        let error = read_responses(Benchmark::Gsm8k, &items, unknown, "r.jsonl").unwrap_err();
        assert_eq!(
            error.to_string(),
            "r.jsonl line 1: id 7 is not a gsm8k item"
        );
        let twice = "{\"id\": 0, \"response\": \"x\"}\n{\"id\": 0, \"response\": \"y\"}";
        let error = read_responses(Benchmark::Gsm8k, &items, twice, "r.jsonl").unwrap_err();
        assert_eq!(
            error.to_string(),
            "r.jsonl line 2: id 0 again (first on line 1)"
        );
    }

    #[test]
    fn pass_at_k_over_samples() {
        let items = gsm8k_items();
        let samples = vec![
            vec![vec!["#### 18".into()], vec!["#### 1".into()]],
            vec![vec!["#### 2".into()], vec!["#### 2".into()]],
        ];
        let options = Options {
            ks: vec![2],
            ..Options::default()
        };
        let report = score(Benchmark::Gsm8k, &items, &samples, &options).unwrap();
        // Item 0: 1 of 2 correct (pass@1 0.5, pass@2 1); item 1: none.
        assert_eq!(report.metrics["accuracy"], 0.25);
        assert_eq!(report.metrics["pass@2"], 0.5);
    }

    struct LengthJudge;
    impl Judge for LengthJudge {
        fn score(&self, conversations: &[Conversation]) -> std::result::Result<Vec<f32>, String> {
            Ok(conversations
                .iter()
                .map(|c| c.last().unwrap().1.len() as f32)
                .collect())
        }
    }

    #[test]
    fn judged_win_rate_is_against_the_baseline_answers() {
        let item = Item {
            id: Value::from(0),
            turns: vec!["q".into()],
            base_prompt: String::new(),
            base_stops: vec![],
            gold: Gold::Baseline(vec!["abc".into()]),
        };
        let options = Options {
            judge: Some(&LengthJudge),
            ..Options::default()
        };
        let samples = vec![vec![vec!["abcd".into()]]];
        let report = score(Benchmark::AlpacaEval, &[item], &samples, &options).unwrap();
        // sigmoid(4 - 3) = 0.7310585786300049
        assert!((report.metrics["win_rate"] - 0.7310585786300049).abs() < 1e-12);
        assert_eq!(report.metrics["reward_mean"], 4.0);
        assert!(report.notes.iter().any(|n| n.contains("not by GPT-4")));
    }
}
