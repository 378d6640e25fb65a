//! Rule verifiers: rewards computed by checking a response against a record's ground truth
//! (verl's reward style `rule`).
//!
//! Math answers are read from the response's last `\boxed{...}` and compared with the ground
//! truth after the normalisation of the MATH dataset's `strip_string` (as in verl's
//! `reward_score/math.py` and `math_dapo.py`), then numerically when both sides are numbers.
//! Other sources are compared exactly, up to whitespace.

/// Commands whose argument is the boxed final answer.
const BOX_COMMANDS: [&str; 2] = ["\\boxed", "\\fbox"];

/// Text commands whose trailing use after an answer is a unit (`5\text{ cm}`).
const UNIT_COMMANDS: [&str; 3] = ["\\text{", "\\textrm{", "\\mbox{"];

/// Commands that only style their argument; they are replaced by the argument.
const STYLE_COMMANDS: [&str; 8] = [
    "\\text{",
    "\\textrm{",
    "\\mbox{",
    "\\textbf{",
    "\\textit{",
    "\\mathrm{",
    "\\mathbf{",
    "\\boxed{",
];

/// Spacing commands (`\!`, `\,`, ...), by the character after the backslash.
const SPACING_COMMANDS: [char; 5] = ['!', ',', ';', ':', ' '];

/// Substrings removed outright: degrees, dollars, percent signs.
const REMOVED: [&str; 7] = ["^{\\circ}", "^\\circ", "°", "\\$", "$", "\\%", "%"];

/// Absolute tolerance of the numeric comparison of non-integers.
const NUMERIC_TOLERANCE: f64 = 1e-6;

/// Substrings of a `data_source` (lower-cased) that mark a math dataset.
const MATH_SOURCES: [&str; 6] = ["math", "gsm8k", "aime", "amc", "numina", "dapo"];

/// The reward of `response` for a prompt from `data_source` with the given `ability`, like
/// verl's `default_compute_score` for the sources grlo supports: math datasets (a
/// `data_source` containing `math`, `gsm8k`, `aime`, `amc`, `numina` or `dapo`, ignoring
/// case, or ability `math`) use [`math_reward`], anything else [`exact_match_reward`].
pub fn rule_reward(
    data_source: &str,
    ability: Option<&str>,
    response: &str,
    ground_truth: &str,
) -> f32 {
    if is_math(data_source, ability) {
        math_reward(response, ground_truth)
    } else {
        exact_match_reward(response, ground_truth)
    }
}

/// Whether a prompt is scored as math.
fn is_math(data_source: &str, ability: Option<&str>) -> bool {
    let source = data_source.to_ascii_lowercase();
    MATH_SOURCES.iter().any(|name| source.contains(name))
        || ability.is_some_and(|ability| ability.trim().eq_ignore_ascii_case("math"))
}

/// 1.0 if the response's final answer — its last `\boxed{...}` (see [`last_boxed`]) — equals
/// the ground truth (see [`math_answers_match`]), else 0.0. A response without a box, or
/// with an empty one, scores 0.0. A ground truth that is itself boxed is compared by its box.
pub fn math_reward(response: &str, ground_truth: &str) -> f32 {
    let Some(answer) = last_boxed(response) else {
        return 0.0;
    };
    let truth = last_boxed(ground_truth).unwrap_or_else(|| ground_truth.to_owned());
    if math_answers_match(&answer, &truth) {
        1.0
    } else {
        0.0
    }
}

/// 1.0 if the trimmed response equals the trimmed ground truth, with runs of whitespace
/// inside both collapsed to one space, else 0.0. Case matters.
pub fn exact_match_reward(response: &str, ground_truth: &str) -> f32 {
    if collapse_whitespace(response) == collapse_whitespace(ground_truth) {
        1.0
    } else {
        0.0
    }
}

/// The words of `text` joined by single spaces.
fn collapse_whitespace(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Whether two math answers are the same: equal after [`normalize_math_answer`], or both
/// numbers (integers, decimals, `\frac{a}{b}` of those, signed) that are equal — exactly
/// when both are integers, within 1e-6 otherwise. An empty answer matches nothing.
pub fn math_answers_match(answer: &str, ground_truth: &str) -> bool {
    let answer = normalize_math_answer(answer);
    let truth = normalize_math_answer(ground_truth);
    if answer.is_empty() || truth.is_empty() {
        return false;
    }
    answer == truth || numbers_equal(&answer, &truth)
}

/// Whether two normalised answers are equal numbers. Integers compare digit by digit (no
/// rounding, however long); other numbers within [`NUMERIC_TOLERANCE`].
fn numbers_equal(a: &str, b: &str) -> bool {
    if let (Some(a), Some(b)) = (canonical_integer(a), canonical_integer(b)) {
        return a == b;
    }
    match (parse_number(a), parse_number(b)) {
        (Some(a), Some(b)) => (a - b).abs() <= NUMERIC_TOLERANCE,
        _ => false,
    }
}

/// A signed integer written canonically (no `+`, no leading zeros, no `-0`).
fn canonical_integer(text: &str) -> Option<String> {
    let (sign, unsigned) = split_sign(text);
    if !all_digits(unsigned) {
        return None;
    }
    let digits = unsigned.trim_start_matches('0');
    Some(match digits {
        "" => "0".to_owned(),
        _ if sign < 0.0 => format!("-{digits}"),
        _ => digits.to_owned(),
    })
}

/// The argument of the last `\boxed` or `\fbox` in `text`: the contents of its braces (nested
/// braces and escaped `\{`/`\}` handled), or for the brace-less form `\boxed 5` the text up
/// to the next `$` or line end, trimmed. `None` when there is no box, when the last box's
/// braces never close, or when a brace-less box has nothing after it.
pub fn last_boxed(text: &str) -> Option<String> {
    let (start, command) = BOX_COMMANDS
        .iter()
        .filter_map(|command| last_command(text, command).map(|start| (start, *command)))
        .max_by_key(|(start, _)| *start)?;
    let argument = &text[start + command.len()..];
    let argument = argument.trim_start_matches([' ', '\t']);
    if argument.starts_with('{') {
        let close = matching_brace(argument, 0)?;
        return Some(argument[1..close].to_owned());
    }
    let end = argument.find(['$', '\n']).unwrap_or(argument.len());
    let answer = argument[..end].trim();
    (!answer.is_empty()).then(|| answer.to_owned())
}

/// Byte offset of the last use of `command` (`\boxed`) in `text` that is not the start of a
/// longer command (`\boxedtext`).
fn last_command(text: &str, command: &str) -> Option<usize> {
    text.rmatch_indices(command)
        .map(|(start, _)| start)
        .find(|&start| !starts_with_letter(&text[start + command.len()..]))
}

/// Whether `text` starts with an ASCII letter (so a command before it would be longer).
fn starts_with_letter(text: &str) -> bool {
    text.starts_with(|c: char| c.is_ascii_alphabetic())
}

/// Byte offset of the `}` closing the `{` at byte `open` of `text`, skipping escaped braces.
fn matching_brace(text: &str, open: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut escaped = false;
    for (offset, c) in text[open..].char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '{' => depth += 1,
            '}' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(open + offset);
                }
            }
            _ => {}
        }
    }
    None
}

/// Normalises a math answer so that equal answers written differently compare equal, after
/// the MATH dataset's `strip_string` and verl's `math_dapo` normalisation:
///
/// * whitespace (newlines included) and spacing commands (`\!`, `\,`, `\;`, `\:`, `\ `) go;
///   a Unicode minus sign becomes `-`;
/// * `\left`/`\right`, degrees (`^\circ`, `^{\circ}`, `°`), dollars and percent signs go;
/// * a trailing period goes;
/// * a trailing unit in `\text{...}` (or `\textrm`, `\mbox`, optionally squared or cubed)
///   goes when something precedes it; other `\text{...}`-like commands are replaced by
///   their contents;
/// * `\tfrac`/`\dfrac` become `\frac`; `\frac12` becomes `\frac{1}{2}` and `\sqrt2`
///   becomes `\sqrt{2}`;
/// * a leading single-variable assignment before the only `=` (`x =`, `k=`, `x1 =`,
///   `a_n =`) goes;
/// * `.5` becomes `0.5`; `1,000` (groups of three digits) becomes `1000`; `a/b` of integers
///   becomes `\frac{a}{b}`; braces around the whole answer go.
pub fn normalize_math_answer(answer: &str) -> String {
    let mut s = remove_spacing_commands(&answer.replace('\u{2212}', "-"));
    for removed in REMOVED {
        s = s.replace(removed, "");
    }
    s = s
        .replace("{,}", ",")
        .replace("tfrac", "frac")
        .replace("dfrac", "frac");
    for command in ["\\left", "\\right", "\\displaystyle"] {
        s = remove_command(&s, command);
    }
    s = trim_trailing_periods(&s).to_owned();
    s = strip_trailing_units(&s);
    s = unwrap_style_commands(&s);
    s = trim_trailing_periods(&s).to_owned();
    s = s.replace("\\{", "{").replace("\\}", "}");
    s = strip_assignment(&s).to_owned();
    s.retain(|c| !c.is_whitespace());
    s = add_leading_zeros(&s);
    s = fix_sqrt(&s);
    s = fix_fracs(&s);
    s = strip_outer_braces(&s).to_owned();
    s = remove_thousands_separators(&s);
    slash_to_frac(&s).unwrap_or(s)
}

/// `text` without spacing commands (`1\,000` → `1000`), leaving line breaks (`\\`) alone.
fn remove_spacing_commands(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some(next) if SPACING_COMMANDS.contains(&next) => {}
            Some(next) => {
                out.push(c);
                out.push(next);
            }
            None => out.push(c),
        }
    }
    out
}

/// `text` without uses of `command` that are not the start of a longer command
/// (`\left(` loses `\left`, `\leftarrow` stays).
fn remove_command(text: &str, command: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find(command) {
        let after = &rest[start + command.len()..];
        out.push_str(&rest[..start]);
        if starts_with_letter(after) {
            out.push_str(command);
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

/// `text` trimmed, without trailing periods.
fn trim_trailing_periods(text: &str) -> &str {
    text.trim().trim_end_matches('.').trim_end()
}

/// Removes trailing units (`5\text{ cm}^2` → `5`) as long as something precedes them.
fn strip_trailing_units(text: &str) -> String {
    let mut s = text.trim().to_owned();
    while let Some(stripped) = strip_trailing_unit(&s) {
        s = stripped;
    }
    s
}

/// `text` without its trailing unit command, if it ends with one and something precedes it.
fn strip_trailing_unit(text: &str) -> Option<String> {
    let body = ["^{2}", "^{3}", "^2", "^3"]
        .iter()
        .find_map(|power| text.strip_suffix(power))
        .unwrap_or(text);
    UNIT_COMMANDS.iter().find_map(|command| {
        let start = body.rfind(command)?;
        let close = matching_brace(body, start + command.len() - 1)?;
        let before = body[..start].trim();
        (close + 1 == body.len() && !before.is_empty()).then(|| before.to_owned())
    })
}

/// Replaces every `\text{x}`-like command (and a leftover `\boxed{x}`) by `x`.
fn unwrap_style_commands(text: &str) -> String {
    let mut s = text.to_owned();
    while let Some((start, open)) = STYLE_COMMANDS
        .iter()
        .filter_map(|command| {
            s.find(command)
                .map(|start| (start, start + command.len() - 1))
        })
        .min()
    {
        let Some(close) = matching_brace(&s, open) else {
            break;
        };
        s = format!("{}{}{}", &s[..start], &s[open + 1..close], &s[close + 1..]);
    }
    s
}

/// `text` without a leading `x =`-style assignment: when `text` has exactly one `=` and a
/// single variable precedes it (see [`is_variable`]).
fn strip_assignment(text: &str) -> &str {
    let mut parts = text.split('=');
    let (Some(left), Some(right), None) = (parts.next(), parts.next(), parts.next()) else {
        return text;
    };
    if is_variable(left.trim()) {
        right.trim()
    } else {
        text
    }
}

/// A letter, optionally followed by one letter, digit or prime, possibly after `_`
/// (`x`, `k`, `x1`, `ab`, `a_n`, `f'`): verl's "at most two characters", plus subscripts.
fn is_variable(text: &str) -> bool {
    let mut chars = text.chars();
    if !chars
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic())
    {
        return false;
    }
    let rest = chars.as_str();
    let rest = rest.strip_prefix('_').unwrap_or(rest);
    match rest.chars().collect::<Vec<_>>()[..] {
        [] => true,
        [c] => c.is_ascii_alphanumeric() || c == '\'',
        _ => false,
    }
}

/// Inserts `0` before a decimal point that starts a number (`.5` → `0.5`, `-.5` → `-0.5`).
fn add_leading_zeros(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 1);
    let mut previous = None;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        let starts_number = c == '.'
            && !previous.is_some_and(|p: char| p.is_ascii_digit())
            && chars.peek().is_some_and(|n| n.is_ascii_digit());
        if starts_number {
            out.push('0');
        }
        out.push(c);
        previous = Some(c);
    }
    out
}

/// Braces the argument of `\sqrt` written without them: `\sqrt2` → `\sqrt{2}`,
/// `\sqrt{12}x` unchanged, `\sqrt12` → `\sqrt{12}` (the whole alphanumeric run, as verl does).
fn fix_sqrt(text: &str) -> String {
    const SQRT: &str = "\\sqrt";
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find(SQRT) {
        out.push_str(&rest[..start + SQRT.len()]);
        rest = &rest[start + SQRT.len()..];
        let word = rest
            .find(|c: char| !c.is_ascii_alphanumeric())
            .unwrap_or(rest.len());
        if word > 0 {
            out.push_str(&format!("{{{}}}", &rest[..word]));
            rest = &rest[word..];
        }
    }
    out.push_str(rest);
    out
}

/// Braces the arguments of `\frac` written without them: `\frac12` → `\frac{1}{2}`,
/// `\frac1{72}` → `\frac{1}{72}`, `\frac{1}2` → `\frac{1}{2}`, `\frac\pi2` → `\frac{\pi}{2}`.
/// An unbraced argument is one character or one command.
fn fix_fracs(text: &str) -> String {
    const FRAC: &str = "\\frac";
    let mut out = String::with_capacity(text.len() + 4);
    let mut rest = text;
    while let Some(start) = rest.find(FRAC) {
        out.push_str(&rest[..start + FRAC.len()]);
        rest = &rest[start + FRAC.len()..];
        for _ in 0..2 {
            if rest.starts_with('{') {
                let Some(close) = matching_brace(rest, 0) else {
                    break;
                };
                out.push_str(&rest[..=close]);
                rest = &rest[close + 1..];
                continue;
            }
            let Some(length) = token_length(rest) else {
                break;
            };
            out.push_str(&format!("{{{}}}", &rest[..length]));
            rest = &rest[length..];
        }
    }
    out.push_str(rest);
    out
}

/// Byte length of the first TeX token of `text`: a command (`\pi`) or one character.
fn token_length(text: &str) -> Option<usize> {
    let first = text.chars().next()?;
    if first != '\\' {
        return Some(first.len_utf8());
    }
    let after = &text[1..];
    let name = after
        .find(|c: char| !c.is_ascii_alphabetic())
        .unwrap_or(after.len());
    let symbol = match name {
        0 => after.chars().next().map_or(0, char::len_utf8),
        _ => name,
    };
    Some(1 + symbol)
}

/// `text` without braces around all of it (`{5}` → `5`; `{1}{2}` unchanged).
fn strip_outer_braces(mut text: &str) -> &str {
    while text.starts_with('{') && matching_brace(text, 0) == Some(text.len() - 1) {
        text = &text[1..text.len() - 1];
    }
    text
}

/// `1,234,567.5` → `1234567.5`: commas removed from a number written with thousands
/// separators (groups of exactly three digits), so that lists like `1,2` stay as they are.
fn remove_thousands_separators(text: &str) -> String {
    let unsigned = text.strip_prefix('-').unwrap_or(text);
    let integer = unsigned.split('.').next().unwrap_or_default();
    let fraction_ok = unsigned[integer.len()..]
        .strip_prefix('.')
        .is_none_or(|fraction| !fraction.is_empty() && all_digits(fraction));
    let mut groups = integer.split(',');
    let first_ok = groups
        .next()
        .is_some_and(|g| (1..=3).contains(&g.len()) && all_digits(g));
    let groups: Vec<_> = groups.collect();
    let rest_ok = !groups.is_empty() && groups.iter().all(|g| g.len() == 3 && all_digits(g));
    if fraction_ok && first_ok && rest_ok {
        text.replace(',', "")
    } else {
        text.to_owned()
    }
}

/// Whether `text` is non-empty and all ASCII digits.
fn all_digits(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())
}

/// `a/b` of integers (`a` possibly negative) as `\frac{a}{b}`.
fn slash_to_frac(text: &str) -> Option<String> {
    let (numerator, denominator) = text.split_once('/')?;
    let sign = if numerator.starts_with('-') { "-" } else { "" };
    let magnitude = &numerator[sign.len()..];
    (all_digits(magnitude) && all_digits(denominator))
        .then(|| format!("{sign}\\frac{{{magnitude}}}{{{denominator}}}"))
}

/// The value of a normalised answer that is a number: a signed integer or decimal, or
/// `\frac{a}{b}` of those (itself possibly signed).
fn parse_number(text: &str) -> Option<f64> {
    let (sign, unsigned) = split_sign(text);
    let value = parse_decimal(unsigned).or_else(|| parse_fraction(unsigned))?;
    Some(sign * value)
}

/// The sign of `text` (`-` or `+`, else positive) and the rest.
fn split_sign(text: &str) -> (f64, &str) {
    if let Some(rest) = text.strip_prefix('-') {
        (-1.0, rest)
    } else {
        (1.0, text.strip_prefix('+').unwrap_or(text))
    }
}

/// An unsigned decimal: digits with at most one `.`, at least one digit.
fn parse_decimal(text: &str) -> Option<f64> {
    let is_decimal = text.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && text.bytes().filter(|&b| b == b'.').count() <= 1
        && text.bytes().any(|b| b.is_ascii_digit());
    if is_decimal { text.parse().ok() } else { None }
}

/// `\frac{a}{b}` with signed decimals `a` and `b != 0`.
fn parse_fraction(text: &str) -> Option<f64> {
    let arguments = text.strip_prefix("\\frac{")?.strip_suffix('}')?;
    let (numerator, denominator) = arguments.split_once("}{")?;
    let signed = |part: &str| {
        let (sign, unsigned) = split_sign(part);
        parse_decimal(unsigned).map(|value| sign * value)
    };
    let denominator = signed(denominator).filter(|&d| d != 0.0)?;
    Some(signed(numerator)? / denominator)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Answers that must match, written differently.
    const EQUAL: &[(&str, &str)] = &[
        ("5", "5"),
        (" 5 \n", "5"),
        ("5.", "5"),
        ("5.0", "5"),
        ("0.5", ".5"),
        ("-.5", "-0.5"),
        ("\\frac{1}{2}", "0.5"),
        ("\\frac12", "\\frac{1}{2}"),
        ("\\dfrac{1}{2}", "\\frac{1}{2}"),
        ("\\tfrac{3}{4}", "0.75"),
        ("1/2", "\\frac{1}{2}"),
        ("-3/4", "-\\frac{3}{4}"),
        ("\\frac{-3}{4}", "-0.75"),
        ("\\sqrt2", "\\sqrt{2}"),
        ("\\frac{1}{\\sqrt2}", "\\frac{1}{\\sqrt{2}}"),
        ("\\frac1{\\sqrt{2}}", "\\frac{1}{\\sqrt{2}}"),
        ("\\frac\\pi2", "\\frac{\\pi}{2}"),
        ("1,000", "1000"),
        ("1{,}000", "1000"),
        ("1\\,000", "1000"),
        ("1,234,567.25", "1234567.25"),
        ("x = 5", "5"),
        ("k=3", "3"),
        ("a_1 = 7", "7"),
        ("90^\\circ", "90"),
        ("90^{\\circ}", "90"),
        ("\\$5", "5"),
        ("$5$", "5"),
        ("50\\%", "50"),
        ("25%", "25"),
        ("10\\text{ cm}", "10"),
        ("10 \\text{ cm}^2", "10"),
        ("\\text{Devon}", "Devon"),
        ("\\textbf{(C)}", "(C)"),
        ("\\left( 1, 2 \\right)", "(1,2)"),
        ("\\left[ 0, \\infty \\right)", "[0,\\infty)"),
        ("{5}", "5"),
        ("\\{1, 2\\}", "{1,2}"),
        ("0.3333333", "\\frac{1}{3}"),
        ("1000000.5", "1000000.5000001"),
        ("007", "7"),
        ("-0", "0"),
        ("+3", "3"),
        ("\\frac{1}2", "\\frac{1}{2}"),
        ("a_n = 2^n", "2^n"),
        ("2\\!\\cdot\\!3", "2 \\cdot 3"),
        ("\u{2212}5", "-5"),
        ("1\\:000", "1000"),
        ("x^2 + 1", "x^2+1"),
        ("\\displaystyle\\frac{7}{2}", "3.5"),
    ];

    /// Answers that must not match.
    const DIFFERENT: &[(&str, &str)] = &[
        ("5", "6"),
        ("0.5", "0.51"),
        ("\\frac{1}{3}", "0.33"),
        ("1,2", "12"),
        ("1,2", "1,000"),
        ("-5", "5"),
        ("\\sqrt{2}", "\\sqrt{3}"),
        ("x^2", "x^3"),
        ("(1,2)", "[1,2]"),
        ("f(x) = 2", "2"),
        ("\\frac{1}{0}", "0"),
        ("", ""),
        ("5", ""),
        ("\\rightarrow", "\\to"),
        ("\\text{cm}", "\\text{m}"),
        (
            "\\begin{pmatrix}1\\\\2\\end{pmatrix}",
            "\\begin{pmatrix}12\\end{pmatrix}",
        ),
        ("1000000", "1000001"),
        ("123456789012345678901", "123456789012345678902"),
        ("0.000001", "0.0000025"),
    ];

    #[test]
    fn equal_answers_match() {
        for (answer, truth) in EQUAL {
            assert!(
                math_answers_match(answer, truth),
                "{answer:?} vs {truth:?}: {:?} vs {:?}",
                normalize_math_answer(answer),
                normalize_math_answer(truth)
            );
            assert!(math_answers_match(truth, answer), "{truth:?} vs {answer:?}");
        }
    }

    #[test]
    fn different_answers_do_not_match() {
        for (answer, truth) in DIFFERENT {
            assert!(
                !math_answers_match(answer, truth),
                "{answer:?} vs {truth:?}: {:?} vs {:?}",
                normalize_math_answer(answer),
                normalize_math_answer(truth)
            );
        }
    }

    #[test]
    fn normalises_to_canonical_forms() {
        let cases = [
            ("\\dfrac12", "\\frac{1}{2}"),
            ("3/4", "\\frac{3}{4}"),
            ("\\sqrt{2}/2", "\\sqrt{2}/2"),
            ("\\sqrt3x", "\\sqrt{3x}"),
            ("y = \\frac 1 2", "\\frac{1}{2}"),
            ("1,2,3", "1,2,3"),
            ("12,34", "12,34"),
            ("\\text{(A)}\\ 5", "(A)5"),
            ("\\mbox{ft} 3", "ft3"),
            ("5\\text{ m}\\text{/s}", "5"),
            ("\\leftarrow", "\\leftarrow"),
            ("\\frac{1}{2}.", "\\frac{1}{2}"),
            ("\\boxed{4}", "4"),
            ("\\frac\\é", "\\frac{\\é}"),
            ("\\frac\\", "\\frac{\\}"),
            (
                "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}",
                "\\begin{pmatrix}1\\\\2\\end{pmatrix}",
            ),
        ];
        for (answer, expected) in cases {
            assert_eq!(normalize_math_answer(answer), expected, "{answer:?}");
        }
    }

    #[test]
    fn last_boxed_finds_the_final_answer() {
        let cases: [(&str, Option<&str>); 14] = [
            ("The answer is \\boxed{5}.", Some("5")),
            (
                "\\boxed{\\frac{1}{\\sqrt{2}}}",
                Some("\\frac{1}{\\sqrt{2}}"),
            ),
            (
                "First \\boxed{1}, then \\boxed{2}, finally $\\boxed{3}$",
                Some("3"),
            ),
            ("\\boxed{1} and \\fbox{2}", Some("2")),
            ("\\fbox{2} and \\boxed{1}", Some("1")),
            ("so $\\boxed 5$.", Some("5")),
            ("so \\boxed 42\nThat's it", Some("42")),
            ("\\boxed {7}", Some("7")),
            ("\\boxed{}", Some("")),
            ("\\boxed{\\{1, 2\\}}", Some("\\{1, 2\\}")),
            ("no box here: 5", None),
            ("\\boxed{5", None),
            ("ends with \\boxed", None),
            ("\\boxedanswer{5}", None),
        ];
        for (text, expected) in cases {
            assert_eq!(last_boxed(text).as_deref(), expected, "{text:?}");
        }
    }

    #[test]
    fn math_reward_scores_the_last_box() {
        let response =
            "We get $x = \\frac12$ first, so \\boxed{1}... no wait: \\boxed{\\dfrac{1}{2}}.";
        assert_eq!(math_reward(response, "0.5"), 1.0);
        assert_eq!(math_reward(response, "\\frac{1}{2}"), 1.0);
        assert_eq!(
            math_reward(response, "\\boxed{1/2}"),
            1.0,
            "boxed ground truths"
        );
        assert_eq!(math_reward(response, "1"), 0.0);
        assert_eq!(math_reward("The answer is 0.5", "0.5"), 0.0, "no box");
        assert_eq!(math_reward("\\boxed{}", ""), 0.0, "empty box");
        assert_eq!(math_reward("\\boxed{ }", " "), 0.0, "blank box");
        assert_eq!(
            math_reward("so \\boxed{\\text{1,000 dollars}}", "1000"),
            0.0
        );
        assert_eq!(
            math_reward("so \\boxed{1,000\\text{ dollars}}", "1000"),
            1.0
        );
        assert_eq!(math_reward("$\\boxed{x=3}$", "3"), 1.0);
    }

    #[test]
    fn exact_match_ignores_surrounding_and_repeated_whitespace() {
        assert_eq!(exact_match_reward("  Paris \n", "Paris"), 1.0);
        assert_eq!(exact_match_reward("New   York\tCity", "New York City"), 1.0);
        assert_eq!(exact_match_reward("paris", "Paris"), 0.0);
        assert_eq!(exact_match_reward("Paris.", "Paris"), 0.0);
        assert_eq!(exact_match_reward("", ""), 1.0);
    }

    #[test]
    fn rule_reward_picks_the_verifier_by_source() {
        let boxed = "\\boxed{4}";
        for source in [
            "openai/gsm8k",
            "lighteval/MATH",
            "DigitalLearningGmbH/MATH-lighteval",
            "math_dapo",
            "aime_2024",
            "numina_olympiads",
            "AMC23",
        ] {
            assert_eq!(rule_reward(source, None, boxed, "4"), 1.0, "{source}");
            assert_eq!(
                rule_reward(source, None, "4", "4"),
                0.0,
                "{source} needs a box"
            );
        }
        assert_eq!(rule_reward("my_quiz", Some("Math"), boxed, "4"), 1.0);
        assert_eq!(rule_reward("my_quiz", Some("general"), boxed, "4"), 0.0);
        assert_eq!(rule_reward("my_quiz", None, " 4 ", "4"), 1.0);
        assert_eq!(rule_reward("trivia", Some("qa"), "Paris", "Paris"), 1.0);
    }
}
