//! Hugging Face tokenizers: `tokenizer.json` through the `tokenizers` crate,
//! plus the special tokens and chat template of `tokenizer_config.json` and
//! the stop tokens of `generation_config.json`.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use serde_json::Value as Json;

use crate::chat_template::{ChatMessage, ChatTemplate};

/// The file holding the vocabulary, normalizer, pre-tokenizer and model.
const TOKENIZER_FILE: &str = "tokenizer.json";
/// Special tokens and the chat template.
const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";
/// The generation defaults, among them the end-of-sequence ids.
const GENERATION_CONFIG_FILE: &str = "generation_config.json";
/// Newer transformers versions save the chat template in its own file, which
/// takes precedence over `tokenizer_config.json`'s `chat_template`.
const CHAT_TEMPLATE_FILE: &str = "chat_template.jinja";

/// Tokens that chat templates write after each message; those that appear in
/// the template text stop generation.
const END_OF_TURN_TOKENS: &[&str] = &[
    "<|im_end|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end|>",
    "<end_of_turn>",
    "</s>",
];

/// Special tokens that end a document; they always stop generation (Qwen3's
/// and Llama 3's generation configs list them next to the end-of-turn token).
const END_OF_TEXT_TOKENS: &[&str] = &["<|endoftext|>", "<|end_of_text|>"];

/// Everything that can go wrong loading or using a tokenizer.
#[derive(thiserror::Error, Debug)]
pub enum TokenizerError {
    /// A required file does not exist.
    #[error("missing {}", path.display())]
    MissingFile {
        /// The file that was looked for.
        path: PathBuf,
    },
    /// A file exists but cannot be read.
    #[error("cannot read {}: {error}", path.display())]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        error: io::Error,
    },
    /// A file is not valid JSON.
    #[error("invalid JSON in {file}: {error}")]
    InvalidJson {
        /// The file (or object-store location).
        file: String,
        /// The parser's message.
        error: serde_json::Error,
    },
    /// `tokenizer.json` is JSON but not a tokenizer the `tokenizers` crate accepts.
    #[error("invalid tokenizer in {file}: {message}")]
    InvalidTokenizer {
        /// The file (or object-store location).
        file: String,
        /// What the `tokenizers` crate reported.
        message: String,
    },
    /// A field of a configuration file has the wrong type or value.
    #[error("invalid {field} in {file}: {reason}")]
    InvalidConfig {
        /// The file (or object-store location).
        file: String,
        /// The offending field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A configuration file names a token that is not in the vocabulary.
    #[error("unknown token {token:?} as {field} in {file}")]
    UnknownToken {
        /// The file (or object-store location).
        file: String,
        /// The field naming the token.
        field: &'static str,
        /// The token.
        token: String,
    },
    /// A token id outside the vocabulary.
    #[error("unknown token id {id} (vocabulary size {vocab_size})")]
    UnknownTokenId {
        /// The id.
        id: u32,
        /// The vocabulary size, added tokens included.
        vocab_size: usize,
    },
    /// The chat template does not parse.
    #[error("chat template syntax error: {0}")]
    TemplateSyntax(minijinja::Error),
    /// The chat template failed while rendering.
    #[error("chat template render error: {0}")]
    TemplateRender(minijinja::Error),
    /// The chat template stopped at one of the limits that bound an untrusted template
    /// (instructions, nesting, output size, indentation).
    #[error("chat template stopped at a limit: {0}")]
    TemplateLimit(String),
    /// The chat template called `raise_exception(message)`, usually because
    /// the conversation has a shape the model does not support.
    #[error("chat template raised an exception: {0}")]
    TemplateException(String),
    /// The tokenizer has no chat template.
    #[error("no chat template in {0}")]
    NoChatTemplate(String),
    /// The `tokenizers` crate failed to encode text.
    #[error("cannot encode text: {0}")]
    Encode(String),
    /// The `tokenizers` crate failed to decode ids.
    #[error("cannot decode token ids: {0}")]
    Decode(String),
}

/// A Hugging Face tokenizer with its chat template and generation stop tokens.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Where the files came from, for error messages.
    source: String,
    chat_template: Option<ChatTemplate>,
    bos_token: Option<String>,
    eos_token: Option<String>,
    /// Stop ids named by the configuration files.
    configured_stop_ids: Vec<u32>,
    stop_token_ids: Vec<u32>,
    pad_token_id: Option<u32>,
}

impl fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokenizer")
            .field("source", &self.source)
            .field("vocab_size", &self.vocab_size())
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .field("stop_token_ids", &self.stop_token_ids)
            .field("pad_token_id", &self.pad_token_id)
            .field("has_chat_template", &self.chat_template.is_some())
            .finish_non_exhaustive()
    }
}

impl Tokenizer {
    /// Loads `tokenizer.json` (required), `tokenizer_config.json` (optional:
    /// chat template and bos/eos/pad tokens), `generation_config.json`
    /// (optional: `eos_token_id`, `pad_token_id`) and `chat_template.jinja`
    /// (optional; overrides the config's template) from a model directory.
    pub fn from_dir(dir: &Path) -> Result<Self, TokenizerError> {
        let tokenizer_path = dir.join(TOKENIZER_FILE);
        let tokenizer_json = read_file(&tokenizer_path)?.ok_or(TokenizerError::MissingFile {
            path: tokenizer_path,
        })?;
        let config = read_file(&dir.join(TOKENIZER_CONFIG_FILE))?;
        let generation = read_file(&dir.join(GENERATION_CONFIG_FILE))?;
        let template_path = dir.join(CHAT_TEMPLATE_FILE);
        let template = read_file(&template_path)?
            .map(|bytes| {
                String::from_utf8(bytes).map_err(|err| TokenizerError::InvalidConfig {
                    file: template_path.display().to_string(),
                    field: "chat template",
                    reason: err.to_string(),
                })
            })
            .transpose()?;
        let files = ConfigFiles {
            tokenizer_json: &tokenizer_json,
            tokenizer_config_json: config.as_deref(),
            generation_config_json: generation.as_deref(),
            chat_template: template.as_deref(),
        };
        Self::from_files(files, &dir.display().to_string())
    }

    /// Like [`from_dir`](Self::from_dir), from the contents of the files (for
    /// object stores); `source` names their location in error messages.
    pub fn from_bytes(
        tokenizer_json: &[u8],
        tokenizer_config_json: Option<&[u8]>,
        generation_config_json: Option<&[u8]>,
        source: &str,
    ) -> Result<Self, TokenizerError> {
        let files = ConfigFiles {
            tokenizer_json,
            tokenizer_config_json,
            generation_config_json,
            chat_template: None,
        };
        Self::from_files(files, source)
    }

    /// The same tokenizer with another chat template (for example the
    /// contents of a `chat_template.jinja`); the stop tokens are recomputed.
    pub fn with_chat_template(mut self, source: &str) -> Result<Self, TokenizerError> {
        let template = ChatTemplate::new(source, self.bos_token.clone(), self.eos_token.clone())?;
        self.chat_template = Some(template);
        self.stop_token_ids = self.collect_stop_token_ids();
        Ok(self)
    }

    fn from_files(files: ConfigFiles<'_>, source: &str) -> Result<Self, TokenizerError> {
        let inner = parse_tokenizer(files.tokenizer_json, &file_label(source, TOKENIZER_FILE))?;
        let config = match files.tokenizer_config_json {
            Some(bytes) => {
                TokenizerConfig::parse(bytes, &file_label(source, TOKENIZER_CONFIG_FILE))?
            }
            None => TokenizerConfig::default(),
        };
        let generation = match files.generation_config_json {
            Some(bytes) => {
                GenerationConfig::parse(bytes, &file_label(source, GENERATION_CONFIG_FILE))?
            }
            None => GenerationConfig::default(),
        };
        let template_source = files
            .chat_template
            .map(str::to_owned)
            .or(config.chat_template);
        let chat_template = template_source
            .map(|text| {
                ChatTemplate::new(&text, config.bos_token.clone(), config.eos_token.clone())
            })
            .transpose()?;
        let mut tokenizer = Self {
            inner,
            source: source.to_owned(),
            chat_template,
            bos_token: config.bos_token,
            eos_token: config.eos_token,
            configured_stop_ids: Vec::new(),
            stop_token_ids: Vec::new(),
            pad_token_id: None,
        };
        let config_file = file_label(source, TOKENIZER_CONFIG_FILE);
        if let Some(bos) = &tokenizer.bos_token {
            tokenizer.require_token(bos, "bos_token", &config_file)?;
        }
        let pad_from_config = config
            .pad_token
            .as_deref()
            .map(|pad| tokenizer.require_token(pad, "pad_token", &config_file))
            .transpose()?;
        tokenizer.pad_token_id = pad_from_config.or(generation.pad_token_id);
        let mut stops = generation.eos_token_ids;
        if let Some(eos) = &tokenizer.eos_token {
            stops.push(tokenizer.require_token(eos, "eos_token", &config_file)?);
        }
        tokenizer.configured_stop_ids = stops;
        tokenizer.stop_token_ids = tokenizer.collect_stop_token_ids();
        Ok(tokenizer)
    }

    /// The id of a token that a configuration file names, or an error.
    fn require_token(
        &self,
        token: &str,
        field: &'static str,
        file: &str,
    ) -> Result<u32, TokenizerError> {
        self.token_to_id(token)
            .ok_or_else(|| TokenizerError::UnknownToken {
                file: file.to_owned(),
                field,
                token: token.to_owned(),
            })
    }

    /// The configured stop ids plus the template's end-of-turn tokens and the
    /// special end-of-text tokens, deduplicated and sorted.
    fn collect_stop_token_ids(&self) -> Vec<u32> {
        let mut ids = self.configured_stop_ids.clone();
        if let Some(template) = &self.chat_template {
            ids.extend(
                END_OF_TURN_TOKENS
                    .iter()
                    .filter(|token| template.source().contains(*token))
                    .filter_map(|token| self.token_to_id(token)),
            );
        }
        ids.extend(
            END_OF_TEXT_TOKENS
                .iter()
                .filter(|token| self.inner.get_added_vocabulary().is_special_token(token))
                .filter_map(|token| self.token_to_id(token)),
        );
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Encodes text to token ids; `add_special_tokens` applies the
    /// tokenizer's post-processor (e.g. Llama 3 prepends `<|begin_of_text|>`).
    /// Special tokens written in the text are always recognized.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, TokenizerError> {
        let encoding = self
            .inner
            .encode_fast(text, add_special_tokens)
            .map_err(|err| TokenizerError::Encode(err.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Decodes token ids to text, leaving out special tokens if asked.
    /// Ids outside the vocabulary are an error.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, TokenizerError> {
        if let Some(&id) = ids.iter().find(|&&id| self.inner.id_to_token(id).is_none()) {
            return Err(TokenizerError::UnknownTokenId {
                id,
                vocab_size: self.vocab_size(),
            });
        }
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|err| TokenizerError::Decode(err.to_string()))
    }

    /// The number of tokens, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The id of a token (a vocabulary entry or an added token).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The token of an id.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The ids that end generation: `generation_config.json`'s
    /// `eos_token_id`s, `tokenizer_config.json`'s `eos_token`, the end-of-turn
    /// tokens the chat template writes (`<|im_end|>`, `<|eot_id|>`, ...) and
    /// the special end-of-text tokens (`<|endoftext|>`, `<|end_of_text|>`);
    /// sorted, without duplicates.
    pub fn stop_token_ids(&self) -> &[u32] {
        &self.stop_token_ids
    }

    /// Whether `id` ends generation.
    pub fn is_stop_token(&self, id: u32) -> bool {
        self.stop_token_ids.binary_search(&id).is_ok()
    }

    /// The padding id: `tokenizer_config.json`'s `pad_token`, else
    /// `generation_config.json`'s `pad_token_id`.
    pub fn pad_token_id(&self) -> Option<u32> {
        self.pad_token_id
    }

    /// `tokenizer_config.json`'s `bos_token`.
    pub fn bos_token(&self) -> Option<&str> {
        self.bos_token.as_deref()
    }

    /// `tokenizer_config.json`'s `eos_token`.
    pub fn eos_token(&self) -> Option<&str> {
        self.eos_token.as_deref()
    }

    /// The chat template, if the tokenizer has one.
    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.chat_template.as_ref()
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Renders messages with the chat template, like transformers'
    /// `apply_chat_template(tokenize=False)`.
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, TokenizerError> {
        self.require_chat_template()?
            .render(messages, add_generation_prompt)
    }

    /// Renders messages, then encodes the text without adding special tokens:
    /// exactly transformers' `apply_chat_template(tokenize=True)`.
    pub fn encode_chat(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>, TokenizerError> {
        let text = self.apply_chat_template(messages, add_generation_prompt)?;
        self.encode(&text, false)
    }

    fn require_chat_template(&self) -> Result<&ChatTemplate, TokenizerError> {
        self.chat_template
            .as_ref()
            .ok_or_else(|| TokenizerError::NoChatTemplate(self.source.clone()))
    }
}

/// The raw contents of a tokenizer's files.
struct ConfigFiles<'a> {
    tokenizer_json: &'a [u8],
    tokenizer_config_json: Option<&'a [u8]>,
    generation_config_json: Option<&'a [u8]>,
    chat_template: Option<&'a str>,
}

/// `source/file`, naming a file in error messages.
fn file_label(source: &str, file: &str) -> String {
    format!("{}/{file}", source.trim_end_matches('/'))
}

/// Reads a file; `Ok(None)` if it does not exist.
fn read_file(path: &Path) -> Result<Option<Vec<u8>>, TokenizerError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(TokenizerError::ReadFile {
            path: path.to_owned(),
            error,
        }),
    }
}

/// Parses `tokenizer.json`, telling JSON syntax errors from unsupported
/// tokenizers.
fn parse_tokenizer(bytes: &[u8], file: &str) -> Result<tokenizers::Tokenizer, TokenizerError> {
    tokenizers::Tokenizer::from_bytes(bytes).map_err(|err| {
        match err.downcast::<serde_json::Error>() {
            Ok(error) if !error.is_data() => TokenizerError::InvalidJson {
                file: file.to_owned(),
                error: *error,
            },
            Ok(error) => TokenizerError::InvalidTokenizer {
                file: file.to_owned(),
                message: error.to_string(),
            },
            Err(other) => TokenizerError::InvalidTokenizer {
                file: file.to_owned(),
                message: other.to_string(),
            },
        }
    })
}

/// Parses a JSON configuration file, which must hold an object.
fn parse_json_object(
    bytes: &[u8],
    file: &str,
) -> Result<serde_json::Map<String, Json>, TokenizerError> {
    let value: Json =
        serde_json::from_slice(bytes).map_err(|error| TokenizerError::InvalidJson {
            file: file.to_owned(),
            error,
        })?;
    match value {
        Json::Object(map) => Ok(map),
        other => Err(TokenizerError::InvalidConfig {
            file: file.to_owned(),
            field: "top level",
            reason: format!("expected an object, found {}", json_type(&other)),
        }),
    }
}

/// The JSON type of a value, for error messages.
fn json_type(value: &Json) -> &'static str {
    match value {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

/// What `tokenizer_config.json` contributes.
#[derive(Debug, Default)]
struct TokenizerConfig {
    chat_template: Option<String>,
    bos_token: Option<String>,
    eos_token: Option<String>,
    pad_token: Option<String>,
}

impl TokenizerConfig {
    fn parse(bytes: &[u8], file: &str) -> Result<Self, TokenizerError> {
        let map = parse_json_object(bytes, file)?;
        Ok(Self {
            chat_template: chat_template_field(map.get("chat_template"), file)?,
            bos_token: special_token_field(&map, "bos_token", file)?,
            eos_token: special_token_field(&map, "eos_token", file)?,
            pad_token: special_token_field(&map, "pad_token", file)?,
        })
    }
}

/// A special token: a string, `null`, or an `AddedToken` object
/// `{"content": ...}`.
fn special_token_field(
    map: &serde_json::Map<String, Json>,
    field: &'static str,
    file: &str,
) -> Result<Option<String>, TokenizerError> {
    match map.get(field) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(token)) => Ok(Some(token.clone())),
        Some(Json::Object(object)) => match object.get("content") {
            Some(Json::String(token)) => Ok(Some(token.clone())),
            _ => Err(invalid_config(
                file,
                field,
                "an AddedToken object without a string content",
            )),
        },
        Some(other) => Err(invalid_config(
            file,
            field,
            &format!("expected a string or an object, found {}", json_type(other)),
        )),
    }
}

/// `chat_template`: a string, `null`, or a list of `{"name", "template"}`
/// of which the one named `default` is used (or the only one).
fn chat_template_field(value: Option<&Json>, file: &str) -> Result<Option<String>, TokenizerError> {
    const FIELD: &str = "chat_template";
    let entries = match value {
        None | Some(Json::Null) => return Ok(None),
        Some(Json::String(template)) => return Ok(Some(template.clone())),
        Some(Json::Array(entries)) => entries,
        Some(other) => {
            let reason = format!("expected a string or a list, found {}", json_type(other));
            return Err(invalid_config(file, FIELD, &reason));
        }
    };
    let mut named = Vec::with_capacity(entries.len());
    for entry in entries {
        match (entry.get("name"), entry.get("template")) {
            (Some(Json::String(name)), Some(Json::String(template))) => {
                named.push((name, template))
            }
            _ => {
                let reason = "expected entries with string name and template";
                return Err(invalid_config(file, FIELD, reason));
            }
        }
    }
    if let Some((_, template)) = named.iter().find(|(name, _)| *name == "default") {
        return Ok(Some((*template).clone()));
    }
    match named.as_slice() {
        [(_, template)] => Ok(Some((*template).clone())),
        _ => {
            tracing::warn!(
                file,
                "several chat templates and none named default; using none"
            );
            Ok(None)
        }
    }
}

fn invalid_config(file: &str, field: &'static str, reason: &str) -> TokenizerError {
    TokenizerError::InvalidConfig {
        file: file.to_owned(),
        field,
        reason: reason.to_owned(),
    }
}

/// What `generation_config.json` contributes.
#[derive(Debug, Default)]
struct GenerationConfig {
    eos_token_ids: Vec<u32>,
    pad_token_id: Option<u32>,
}

impl GenerationConfig {
    fn parse(bytes: &[u8], file: &str) -> Result<Self, TokenizerError> {
        let map = parse_json_object(bytes, file)?;
        let eos_token_ids = match map.get("eos_token_id") {
            None | Some(Json::Null) => Vec::new(),
            Some(Json::Array(ids)) => ids
                .iter()
                .map(|id| token_id(id, "eos_token_id", file))
                .collect::<Result<_, _>>()?,
            Some(id) => vec![token_id(id, "eos_token_id", file)?],
        };
        let pad_token_id = match map.get("pad_token_id") {
            None | Some(Json::Null) => None,
            Some(id) => Some(token_id(id, "pad_token_id", file)?),
        };
        Ok(Self {
            eos_token_ids,
            pad_token_id,
        })
    }
}

/// A token id: a non-negative integer that fits in `u32`.
fn token_id(value: &Json, field: &'static str, file: &str) -> Result<u32, TokenizerError> {
    value
        .as_u64()
        .and_then(|id| u32::try_from(id).ok())
        .ok_or_else(|| invalid_config(file, field, &format!("expected a token id, found {value}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::OnceLock;

    const QWEN3_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/qwen3-tokenizer");
    const TINY_LLAMA_DIR: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../fixtures/tiny-llama-tokenizer"
    );
    const REFERENCE_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/reference");

    /// The Qwen3 tokenizer, loaded once for all tests.
    fn qwen3() -> &'static Tokenizer {
        static TOKENIZER: OnceLock<Tokenizer> = OnceLock::new();
        TOKENIZER.get_or_init(|| Tokenizer::from_dir(Path::new(QWEN3_DIR)).unwrap())
    }

    /// The tiny Llama-3-style tokenizer, if its fixture exists.
    fn tiny_llama() -> Option<&'static Tokenizer> {
        static TOKENIZER: OnceLock<Option<Tokenizer>> = OnceLock::new();
        TOKENIZER
            .get_or_init(|| {
                let dir = Path::new(TINY_LLAMA_DIR);
                dir.join(TOKENIZER_FILE)
                    .exists()
                    .then(|| Tokenizer::from_dir(dir).unwrap())
            })
            .as_ref()
    }

    #[derive(serde::Deserialize)]
    struct Reference {
        cases: Vec<ReferenceCase>,
        encode: Vec<ReferenceEncode>,
    }

    #[derive(serde::Deserialize)]
    struct ReferenceCase {
        name: String,
        messages: Vec<ChatMessage>,
        add_generation_prompt: bool,
        text: String,
        ids: Vec<u32>,
    }

    #[derive(serde::Deserialize)]
    struct ReferenceEncode {
        text: String,
        ids: Vec<u32>,
    }

    /// Reference outputs of transformers, if the fixture exists.
    fn reference(file: &str) -> Option<Reference> {
        let path = Path::new(REFERENCE_DIR).join(file);
        let bytes = std::fs::read(&path).ok()?;
        Some(serde_json::from_slice(&bytes).unwrap())
    }

    /// Checks every reference case and encoding against `tokenizer`.
    fn check_reference(tokenizer: &Tokenizer, reference: &Reference) {
        assert!(!reference.cases.is_empty());
        for case in &reference.cases {
            let text = tokenizer
                .apply_chat_template(&case.messages, case.add_generation_prompt)
                .unwrap();
            assert_eq!(text, case.text, "case {}: rendered text", case.name);
            let ids = tokenizer
                .encode_chat(&case.messages, case.add_generation_prompt)
                .unwrap();
            assert_eq!(ids, case.ids, "case {}: ids", case.name);
            assert_eq!(
                tokenizer.decode(&ids, false).unwrap(),
                case.text,
                "case {}: decode",
                case.name
            );
        }
        for case in &reference.encode {
            let ids = tokenizer.encode(&case.text, false).unwrap();
            assert_eq!(ids, case.ids, "encoding {:?}", case.text);
            assert_eq!(tokenizer.decode(&ids, false).unwrap(), case.text);
        }
    }

    #[test]
    fn qwen3_matches_transformers_reference() {
        match reference("chat_template.json") {
            Some(reference) => check_reference(qwen3(), &reference),
            None => eprintln!("skipping: fixtures/reference/chat_template.json is missing"),
        }
    }

    #[test]
    fn tiny_llama_matches_transformers_reference() {
        match (tiny_llama(), reference("chat_template_tiny_llama.json")) {
            (Some(tokenizer), Some(reference)) => check_reference(tokenizer, &reference),
            _ => eprintln!("skipping: the tiny Llama tokenizer or its reference is missing"),
        }
    }

    #[test]
    fn tokenizer_is_shareable_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Tokenizer>();
        assert_send_sync::<ChatTemplate>();
    }

    #[test]
    fn qwen3_special_tokens() {
        let tokenizer = qwen3();
        assert_eq!(tokenizer.vocab_size(), 151_669);
        assert_eq!(tokenizer.token_to_id("<|im_end|>"), Some(151_645));
        assert_eq!(tokenizer.token_to_id("<|endoftext|>"), Some(151_643));
        assert_eq!(tokenizer.token_to_id("no such token ✗"), None);
        assert_eq!(tokenizer.bos_token(), None);
        assert_eq!(tokenizer.eos_token(), Some("<|im_end|>"));
        assert_eq!(tokenizer.pad_token_id(), Some(151_643));
        assert_eq!(tokenizer.stop_token_ids(), &[151_643, 151_645]);
        assert!(tokenizer.is_stop_token(151_645));
        assert!(!tokenizer.is_stop_token(0));
        assert!(tokenizer.chat_template().is_some());
    }

    #[test]
    fn tiny_llama_stops_at_end_of_turn() {
        let Some(tokenizer) = tiny_llama() else {
            eprintln!("skipping: fixtures/tiny-llama-tokenizer is missing");
            return;
        };
        let eot = tokenizer.token_to_id("<|eot_id|>").unwrap();
        assert!(tokenizer.stop_token_ids().contains(&eot));
    }

    #[test]
    fn qwen3_renders_a_conversation() {
        let messages = [
            ChatMessage::system("Be brief."),
            ChatMessage::user("2+2?"),
            ChatMessage::assistant("<think>\nadd\n</think>\n\n4"),
            ChatMessage::user("3+3?"),
        ];
        let text = qwen3().apply_chat_template(&messages, true).unwrap();
        assert_eq!(
            text,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n\
             <|im_start|>assistant\n4<|im_end|>\n<|im_start|>user\n3+3?<|im_end|>\n\
             <|im_start|>assistant\n"
        );
        let ids = qwen3().encode_chat(&messages, true).unwrap();
        assert_eq!(ids[0], 151_644); // <|im_start|>
        assert_eq!(qwen3().decode(&ids, false).unwrap(), text);
    }

    #[test]
    fn qwen3_keeps_reasoning_of_the_last_turn() {
        let messages = [
            ChatMessage::user("hi"),
            ChatMessage::assistant("hello").with_reasoning_content("greet back"),
        ];
        assert_eq!(
            qwen3().apply_chat_template(&messages, false).unwrap(),
            "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\ngreet back\n</think>\n\nhello<|im_end|>\n"
        );
    }

    #[test]
    fn encode_decode_round_trip() {
        let tokenizer = qwen3();
        for text in [
            "Hello, world!",
            "  leading spaces\n\ttabs",
            "日本語 und Ümlaute 🦀",
            "",
        ] {
            let ids = tokenizer.encode(text, true).unwrap();
            assert_eq!(tokenizer.decode(&ids, false).unwrap(), text);
        }
        let ids = tokenizer
            .encode("<|im_start|>user\nhi<|im_end|>", false)
            .unwrap();
        assert_eq!(ids.first(), Some(&151_644));
        assert_eq!(ids.last(), Some(&151_645));
        assert_eq!(tokenizer.decode(&ids, true).unwrap(), "user\nhi");
    }

    #[test]
    fn decode_rejects_unknown_ids() {
        let error = qwen3().decode(&[1, 999_999], false).unwrap_err();
        assert!(
            matches!(error, TokenizerError::UnknownTokenId { id: 999_999, .. }),
            "{error}"
        );
    }

    #[test]
    fn missing_dir_is_an_error() {
        let error = Tokenizer::from_dir(Path::new("/nonexistent/tokenizer/dir")).unwrap_err();
        assert!(
            matches!(error, TokenizerError::MissingFile { .. }),
            "{error}"
        );
        assert_eq!(
            error.to_string(),
            "missing /nonexistent/tokenizer/dir/tokenizer.json"
        );
    }

    #[test]
    fn corrupt_tokenizer_json_is_an_error() {
        let error = Tokenizer::from_bytes(b"{\"model\": ", None, None, "mem://x").unwrap_err();
        assert!(
            matches!(error, TokenizerError::InvalidJson { .. }),
            "{error}"
        );
        assert!(
            error
                .to_string()
                .starts_with("invalid JSON in mem://x/tokenizer.json: "),
            "{error}"
        );
        let error = Tokenizer::from_bytes(b"{\"model\": 3}", None, None, "mem://x").unwrap_err();
        assert!(
            matches!(error, TokenizerError::InvalidTokenizer { .. }),
            "{error}"
        );
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(TOKENIZER_FILE), b"\xff\xfe garbage").unwrap();
        assert!(Tokenizer::from_dir(dir.path()).is_err());
    }

    /// A tiny word-level tokenizer with `<eos>` and `<|im_end|>` added.
    const TINY_TOKENIZER_JSON: &str = r#"{
        "version": "1.0",
        "added_tokens": [
            {"id": 3, "content": "<|im_end|>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
            {"id": 4, "content": "<eos>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}
        ],
        "pre_tokenizer": {"type": "Whitespace"},
        "model": {"type": "WordLevel", "vocab": {"<unk>": 0, "hello": 1, "world": 2}, "unk_token": "<unk>"}
    }"#;

    fn tiny(config: Option<&str>, generation: Option<&str>) -> Result<Tokenizer, TokenizerError> {
        Tokenizer::from_bytes(
            TINY_TOKENIZER_JSON.as_bytes(),
            config.map(str::as_bytes),
            generation.map(str::as_bytes),
            "mem://tiny",
        )
    }

    #[test]
    fn configs_set_special_tokens_and_stops() {
        let config = r#"{"eos_token": {"__type": "AddedToken", "content": "<eos>"}, "pad_token": null,
            "chat_template": "{% for m in messages %}{{ m.content }}<|im_end|>{% endfor %}"}"#;
        let generation = r#"{"eos_token_id": [2, 4], "pad_token_id": 0}"#;
        let tokenizer = tiny(Some(config), Some(generation)).unwrap();
        assert_eq!(tokenizer.eos_token(), Some("<eos>"));
        assert_eq!(tokenizer.stop_token_ids(), &[2, 3, 4]);
        assert_eq!(tokenizer.pad_token_id(), Some(0));
        assert_eq!(tokenizer.vocab_size(), 5);
        let ids = tokenizer
            .encode_chat(&[ChatMessage::user("hello world")], false)
            .unwrap();
        assert_eq!(ids, [1, 2, 3]);

        let tokenizer = tiny(None, Some(r#"{"eos_token_id": 1}"#)).unwrap();
        assert_eq!(tokenizer.stop_token_ids(), &[1]);
        assert_eq!(tokenizer.pad_token_id(), None);
    }

    #[test]
    fn chat_template_list_uses_default() {
        let config = r#"{"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]}"#;
        let tokenizer = tiny(Some(config), None).unwrap();
        assert_eq!(tokenizer.chat_template().unwrap().source(), "D");
    }

    #[test]
    fn bad_configs_are_errors() {
        let cases: [(Option<&str>, Option<&str>); 6] = [
            (Some("{"), None),
            (Some("[]"), None),
            (Some(r#"{"eos_token": 3}"#), None),
            (Some(r#"{"eos_token": "<nope>"}"#), None),
            (Some(r#"{"chat_template": "{% if %}"}"#), None),
            (None, Some(r#"{"eos_token_id": [-1]}"#)),
        ];
        for (config, generation) in cases {
            let result = tiny(config, generation);
            assert!(result.is_err(), "{config:?} {generation:?} loaded");
        }
        let error = tiny(Some(r#"{"eos_token": "<nope>"}"#), None).unwrap_err();
        assert_eq!(
            error.to_string(),
            "unknown token \"<nope>\" as eos_token in mem://tiny/tokenizer_config.json"
        );
    }

    #[test]
    fn template_errors_surface() {
        let tokenizer = tiny(None, None).unwrap();
        let error = tokenizer.apply_chat_template(&[], false).unwrap_err();
        assert!(
            matches!(error, TokenizerError::NoChatTemplate(_)),
            "{error}"
        );
        assert_eq!(error.to_string(), "no chat template in mem://tiny");

        let tokenizer = tokenizer
            .with_chat_template("{{ raise_exception('only user messages') }}")
            .unwrap();
        let error = tokenizer
            .encode_chat(&[ChatMessage::user("x")], false)
            .unwrap_err();
        assert!(
            matches!(error, TokenizerError::TemplateException(ref m) if m == "only user messages"),
            "{error}"
        );
    }

    #[test]
    fn from_dir_prefers_chat_template_jinja() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(TOKENIZER_FILE), TINY_TOKENIZER_JSON).unwrap();
        std::fs::write(
            dir.path().join(TOKENIZER_CONFIG_FILE),
            r#"{"chat_template": "config"}"#,
        )
        .unwrap();
        std::fs::write(dir.path().join(CHAT_TEMPLATE_FILE), "jinja<|im_end|>").unwrap();
        let tokenizer = Tokenizer::from_dir(dir.path()).unwrap();
        assert_eq!(
            tokenizer.apply_chat_template(&[], false).unwrap(),
            "jinja<|im_end|>"
        );
        assert_eq!(tokenizer.stop_token_ids(), &[3]);
    }
}
