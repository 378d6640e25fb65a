//! Chat templates: renders a conversation to a prompt string exactly the way
//! Hugging Face transformers' `apply_chat_template` does.
//!
//! transformers renders templates with Jinja2 configured as
//! `ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
//! extensions=[loopcontrols])`, a `tojson` filter that is `json.dumps(x,
//! ensure_ascii=False)`, and the globals `raise_exception` and `strftime_now`.
//! This module recreates that environment on [minijinja], with Python string
//! and dict methods from [`minijinja_contrib::pycompat`] and Python-style
//! printing of `None`, booleans, floats, lists and dicts.

use std::fmt;
use std::sync::Arc;

use minijinja::value::{Enumerator, Object, ObjectRepr};
use minijinja::{Environment, Error, ErrorKind, UndefinedBehavior, Value};
use serde::{Deserialize, Serialize};

use crate::jinja_python::{python_formatter, python_str, round, strftime_now, tojson};
use crate::tokenizer::TokenizerError;

/// Name under which the template is registered; it appears in error locations.
const TEMPLATE_NAME: &str = "chat_template";

/// One message of a conversation, as passed to `apply_chat_template`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: String,
    /// The text of the message.
    pub content: String,
    /// The reasoning ("thinking") that preceded an assistant answer, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
}

impl ChatMessage {
    /// A message with the given role and content, without reasoning.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
            reasoning_content: None,
        }
    }

    /// A `system` message.
    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }

    /// A `user` message.
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }

    /// An `assistant` message.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }

    /// The same message with `reasoning_content` set.
    pub fn with_reasoning_content(mut self, reasoning: impl Into<String>) -> Self {
        self.reasoning_content = Some(reasoning.into());
        self
    }

    /// The message as the dict transformers hands to the template.
    ///
    /// transformers drops keys whose value is `None` and, when a message has
    /// reasoning, also exposes it as `thinking` (read by gpt-oss templates),
    /// giving the key order `thinking, role, content, reasoning_content`.
    fn to_template_value(&self) -> Value {
        let mut entries = Vec::with_capacity(4);
        if let Some(reasoning) = &self.reasoning_content {
            entries.push(("thinking", Value::from(reasoning.as_str())));
        }
        entries.push(("role", Value::from(self.role.as_str())));
        entries.push(("content", Value::from(self.content.as_str())));
        if let Some(reasoning) = &self.reasoning_content {
            entries.push(("reasoning_content", Value::from(reasoning.as_str())));
        }
        Value::from_object(PyDict(entries))
    }
}

/// A dict that keeps its keys in insertion order, like a Python `dict`
/// (minijinja's own maps are sorted by key).
#[derive(Debug)]
struct PyDict(Vec<(&'static str, Value)>);

impl Object for PyDict {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Map
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let key = key.as_str()?;
        self.0
            .iter()
            .find(|(name, _)| *name == key)
            .map(|(_, value)| value.clone())
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        let keys: Vec<Value> = self.0.iter().map(|(name, _)| Value::from(*name)).collect();
        Enumerator::Values(keys)
    }
}

/// A compiled chat template together with the special tokens it may use.
#[derive(Clone)]
pub struct ChatTemplate {
    source: String,
    env: Environment<'static>,
    bos_token: Option<String>,
    eos_token: Option<String>,
}

impl fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("source_len", &self.source.len())
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Compiles a Jinja chat template; `bos_token` and `eos_token` become the
    /// template variables of the same names when given.
    pub fn new(
        source: &str,
        bos_token: Option<String>,
        eos_token: Option<String>,
    ) -> Result<Self, TokenizerError> {
        let mut env = transformers_environment();
        env.add_template_owned(TEMPLATE_NAME, source.to_owned())
            .map_err(TokenizerError::TemplateSyntax)?;
        Ok(Self {
            source: source.to_owned(),
            env,
            bos_token,
            eos_token,
        })
    }

    /// Renders a conversation; with `add_generation_prompt` the prompt ends
    /// with the header of a new assistant turn.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, TokenizerError> {
        self.render_with_kwargs(messages, add_generation_prompt, &serde_json::Map::new())
    }

    /// Renders a conversation with extra template variables, like the keyword
    /// arguments of transformers' `apply_chat_template` (for example
    /// `enable_thinking: false` for Qwen3). Extra variables override
    /// `bos_token` and `eos_token` but not `messages`, `add_generation_prompt`,
    /// `tools` or `documents`.
    pub fn render_with_kwargs(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        kwargs: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<String, TokenizerError> {
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(TokenizerError::TemplateRender)?;
        let context = self.context(messages, add_generation_prompt, kwargs);
        template.render(context).map_err(render_error)
    }

    /// The template text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The variables the template sees, mirroring transformers'
    /// `render(messages=..., tools=None, documents=None,
    /// add_generation_prompt=..., **special_tokens_map, **kwargs)`.
    fn context(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        kwargs: &serde_json::Map<String, serde_json::Value>,
    ) -> Value {
        let mut entries: Vec<(String, Value)> = Vec::new();
        let special = [
            ("bos_token", &self.bos_token),
            ("eos_token", &self.eos_token),
        ];
        for (name, token) in special {
            if let Some(token) = token {
                entries.push((name.to_owned(), Value::from(token.as_str())));
            }
        }
        for (name, value) in kwargs {
            entries.push((name.clone(), Value::from_serialize(value)));
        }
        let messages: Vec<Value> = messages
            .iter()
            .map(ChatMessage::to_template_value)
            .collect();
        entries.push(("messages".to_owned(), Value::from(messages)));
        entries.push(("tools".to_owned(), Value::from(())));
        entries.push(("documents".to_owned(), Value::from(())));
        entries.push((
            "add_generation_prompt".to_owned(),
            Value::from(add_generation_prompt),
        ));
        // Later entries win, like Python keyword arguments merged into a dict.
        entries.into_iter().collect()
    }
}

/// The minijinja counterpart of transformers' Jinja2 environment.
fn transformers_environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_keep_trailing_newline(false);
    env.set_undefined_behavior(UndefinedBehavior::Lenient);
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.set_formatter(python_formatter);
    env.add_filter("tojson", tojson);
    env.add_filter("round", round);
    env.add_function("raise_exception", raise_exception);
    env.add_function("strftime_now", strftime_now);
    env
}

/// Marks an error raised by the template through `raise_exception`.
#[derive(Debug)]
struct RaisedException(String);

impl fmt::Display for RaisedException {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RaisedException {}

/// `raise_exception(message)`: aborts rendering with the message.
fn raise_exception(message: Value) -> Result<Value, Error> {
    let message = match message.as_str() {
        Some(text) => text.to_owned(),
        None => python_str(&message),
    };
    Err(Error::new(ErrorKind::InvalidOperation, message.clone())
        .with_source(RaisedException(message)))
}

/// Sorts a rendering error into an exception raised by the template or any
/// other failure.
fn render_error(error: Error) -> TokenizerError {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&error);
    while let Some(current) = cause {
        if let Some(raised) = current.downcast_ref::<RaisedException>() {
            return TokenizerError::TemplateException(raised.0.clone());
        }
        cause = current.source();
    }
    TokenizerError::TemplateRender(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(source: &str, messages: &[ChatMessage], add_generation_prompt: bool) -> String {
        ChatTemplate::new(source, Some("<s>".into()), Some("</s>".into()))
            .unwrap()
            .render(messages, add_generation_prompt)
            .unwrap()
    }

    fn render_expr(expr: &str) -> String {
        render(expr, &[], false)
    }

    #[test]
    fn variables_and_whitespace_control_match_jinja2() {
        let source = "{{ bos_token }}\n{% for m in messages %}\n  {% if true %}\n[{{ m.role }}]{{ m.content }}\n  {% endif %}\n{% endfor %}\n{% if add_generation_prompt %}go{% endif %}\n";
        let messages = [ChatMessage::user("hi"), ChatMessage::assistant("yo")];
        // trim_blocks eats the newline after a block tag, lstrip_blocks the
        // indentation before it, and the final newline is dropped.
        assert_eq!(
            render(source, &messages, true),
            "<s>\n[user]hi\n[assistant]yo\ngo"
        );
        assert_eq!(
            render(source, &messages, false),
            "<s>\n[user]hi\n[assistant]yo\n"
        );
    }

    #[test]
    fn tools_is_none_and_unknown_variables_are_empty() {
        assert_eq!(
            render_expr("{% if tools %}T{% else %}F{% endif %}|{{ tools is none }}|{{ nothing }}|"),
            "F|True||"
        );
    }

    #[test]
    fn python_string_methods_and_slicing_work() {
        let source = "{{ messages[::-1][0].content.split('</think>')[-1].lstrip('\\n') }}|{{ 'ab'.startswith('a') }}|{{ '  x '.strip() }}|{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + loop.index0 %}{% endfor %}{{ ns.n }}";
        let messages = [
            ChatMessage::user("a"),
            ChatMessage::assistant("<think>r</think>\n\nanswer"),
        ];
        assert_eq!(render(source, &messages, false), "answer|True|x|1");
    }

    #[test]
    fn reasoning_content_is_defined_only_when_set() {
        let source = "{% for m in messages %}{{ m.reasoning_content is defined }}:{{ m.thinking }};{% endfor %}";
        let messages = [
            ChatMessage::assistant("a"),
            ChatMessage::assistant("b").with_reasoning_content("why"),
        ];
        assert_eq!(render(source, &messages, false), "False:;True:why;");
    }

    #[test]
    fn messages_keep_python_dict_key_order() {
        let source = "{% for m in messages %}{{ m|tojson }}{{ m.keys()|list }}{% endfor %}";
        let messages = [ChatMessage::assistant("b").with_reasoning_content("r")];
        assert_eq!(
            render(source, &messages, false),
            r#"{"thinking": "r", "role": "assistant", "content": "b", "reasoning_content": "r"}['thinking', 'role', 'content', 'reasoning_content']"#
        );
    }

    #[test]
    fn values_print_like_python() {
        assert_eq!(
            render_expr(
                "{{ none }} {{ true }} {{ [1, 'a', none] }} {{ {'k': false} }} {{ 1.0 }} {{ 1e16 }} {{ 0.00001 }} {{ 3 }}"
            ),
            "None True [1, 'a', None] {'k': False} 1.0 1e+16 1e-05 3"
        );
    }

    #[test]
    fn round_matches_jinja2() {
        assert_eq!(
            render_expr(
                r#"{{ 2.5|round }} {{ 3|round }} {{ 3|round(method="floor") }} {{ 2.675|round(2) }} {{ -2.5|round }} {{ 2.45|round(1, "ceil") }} {{ 1234.5|round(-2) }}"#
            ),
            "2.0 3 3.0 2.67 -2.0 2.5 1200.0"
        );
    }

    #[test]
    fn tojson_matches_python_json_dumps() {
        assert_eq!(
            render_expr(r#"{{ {"a": "<é>\n", "b": [1, 2.5, true, none]}|tojson }}"#),
            r#"{"a": "<é>\n", "b": [1, 2.5, true, null]}"#
        );
        assert_eq!(
            render_expr(r#"{{ {"a": [1, {}], "b": []}|tojson(indent=2) }}"#),
            "{\n  \"a\": [\n    1,\n    {}\n  ],\n  \"b\": []\n}"
        );
        assert_eq!(
            render_expr(
                r#"{{ {"b": 1, "a": "é😀"}|tojson(ensure_ascii=true, sort_keys=true, separators=[",", ":"]) }}"#
            ),
            r#"{"a":"\u00e9\ud83d\ude00","b":1}"#
        );
    }

    #[test]
    fn raise_exception_is_an_error_with_the_message() {
        let template =
            ChatTemplate::new("{{ raise_exception('no system role') }}", None, None).unwrap();
        match template.render(&[], false) {
            Err(TokenizerError::TemplateException(message)) => {
                assert_eq!(message, "no system role")
            }
            other => panic!("expected a template exception, got {other:?}"),
        }
    }

    #[test]
    fn syntax_and_render_errors_are_errors() {
        assert!(matches!(
            ChatTemplate::new("{% for m in messages %}", None, None),
            Err(TokenizerError::TemplateSyntax(_))
        ));
        let template = ChatTemplate::new("{{ messages[0].content.foo.bar }}", None, None).unwrap();
        let error = template
            .render(&[ChatMessage::user("x")], false)
            .unwrap_err();
        assert!(
            matches!(error, TokenizerError::TemplateRender(_)),
            "{error:?}"
        );
        assert!(
            error.to_string().starts_with("chat template render error"),
            "{error}"
        );
    }

    #[test]
    fn kwargs_reach_the_template() {
        let template = ChatTemplate::new(
            "{% if enable_thinking is defined and enable_thinking is false %}off{% endif %}",
            None,
            None,
        )
        .unwrap();
        let mut kwargs = serde_json::Map::new();
        kwargs.insert("enable_thinking".into(), serde_json::Value::Bool(false));
        assert_eq!(
            template.render_with_kwargs(&[], true, &kwargs).unwrap(),
            "off"
        );
        assert_eq!(template.render(&[], true).unwrap(), "");
    }

    #[test]
    fn chat_message_serde_skips_missing_reasoning() {
        let json = serde_json::to_string(&ChatMessage::user("hi")).unwrap();
        assert_eq!(json, r#"{"role":"user","content":"hi"}"#);
        let parsed: ChatMessage = serde_json::from_str(json.as_str()).unwrap();
        assert_eq!(parsed, ChatMessage::user("hi"));
    }
}
