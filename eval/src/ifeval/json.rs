//! Whether a text is one JSON document as Python's `json.loads` reads it.
//!
//! `detectable_format:json_format` passes when `json.loads` does not raise, and Python's
//! reader is more lenient than serde_json: it takes `NaN`, `Infinity`, `-Infinity`, numbers
//! of any size and lone surrogate escapes. This validator follows Python's grammar instead.

/// Nesting deeper than this fails; Python would raise `RecursionError` near 1000 levels.
const MAX_DEPTH: usize = 900;

/// Whether `json.loads(text)` would succeed.
pub(crate) fn python_loads_ok(text: &str) -> bool {
    let mut p = Parser {
        s: text.as_bytes(),
        i: 0,
    };
    p.ws();
    p.value(0) && {
        p.ws();
        p.i == p.s.len()
    }
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    /// JSON whitespace, which is only these four even in Python.
    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn eat(&mut self, word: &[u8]) -> bool {
        if self.s[self.i..].starts_with(word) {
            self.i += word.len();
            true
        } else {
            false
        }
    }

    fn value(&mut self, depth: usize) -> bool {
        if depth > MAX_DEPTH {
            return false;
        }
        match self.peek() {
            Some(b'{') => self.object(depth),
            Some(b'[') => self.array(depth),
            Some(b'"') => self.string(),
            Some(b'n') => self.eat(b"null"),
            Some(b't') => self.eat(b"true"),
            Some(b'f') => self.eat(b"false"),
            Some(b'N') => self.eat(b"NaN"),
            Some(b'I') => self.eat(b"Infinity"),
            Some(b'-') if self.s[self.i..].starts_with(b"-Infinity") => self.eat(b"-Infinity"),
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => false,
        }
    }

    fn object(&mut self, depth: usize) -> bool {
        self.i += 1;
        self.ws();
        if self.eat(b"}") {
            return true;
        }
        loop {
            if self.peek() != Some(b'"') || !self.string() {
                return false;
            }
            self.ws();
            if !self.eat(b":") {
                return false;
            }
            self.ws();
            if !self.value(depth + 1) {
                return false;
            }
            self.ws();
            if self.eat(b"}") {
                return true;
            }
            if !self.eat(b",") {
                return false;
            }
            self.ws();
        }
    }

    fn array(&mut self, depth: usize) -> bool {
        self.i += 1;
        self.ws();
        if self.eat(b"]") {
            return true;
        }
        loop {
            if !self.value(depth + 1) {
                return false;
            }
            self.ws();
            if self.eat(b"]") {
                return true;
            }
            if !self.eat(b",") {
                return false;
            }
            self.ws();
        }
    }

    /// A string: no raw control characters, escapes from Python's set, `\u` with four hex
    /// digits and any value (Python keeps lone surrogates).
    fn string(&mut self) -> bool {
        self.i += 1;
        while let Some(c) = self.peek() {
            self.i += 1;
            match c {
                b'"' => return true,
                0x00..=0x1f => return false,
                b'\\' => match self.peek() {
                    Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.i += 1,
                    Some(b'u') => {
                        let hex = self.s.get(self.i + 1..self.i + 5);
                        if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                            return false;
                        }
                        self.i += 5;
                    }
                    _ => return false,
                },
                _ => {}
            }
        }
        false
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?`, ASCII digits as Python's scanner.
    fn number(&mut self) -> bool {
        self.eat(b"-");
        match self.peek() {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return false,
        }
        // Python's scanner takes the fraction and exponent only when complete; what is left
        // over is then extra data, which fails the document anyway.
        if self.peek() == Some(b'.') && self.s.get(self.i + 1).is_some_and(u8::is_ascii_digit) {
            self.i += 1;
            self.digits();
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            let mut j = self.i + 1;
            if matches!(self.s.get(j), Some(b'+' | b'-')) {
                j += 1;
            }
            if self.s.get(j).is_some_and(u8::is_ascii_digit) {
                self.i = j;
                self.digits();
            }
        }
        true
    }

    fn digits(&mut self) {
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::python_loads_ok;

    #[test]
    fn accepts_what_python_accepts() {
        for ok in [
            "{}",
            " [1, 2.5e3, -0, NaN, -Infinity] ",
            "\"\\ud800\"",
            "1e400",
            "{\"a\": {\"b\": null}}",
        ] {
            assert!(python_loads_ok(ok), "{ok}");
        }
        for bad in [
            "",
            "{",
            "[1,]",
            "01",
            "1.",
            "{'a': 1}",
            "\"a\tb\"",
            "\u{feff}{}",
            "{} x",
            "+1",
        ] {
            assert!(!python_loads_ok(bad), "{bad}");
        }
    }
}
