//! Python's string semantics where lm-eval's checks rely on them, so that a Rust check
//! agrees on non-ASCII text too: `str.strip`/`str.split` whitespace, `str.isupper`,
//! `str.islower`, and the `\s`, `\w` and `\b` of Python's `re` on `str` patterns.

use std::sync::OnceLock;

use regex::Regex;

/// Python `re`'s `\s` on a `str`: Rust's `\s` lacks the four separators U+001C–U+001F.
pub(crate) const PY_SPACE: &str = r"[\s\x1C-\x1F]";

/// Python `re`'s `\w` on a `str` (`str.isalnum()` or `_`): letters and numbers but, unlike
/// Rust's `\w`, no combining marks, so a Devanagari vowel sign ends a word in both.
pub(crate) const PY_WORD: &str = r"[\p{L}\p{N}_]";

/// `str.isspace()` of one character.
pub(crate) fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// `str.strip()` without arguments.
pub(crate) fn py_strip(s: &str) -> &str {
    s.trim_matches(is_py_space)
}

/// `str.split()` without arguments: runs of whitespace separate, none are empty.
pub(crate) fn py_split_whitespace(s: &str) -> impl Iterator<Item = &str> {
    s.split(is_py_space).filter(|w| !w.is_empty())
}

/// Whether `c` counts as a word character for Python's `\w` and `\b`.
pub(crate) fn is_py_word(c: char) -> bool {
    static WORD: OnceLock<Regex> = OnceLock::new();
    let word = WORD.get_or_init(|| Regex::new(&format!("^{PY_WORD}$")).expect("a fixed regex"));
    let mut buf = [0u8; 4];
    c == '_' || word.is_match(c.encode_utf8(&mut buf))
}

/// Titlecase letters (category Lt), which both `isupper` and `islower` reject.
fn is_titlecase(c: char) -> bool {
    matches!(c as u32,
        0x01C5 | 0x01C8 | 0x01CB | 0x01F2 | 0x1F88..=0x1F8F | 0x1F98..=0x1F9F
        | 0x1FA8..=0x1FAF | 0x1FBC | 0x1FCC | 0x1FFC)
}

/// `str.isupper()`: at least one cased character and none lower or title case.
pub(crate) fn py_isupper(s: &str) -> bool {
    let mut cased = false;
    for c in s.chars() {
        if c.is_lowercase() || is_titlecase(c) {
            return false;
        }
        cased |= c.is_uppercase();
    }
    cased
}

/// `str.islower()`: at least one cased character and none upper or title case.
pub(crate) fn py_islower(s: &str) -> bool {
    let mut cased = false;
    for c in s.chars() {
        if c.is_uppercase() || is_titlecase(c) {
            return false;
        }
        cased |= c.is_lowercase();
    }
    cased
}

/// lm-eval's `count_words`: NLTK's `RegexpTokenizer(r"\w+")`, i.e. runs of Python `\w`.
pub(crate) fn count_words(s: &str) -> usize {
    static WORDS: OnceLock<Regex> = OnceLock::new();
    WORDS
        .get_or_init(|| Regex::new(&format!("{PY_WORD}+")).expect("a fixed regex"))
        .find_iter(s)
        .count()
}

/// Whether Python's `\b` holds at byte offset `at` of `s`.
pub(crate) fn py_word_boundary(s: &str, at: usize) -> bool {
    let before = s[..at].chars().next_back().is_some_and(is_py_word);
    let after = s[at..].chars().next().is_some_and(is_py_word);
    before != after
}
