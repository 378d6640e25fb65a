//! A sample's text as its tokens arrive: incremental detokenization (a token's text can
//! depend on its neighbours, and a character can span tokens), stop strings, and the text a
//! stream may already send (never a piece that could still turn out to start a stop string).

use grlo_model::Tokenizer;

/// The text of one sample so far.
pub struct SampleText {
    tokens: Vec<u32>,
    /// Tokens before `prefix` are settled; `decode(tokens[prefix..read])` is the text already
    /// taken from them, so new text is the rest of `decode(tokens[prefix..])`.
    prefix: usize,
    read: usize,
    skip_special: bool,
    /// The text (without a stop string), and how much of it a stream has sent.
    pub text: String,
    sent: usize,
    stops: Vec<String>,
    /// Set once a stop string was found (the text is cut before it).
    pub stopped: bool,
}

impl SampleText {
    pub fn new(stops: Vec<String>, skip_special: bool) -> Self {
        SampleText {
            tokens: Vec::new(),
            prefix: 0,
            read: 0,
            skip_special,
            text: String::new(),
            sent: 0,
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            stopped: false,
        }
    }

    /// Adds a token; returns whether it completed a stop string.
    pub fn push(&mut self, tokenizer: &Tokenizer, token: u32) -> bool {
        if self.stopped {
            return true;
        }
        self.tokens.push(token);
        let decode = |ids: &[u32]| tokenizer.decode(ids, self.skip_special).unwrap_or_default();
        let before = decode(&self.tokens[self.prefix..self.read]);
        let now = decode(&self.tokens[self.prefix..]);
        // An incomplete character decodes as U+FFFD: wait for the tokens that finish it.
        if now.len() <= before.len()
            || now.ends_with('\u{FFFD}')
            || !now.is_char_boundary(before.len())
        {
            return false;
        }
        let searched_from = self.text.len();
        self.text.push_str(&now[before.len()..]);
        self.prefix = self.read;
        self.read = self.tokens.len();
        // A stop string may begin in text added earlier.
        let longest = self.stops.iter().map(String::len).max().unwrap_or(0);
        let mut from = searched_from.saturating_sub(longest.saturating_sub(1));
        while !self.text.is_char_boundary(from) {
            from -= 1;
        }
        let found = self
            .stops
            .iter()
            .filter_map(|stop| self.text[from..].find(stop.as_str()).map(|at| from + at))
            .min();
        if let Some(at) = found {
            self.text.truncate(at);
            self.stopped = true;
        }
        self.stopped
    }

    /// Tokens so far (a stop string's tokens included).
    pub fn token_count(&self) -> usize {
        self.tokens.len()
    }

    /// Text a stream may send now: all of it once `finished`, else all but the end that could
    /// still be the start of a stop string.
    pub fn take_sendable(&mut self, finished: bool) -> String {
        let mut end = self.text.len();
        if !finished && !self.stopped {
            let hold = self
                .stops
                .iter()
                .map(|stop| partial_suffix(&self.text, stop))
                .max()
                .unwrap_or(0);
            end -= hold;
        }
        if end <= self.sent {
            return String::new();
        }
        let out = self.text[self.sent..end].to_string();
        self.sent = end;
        out
    }
}

/// The length of the longest end of `text` that is a proper start of `stop`.
fn partial_suffix(text: &str, stop: &str) -> usize {
    (1..stop.len())
        .rev()
        .filter(|&n| stop.is_char_boundary(n) && n <= text.len())
        .find(|&n| text.is_char_boundary(text.len() - n) && text.ends_with(&stop[..n]))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokenizer() -> Tokenizer {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fixtures/models/qwen3-chat-tiny");
        Tokenizer::from_dir(&dir).expect("the fixture's tokenizer")
    }

    #[test]
    fn incremental_text_is_the_whole_decode() {
        let tokenizer = tokenizer();
        let text = "Hello, wörld! 你好 — ünïcode ✓ done.";
        let ids = tokenizer.encode(text, false).unwrap();
        let mut sample = SampleText::new(Vec::new(), true);
        let mut streamed = String::new();
        for &id in &ids {
            assert!(!sample.push(&tokenizer, id));
            streamed.push_str(&sample.take_sendable(false));
        }
        streamed.push_str(&sample.take_sendable(true));
        assert_eq!(streamed, tokenizer.decode(&ids, true).unwrap());
        assert_eq!(sample.text, streamed);
    }

    #[test]
    fn a_stop_string_cuts_the_text_and_is_never_streamed() {
        let tokenizer = tokenizer();
        let ids = tokenizer
            .encode("The answer is 42.\n\nQuestion: next", false)
            .unwrap();
        let mut sample = SampleText::new(vec!["\n\nQuestion".into()], true);
        let mut streamed = String::new();
        let mut stopped_at = None;
        for (i, &id) in ids.iter().enumerate() {
            if sample.push(&tokenizer, id) {
                stopped_at = Some(i);
                break;
            }
            streamed.push_str(&sample.take_sendable(false));
        }
        assert!(stopped_at.is_some(), "the stop string was found");
        streamed.push_str(&sample.take_sendable(true));
        assert_eq!(streamed, "The answer is 42.");
        assert_eq!(sample.text, "The answer is 42.");
    }

    #[test]
    fn partial_stop_strings_are_held_back() {
        assert_eq!(partial_suffix("abc\n", "\nQ"), 1);
        assert_eq!(partial_suffix("abc\nQ", "\nQu"), 2);
        assert_eq!(partial_suffix("abc", "xyz"), 0);
    }
}
