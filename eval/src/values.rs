//! Reading untrusted JSON values, with messages that say what was found instead.

use serde_json::Value;

/// The JSON type of a value, with an article, for messages ("expected a string, found a
/// number").
pub fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// A list of strings, or what is wrong with it.
pub(crate) fn strings(value: &Value) -> Result<Vec<String>, String> {
    let items = value.as_array().ok_or("not a list")?;
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            item.as_str()
                .map(str::to_string)
                .ok_or_else(|| format!("item {i} is not a string"))
        })
        .collect()
}
