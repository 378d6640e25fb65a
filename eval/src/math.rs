//! GSM8K and MATH-500 answers, read and compared as lm-eval does.
//!
//! - GSM8K (lm-eval's `gsm8k` filters): the number after `####` (its "strict-match"), else
//!   the last `\boxed{}`, else the last number of the response (its "flexible-extract"); then
//!   commas, dollar signs, everything up to `#### ` and a final period are removed from both
//!   sides (its `regexes_to_ignore`) and they are compared exactly.
//! - MATH-500 (lm-eval's `minerva_math`): the last `\boxed{}` with its braces matched (else
//!   Minerva's "The final answer is X. I hope it is correct."), Minerva's
//!   `normalize_final_answer` on both sides, then equality of the normalised strings, or of
//!   their values when both are numbers or fractions (the symbolic check lm-eval does with
//!   sympy, reduced to what needs no parser of LaTeX).

use std::sync::LazyLock;

use regex::Regex;

/// lm-eval `gsm8k`'s strict-match.
static GSM8K_STRICT: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"#### (\-?[0-9\.\,]+)").expect("valid"));
/// lm-eval `gsm8k`'s flexible-extract (the last match is taken).
static GSM8K_FLEXIBLE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(-?[$0-9.,]{2,})|(-?[0-9]+)").expect("valid"));
/// Minerva's answer sentence.
static MINERVA_FINAL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)final answer is (.*?)\. ?I hope it is correct\.").expect("valid")
});

/// Minerva's `SUBSTITUTIONS`, in order.
const SUBSTITUTIONS: [(&str, &str); 10] = [
    ("an ", ""),
    ("a ", ""),
    (".$", "$"),
    ("\\$", ""),
    ("\\ ", ""),
    (" ", ""),
    ("mbox", "text"),
    (",\\text{and}", ","),
    ("\\text{and}", ","),
    ("\\text{m}", "\\text{}"),
];

/// Minerva's `REMOVED_EXPRESSIONS`, in order.
const REMOVED_EXPRESSIONS: [&str; 41] = [
    "square",
    "ways",
    "integers",
    "dollars",
    "mph",
    "inches",
    "ft",
    "hours",
    "km",
    "units",
    "\\ldots",
    "sue",
    "points",
    "feet",
    "minutes",
    "digits",
    "cents",
    "degrees",
    "cm",
    "gm",
    "pounds",
    "meters",
    "meals",
    "edges",
    "students",
    "childrentickets",
    "multiples",
    "\\text{s}",
    "\\text{.}",
    "\\text{\ns}",
    "\\text{}^2",
    "\\text{}^3",
    "\\text{\n}",
    "\\text{}",
    "\\mathrm{th}",
    "^\\circ",
    "^{\\circ}",
    "\\;",
    ",\\!",
    "{,}",
    "\"",
];

/// Minerva's rewrites after the substitutions: (pattern, replacement), in order.
static MINERVA_REWRITES: LazyLock<Vec<(Regex, &'static str)>> = LazyLock::new(|| {
    [
        (r"(.*?)(\$)(.*?)(\$)(.*)", "$$${3}$$"),
        (r"(\\text\{)(.*?)(\})", "${2}"),
        (r"(\\textbf\{)(.*?)(\})", "${2}"),
        (r"(\\overline\{)(.*?)(\})", "${2}"),
        (r"(\\boxed\{)(.*)(\})", "${2}"),
        (r"(frac)([^{])(.)", "frac{${2}}{${3}}"),
        (r"(sqrt)([^{])", "sqrt{${2}}"),
    ]
    .into_iter()
    .map(|(pattern, replacement)| (Regex::new(pattern).expect("valid"), replacement))
    .collect()
});

/// The argument of the last `\boxed{...}` (or `\fbox{...}`, or `\boxed x` up to a `$`), its
/// braces matched: lm-eval's `last_boxed_only_string` then `remove_boxed`. `None` when
/// there is no box or its braces never close.
pub fn last_boxed(text: &str) -> Option<String> {
    if let Some(at) = text.rfind("\\boxed ") {
        let rest = &text[at + "\\boxed ".len()..];
        return Some(rest.split('$').next().unwrap_or_default().to_string());
    }
    let start = text.rfind("\\boxed").or_else(|| text.rfind("\\fbox"))?;
    let mut depth = 0usize;
    let mut open = None;
    for (i, c) in text[start..].char_indices() {
        match c {
            '{' => {
                if depth == 0 {
                    open = Some(start + i);
                }
                depth += 1;
            }
            '}' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(text[open? + 1..start + i].to_string());
                }
            }
            _ => {}
        }
    }
    None
}

/// Minerva's `normalize_final_answer`.
pub fn normalize_final_answer(answer: &str) -> String {
    let mut answer = answer.rsplit('=').next().unwrap_or_default().to_string();
    for (before, after) in SUBSTITUTIONS {
        answer = answer.replace(before, after);
    }
    for expression in REMOVED_EXPRESSIONS {
        answer = answer.replace(expression, "");
    }
    for (pattern, replacement) in MINERVA_REWRITES.iter() {
        answer = pattern.replace_all(&answer, *replacement).into_owned();
    }
    answer = answer.replace('$', "");
    let digits = answer.replace(',', "");
    if !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit()) {
        answer = digits;
    }
    answer
}

/// MATH-500's final answer of a response, normalised: its last box, else Minerva's answer
/// sentence. `None` when it gives neither.
pub fn math_answer(response: &str) -> Option<String> {
    let raw = last_boxed(response).or_else(|| {
        MINERVA_FINAL
            .captures_iter(response)
            .last()
            .map(|c| c[1].to_string())
    })?;
    Some(normalize_final_answer(&raw))
}

/// Whether a response's MATH answer equals `gold` (the reference's boxed answer).
pub fn math_correct(response: &str, gold: &str) -> bool {
    let Some(answer) = math_answer(response) else {
        return false;
    };
    let gold = normalize_final_answer(gold);
    answer == gold || matches!((value(&answer), value(&gold)), (Some(a), Some(b)) if close(a, b))
}

/// The value of a normalised answer that is a number or a (signed) fraction: `12`, `-0.5`,
/// `\frac{3}{4}`, `-\dfrac{1}{2}`, `3/4`.
fn value(answer: &str) -> Option<f64> {
    let text = answer.trim();
    let (sign, text) = match text.strip_prefix('-') {
        Some(rest) => (-1.0, rest),
        None => (1.0, text),
    };
    if let Ok(v) = text.parse::<f64>() {
        return v.is_finite().then_some(sign * v);
    }
    for command in ["\\frac{", "\\dfrac{", "\\tfrac{"] {
        if let Some(rest) = text.strip_prefix(command) {
            let (numerator, rest) = rest.split_once("}{")?;
            let denominator = rest.strip_suffix('}')?;
            return ratio(numerator, denominator).map(|v| sign * v);
        }
    }
    let (numerator, denominator) = text.split_once('/')?;
    ratio(numerator, denominator).map(|v| sign * v)
}

fn ratio(numerator: &str, denominator: &str) -> Option<f64> {
    let n: f64 = numerator.trim().parse().ok()?;
    let d: f64 = denominator.trim().parse().ok()?;
    (d != 0.0).then_some(n / d)
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6 * b.abs().max(1.0)
}

/// GSM8K's final answer of a response, before normalisation: after `####`, else the last
/// box's (last number in it, or its text), else the last number. `None` when there is none.
pub fn gsm8k_answer(response: &str) -> Option<String> {
    if let Some(c) = GSM8K_STRICT.captures(response) {
        return Some(c[1].to_string());
    }
    if let Some(boxed) = last_boxed(response) {
        return Some(last_number(&boxed).unwrap_or(boxed));
    }
    last_number(response)
}

fn last_number(text: &str) -> Option<String> {
    GSM8K_FLEXIBLE
        .find_iter(text)
        .last()
        .map(|m| m.as_str().to_string())
}

/// lm-eval `gsm8k`'s `regexes_to_ignore` (`,`, `\$`, `(?s).*#### `, `\.$`), then trimmed
/// (the harness compares case-insensitively; answers are numbers).
pub fn normalize_gsm8k(answer: &str) -> String {
    let answer = answer.replace([',', '$'], "");
    let answer = match answer.rfind("#### ") {
        Some(at) => answer[at + "#### ".len()..].to_string(),
        None => answer,
    };
    let answer = answer.strip_suffix('.').unwrap_or(&answer);
    answer.trim().to_lowercase()
}

/// Whether a response's GSM8K answer equals `gold`.
pub fn gsm8k_correct(response: &str, gold: &str) -> bool {
    gsm8k_answer(response).is_some_and(|a| normalize_gsm8k(&a) == normalize_gsm8k(gold))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boxes_are_read_with_their_braces_matched() {
        assert_eq!(
            last_boxed("so \\boxed{\\frac{1}{2}}.").unwrap(),
            "\\frac{1}{2}"
        );
        assert_eq!(last_boxed("\\boxed{1} then \\boxed{2}").unwrap(), "2");
        assert_eq!(last_boxed("\\fbox{7}").unwrap(), "7");
        assert_eq!(last_boxed("\\boxed 5$ done").unwrap(), "5");
        assert_eq!(last_boxed("\\boxed{unclosed"), None);
        assert_eq!(last_boxed("no box"), None);
    }

    #[test]
    fn minerva_normalisation_as_lm_eval() {
        // Each expected value worked by hand from lm-eval's `normalize_final_answer`.
        assert_eq!(normalize_final_answer("x = 10"), "10");
        assert_eq!(normalize_final_answer("1,000"), "1000");
        assert_eq!(normalize_final_answer("\\text{(C)}"), "(C)");
        assert_eq!(normalize_final_answer("5 \\text{ cm}"), "5");
        assert_eq!(normalize_final_answer("\\frac12"), "\\frac{1}{2}");
        assert_eq!(normalize_final_answer("\\sqrt2"), "\\sqrt{2}");
        assert_eq!(normalize_final_answer("$\\$18$"), "18");
        assert_eq!(normalize_final_answer("90^\\circ"), "90");
    }

    #[test]
    fn math_answers_compare_as_strings_or_values() {
        assert!(math_correct("Thus \\boxed{\\frac{1}{2}}.", "\\frac12"));
        assert!(math_correct("\\boxed{0.5}", "\\frac{1}{2}"));
        assert!(math_correct("\\boxed{-\\dfrac{2}{3}}", "-\\frac{2}{3}"));
        assert!(!math_correct("\\boxed{0.6}", "\\frac{1}{2}"));
        assert!(math_correct(
            "Final Answer: The final answer is $16$. I hope it is correct.",
            "16"
        ));
        assert!(
            !math_correct("16", "16"),
            "an answer needs a box or Minerva's sentence"
        );
    }

    #[test]
    fn gsm8k_answers_as_lm_eval_reads_them() {
        assert!(gsm8k_correct("9 * 2 = 18\n#### 18", "18"));
        assert!(gsm8k_correct("So the answer is $1,080.", "1080"));
        assert!(gsm8k_correct("the total is \\boxed{\\$18}", "18"));
        assert!(gsm8k_correct("-3 and then -5", "-5"));
        assert!(!gsm8k_correct("#### 17", "18"));
        assert!(!gsm8k_correct("no number", "18"));
    }
}
