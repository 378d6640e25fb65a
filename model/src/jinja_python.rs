//! Python behaviour for chat templates: transformers renders them with Jinja2, which prints
//! values with Python's `str()`, rounds like Python's `round()`, serialises with
//! `json.dumps(ensure_ascii=False)` in its `tojson` filter and offers `strftime_now`. These are
//! the minijinja counterparts, registered by [`crate::chat_template`].

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Error, ErrorKind, Output, State, Value};

use crate::chat_template::{MAX_INDENT, MAX_RENDERED_BYTES, TEMPLATE_RECURSION_LIMIT};

/// Prints values like Jinja2 does, i.e. with Python's `str()`: `None`,
/// `True`, `1e+16`, `['a', 'b']`, `{'k': 1}`.
pub(crate) fn python_formatter(
    out: &mut Output,
    state: &State,
    value: &Value,
) -> Result<(), Error> {
    match value.kind() {
        ValueKind::None | ValueKind::Bool | ValueKind::Number | ValueKind::Seq | ValueKind::Map => {
            let mut text = String::new();
            write_repr(&mut text, value, 0)?;
            out.write_str(&text).map_err(|err| {
                Error::new(ErrorKind::WriteFailure, "cannot write output").with_source(err)
            })
        }
        _ => minijinja::escape_formatter(out, state, value),
    }
}

/// Python's `str(value)`; a value too large or too deep to print gives the reason instead.
pub(crate) fn python_str(value: &Value) -> String {
    match value.as_str() {
        Some(text) => text.to_owned(),
        None => {
            let mut text = String::new();
            match write_repr(&mut text, value, 0) {
                Ok(()) => text,
                Err(error) => error.to_string(),
            }
        }
    }
}

/// A printed or serialised value may be at most this deep: deeper, Python raises
/// `RecursionError`, and a Rust recursion that deep would overflow the stack.
const MAX_DEPTH: usize = TEMPLATE_RECURSION_LIMIT;

/// The error for a value nested deeper than [`MAX_DEPTH`] or printed longer than
/// [`MAX_RENDERED_BYTES`].
fn too_large(what: &str) -> Error {
    Error::new(
        ErrorKind::InvalidOperation,
        format!(
            "{what} is over the limits of a chat template's values \
             ({MAX_DEPTH} levels, {MAX_RENDERED_BYTES} bytes)"
        ),
    )
}

/// Python's `repr(value)` for the JSON-like values templates handle, at nesting `depth`,
/// appended to `out`.
fn write_repr(out: &mut String, value: &Value, depth: usize) -> Result<(), Error> {
    if depth > MAX_DEPTH || out.len() > MAX_RENDERED_BYTES {
        return Err(too_large("the printed value"));
    }
    match value.kind() {
        ValueKind::Undefined => {}
        ValueKind::None => out.push_str("None"),
        ValueKind::Bool => out.push_str(if value.is_true() { "True" } else { "False" }),
        ValueKind::Number => out.push_str(&python_number(value, FloatStyle::Repr)),
        ValueKind::String => out.push_str(&python_string_repr(value.as_str().unwrap_or_default())),
        ValueKind::Seq | ValueKind::Iterable => {
            out.push('[');
            if let Ok(items) = value.try_iter() {
                for (index, item) in items.enumerate() {
                    if index > 0 {
                        out.push_str(", ");
                    }
                    write_repr(out, &item, depth + 1)?;
                }
            }
            out.push(']');
        }
        ValueKind::Map => {
            out.push('{');
            for (index, (key, item)) in map_entries(value)
                .unwrap_or_default()
                .into_iter()
                .enumerate()
            {
                if index > 0 {
                    out.push_str(", ");
                }
                write_repr(out, &key, depth + 1)?;
                out.push_str(": ");
                write_repr(out, &item, depth + 1)?;
            }
            out.push('}');
        }
        _ => out.push_str(&value.to_string()),
    }
    Ok(())
}

/// Python's `repr(text)`: single quotes unless the text contains a single
/// quote and no double quote.
fn python_string_repr(text: &str) -> String {
    let quote = if text.contains('\'') && !text.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(text.len() + 2);
    out.push(quote);
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// How non-finite floats are spelled: `repr()` says `nan`/`inf`, `json.dumps`
/// says `NaN`/`Infinity`.
#[derive(Clone, Copy)]
enum FloatStyle {
    Repr,
    Json,
}

/// A minijinja number printed the way Python prints the int or float.
fn python_number(value: &Value, style: FloatStyle) -> String {
    if value.is_integer() {
        return value.to_string();
    }
    match f64::try_from(value.clone()) {
        Ok(float) => python_float(float, style),
        Err(_) => value.to_string(),
    }
}

/// Python's `repr(float)`: the shortest round-trip digits, in positional
/// notation when the decimal exponent is in `-4..16`, else scientific with
/// a signed, two-digit-minimum exponent (`1e+16`, `1.5e-05`).
fn python_float(float: f64, style: FloatStyle) -> String {
    if float.is_nan() {
        return match style {
            FloatStyle::Repr => "nan",
            FloatStyle::Json => "NaN",
        }
        .to_owned();
    }
    if float.is_infinite() {
        let text = match style {
            FloatStyle::Repr => "inf",
            FloatStyle::Json => "Infinity",
        };
        return if float < 0.0 {
            format!("-{text}")
        } else {
            text.to_owned()
        };
    }
    let scientific = format!("{float:e}");
    let (mantissa, exponent) = scientific.split_once('e').unwrap_or((&scientific, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    if (-4..16).contains(&exponent) {
        let positional = format!("{float}");
        if positional.contains('.') {
            positional
        } else {
            format!("{positional}.0")
        }
    } else {
        let sign = if exponent < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exponent.abs())
    }
}

/// The key/value pairs of a map value, in its iteration order.
fn map_entries(value: &Value) -> Result<Vec<(Value, Value)>, Error> {
    value
        .try_iter()?
        .map(|key| {
            let item = value.get_item(&key)?;
            Ok((key, item))
        })
        .collect()
}

/// Jinja2's `round(value, precision=0, method='common')`: `common` is
/// Python's `round()`, which rounds halfway cases to even (minijinja's rounds
/// them away from zero); `floor` and `ceil` always give a float.
pub(crate) fn round(
    value: &Value,
    precision: Option<i64>,
    method: Option<String>,
    kwargs: Kwargs,
) -> Result<Value, Error> {
    let precision = match precision {
        Some(precision) => precision,
        None => kwargs.get::<Option<i64>>("precision")?.unwrap_or(0),
    };
    let method = match method {
        Some(method) => method,
        None => kwargs
            .get::<Option<String>>("method")?
            .unwrap_or_else(|| "common".to_owned()),
    };
    kwargs.assert_all_used()?;
    let precision = i32::try_from(precision.clamp(-308, 308)).unwrap_or(0);
    let float = f64::try_from(value.clone())?;
    let scale = 10f64.powi(precision);
    let rounded = match method.as_str() {
        "common" if value.is_integer() && precision >= 0 => return Ok(value.clone()),
        // Formatting rounds the exact binary value half-to-even, like Python.
        "common" if precision >= 0 => format!("{float:.0$}", precision as usize)
            .parse()
            .unwrap_or(float),
        "common" => (float * scale).round_ties_even() / scale,
        "floor" => (float * scale).floor() / scale,
        "ceil" => (float * scale).ceil() / scale,
        _ => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                "method must be common, ceil or floor",
            ));
        }
    };
    Ok(Value::from(rounded))
}

/// Options of Python's `json.dumps` that transformers' `tojson` exposes.
struct JsonOptions {
    ensure_ascii: bool,
    indent: Option<String>,
    item_separator: String,
    key_separator: String,
    sort_keys: bool,
}

impl JsonOptions {
    /// Reads `tojson(ensure_ascii=False, indent=None, separators=None,
    /// sort_keys=False)`; `ensure_ascii` and `indent` may also be positional.
    fn from_args(
        ensure_ascii: Option<Value>,
        indent: Option<Value>,
        kwargs: &Kwargs,
    ) -> Result<Self, Error> {
        let ensure_ascii = match ensure_ascii {
            Some(value) => Some(value),
            None => kwargs.get::<Option<Value>>("ensure_ascii")?,
        };
        let indent = match indent {
            Some(value) => Some(value),
            None => kwargs.get::<Option<Value>>("indent")?,
        };
        let indent = indent.map(|value| json_indent(&value)).transpose()?;
        let separators: Option<Vec<String>> = kwargs.get("separators")?;
        let (item_separator, key_separator) = match separators.as_deref() {
            Some([item, key]) => (item.clone(), key.clone()),
            Some(_) => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    "tojson separators must be a pair of strings",
                ));
            }
            // json.dumps drops the space after commas when indenting.
            None if indent.is_some() => (",".to_owned(), ": ".to_owned()),
            None => (", ".to_owned(), ": ".to_owned()),
        };
        let sort_keys = kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false);
        kwargs.assert_all_used()?;
        Ok(Self {
            ensure_ascii: ensure_ascii.is_some_and(|value| value.is_true()),
            indent,
            item_separator,
            key_separator,
            sort_keys,
        })
    }
}

/// `json.dumps`' `indent`: a number of spaces or the indentation string.
/// At most [`MAX_INDENT`] wide: `json.dumps` takes any width, but a huge one is an attack.
fn json_indent(value: &Value) -> Result<String, Error> {
    let over = |width: usize| {
        Error::new(
            ErrorKind::InvalidOperation,
            format!("tojson indent of {width} characters is over the limit of {MAX_INDENT}"),
        )
    };
    if let Some(text) = value.as_str() {
        if text.chars().count() > MAX_INDENT {
            return Err(over(text.chars().count()));
        }
        return Ok(text.to_owned());
    }
    let spaces = i64::try_from(value.clone()).map_err(|_| {
        Error::new(
            ErrorKind::InvalidOperation,
            "tojson indent must be an integer or a string",
        )
    })?;
    let spaces = usize::try_from(spaces).unwrap_or(0);
    if spaces > MAX_INDENT {
        return Err(over(spaces));
    }
    Ok(" ".repeat(spaces))
}

/// transformers' `tojson` filter: `json.dumps(x, ensure_ascii=False)`, which
/// unlike Jinja's (and minijinja's) does not escape HTML characters and uses
/// Python's `", "` and `": "` separators.
pub(crate) fn tojson(
    value: &Value,
    ensure_ascii: Option<Value>,
    indent: Option<Value>,
    kwargs: Kwargs,
) -> Result<Value, Error> {
    let options = JsonOptions::from_args(ensure_ascii, indent, &kwargs)?;
    let mut out = String::new();
    write_json(&mut out, value, &options, 0)?;
    Ok(Value::from(out))
}

/// Serializes `value` as `json.dumps` would, at nesting `depth`.
fn write_json(
    out: &mut String,
    value: &Value,
    options: &JsonOptions,
    depth: usize,
) -> Result<(), Error> {
    if depth > MAX_DEPTH || out.len() > MAX_RENDERED_BYTES {
        return Err(too_large("the value given to tojson"));
    }
    match value.kind() {
        ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number => out.push_str(&python_number(value, FloatStyle::Json)),
        ValueKind::String => write_json_string(out, value.as_str().unwrap_or_default(), options),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = value.try_iter()?.collect();
            write_json_container(
                out,
                ('[', ']'),
                items.len(),
                options,
                depth,
                |out, index| write_json(out, &items[index], options, depth + 1),
            )?;
        }
        ValueKind::Map => {
            let mut entries = map_entries(value)?;
            if options.sort_keys {
                entries.sort_by_key(|(key, _)| json_key(key));
            }
            write_json_container(
                out,
                ('{', '}'),
                entries.len(),
                options,
                depth,
                |out, index| {
                    let (key, item) = &entries[index];
                    write_json_string(out, &json_key(key), options);
                    out.push_str(&options.key_separator);
                    write_json(out, item, options, depth + 1)
                },
            )?;
        }
        kind => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("object of type {kind} is not JSON serializable"),
            ));
        }
    }
    Ok(())
}

/// Writes a list or dict of `len` items, each written by `write_item`, with
/// `json.dumps`' separators and indentation.
fn write_json_container(
    out: &mut String,
    (open, close): (char, char),
    len: usize,
    options: &JsonOptions,
    depth: usize,
    mut write_item: impl FnMut(&mut String, usize) -> Result<(), Error>,
) -> Result<(), Error> {
    out.push(open);
    if len == 0 {
        out.push(close);
        return Ok(());
    }
    for index in 0..len {
        if index > 0 {
            out.push_str(&options.item_separator);
        }
        if let Some(indent) = &options.indent {
            out.push('\n');
            out.push_str(&indent.repeat(depth + 1));
        }
        write_item(out, index)?;
        if out.len() > MAX_RENDERED_BYTES {
            return Err(too_large("the value given to tojson"));
        }
    }
    if let Some(indent) = &options.indent {
        out.push('\n');
        out.push_str(&indent.repeat(depth));
    }
    out.push(close);
    Ok(())
}

/// A dict key as `json.dumps` converts it: strings stay, `True` becomes
/// `"true"`, `None` becomes `"null"`, numbers are printed.
fn json_key(key: &Value) -> String {
    match key.kind() {
        ValueKind::String => key.as_str().unwrap_or_default().to_owned(),
        ValueKind::None => "null".to_owned(),
        ValueKind::Bool => if key.is_true() { "true" } else { "false" }.to_owned(),
        ValueKind::Number => python_number(key, FloatStyle::Json),
        _ => key.to_string(),
    }
}

/// A JSON string literal as `json.dumps` writes it.
fn write_json_string(out: &mut String, text: &str, options: &JsonOptions) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => push_unicode_escape(out, c),
            c if options.ensure_ascii && !(' '..='~').contains(&c) => push_unicode_escape(out, c),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `\uXXXX`, as a UTF-16 surrogate pair outside the basic multilingual plane.
fn push_unicode_escape(out: &mut String, c: char) {
    let mut units = [0u16; 2];
    for unit in c.encode_utf16(&mut units) {
        let _ = write!(out, "\\u{unit:04x}");
    }
}

/// `strftime_now(format)`: the current time formatted like Python's
/// `datetime.now().strftime(format)`. The time is UTC (the crate has no time
/// zone database).
pub(crate) fn strftime_now(format: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let seconds = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
    strftime(&CivilTime::from_unix(seconds, now.subsec_micros()), format)
}

const WEEKDAYS: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// A UTC calendar date and time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct CivilTime {
    year: i64,
    /// 1..=12
    month: u32,
    /// 1..=31
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
    microsecond: u32,
    /// 0 = Sunday
    weekday: u32,
    /// 1..=366
    day_of_year: u32,
}

impl CivilTime {
    /// The calendar time `seconds` after the Unix epoch.
    fn from_unix(seconds: i64, microsecond: u32) -> Self {
        let days = seconds.div_euclid(86_400);
        let second_of_day = seconds.rem_euclid(86_400) as u32;
        let (year, month, day) = civil_from_days(days);
        Self {
            year,
            month,
            day,
            hour: second_of_day / 3600,
            minute: second_of_day / 60 % 60,
            second: second_of_day % 60,
            microsecond,
            // 1970-01-01 was a Thursday.
            weekday: (days + 4).rem_euclid(7) as u32,
            day_of_year: (days - days_from_civil(year, 1, 1) + 1) as u32,
        }
    }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * shifted_month + 2) / 5 + 1) as u32;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// (year, month, day) to days since 1970-01-01, the inverse of
/// [`civil_from_days`].
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let shifted_month = i64::from((month + 9) % 12);
    let day_of_year = (153 * shifted_month + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// Formats `time` with C/Python `strftime` directives (C locale), including
/// glibc's `%-d` style unpadded variants. Unknown directives are copied.
fn strftime(time: &CivilTime, format: &str) -> String {
    let mut out = String::new();
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let unpadded = chars.next_if_eq(&'-').is_some();
        let Some(directive) = chars.next() else {
            out.push('%');
            if unpadded {
                out.push('-');
            }
            break;
        };
        match strftime_directive(time, directive, unpadded) {
            Some(text) => out.push_str(&text),
            None => {
                out.push('%');
                if unpadded {
                    out.push('-');
                }
                out.push(directive);
            }
        }
    }
    out
}

/// The expansion of one `strftime` directive, or `None` if unknown.
fn strftime_directive(time: &CivilTime, directive: char, unpadded: bool) -> Option<String> {
    let number = |value: i64, width: usize| {
        if unpadded {
            value.to_string()
        } else {
            format!("{value:0width$}")
        }
    };
    let hour12 = match time.hour % 12 {
        0 => 12,
        hour => hour,
    };
    let weekday = WEEKDAYS[time.weekday as usize];
    let month = MONTHS[(time.month - 1) as usize];
    Some(match directive {
        'a' => weekday[..3].to_owned(),
        'A' => weekday.to_owned(),
        'b' | 'h' => month[..3].to_owned(),
        'B' => month.to_owned(),
        'C' => number(time.year.div_euclid(100), 2),
        'c' => strftime(time, "%a %b %e %H:%M:%S %Y"),
        'd' => number(time.day.into(), 2),
        'D' | 'x' => strftime(time, "%m/%d/%y"),
        'e' if unpadded => time.day.to_string(),
        'e' => format!("{:2}", time.day),
        'f' => format!("{:06}", time.microsecond),
        'F' => strftime(time, "%Y-%m-%d"),
        'H' => number(time.hour.into(), 2),
        'I' => number(hour12.into(), 2),
        'j' => number(time.day_of_year.into(), 3),
        'm' => number(time.month.into(), 2),
        'M' => number(time.minute.into(), 2),
        'n' => "\n".to_owned(),
        'p' => if time.hour < 12 { "AM" } else { "PM" }.to_owned(),
        'R' => strftime(time, "%H:%M"),
        'S' => number(time.second.into(), 2),
        't' => "\t".to_owned(),
        'T' | 'X' => strftime(time, "%H:%M:%S"),
        'u' => (if time.weekday == 0 { 7 } else { time.weekday }).to_string(),
        'w' => time.weekday.to_string(),
        'y' => number(time.year.rem_euclid(100), 2),
        'Y' => time.year.to_string(),
        // A naive datetime has no time zone.
        'z' | 'Z' => String::new(),
        '%' => "%".to_owned(),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strftime_formats_like_python() {
        // 2024-07-26 13:05:09 UTC, a Friday.
        let time = CivilTime::from_unix(1_722_000_000 - 1_722_000_000 % 86_400 + 47_109, 42);
        assert_eq!(
            strftime(&time, "%d %b %Y|%A %B %-d|%H:%M:%S %I%p|%j %w %y %f|%Q %%"),
            "26 Jul 2024|Friday July 26|13:05:09 01PM|208 5 24 000042|%Q %"
        );
        assert_eq!(CivilTime::from_unix(951_782_400, 0).day, 29); // 2000-02-29
        assert_eq!(days_from_civil(2000, 2, 29), 951_782_400 / 86_400);
        assert!(!strftime_now("%Y").is_empty());
    }
}
