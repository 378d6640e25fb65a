//! IFEval's 25 instruction checks, each as lm-eval 0.4.8's `instructions.py` writes it.
//!
//! lm-eval drops every falsy kwarg (`None`, `0`, `""`, `[]`) before building a check and then
//! draws a random value for what is missing, so a record that leaves out a needed kwarg is
//! scored differently on every run; here it is an error naming the kwarg instead. Patterns
//! that lm-eval builds from kwargs (keywords, section splitters, postscript markers) are
//! regular expressions there too, and are compiled as such.

use regex::{Regex, RegexBuilder};
use serde_json::{Map, Value};

use super::fallback;
use super::json::python_loads_ok;
use super::python::Python;
use super::text::{
    PY_SPACE, count_words, py_islower, py_isupper, py_split_whitespace, py_strip, py_word_boundary,
};

/// Every instruction id lm-eval's registry knows.
pub const INSTRUCTION_IDS: [&str; 25] = [
    "keywords:existence",
    "keywords:frequency",
    "keywords:forbidden_words",
    "keywords:letter_frequency",
    "language:response_language",
    "length_constraints:number_sentences",
    "length_constraints:number_paragraphs",
    "length_constraints:number_words",
    "length_constraints:nth_paragraph_first_word",
    "detectable_content:number_placeholders",
    "detectable_content:postscript",
    "detectable_format:number_bullet_lists",
    "detectable_format:constrained_response",
    "detectable_format:number_highlighted_sections",
    "detectable_format:multiple_sections",
    "detectable_format:json_format",
    "detectable_format:title",
    "combination:two_responses",
    "combination:repeat_prompt",
    "startend:end_checker",
    "change_case:capital_word_frequency",
    "change_case:english_capital",
    "change_case:english_lowercase",
    "punctuation:no_comma",
    "startend:quotation",
];

/// The ids whose checks lm-eval scores with NLTK's models or langdetect.
pub const PYTHON_IDS: [&str; 5] = [
    "language:response_language",
    "length_constraints:number_sentences",
    "change_case:capital_word_frequency",
    "change_case:english_capital",
    "change_case:english_lowercase",
];

/// lm-eval's `_CONSTRAINED_RESPONSE_OPTIONS`.
const CONSTRAINED_OPTIONS: [&str; 3] = [
    "My answer is yes.",
    "My answer is no.",
    "My answer is maybe.",
];

/// A comparison kwarg: `"less than"` is `<`, `"at least"` is `>=`.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Relation {
    LessThan,
    AtLeast,
}

impl Relation {
    fn holds(self, actual: usize, threshold: i64) -> bool {
        let actual = actual as i64;
        match self {
            Relation::LessThan => actual < threshold,
            Relation::AtLeast => actual >= threshold,
        }
    }
}

/// One instruction with its kwargs read and its patterns compiled.
#[derive(Debug)]
pub(crate) enum Check {
    Existence(Vec<Regex>),
    Frequency {
        keyword: Regex,
        frequency: i64,
        relation: Relation,
    },
    ForbiddenWords(Vec<Regex>),
    LetterFrequency {
        letter: char,
        frequency: i64,
        relation: Relation,
    },
    Language(String),
    Sentences {
        threshold: i64,
        relation: Relation,
    },
    Paragraphs(i64),
    Words {
        threshold: i64,
        relation: Relation,
    },
    NthParagraphFirstWord {
        paragraphs: i64,
        nth: i64,
        first_word: String,
    },
    Placeholders(i64),
    Postscript(Regex),
    BulletLists(i64),
    ConstrainedResponse,
    Highlights(i64),
    Sections {
        splitter: Regex,
        sections: i64,
    },
    Json,
    Title,
    TwoResponses,
    RepeatPrompt(String),
    EndPhrase(String),
    CapitalWords {
        frequency: i64,
        relation: Relation,
    },
    EnglishCapital,
    EnglishLowercase,
    NoComma,
    Quotation,
}

/// The kwargs of one instruction after lm-eval's falsy-value filter.
struct Kwargs<'a> {
    id: &'a str,
    map: Map<String, Value>,
}

impl<'a> Kwargs<'a> {
    fn new(id: &'a str, kwargs: &Value, allowed: &[&str]) -> Result<Self, String> {
        let object = match kwargs {
            Value::Object(object) => object,
            Value::Null => &Map::new(),
            other => return Err(format!("kwargs of {id} are not an object: {other}")),
        };
        let map: Map<String, Value> = object
            .iter()
            .filter(|(_, v)| truthy(v))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if let Some(key) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(format!(
                "{id} takes no kwarg {key:?} (it takes {allowed:?})"
            ));
        }
        Ok(Kwargs { id, map })
    }

    fn missing(&self, key: &str) -> String {
        format!(
            "{id} needs kwarg {key:?} (lm-eval would draw it at random)",
            id = self.id
        )
    }

    fn int(&self, key: &str) -> Result<i64, String> {
        let value = self.map.get(key).ok_or_else(|| self.missing(key))?;
        let n = value
            .as_i64()
            .ok_or_else(|| format!("kwarg {key:?} of {} is not an integer: {value}", self.id))?;
        if n < 0 {
            return Err(format!(
                "kwarg {key:?} of {} is negative ({n}; lm-eval would draw it at random)",
                self.id
            ));
        }
        Ok(n)
    }

    fn string(&self, key: &str) -> Result<&str, String> {
        let value = self.map.get(key).ok_or_else(|| self.missing(key))?;
        value
            .as_str()
            .ok_or_else(|| format!("kwarg {key:?} of {} is not a string: {value}", self.id))
    }

    fn strings(&self, key: &str) -> Result<Vec<&str>, String> {
        let value = self.map.get(key).ok_or_else(|| self.missing(key))?;
        let bad = || {
            format!(
                "kwarg {key:?} of {} is not a list of strings: {value}",
                self.id
            )
        };
        value
            .as_array()
            .ok_or_else(bad)?
            .iter()
            .map(|v| v.as_str().ok_or_else(bad))
            .collect()
    }

    fn relation(&self, key: &str) -> Result<Relation, String> {
        match self.string(key)? {
            "less than" => Ok(Relation::LessThan),
            "at least" => Ok(Relation::AtLeast),
            other => Err(format!(
                "kwarg {key:?} of {} is {other:?}, not \"less than\" or \"at least\"",
                self.id
            )),
        }
    }

    fn regex(
        &self,
        key: &str,
        pattern: &str,
        ignore_case: bool,
        multi_line: bool,
    ) -> Result<Regex, String> {
        RegexBuilder::new(pattern)
            .case_insensitive(ignore_case)
            .multi_line(multi_line)
            .build()
            .map_err(|e| {
                format!(
                    "kwarg {key:?} of {} makes no regex {pattern:?}: {e}",
                    self.id
                )
            })
    }
}

/// Python's truth value of a JSON value, as in lm-eval's `{k: v for k, v in kwargs if v}`.
fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

impl Check {
    /// Reads instruction `id`'s kwargs as lm-eval's `build_description` does.
    pub(crate) fn new(id: &str, kwargs: &Value) -> Result<Check, String> {
        let kw = |allowed: &[&str]| Kwargs::new(id, kwargs, allowed);
        let check = match id {
            "keywords:existence" => {
                let k = kw(&["keywords"])?;
                let words = k.strings("keywords")?;
                Check::Existence(
                    words
                        .iter()
                        .map(|w| k.regex("keywords", w, true, false))
                        .collect::<Result<_, _>>()?,
                )
            }
            "keywords:frequency" => {
                let k = kw(&["keyword", "frequency", "relation"])?;
                let keyword = py_strip(k.string("keyword")?);
                Check::Frequency {
                    keyword: k.regex("keyword", keyword, true, false)?,
                    frequency: k.int("frequency")?,
                    relation: k.relation("relation")?,
                }
            }
            "keywords:forbidden_words" => {
                let k = kw(&["forbidden_words"])?;
                let words = k.strings("forbidden_words")?;
                // Anchored at the start: `\b` is checked by hand, with Python's idea of a word.
                Check::ForbiddenWords(
                    words
                        .iter()
                        .map(|w| k.regex("forbidden_words", &format!(r"\A(?:{w})"), true, false))
                        .collect::<Result<_, _>>()?,
                )
            }
            "keywords:letter_frequency" => {
                let k = kw(&["letter", "let_frequency", "let_relation"])?;
                let letter = k.string("letter")?;
                let mut chars = letter.chars();
                // lm-eval draws a random ASCII letter for anything but one ASCII letter; one
                // real item (key 1122) asks for "#", so a single other character is counted as
                // given, the one reproducible reading, rather than refused.
                let letter = match (chars.next(), chars.next()) {
                    (Some(c), None) => c.to_lowercase().next().unwrap_or(c),
                    _ => {
                        return Err(format!(
                            "kwarg \"letter\" of {id} is {letter:?}, not one character"
                        ));
                    }
                };
                Check::LetterFrequency {
                    letter,
                    frequency: k.int("let_frequency")?,
                    relation: k.relation("let_relation")?,
                }
            }
            "language:response_language" => {
                Check::Language(kw(&["language"])?.string("language")?.to_string())
            }
            "length_constraints:number_sentences" => {
                let k = kw(&["num_sentences", "relation"])?;
                Check::Sentences {
                    threshold: k.int("num_sentences")?,
                    relation: k.relation("relation")?,
                }
            }
            "length_constraints:number_paragraphs" => {
                Check::Paragraphs(kw(&["num_paragraphs"])?.int("num_paragraphs")?)
            }
            "length_constraints:number_words" => {
                let k = kw(&["num_words", "relation"])?;
                Check::Words {
                    threshold: k.int("num_words")?,
                    relation: k.relation("relation")?,
                }
            }
            "length_constraints:nth_paragraph_first_word" => {
                let k = kw(&["num_paragraphs", "nth_paragraph", "first_word"])?;
                let paragraphs = k.int("num_paragraphs")?;
                let nth = k.int("nth_paragraph")?;
                if nth > paragraphs {
                    return Err(format!(
                        "kwarg \"nth_paragraph\" of {id} ({nth}) exceeds num_paragraphs ({paragraphs}); lm-eval would draw it at random"
                    ));
                }
                Check::NthParagraphFirstWord {
                    paragraphs,
                    nth,
                    first_word: k.string("first_word")?.to_lowercase(),
                }
            }
            "detectable_content:number_placeholders" => {
                Check::Placeholders(kw(&["num_placeholders"])?.int("num_placeholders")?)
            }
            "detectable_content:postscript" => {
                let k = kw(&["postscript_marker"])?;
                let marker = py_strip(k.string("postscript_marker")?);
                let s = PY_SPACE;
                let pattern = match marker {
                    "P.P.S" => format!(r"{s}*p\.{s}?p\.{s}?s.*$"),
                    "P.S." => format!(r"{s}*p\.{s}?s\..*$"),
                    other => format!("{s}*{}.*$", other.to_lowercase()),
                };
                Check::Postscript(k.regex("postscript_marker", &pattern, false, true)?)
            }
            "detectable_format:number_bullet_lists" => {
                Check::BulletLists(kw(&["num_bullets"])?.int("num_bullets")?)
            }
            "detectable_format:constrained_response" => {
                kw(&[])?;
                Check::ConstrainedResponse
            }
            "detectable_format:number_highlighted_sections" => {
                Check::Highlights(kw(&["num_highlights"])?.int("num_highlights")?)
            }
            "detectable_format:multiple_sections" => {
                let k = kw(&["section_spliter", "num_sections"])?;
                let splitter = py_strip(k.string("section_spliter")?);
                let s = PY_SPACE;
                let pattern = format!(r"{s}?{splitter}{s}?\d+{s}?");
                Check::Sections {
                    splitter: k.regex("section_spliter", &pattern, false, false)?,
                    sections: k.int("num_sections")?,
                }
            }
            "detectable_format:json_format" => {
                kw(&[])?;
                Check::Json
            }
            "detectable_format:title" => {
                kw(&[])?;
                Check::Title
            }
            "combination:two_responses" => {
                kw(&[])?;
                Check::TwoResponses
            }
            "combination:repeat_prompt" => {
                let prompt = kw(&["prompt_to_repeat"])?
                    .string("prompt_to_repeat")?
                    .to_string();
                Check::RepeatPrompt(py_strip(&prompt).to_lowercase())
            }
            "startend:end_checker" => {
                let phrase = kw(&["end_phrase"])?.string("end_phrase")?.to_string();
                Check::EndPhrase(py_strip(&phrase).to_lowercase())
            }
            "change_case:capital_word_frequency" => {
                let k = kw(&["capital_frequency", "capital_relation"])?;
                Check::CapitalWords {
                    frequency: k.int("capital_frequency")?,
                    relation: k.relation("capital_relation")?,
                }
            }
            "change_case:english_capital" => {
                kw(&[])?;
                Check::EnglishCapital
            }
            "change_case:english_lowercase" => {
                kw(&[])?;
                Check::EnglishLowercase
            }
            "punctuation:no_comma" => {
                kw(&[])?;
                Check::NoComma
            }
            "startend:quotation" => {
                kw(&[])?;
                Check::Quotation
            }
            other => return Err(format!("unknown instruction id {other:?}")),
        };
        Ok(check)
    }

    /// lm-eval's `check_following(value)`; `python` answers the NLTK and langdetect calls,
    /// and without one the [`fallback`] approximations do.
    pub(crate) fn follows(&self, value: &str, python: Option<&Python>) -> Result<bool, String> {
        let followed = match self {
            Check::Existence(keywords) => keywords.iter().all(|k| k.is_match(value)),
            Check::Frequency {
                keyword,
                frequency,
                relation,
            } => relation.holds(keyword.find_iter(value).count(), *frequency),
            Check::ForbiddenWords(words) => !words.iter().any(|w| contains_word(value, w)),
            Check::LetterFrequency {
                letter,
                frequency,
                relation,
            } => relation.holds(
                value.to_lowercase().chars().filter(|c| c == letter).count(),
                *frequency,
            ),
            Check::Language(language) => match python {
                Some(python) => python
                    .detect_language(value)?
                    .is_none_or(|found| found == *language),
                None => fallback::language_matches(value, language),
            },
            Check::Sentences {
                threshold,
                relation,
            } => {
                let n = match python {
                    Some(python) => python.count_sentences(value)?,
                    None => fallback::count_sentences(value),
                };
                relation.holds(n, *threshold)
            }
            Check::Paragraphs(expected) => paragraphs_follow(value, *expected),
            Check::Words {
                threshold,
                relation,
            } => relation.holds(count_words(value), *threshold),
            Check::NthParagraphFirstWord {
                paragraphs,
                nth,
                first_word,
            } => nth_paragraph_follows(value, *paragraphs, *nth, first_word),
            Check::Placeholders(min) => count(r"\[.*?\]", value) as i64 >= *min,
            Check::Postscript(pattern) => pattern.is_match(&value.to_lowercase()),
            Check::BulletLists(expected) => {
                let s = PY_SPACE;
                let stars = count(&format!(r"(?m)^{s}*\*[^\*].*$"), value);
                let dashes = count(&format!(r"(?m)^{s}*-.*$"), value);
                (stars + dashes) as i64 == *expected
            }
            Check::ConstrainedResponse => CONSTRAINED_OPTIONS
                .iter()
                .any(|o| py_strip(value).contains(o)),
            Check::Highlights(min) => highlights(value) as i64 >= *min,
            Check::Sections { splitter, sections } => {
                splitter.find_iter(value).count() as i64 >= *sections
            }
            Check::Json => python_loads_ok(json_body(value)),
            Check::Title => matches(r"<<[^\n]+>>", value)
                .any(|t| !py_strip(t.trim_start_matches('<').trim_end_matches('>')).is_empty()),
            Check::TwoResponses => two_responses_follow(value),
            Check::RepeatPrompt(prompt) => {
                py_strip(value).to_lowercase().starts_with(prompt.as_str())
            }
            Check::EndPhrase(phrase) => py_strip(value)
                .trim_matches('"')
                .to_lowercase()
                .ends_with(phrase.as_str()),
            Check::CapitalWords {
                frequency,
                relation,
            } => {
                let n = match python {
                    Some(python) => python.capital_words(value)?,
                    None => fallback::capital_words(value),
                };
                relation.holds(n, *frequency)
            }
            Check::EnglishCapital => py_isupper(value) && is_english(value, python)?,
            Check::EnglishLowercase => py_islower(value) && is_english(value, python)?,
            Check::NoComma => !value.contains(','),
            Check::Quotation => {
                let v = py_strip(value);
                v.chars().count() > 1 && v.starts_with('"') && v.ends_with('"')
            }
        };
        Ok(followed)
    }
}

/// langdetect says `"en"`, or raises (which lm-eval counts as followed).
fn is_english(value: &str, python: Option<&Python>) -> Result<bool, String> {
    Ok(match python {
        Some(python) => python
            .detect_language(value)?
            .is_none_or(|found| found == "en"),
        None => fallback::language_matches(value, "en"),
    })
}

/// The matches of one of this module's fixed patterns.
fn matches<'t>(pattern: &str, text: &'t str) -> impl Iterator<Item = &'t str> {
    let regex = Regex::new(pattern).expect("a fixed pattern");
    regex
        .find_iter(text)
        .map(|m| m.as_str())
        .collect::<Vec<_>>()
        .into_iter()
}

fn count(pattern: &str, text: &str) -> usize {
    matches(pattern, text).count()
}

/// `re.search(r"\b" + word + r"\b", value, re.IGNORECASE)` with Python's word characters;
/// `word` is anchored (`\A`), and each start that is a word boundary is tried in turn.
fn contains_word(value: &str, word: &Regex) -> bool {
    value
        .char_indices()
        .map(|(i, _)| i)
        .chain([value.len()])
        .any(|start| {
            py_word_boundary(value, start)
                && word
                    .find(&value[start..])
                    .is_some_and(|m| py_word_boundary(value, start + m.end()))
        })
}

/// lm-eval's `ParagraphChecker`: `re.split(r"\s?\*\*\*\s?")`, empty pieces allowed only
/// at either end.
fn paragraphs_follow(value: &str, expected: i64) -> bool {
    let s = PY_SPACE;
    let splitter = Regex::new(&format!(r"{s}?\*\*\*{s}?")).expect("a fixed pattern");
    let pieces: Vec<&str> = splitter.split(value).collect();
    let mut paragraphs = pieces.len() as i64;
    for (index, piece) in pieces.iter().enumerate() {
        if py_strip(piece).is_empty() {
            if index == 0 || index == pieces.len() - 1 {
                paragraphs -= 1;
            } else {
                return false;
            }
        }
    }
    paragraphs == expected
}

/// lm-eval's `ParagraphFirstWordCheck`: paragraphs split at `\n\n`, the nth counted among
/// all pieces (blank ones too), its first word lower-cased up to the first punctuation.
fn nth_paragraph_follows(value: &str, expected: i64, nth: i64, first_word: &str) -> bool {
    let pieces: Vec<&str> = value.split("\n\n").collect();
    let paragraphs = pieces.iter().filter(|p| !py_strip(p).is_empty()).count() as i64;
    if nth > paragraphs {
        return false;
    }
    let paragraph = py_strip(pieces[(nth - 1) as usize]);
    let Some(word) = py_split_whitespace(paragraph).next() else {
        return false;
    };
    let word = py_strip(word)
        .trim_start_matches('\'')
        .trim_start_matches('"');
    let found: String = word
        .chars()
        .take_while(|c| !matches!(c, '.' | ',' | '?' | '!' | '\'' | '"'))
        .flat_map(char::to_lowercase)
        .collect();
    paragraphs == expected && found == first_word
}

/// lm-eval's `HighlightSectionChecker`: `*x*` and `**x**` spans with text inside, each
/// pattern counted on its own.
fn highlights(value: &str) -> usize {
    let single = matches(r"\*[^\n\*]*\*", value)
        .filter(|h| !py_strip(h.trim_matches('*')).is_empty())
        .count();
    let double = matches(r"\*\*[^\n\*]*\*\*", value)
        .filter(|h| {
            let inner = h.strip_prefix("**").unwrap_or(h);
            !py_strip(inner.strip_suffix("**").unwrap_or(inner)).is_empty()
        })
        .count();
    single + double
}

/// The text `JsonFormat` hands to `json.loads`: stripped, one markdown fence prefix after
/// another removed as lm-eval chains `removeprefix`, a closing fence removed, stripped.
fn json_body(value: &str) -> &str {
    let mut v = py_strip(value);
    for fence in ["```json", "```Json", "```JSON", "```"] {
        v = v.strip_prefix(fence).unwrap_or(v);
    }
    py_strip(v.strip_suffix("```").unwrap_or(v))
}

/// lm-eval's `TwoResponsesChecker`: exactly two non-blank pieces between `******`, blank
/// pieces only at the ends, and the two different once stripped.
fn two_responses_follow(value: &str) -> bool {
    let pieces: Vec<&str> = value.split("******").collect();
    let mut responses = Vec::new();
    for (index, piece) in pieces.iter().enumerate() {
        if py_strip(piece).is_empty() {
            if index != 0 && index != pieces.len() - 1 {
                return false;
            }
        } else {
            responses.push(*piece);
        }
    }
    responses.len() == 2 && py_strip(responses[0]) != py_strip(responses[1])
}
