//! IFEval (Zhou et al., 2023) scored as lm-eval 0.4.8's `ifeval` task scores it: 25
//! instruction checks, each judged strictly on the response and loosely on eight variants
//! of it, and prompt- and instruction-level accuracy over both.
//!
//! - [`instructions`]: the checks, one per instruction id.
//! - [`python`]: the subprocess for the five checks lm-eval scores with NLTK or langdetect
//!   (sentence counts, capital-word counts, language detection); without it, the
//!   approximations of `fallback` score them and the caller should say so.
//! - `text` and `json`: Python's string, regex and `json.loads` semantics the checks need.

mod fallback;
pub mod instructions;
mod json;
pub mod python;
mod text;

use serde_json::Value;

pub use instructions::{INSTRUCTION_IDS, PYTHON_IDS};
pub use python::{PYTHON_ENV, Python};

use instructions::Check;
use text::py_strip;

/// One IFEval prompt and the instructions its response must follow.
#[derive(Clone, Debug)]
pub struct Item {
    pub key: u64,
    pub prompt: String,
    /// lm-eval's `instruction_id_list`, e.g. `"punctuation:no_comma"`.
    pub instruction_ids: Vec<String>,
    /// One kwargs object per instruction, as in the data file.
    pub kwargs: Vec<Value>,
}

/// Reads one line of `ifeval.jsonl` (`key`, `prompt`, `instruction_id_list`, `kwargs`) and
/// checks that every instruction is known and its kwargs are usable.
pub fn parse_item(record: &Value) -> Result<Item, String> {
    let key = record
        .get("key")
        .and_then(Value::as_u64)
        .ok_or("field \"key\" is missing or not an unsigned integer")?;
    let field = |name: &str| {
        record
            .get(name)
            .ok_or_else(|| format!("item {key}: field {name:?} is missing"))
    };
    let prompt = field("prompt")?
        .as_str()
        .ok_or_else(|| format!("item {key}: field \"prompt\" is not a string"))?
        .to_string();
    let ids = field("instruction_id_list")?
        .as_array()
        .ok_or_else(|| format!("item {key}: field \"instruction_id_list\" is not a list"))?;
    let instruction_ids = ids
        .iter()
        .map(|id| {
            id.as_str()
                .map(str::to_string)
                .ok_or_else(|| format!("item {key}: instruction id {id} is not a string"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let kwargs = match field("kwargs")? {
        Value::Array(kwargs) => kwargs.clone(),
        other => {
            return Err(format!(
                "item {key}: field \"kwargs\" is not a list: {other}"
            ));
        }
    };
    if kwargs.len() != instruction_ids.len() {
        return Err(format!(
            "item {key}: {} instruction ids but {} kwargs objects",
            instruction_ids.len(),
            kwargs.len()
        ));
    }
    let item = Item {
        key,
        prompt,
        instruction_ids,
        kwargs,
    };
    checks(&item)?;
    Ok(item)
}

fn checks(item: &Item) -> Result<Vec<Check>, String> {
    item.instruction_ids
        .iter()
        .zip(&item.kwargs)
        .map(|(id, kwargs)| Check::new(id, kwargs).map_err(|e| format!("item {}: {e}", item.key)))
        .collect()
}

/// Whether `item` has an instruction that lm-eval scores with NLTK's models or langdetect
/// ([`PYTHON_IDS`]), whose scores without a [`Python`] are only approximate.
pub fn needs_python(item: &Item) -> bool {
    item.instruction_ids
        .iter()
        .any(|id| PYTHON_IDS.contains(&id.as_str()))
}

/// Per instruction of an item, whether the response followed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Judgement {
    pub strict: Vec<bool>,
    pub loose: Vec<bool>,
}

/// Judges `response` against every instruction of `item`, strictly and loosely.
///
/// Strict checks the response itself; loose (lm-eval's `test_instruction_following_loose`)
/// passes an instruction when any of eight variants follows it: the response with its
/// first line, its last line or both removed (then stripped), and each of those four with
/// every `*` removed. A blank variant never follows anything.
pub fn evaluate(item: &Item, response: &str, python: Option<&Python>) -> Result<Judgement, String> {
    let checks = checks(item)?;
    let variants = loose_variants(response);
    let mut judgement = Judgement {
        strict: Vec::with_capacity(checks.len()),
        loose: Vec::with_capacity(checks.len()),
    };
    for check in &checks {
        let follows = |text: &str| -> Result<bool, String> {
            Ok(!py_strip(text).is_empty()
                && check
                    .follows(text, python)
                    .map_err(|e| format!("item {}: {e}", item.key))?)
        };
        let strict = follows(response)?;
        let mut loose = strict;
        for variant in &variants[1..] {
            if loose {
                break;
            }
            loose = follows(variant)?;
        }
        judgement.strict.push(strict);
        judgement.loose.push(loose);
    }
    Ok(judgement)
}

/// lm-eval's eight loose variants, in its order (the response itself first).
fn loose_variants(response: &str) -> [String; 8] {
    let lines: Vec<&str> = response.split('\n').collect();
    let join = |from: usize, to: usize| -> String {
        if from >= to {
            String::new()
        } else {
            py_strip(&lines[from..to].join("\n")).to_string()
        }
    };
    let n = lines.len();
    let remove_first = join(1, n);
    let remove_last = join(0, n.saturating_sub(1));
    let remove_both = join(1, n.saturating_sub(1));
    let unstar = |s: &str| s.replace('*', "");
    [
        response.to_string(),
        unstar(response),
        remove_first.clone(),
        remove_last.clone(),
        remove_both.clone(),
        unstar(&remove_first),
        unstar(&remove_last),
        unstar(&remove_both),
    ]
}

/// IFEval's four accuracies.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Metrics {
    /// Share of prompts whose every instruction was followed, strictly.
    pub prompt_level_strict_acc: f64,
    /// Share of all instructions followed, strictly.
    pub inst_level_strict_acc: f64,
    pub prompt_level_loose_acc: f64,
    pub inst_level_loose_acc: f64,
}

/// The accuracies over `judgements`; an empty set (where lm-eval would divide by zero)
/// scores 0.
pub fn metrics(judgements: &[Judgement]) -> Metrics {
    let prompt = |pick: fn(&Judgement) -> &Vec<bool>| {
        share(
            judgements
                .iter()
                .filter(|j| pick(j).iter().all(|&f| f))
                .count(),
            judgements.len(),
        )
    };
    let inst = |pick: fn(&Judgement) -> &Vec<bool>| {
        let all = judgements.iter().map(|j| pick(j).len()).sum();
        share(
            judgements
                .iter()
                .map(|j| pick(j).iter().filter(|&&f| f).count())
                .sum(),
            all,
        )
    };
    Metrics {
        prompt_level_strict_acc: prompt(|j| &j.strict),
        inst_level_strict_acc: inst(|j| &j.strict),
        prompt_level_loose_acc: prompt(|j| &j.loose),
        inst_level_loose_acc: inst(|j| &j.loose),
    }
}

fn share(part: usize, whole: usize) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}
