//! Rust stand-ins for the checks lm-eval scores with NLTK and langdetect, used only when no
//! Python is given. They are approximations, not ports: the caller says so in its report.
//!
//! - sentences: a split after `.`, `!` or `?` (runs of them, closing quotes and brackets
//!   included) that is followed by whitespace or the end, except after a handful of common
//!   English abbreviations and single-letter initials; punkt learnt many more exceptions.
//! - words for `capital_word_frequency`: runs of word characters and single other
//!   non-space characters, roughly NLTK's tokens (it splits `DON'T` as `DO`, `N'T`).
//! - language: the script most of the letters are in. A response passes
//!   `response_language` when that script is the target language's; Latin-script text is
//!   English when at least a sixth of its words are common English function words, and
//!   then passes only an English target (the two `change_case` checks), otherwise any other
//!   Latin-script target. No letters at all passes, as lm-eval passes when langdetect
//!   raises on a text without features.

use std::sync::OnceLock;

use regex::Regex;

use super::text::{PY_WORD, is_py_space, py_isupper};

/// Abbreviations after which a period does not end a sentence (lower case, no period).
const ABBREVIATIONS: &[&str] = &[
    "mr", "mrs", "ms", "dr", "prof", "st", "jr", "sr", "vs", "etc", "e.g", "i.e", "inc", "ltd",
    "co", "corp", "no", "jan", "feb", "aug", "sept", "oct", "nov", "dec", "u.s", "a.m", "p.m",
];

/// Common English function words, for telling English from other Latin-script text.
const ENGLISH_WORDS: &[&str] = &[
    "the", "and", "is", "are", "was", "were", "be", "of", "to", "a", "an", "in", "on", "at", "for",
    "with", "that", "this", "it", "you", "i", "we", "they", "he", "she", "not", "what", "how",
    "can", "will", "do", "have", "has", "my", "your", "our", "from", "by", "as", "or", "but", "if",
    "so", "there", "here", "all", "about", "more", "one", "me",
];

/// The approximate number of sentences in `text`.
pub(crate) fn count_sentences(text: &str) -> usize {
    let chars: Vec<char> = text.chars().collect();
    let mut count = 0;
    let mut start = 0;
    let mut i = 0;
    while i < chars.len() {
        if matches!(chars[i], '.' | '!' | '?') {
            let stop = chars[i];
            let mut end = i + 1;
            while end < chars.len()
                && matches!(
                    chars[end],
                    '.' | '!' | '?' | '"' | '\'' | ')' | ']' | '”' | '’'
                )
            {
                end += 1;
            }
            let at_break = end == chars.len() || is_py_space(chars[end]);
            let word: String = chars[start..i]
                .iter()
                .rev()
                .take_while(|c| !is_py_space(**c))
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<String>()
                .to_lowercase();
            let word = word.trim_start_matches(|c: char| !c.is_alphanumeric());
            let abbreviation = stop == '.'
                && (ABBREVIATIONS.contains(&word)
                    || (word.chars().count() == 1 && word.chars().all(char::is_alphabetic)));
            if at_break && !abbreviation {
                if chars[start..end].iter().any(|c| !is_py_space(*c)) {
                    count += 1;
                }
                start = end;
            }
            i = end;
        } else {
            i += 1;
        }
    }
    if chars[start..].iter().any(|c| !is_py_space(*c)) {
        count += 1;
    }
    count
}

/// How many approximate word tokens of `text` are upper case.
pub(crate) fn capital_words(text: &str) -> usize {
    static TOKENS: OnceLock<Regex> = OnceLock::new();
    TOKENS
        .get_or_init(|| {
            Regex::new(&format!(
                r"{PY_WORD}+|[^\s{}]",
                &PY_WORD[1..PY_WORD.len() - 1]
            ))
            .expect("a fixed regex")
        })
        .find_iter(text)
        .filter(|m| py_isupper(m.as_str()))
        .count()
}

/// The scripts the language stand-in tells apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Script {
    Latin,
    Cyrillic,
    Greek,
    Arabic,
    Hebrew,
    Devanagari,
    Bengali,
    Gurmukhi,
    Gujarati,
    Tamil,
    Telugu,
    Kannada,
    Malayalam,
    Thai,
    Hangul,
    Han,
    Kana,
}

fn script_of(c: char) -> Option<Script> {
    use Script::*;
    let script = match c as u32 {
        0x41..=0x5A | 0x61..=0x7A | 0xC0..=0x24F | 0x1E00..=0x1EFF => Latin,
        0x370..=0x3FF | 0x1F00..=0x1FFF => Greek,
        0x400..=0x52F => Cyrillic,
        0x590..=0x5FF => Hebrew,
        0x600..=0x6FF | 0x750..=0x77F | 0xFB50..=0xFEFF => Arabic,
        0x900..=0x97F => Devanagari,
        0x980..=0x9FF => Bengali,
        0xA00..=0xA7F => Gurmukhi,
        0xA80..=0xAFF => Gujarati,
        0xB80..=0xBFF => Tamil,
        0xC00..=0xC7F => Telugu,
        0xC80..=0xCFF => Kannada,
        0xD00..=0xD7F => Malayalam,
        0xE00..=0xE7F => Thai,
        0x1100..=0x11FF | 0xAC00..=0xD7AF | 0x3130..=0x318F => Hangul,
        0x3040..=0x30FF => Kana,
        0x4E00..=0x9FFF | 0x3400..=0x4DBF => Han,
        _ => return None,
    };
    Some(script)
}

/// The script of most of the letters in `text`, `None` when it has none.
fn dominant_script(text: &str) -> Option<Script> {
    let mut counts: Vec<(Script, usize)> = Vec::new();
    for script in text.chars().filter_map(script_of) {
        match counts.iter_mut().find(|(s, _)| *s == script) {
            Some((_, n)) => *n += 1,
            None => counts.push((script, 1)),
        }
    }
    // Japanese mixes kana and kanji; enough kana makes it Japanese rather than Chinese.
    let kana = counts
        .iter()
        .find(|(s, _)| *s == Script::Kana)
        .map_or(0, |(_, n)| *n);
    let best = counts.iter().max_by_key(|(_, n)| *n).map(|(s, _)| *s);
    match best {
        Some(Script::Han) if kana > 0 => Some(Script::Kana),
        other => other,
    }
}

/// The script langdetect's language `code` is written in, `None` for an unknown code.
fn script_of_language(code: &str) -> Option<Script> {
    use Script::*;
    let script = match code {
        "ar" | "fa" | "ur" => Arabic,
        "bg" | "mk" | "ru" | "uk" => Cyrillic,
        "el" => Greek,
        "he" => Hebrew,
        "hi" | "mr" | "ne" => Devanagari,
        "bn" => Bengali,
        "pa" => Gurmukhi,
        "gu" => Gujarati,
        "ta" => Tamil,
        "te" => Telugu,
        "kn" => Kannada,
        "ml" => Malayalam,
        "th" => Thai,
        "ko" => Hangul,
        "ja" => Kana,
        "zh-cn" | "zh-tw" | "zh" => Han,
        _ => Latin,
    };
    Some(script)
}

/// Whether at least a sixth of the words of `text` are common English function words.
fn looks_english(text: &str) -> bool {
    let words: Vec<String> = text
        .split(|c: char| !c.is_alphabetic() && c != '\'')
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect();
    let english = words
        .iter()
        .filter(|w| ENGLISH_WORDS.contains(&w.as_str()))
        .count();
    !words.is_empty() && english * 6 >= words.len()
}

/// Whether `text` passes as written in `language` (see the module's note).
pub(crate) fn language_matches(text: &str, language: &str) -> bool {
    match dominant_script(text) {
        None => true,
        Some(Script::Latin) if script_of_language(language) == Some(Script::Latin) => {
            looks_english(text) == (language == "en")
        }
        Some(script) => script_of_language(language) == Some(script),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentences_split_at_stops_but_not_abbreviations() {
        assert_eq!(count_sentences("Hello Mr. Smith. How are you? Fine!"), 3);
        assert_eq!(count_sentences("One... two"), 2);
        assert_eq!(count_sentences("We met at 5 p.m. today. Then we left."), 2);
        assert_eq!(count_sentences("No stop at the end"), 1);
        assert_eq!(count_sentences("  "), 0);
    }

    #[test]
    fn capital_words_count_upper_tokens() {
        assert_eq!(capital_words("I DON'T know, OK?"), 4);
    }

    #[test]
    fn language_goes_by_script() {
        assert!(language_matches("Привет, как дела?", "ru"));
        assert!(!language_matches("Hello there", "ru"));
        assert!(language_matches("नमस्ते दुनिया", "hi"));
        assert!(language_matches("12345", "ko"));
        assert!(language_matches("This is what you asked for.", "en"));
        assert!(!language_matches("This is what you asked for.", "vi"));
        assert!(language_matches("Das Wetter ist heute schön.", "de"));
        assert!(!language_matches("Das Wetter ist heute schön.", "en"));
    }
}
