//! Benchmarks run through a generator: items rendered into prompts (the model's chat
//! template, or a base model's plain few-shot text), answers generated turn by turn, cut at
//! the harness's stop sequences, and scored by [`grlo_eval::score`]. Shared by `grlo eval`
//! (the actors' engines) and validation during training (the learner's own policy).

use grlo_eval::{Benchmark, Format, Item, Options, Report, Sample};
use grlo_model::{ChatMessage, Tokenizer};

use crate::error::{LearnerError, Result};

/// A benchmark and how many of its items to run (`gsm8k:200`; all when no count).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BenchmarkSpec {
    pub benchmark: Benchmark,
    pub limit: Option<usize>,
}

impl BenchmarkSpec {
    /// `name` or `name:N`.
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        let (name, limit) = match text.split_once(':') {
            Some((name, count)) => {
                let limit = count
                    .trim()
                    .parse::<usize>()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| {
                        format!("benchmark {text:?}: the count after ':' is not a positive integer")
                    })?;
                (name, Some(limit))
            }
            None => (text, None),
        };
        let benchmark = Benchmark::from_name(name).map_err(|e| e.to_string())?;
        Ok(BenchmarkSpec { benchmark, limit })
    }
}

/// Generates `n` samples of each prompt (token ids), returning each sample's token ids.
pub type GenerateFn<'a> = dyn FnMut(&[Vec<u32>], usize) -> Result<Vec<Vec<Vec<u32>>>> + 'a;

/// How to prompt and generate.
#[derive(Clone, Debug)]
pub struct Prompting {
    pub format: Format,
    /// Samples per item (pass@k).
    pub n: usize,
    /// Prompts longer than this many tokens keep their last ones (as lm-eval truncates).
    pub max_prompt_tokens: usize,
}

/// One item's prompts and answers.
#[derive(Clone, Debug)]
pub struct Transcript {
    /// The rendered prompt of each turn (of the first sample).
    pub prompts: Vec<String>,
    pub samples: Vec<Sample>,
}

/// What one benchmark gave.
pub struct Outcome {
    pub report: Report,
    pub transcripts: Vec<Transcript>,
    /// Prompts cut to `max_prompt_tokens`.
    pub truncated: usize,
}

/// Renders, generates and scores `items` of `benchmark`.
pub fn run_benchmark(
    benchmark: Benchmark,
    items: &[Item],
    tokenizer: &Tokenizer,
    prompting: &Prompting,
    generate: &mut GenerateFn,
    options: &Options,
) -> Result<Outcome> {
    let n = prompting.n.max(1);
    let turns = items.iter().map(|i| i.turns.len()).max().unwrap_or(0);
    let mut samples: Vec<Vec<Sample>> = items.iter().map(|_| vec![Vec::new(); n]).collect();
    let mut prompts: Vec<Vec<String>> = vec![Vec::new(); items.len()];
    let mut truncated = 0;
    for turn in 0..turns {
        // Items with this turn; later turns continue each sample's own conversation.
        let mut rows = Vec::new(); // (item, sample)
        let mut ids = Vec::new();
        for (i, item) in items.iter().enumerate() {
            if turn >= item.turns.len() {
                continue;
            }
            let per_sample = if turn == 0 { 1 } else { n };
            for (s, sample) in samples[i].iter().enumerate().take(per_sample) {
                let text = render(item, sample, turn, prompting.format, tokenizer)?;
                let mut encoded = match prompting.format {
                    Format::Chat => tokenizer.encode(&text, false)?,
                    Format::Base => tokenizer.encode(&text, true)?,
                };
                if encoded.len() > prompting.max_prompt_tokens {
                    encoded.drain(..encoded.len() - prompting.max_prompt_tokens);
                    truncated += 1;
                }
                if s == 0 {
                    prompts[i].push(text);
                }
                rows.push((i, s));
                ids.push(encoded);
            }
        }
        let first = turn == 0;
        let generated = generate(&ids, if first { n } else { 1 })?;
        if generated.len() != ids.len() {
            return Err(LearnerError::Invalid(format!(
                "the generator answered {} of {} prompts",
                generated.len(),
                ids.len()
            )));
        }
        for (&(i, s), outputs) in rows.iter().zip(generated) {
            let targets: Vec<usize> = if first { (0..n).collect() } else { vec![s] };
            for (target, output) in targets.into_iter().zip(outputs) {
                let text = tokenizer.decode(&output, true)?;
                let text = match prompting.format {
                    Format::Base => cut_at_stops(&text, &items[i].base_stops),
                    Format::Chat => text,
                };
                samples[i][target].push(text);
            }
        }
    }
    let report = grlo_eval::score::score(benchmark, items, &samples, options)
        .map_err(|e| LearnerError::Invalid(e.to_string()))?;
    let transcripts = prompts
        .into_iter()
        .zip(samples)
        .map(|(prompts, samples)| Transcript { prompts, samples })
        .collect();
    Ok(Outcome {
        report,
        transcripts,
        truncated,
    })
}

/// The prompt text of `turn` of `item`, after the sample's answers to the earlier turns.
fn render(
    item: &Item,
    answers: &Sample,
    turn: usize,
    format: Format,
    tokenizer: &Tokenizer,
) -> Result<String> {
    match format {
        Format::Chat => {
            let mut messages = Vec::new();
            for (question, answer) in item.turns.iter().zip(answers).take(turn) {
                messages.push(ChatMessage::new("user", question.clone()));
                messages.push(ChatMessage::new("assistant", answer.clone()));
            }
            messages.push(ChatMessage::new("user", item.turns[turn].clone()));
            Ok(tokenizer.apply_chat_template(&messages, true)?)
        }
        Format::Base => {
            let mut text = item.base_prompt.clone();
            for t in 1..=turn {
                text.push_str(&answers[t - 1]);
                text.push_str(&format!("\n\nQuestion: {}\nAnswer:", item.turns[t]));
            }
            Ok(text)
        }
    }
}

/// One rollout task a prompt: its position is its id and group, and its seed is `seed` plus
/// its position.
pub fn prompt_tasks(prompts: &[Vec<u32>], seed: u64) -> Vec<crate::rollout::PromptTask> {
    prompts
        .iter()
        .enumerate()
        .map(|(i, ids)| crate::rollout::PromptTask {
            prompt_id: i,
            group: i,
            prompt_ids: ids.clone(),
            seed: seed.wrapping_add(i as u64),
        })
        .collect()
}

/// `text` up to the first of `stops` (lm-eval's `generate_until` cuts the same way).
pub fn cut_at_stops(text: &str, stops: &[String]) -> String {
    let end = stops
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s.as_str()))
        .min()
        .unwrap_or(text.len());
    text[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_name_a_benchmark_and_an_optional_count() {
        let spec = BenchmarkSpec::parse("gsm8k:200").unwrap();
        assert_eq!((spec.benchmark, spec.limit), (Benchmark::Gsm8k, Some(200)));
        assert_eq!(BenchmarkSpec::parse("ifeval").unwrap().limit, None);
        assert!(
            BenchmarkSpec::parse("gsm8k:0")
                .unwrap_err()
                .contains("positive integer")
        );
        assert!(
            BenchmarkSpec::parse("gsm9k")
                .unwrap_err()
                .starts_with("unknown benchmark")
        );
    }

    #[test]
    fn answers_are_cut_at_the_first_stop() {
        let stops = vec!["\n\n".to_string(), "Question:".to_string()];
        assert_eq!(cut_at_stops(" 18.\n\nQuestion: next", &stops), " 18.");
        assert_eq!(cut_at_stops("no stop", &stops), "no stop");
    }
}
