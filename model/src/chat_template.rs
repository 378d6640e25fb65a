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
//!
//! A template comes from a checkpoint, that is from a stranger, so rendering is bounded:
//! [`TEMPLATE_FUEL`] instructions, [`TEMPLATE_RECURSION_LIMIT`] levels of nesting,
//! [`MAX_RENDERED_BYTES`] of output (`tojson` and `indent` included), and indentation widths of
//! at most [`MAX_INDENT`]. A template that loops or explodes fails in well under a second with
//! [`TokenizerError::TemplateLimit`] instead of hanging or aborting the role that renders it.

use std::fmt;
use std::io;
use std::sync::Arc;

use minijinja::value::{Enumerator, Kwargs, Object, ObjectRepr, StringInput};
use minijinja::{Environment, Error, ErrorKind, UndefinedBehavior, Value};
use serde::{Deserialize, Serialize};

use crate::jinja_python::{python_formatter, python_str, round, strftime_now, tojson};
use crate::tokenizer::TokenizerError;

/// Name under which the template is registered; it appears in error locations.
const TEMPLATE_NAME: &str = "chat_template";

/// Instructions one rendering may execute. Qwen3's template spends about 56 per message, so this
/// is over 17,000 messages' worth, and a render that uses it all stops within a tenth of a
/// second. It also bounds how deep a template can nest a value (about one level per
/// instruction), which [`TEMPLATE_STACK_BYTES`] must hold when the value is freed.
pub const TEMPLATE_FUEL: u64 = 1_000_000;

/// Nesting (loops, conditions, macro calls) one rendering may reach; the templates in use need
/// fewer than 20 levels, and the limit keeps a recursive macro from overflowing the stack.
pub const TEMPLATE_RECURSION_LIMIT: usize = 100;

/// Bytes one rendering may write, and one `tojson` may produce: far over any prompt a model's
/// context holds (128K tokens are about 0.5 MB of text).
pub const MAX_RENDERED_BYTES: usize = 16 << 20;

/// The stack of the thread a template renders on: address space reserved, touched only as deep
/// as a rendering goes. Freeing a list nested as deep as [`TEMPLATE_FUEL`] allows takes under
/// 80 MiB (measured: the densest nesting this fuel allows overflows 16 MiB; 1.3 million levels
/// fit in 96 MiB).
const TEMPLATE_STACK_BYTES: usize = 256 << 20;

/// The widest indentation `tojson(indent=...)` and `indent(width)` accept.
pub const MAX_INDENT: usize = 1024;

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
        // On a thread of its own: a template can nest a value as deep as its fuel allows, and
        // freeing such a value recurses once per level, deeper than a default stack goes.
        std::thread::scope(|scope| {
            let rendering = std::thread::Builder::new()
                .name("chat-template".into())
                .stack_size(TEMPLATE_STACK_BYTES)
                .spawn_scoped(scope, || {
                    self.render_here(messages, add_generation_prompt, kwargs)
                })
                .map_err(|e| {
                    TokenizerError::TemplateLimit(format!("cannot start the rendering thread: {e}"))
                })?;
            rendering.join().unwrap_or_else(|_| {
                Err(TokenizerError::TemplateLimit(
                    "the rendering thread panicked".to_owned(),
                ))
            })
        })
    }

    /// [`Self::render_with_kwargs`] on the calling thread.
    fn render_here(
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
        let mut out = CappedOutput::default();
        if let Err(error) = template.render_captured_to(context, &mut out) {
            if out.overflowed {
                return Err(TokenizerError::TemplateLimit(format!(
                    "the rendered text passed {MAX_RENDERED_BYTES} bytes"
                )));
            }
            return Err(render_error(error));
        }
        // The formatter writes whole `str`s, so the bytes are UTF-8; a cut cannot happen, as an
        // overflowing write is refused whole.
        String::from_utf8(out.bytes)
            .map_err(|_| TokenizerError::TemplateLimit("the rendered text is not UTF-8".to_owned()))
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

/// The output of one rendering, refusing any write past [`MAX_RENDERED_BYTES`].
#[derive(Default)]
struct CappedOutput {
    bytes: Vec<u8>,
    overflowed: bool,
}

impl io::Write for CappedOutput {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.bytes.len() + buf.len() > MAX_RENDERED_BYTES {
            self.overflowed = true;
            return Err(io::Error::other("rendered text over its limit"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// minijinja's `indent` filter, refusing widths over [`MAX_INDENT`] (its own allocates any
/// width it is given, and a huge one aborts the process).
fn bounded_indent(
    value: StringInput<'_>,
    width: Option<usize>,
    first: Option<bool>,
    blank: Option<bool>,
    kwargs: Kwargs,
) -> Result<Value, Error> {
    let asked = match width {
        Some(width) => Some(width),
        None => kwargs.get::<Option<usize>>("width")?,
    };
    if let Some(width) = asked.filter(|width| *width > MAX_INDENT) {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("indent width {width} is over the limit of {MAX_INDENT}"),
        ));
    }
    minijinja::filters::indent(value, width, first, blank, kwargs)
}

/// The minijinja counterpart of transformers' Jinja2 environment, with the limits that make a
/// stranger's template safe to render.
fn transformers_environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_fuel(Some(TEMPLATE_FUEL));
    env.set_recursion_limit(TEMPLATE_RECURSION_LIMIT);
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_keep_trailing_newline(false);
    env.set_undefined_behavior(UndefinedBehavior::Lenient);
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.set_formatter(python_formatter);
    env.add_filter("tojson", tojson);
    env.add_filter("round", round);
    env.add_filter("indent", bounded_indent);
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

/// Sorts a rendering error into an exception raised by the template, a limit reached, or any
/// other failure.
fn render_error(error: Error) -> TokenizerError {
    if error.kind() == ErrorKind::OutOfFuel {
        return TokenizerError::TemplateLimit(format!(
            "it ran {TEMPLATE_FUEL} instructions without finishing ({error})"
        ));
    }
    if error
        .detail()
        .is_some_and(|detail| detail.contains("recursion limit"))
    {
        return TokenizerError::TemplateLimit(format!(
            "it nested deeper than {TEMPLATE_RECURSION_LIMIT} levels ({error})"
        ));
    }
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

    /// The limit an untrusted template reached, or a panic naming what it did instead.
    fn limit_reached(source: &str) -> String {
        let template = ChatTemplate::new(source, None, None).unwrap();
        match template.render(&[ChatMessage::user("x")], false) {
            Err(TokenizerError::TemplateLimit(message)) => message,
            other => panic!("{source}: {other:?}"),
        }
    }

    #[test]
    fn a_looping_template_runs_out_of_fuel() {
        // The template of the issue: 10^10 iterations, which would run for hours.
        let message = limit_reached(
            "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
        );
        assert!(message.contains("1000000 instructions"), "{message}");
        let error = TokenizerError::TemplateLimit(message);
        assert!(
            error
                .to_string()
                .starts_with("chat template stopped at a limit: it ran"),
            "{error}"
        );
    }

    #[test]
    fn a_recursive_macro_stops_at_the_recursion_limit() {
        let message =
            limit_reached("{% macro down(n) %}{{ down(n + 1) }}{% endmacro %}{{ down(0) }}");
        assert!(message.contains("deeper than 100 levels"), "{message}");
    }

    #[test]
    fn an_exploding_output_stops_at_its_size_limit() {
        // 100 MB strings printed 100 times: 10 GB of output from 300 instructions.
        let message = limit_reached(
            "{% set s = 'a' * 100000000 %}{% for i in range(100) %}{{ s }}{% endfor %}",
        );
        assert!(message.contains("16777216 bytes"), "{message}");
    }

    #[test]
    fn huge_indents_and_deep_values_are_refused_not_aborted() {
        for source in [
            "{{ messages | tojson(indent=100000000000) }}",
            "{{ messages | tojson(indent=' ' * 5000) }}",
            "{{ 'a\nb' | indent(100000000000) }}",
            "{{ 'a\nb' | indent(width=5000) }}",
        ] {
            let template = ChatTemplate::new(source, None, None).unwrap();
            let error = template
                .render(&[ChatMessage::user("x")], false)
                .unwrap_err();
            assert!(
                error.to_string().contains("over the limit of 1024"),
                "{source}: {error}"
            );
        }
        // A list nested 5,000 deep, built within the fuel, printed and serialised.
        let deep = "{% set ns = namespace(x=[]) %}{% for i in range(5000) %}{% set ns.x = [ns.x] %}{% endfor %}";
        for print in ["{{ ns.x }}", "{{ ns.x | tojson }}"] {
            let source = format!("{deep}{print}");
            let template = ChatTemplate::new(&source, None, None).unwrap();
            let error = template.render(&[], false).unwrap_err();
            assert!(error.to_string().contains("100 levels"), "{print}: {error}");
        }
        // A 100 MB string in a list of 1,000: each serialisation would be 100 GB.
        let wide = "{% set s = 'a' * 100000000 %}{% set l = [s] * 1000 %}";
        for print in ["{{ l }}", "{{ l | tojson }}"] {
            let source = format!("{wide}{print}");
            let template = ChatTemplate::new(&source, None, None).unwrap();
            let error = template.render(&[], false).unwrap_err();
            assert!(
                error.to_string().contains("16777216 bytes"),
                "{print}: {error}"
            );
        }
        // Within the limits, indentation works as before.
        assert_eq!(render_expr("{{ [1] | tojson(indent=2) }}"), "[\n  1\n]");
        assert_eq!(render_expr("{{ 'a\nb' | indent(2) }}"), "a\n  b");
    }

    #[test]
    fn real_templates_use_a_small_part_of_the_fuel() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures");
        for dir in ["qwen3-tokenizer", "models/llama31-rm-tiny"] {
            let config: serde_json::Value = serde_json::from_slice(
                &std::fs::read(format!("{root}/{dir}/tokenizer_config.json")).unwrap(),
            )
            .unwrap();
            let source = config["chat_template"].as_str().unwrap();
            let template = ChatTemplate::new(source, None, None).unwrap();
            let messages: Vec<ChatMessage> = (0..200)
                .map(|i| {
                    if i % 2 == 0 {
                        ChatMessage::user(format!("question {i}"))
                    } else {
                        ChatMessage::assistant(format!("answer {i}"))
                    }
                })
                .collect();
            let context = template.context(&messages, true, &serde_json::Map::new());
            let captured = template
                .env
                .get_template(TEMPLATE_NAME)
                .unwrap()
                .render_captured_to(context, io::sink())
                .unwrap();
            let (used, _) = captured.state().fuel_levels().unwrap();
            eprintln!("{dir}: {used} instructions for 200 messages");
            assert!(used < TEMPLATE_FUEL / 20, "{dir}: {used}");
        }
    }

    #[test]
    fn a_value_nested_as_deep_as_the_fuel_allows_is_dropped_safely() {
        // As deep as the fuel lets a template nest a list (ten levels per statement, nearly one
        // per instruction): rendering stops at the fuel, and the value is freed without
        // overflowing the stack.
        let source = "{% set ns = namespace(x=[]) %}{% for i in range(100000) %}{% for j in range(100) %}{% set ns.x = [[[[[[[[[[ns.x]]]]]]]]]] %}{% endfor %}{% endfor %}done";
        let message = limit_reached(source);
        assert!(message.contains("instructions"), "{message}");
    }
}
