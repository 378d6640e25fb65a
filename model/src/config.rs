//! Hugging Face `config.json` → [`ModelConfig`].
//!
//! Only what the decoder needs is read; options that would change the computation and that
//! we do not implement (sliding windows, other activations, other RoPE scalings) are refused
//! with an error naming the option, rather than silently computing something else.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// The decoder family, from `model_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Architecture {
    /// `qwen3`: RMSNorm on q and k per head, `head_dim` independent of the hidden size.
    Qwen3,
    /// `llama`: Llama 2/3.x, optional attention and MLP biases, `llama3` RoPE scaling.
    Llama,
}

impl Architecture {
    /// The `model_type` string of this family.
    pub fn model_type(self) -> &'static str {
        match self {
            Architecture::Qwen3 => "qwen3",
            Architecture::Llama => "llama",
        }
    }

    /// The Hugging Face class name prefix (`Qwen3`, `Llama`).
    pub fn class_prefix(self) -> &'static str {
        match self {
            Architecture::Qwen3 => "Qwen3",
            Architecture::Llama => "Llama",
        }
    }
}

/// What sits on top of the decoder, from `architectures[0]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadKind {
    /// `*ForCausalLM`: vocabulary logits at every position (tied or untied to the embedding).
    CausalLm,
    /// `*ForSequenceClassification`: a bias-free `score` head read at the last real token;
    /// Bradley–Terry reward models are stored this way, with one label.
    SequenceClassification { num_labels: usize },
    /// `*ForTokenClassification`: a `score` head with bias at every token; with one label this
    /// is the PPO critic's value head.
    TokenClassification { num_labels: usize },
}

impl HeadKind {
    fn class_suffix(self) -> &'static str {
        match self {
            HeadKind::CausalLm => "ForCausalLM",
            HeadKind::SequenceClassification { .. } => "ForSequenceClassification",
            HeadKind::TokenClassification { .. } => "ForTokenClassification",
        }
    }
}

/// Llama 3.x frequency-dependent RoPE scaling (`rope_type: llama3`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Llama3RopeScaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: f64,
}

/// The decoder's hyper-parameters as read from `config.json`.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub head: HeadKind,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<Llama3RopeScaling>,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub attention_bias: bool,
    pub mlp_bias: bool,
    pub pad_token_id: Option<u32>,
    /// The dtype the checkpoint says it was stored in (`torch_dtype` or `dtype`), if any.
    pub stored_dtype: Option<String>,
    /// The original JSON object; saving writes it back with only the changed keys updated,
    /// so keys we do not interpret survive a load/save round trip.
    pub raw: Map<String, Value>,
}

impl ModelConfig {
    /// Reads and validates `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::read(path, e))?;
        Self::from_json_str(&text, path)
    }

    /// Parses a `config.json` text; `path` is only used in error messages.
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self> {
        let value: Value = serde_json::from_str(text).map_err(|error| Error::Json {
            path: path.to_path_buf(),
            error,
        })?;
        let Value::Object(raw) = value else {
            return Err(Error::config(path, "expected a JSON object"));
        };
        Reader { path, raw: &raw }.parse()
    }

    /// The Hugging Face class name, e.g. `Qwen3ForCausalLM`.
    pub fn class_name(&self) -> String {
        format!(
            "{}{}",
            self.architecture.class_prefix(),
            self.head.class_suffix()
        )
    }

    /// Query heads per key/value head (grouped-query attention).
    pub fn kv_groups(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads
    }

    /// The same decoder with another head, for a critic made from a policy's config or a
    /// policy made from a reward model's.
    pub fn with_head(&self, head: HeadKind) -> Self {
        let mut config = self.clone();
        config.head = head;
        if head != HeadKind::CausalLm {
            config.tie_word_embeddings = false;
        }
        config
    }

    /// The JSON written as `config.json` when saving: the original keys, with the class,
    /// the head and the stored dtype brought up to date.
    pub fn to_json(&self, stored_dtype: &str) -> Value {
        let mut raw = self.raw.clone();
        raw.insert(
            "architectures".into(),
            Value::Array(vec![Value::String(self.class_name())]),
        );
        raw.insert(
            "model_type".into(),
            Value::String(self.architecture.model_type().into()),
        );
        raw.insert(
            "tie_word_embeddings".into(),
            Value::Bool(self.tie_word_embeddings),
        );
        match self.head {
            HeadKind::CausalLm => {
                raw.remove("id2label");
                raw.remove("label2id");
                raw.remove("num_labels");
            }
            HeadKind::SequenceClassification { num_labels }
            | HeadKind::TokenClassification { num_labels } => {
                let id2label: Map<String, Value> = (0..num_labels)
                    .map(|i| (i.to_string(), Value::String(format!("LABEL_{i}"))))
                    .collect();
                let label2id: Map<String, Value> = (0..num_labels)
                    .map(|i| (format!("LABEL_{i}"), Value::from(i)))
                    .collect();
                raw.insert("id2label".into(), Value::Object(id2label));
                raw.insert("label2id".into(), Value::Object(label2id));
                raw.remove("num_labels");
            }
        }
        // transformers 5 writes `dtype`; 4.x reads `torch_dtype`. Write both so either loads it.
        raw.insert("dtype".into(), Value::String(stored_dtype.into()));
        raw.insert("torch_dtype".into(), Value::String(stored_dtype.into()));
        Value::Object(raw)
    }
}

/// Typed access to the keys of one config object, with errors naming the file and key.
struct Reader<'a> {
    path: &'a Path,
    raw: &'a Map<String, Value>,
}

impl Reader<'_> {
    fn parse(&self) -> Result<ModelConfig> {
        let architecture = self.architecture()?;
        let head = self.head(architecture)?;
        self.refuse_unsupported()?;

        let hidden_size = self.usize_required("hidden_size")?;
        let num_attention_heads = self.usize_required("num_attention_heads")?;
        let num_key_value_heads = self
            .usize_optional("num_key_value_heads")?
            .unwrap_or(num_attention_heads);
        let head_dim = match (self.usize_optional("head_dim")?, architecture) {
            (Some(head_dim), _) => head_dim,
            (None, Architecture::Qwen3) => 128, // Qwen3Config's default
            (None, Architecture::Llama) => hidden_size / num_attention_heads.max(1),
        };
        let (rope_theta, rope_scaling) = self.rope()?;

        let config = ModelConfig {
            architecture,
            head,
            vocab_size: self.usize_required("vocab_size")?,
            hidden_size,
            intermediate_size: self.usize_required("intermediate_size")?,
            num_hidden_layers: self.usize_required("num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: self.f64_optional("rms_norm_eps")?.unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            max_position_embeddings: self
                .usize_optional("max_position_embeddings")?
                .unwrap_or(32768),
            tie_word_embeddings: self.bool_optional("tie_word_embeddings")?.unwrap_or(false),
            attention_bias: self.bool_optional("attention_bias")?.unwrap_or(false),
            mlp_bias: self.bool_optional("mlp_bias")?.unwrap_or(false),
            pad_token_id: self.usize_optional("pad_token_id")?.map(|id| id as u32),
            stored_dtype: self
                .string_optional("dtype")?
                .or(self.string_optional("torch_dtype")?),
            raw: self.raw.clone(),
        };
        self.validate(&config)?;
        Ok(config)
    }

    fn architecture(&self) -> Result<Architecture> {
        match self.string_optional("model_type")?.as_deref() {
            Some("qwen3") => Ok(Architecture::Qwen3),
            Some("llama") => Ok(Architecture::Llama),
            Some(other) => Err(Error::unsupported(
                self.path,
                format!("unknown model_type \"{other}\" (supported: qwen3, llama)"),
            )),
            None => Err(Error::config(self.path, "missing key model_type")),
        }
    }

    fn head(&self, architecture: Architecture) -> Result<HeadKind> {
        let class = match self.raw.get("architectures") {
            None | Some(Value::Null) => return Ok(HeadKind::CausalLm),
            Some(Value::Array(items)) => match items.first() {
                None => return Ok(HeadKind::CausalLm),
                Some(Value::String(class)) => class.clone(),
                Some(_) => {
                    return Err(Error::config(
                        self.path,
                        "architectures must be a list of strings",
                    ));
                }
            },
            Some(_) => {
                return Err(Error::config(
                    self.path,
                    "architectures must be a list of strings",
                ));
            }
        };
        let prefix = architecture.class_prefix();
        let suffix = class.strip_prefix(prefix).ok_or_else(|| {
            Error::unsupported(
                self.path,
                format!("architecture {class} does not match model_type {architecture:?}"),
            )
        })?;
        match suffix {
            "ForCausalLM" => Ok(HeadKind::CausalLm),
            "ForSequenceClassification" => Ok(HeadKind::SequenceClassification {
                num_labels: self.num_labels()?,
            }),
            "ForTokenClassification" => Ok(HeadKind::TokenClassification {
                num_labels: self.num_labels()?,
            }),
            _ => Err(Error::unsupported(
                self.path,
                format!(
                    "unknown architecture {class} (supported: {prefix}ForCausalLM, \
                     {prefix}ForSequenceClassification, {prefix}ForTokenClassification)"
                ),
            )),
        }
    }

    /// transformers derives `num_labels` from `id2label`, defaulting to 2.
    fn num_labels(&self) -> Result<usize> {
        if let Some(Value::Object(id2label)) = self.raw.get("id2label") {
            return Ok(id2label.len());
        }
        Ok(self.usize_optional("num_labels")?.unwrap_or(2))
    }

    fn refuse_unsupported(&self) -> Result<()> {
        if let Some(act) = self.string_optional("hidden_act")?
            && act != "silu"
        {
            return Err(Error::unsupported(
                self.path,
                format!("hidden_act \"{act}\" (only silu is implemented)"),
            ));
        }
        if self.bool_optional("use_sliding_window")? == Some(true) {
            return Err(Error::unsupported(
                self.path,
                "use_sliding_window = true (sliding-window attention is not implemented)",
            ));
        }
        if let Some(Value::Array(types)) = self.raw.get("layer_types")
            && let Some(other) = types.iter().find(|t| t.as_str() != Some("full_attention"))
        {
            return Err(Error::unsupported(
                self.path,
                format!("layer_types entry {other} (only full_attention is implemented)"),
            ));
        }
        if let Some(tp) = self.usize_optional("pretraining_tp")?
            && tp > 1
        {
            return Err(Error::unsupported(
                self.path,
                format!("pretraining_tp = {tp} (only 1 is implemented)"),
            ));
        }
        Ok(())
    }

    /// RoPE base and scaling, from `rope_theta` / `rope_scaling` (transformers 4) or
    /// `rope_parameters` (transformers 5).
    fn rope(&self) -> Result<(f64, Option<Llama3RopeScaling>)> {
        let params = match (
            self.raw.get("rope_parameters"),
            self.raw.get("rope_scaling"),
        ) {
            (Some(Value::Object(p)), _) | (_, Some(Value::Object(p))) => Some(p),
            (Some(Value::Null) | None, Some(Value::Null) | None) => None,
            _ => {
                return Err(Error::config(
                    self.path,
                    "rope_parameters / rope_scaling must be an object or null",
                ));
            }
        };
        let theta_from_params = params
            .and_then(|p| p.get("rope_theta"))
            .and_then(Value::as_f64);
        let rope_theta = match theta_from_params {
            Some(theta) => theta,
            None => self.f64_optional("rope_theta")?.unwrap_or(10000.0),
        };
        let Some(params) = params else {
            return Ok((rope_theta, None));
        };
        let rope_type = params
            .get("rope_type")
            .or_else(|| params.get("type"))
            .and_then(Value::as_str)
            .unwrap_or("default");
        match rope_type {
            "default" => Ok((rope_theta, None)),
            "llama3" => {
                let get = |key: &str| -> Result<f64> {
                    params.get(key).and_then(Value::as_f64).ok_or_else(|| {
                        Error::config(self.path, format!("llama3 rope scaling needs {key}"))
                    })
                };
                let original = match params.get("original_max_position_embeddings") {
                    Some(v) => v.as_f64().ok_or_else(|| {
                        Error::config(
                            self.path,
                            "original_max_position_embeddings must be a number",
                        )
                    })?,
                    None => self
                        .usize_optional("max_position_embeddings")?
                        .unwrap_or(8192) as f64,
                };
                Ok((
                    rope_theta,
                    Some(Llama3RopeScaling {
                        factor: get("factor")?,
                        low_freq_factor: get("low_freq_factor")?,
                        high_freq_factor: get("high_freq_factor")?,
                        original_max_position_embeddings: original,
                    }),
                ))
            }
            other => Err(Error::unsupported(
                self.path,
                format!("rope_type \"{other}\" (supported: default, llama3)"),
            )),
        }
    }

    fn validate(&self, c: &ModelConfig) -> Result<()> {
        let positive = [
            ("vocab_size", c.vocab_size),
            ("hidden_size", c.hidden_size),
            ("intermediate_size", c.intermediate_size),
            ("num_hidden_layers", c.num_hidden_layers),
            ("num_attention_heads", c.num_attention_heads),
            ("num_key_value_heads", c.num_key_value_heads),
            ("head_dim", c.head_dim),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(Error::config(self.path, format!("{key} must be positive")));
            }
        }
        if !c.num_attention_heads.is_multiple_of(c.num_key_value_heads) {
            return Err(Error::config(
                self.path,
                format!(
                    "num_attention_heads ({}) must be a multiple of num_key_value_heads ({})",
                    c.num_attention_heads, c.num_key_value_heads
                ),
            ));
        }
        if !c.head_dim.is_multiple_of(2) {
            return Err(Error::config(
                self.path,
                format!(
                    "head_dim ({}) must be even for rotary embeddings",
                    c.head_dim
                ),
            ));
        }
        if let HeadKind::SequenceClassification { num_labels }
        | HeadKind::TokenClassification { num_labels } = c.head
            && num_labels == 0
        {
            return Err(Error::config(self.path, "num_labels must be positive"));
        }
        if c.tie_word_embeddings && c.head != HeadKind::CausalLm {
            // transformers ignores tying for classification heads; so do we.
            tracing::debug!(path = %self.path.display(), "tie_word_embeddings ignored for a classification head");
        }
        Ok(())
    }

    fn get(&self, key: &str) -> Option<&Value> {
        self.raw.get(key).filter(|v| !v.is_null())
    }

    fn usize_required(&self, key: &str) -> Result<usize> {
        self.usize_optional(key)?
            .ok_or_else(|| Error::config(self.path, format!("missing key {key}")))
    }

    fn usize_optional(&self, key: &str) -> Result<Option<usize>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_u64().map(|n| Some(n as usize)).ok_or_else(|| {
                Error::config(
                    self.path,
                    format!("{key} must be a non-negative integer, found {v}"),
                )
            }),
        }
    }

    fn f64_optional(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| {
                Error::config(self.path, format!("{key} must be a number, found {v}"))
            }),
        }
    }

    fn bool_optional(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_bool().map(Some).ok_or_else(|| {
                Error::config(self.path, format!("{key} must be true or false, found {v}"))
            }),
        }
    }

    fn string_optional(&self, key: &str) -> Result<Option<String>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(Error::config(
                self.path,
                format!("{key} must be a string, found {v}"),
            )),
        }
    }
}

/// The path of `config.json` inside a model directory.
pub fn config_path(dir: &Path) -> PathBuf {
    dir.join("config.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<ModelConfig> {
        ModelConfig::from_json_str(json, Path::new("config.json"))
    }

    const QWEN3: &str = r#"{"model_type":"qwen3","architectures":["Qwen3ForCausalLM"],
        "vocab_size":100,"hidden_size":16,"intermediate_size":32,"num_hidden_layers":2,
        "num_attention_heads":4,"num_key_value_heads":2,"head_dim":8,"rope_theta":1000000.0,
        "tie_word_embeddings":true}"#;

    #[test]
    fn reads_qwen3() {
        let c = parse(QWEN3).unwrap();
        assert_eq!(c.architecture, Architecture::Qwen3);
        assert_eq!(c.head, HeadKind::CausalLm);
        assert_eq!((c.head_dim, c.kv_groups()), (8, 2));
        assert_eq!(c.rope_theta, 1e6);
        assert!(c.tie_word_embeddings);
        assert_eq!(c.class_name(), "Qwen3ForCausalLM");
    }

    #[test]
    fn reads_llama3_scaling_in_both_spellings() {
        let legacy = r#"{"model_type":"llama","architectures":["LlamaForSequenceClassification"],
            "vocab_size":100,"hidden_size":16,"intermediate_size":32,"num_hidden_layers":2,
            "num_attention_heads":4,"rope_theta":500000.0,"id2label":{"0":"LABEL_0"},
            "rope_scaling":{"rope_type":"llama3","factor":8.0,"low_freq_factor":1.0,
            "high_freq_factor":4.0,"original_max_position_embeddings":8192}}"#;
        let v5 = r#"{"model_type":"llama","vocab_size":100,"hidden_size":16,"intermediate_size":32,
            "num_hidden_layers":2,"num_attention_heads":4,
            "rope_parameters":{"rope_type":"llama3","rope_theta":500000.0,"factor":8.0,
            "low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":8192}}"#;
        let a = parse(legacy).unwrap();
        let b = parse(v5).unwrap();
        assert_eq!(a.rope_scaling, b.rope_scaling);
        assert_eq!(a.rope_theta, b.rope_theta);
        assert_eq!(a.head, HeadKind::SequenceClassification { num_labels: 1 });
        assert_eq!(a.head_dim, 4);
    }

    #[test]
    fn refuses_what_it_cannot_compute() {
        let cases = [
            (
                r#""model_type":"mistral""#,
                "unknown model_type \"mistral\"",
            ),
            (
                r#""model_type":"qwen3","hidden_act":"gelu""#,
                "hidden_act \"gelu\"",
            ),
            (
                r#""model_type":"qwen3","use_sliding_window":true"#,
                "use_sliding_window",
            ),
            (
                r#""model_type":"llama","rope_scaling":{"rope_type":"yarn","factor":4.0}"#,
                "rope_type \"yarn\"",
            ),
            (
                r#""model_type":"qwen3","architectures":["Qwen3ForQuestionAnswering"]"#,
                "unknown architecture Qwen3ForQuestionAnswering",
            ),
        ];
        for (extra, expected) in cases {
            let json = format!(
                r#"{{{extra},"vocab_size":10,"hidden_size":8,"intermediate_size":8,
                "num_hidden_layers":1,"num_attention_heads":2}}"#
            );
            let err = parse(&json).unwrap_err().to_string();
            assert!(err.contains(expected), "{err} should mention {expected}");
        }
    }

    #[test]
    fn names_missing_and_mistyped_keys() {
        let err = parse(r#"{"model_type":"qwen3"}"#).unwrap_err().to_string();
        assert!(err.contains("missing key"), "{err}");
        let err = parse(
            r#"{"model_type":"qwen3","vocab_size":"many","hidden_size":8,"intermediate_size":8,
            "num_hidden_layers":1,"num_attention_heads":2}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("vocab_size must be a non-negative integer"),
            "{err}"
        );
    }

    #[test]
    fn round_trips_unknown_keys() {
        let c = parse(QWEN3).unwrap();
        let json = c.to_json("float32");
        let back = ModelConfig::from_json_str(&json.to_string(), Path::new("x")).unwrap();
        assert_eq!(back.vocab_size, c.vocab_size);
        assert_eq!(json["torch_dtype"], "float32");
    }
}
