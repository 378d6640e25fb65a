//! The decoder with its head: built from a checkpoint (or randomly), run forward, saved back
//! in the Hugging Face layout.

use std::path::Path;

use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Int, Tensor, TensorData};

use crate::attention::AttentionSpec;
use crate::backend::ModelBackend;
use crate::config::{HeadKind, ModelConfig};
use crate::engine::SlotCache;
use crate::error::{Error, Result};
use crate::layers::{
    Attention, DecoderLayer, KvSlot, LayerCache, Linear, Mlp, Pass, RmsNorm, to_dtype,
};
use crate::lm_head::TokenLogprobs;
use crate::params::{ParamSource, RandomInit, hf_names};
use crate::rope::Rope;
use crate::safetensors_io::WeightFiles;

/// A decoder-only transformer (Qwen3 or Llama) and its head.
#[derive(Module, Debug)]
pub struct Model<B: Backend> {
    /// `[vocab, hidden]`
    pub embed: Param<Tensor<B, 2>>,
    pub layers: Vec<DecoderLayer<B>>,
    pub norm: RmsNorm<B>,
    /// `[hidden, vocab]`: an untied language-model head; `None` when tied to `embed` or when
    /// the head is a classifier.
    pub lm_head: Option<Param<Tensor<B, 2>>>,
    /// `[hidden, labels]`: the sequence-classification (reward) or token-classification
    /// (value) head.
    pub score: Option<Linear<B>>,
    #[module(skip)]
    pub config: ModelConfig,
    #[module(skip)]
    pub rope: Rope,
    /// What matmuls and attention compute in (see [`Precision`]).
    #[module(skip)]
    pub precision: Precision,
}

/// The dtype of a model's matmuls and attention. `Bf16` is mixed precision: parameters keep
/// their own dtype (f32 master weights in training) and are cast for each product, while
/// RMSNorm, rotary embeddings, the residual stream, softmax statistics and the log-prob
/// head's log-softmax stay f32.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    Bf16,
}

impl Precision {
    pub fn dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::Bf16 => DType::BF16,
        }
    }
}

/// A batch of token rows laid out for one forward pass.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenBatch {
    pub batch: usize,
    pub seq: usize,
    /// `[batch * seq]`, row-major; padding positions hold `pad_id`.
    pub ids: Vec<u32>,
    /// `[batch * seq]`: the rotary position of every token.
    pub positions: Vec<usize>,
    /// Per row, the keys `[start, end)` that are not padding (cached keys first, then these
    /// tokens); `None` when no query can see a padding key.
    pub key_windows: Option<Vec<(usize, usize)>>,
    /// The real length of each row.
    pub lengths: Vec<usize>,
}

impl TokenBatch {
    /// Rows padded on the left, as for generation: every row's last token is at `seq - 1`,
    /// positions count from each row's first real token.
    pub fn left_padded(rows: &[Vec<u32>], pad_id: u32) -> Self {
        let seq = rows.iter().map(Vec::len).max().unwrap_or(0);
        let batch = rows.len();
        let mut ids = Vec::with_capacity(batch * seq);
        let mut positions = Vec::with_capacity(batch * seq);
        let mut key_windows = Vec::with_capacity(batch);
        for row in rows {
            let pad = seq - row.len();
            ids.extend(std::iter::repeat_n(pad_id, pad).chain(row.iter().copied()));
            positions.extend(std::iter::repeat_n(0, pad).chain(0..row.len()));
            key_windows.push((pad, seq));
        }
        let any_padding = rows.iter().any(|r| r.len() < seq);
        TokenBatch {
            batch,
            seq,
            ids,
            positions,
            key_windows: any_padding.then_some(key_windows),
            lengths: rows.iter().map(Vec::len).collect(),
        }
    }

    /// Rows padded on the right, as for training and scoring: the causal mask alone keeps
    /// real tokens from seeing the padding after them.
    pub fn right_padded(rows: &[Vec<u32>], pad_id: u32) -> Self {
        let seq = rows.iter().map(Vec::len).max().unwrap_or(0);
        let batch = rows.len();
        let mut ids = Vec::with_capacity(batch * seq);
        let mut positions = Vec::with_capacity(batch * seq);
        for row in rows {
            ids.extend(
                row.iter()
                    .copied()
                    .chain(std::iter::repeat_n(pad_id, seq - row.len())),
            );
            positions.extend(0..seq);
        }
        TokenBatch {
            batch,
            seq,
            ids,
            positions,
            key_windows: None,
            lengths: rows.iter().map(Vec::len).collect(),
        }
    }
}

/// Keys and values of every layer for the rows of a generation batch.
#[derive(Clone, Debug)]
pub struct KvCache<B: Backend> {
    pub layers: Vec<Option<LayerCache<B>>>,
}

impl<B: Backend> KvCache<B> {
    pub fn new(num_layers: usize) -> Self {
        KvCache {
            layers: vec![None; num_layers],
        }
    }

    /// Cached positions per row.
    pub fn len(&self) -> usize {
        self.layers
            .first()
            .and_then(|l| l.as_ref())
            .map(|l| l.keys.dims()[2])
            .unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keeps (or repeats) the given rows, in that order.
    pub fn select_rows(&mut self, rows: &[usize]) {
        let Some(Some(first)) = self.layers.first() else {
            return;
        };
        let device = first.keys.device();
        let index = Tensor::<B, 1, Int>::from_data(
            TensorData::new(
                rows.iter().map(|&r| r as i64).collect::<Vec<_>>(),
                [rows.len()],
            ),
            &device,
        );
        for cache in self.layers.iter_mut().flatten() {
            cache.keys = cache.keys.clone().select(0, index.clone());
            cache.values = cache.values.clone().select(0, index.clone());
        }
    }

    /// Drops the first `count` cached positions of every row (padding no row needs any more).
    pub fn drop_front(&mut self, count: usize) {
        if count == 0 {
            return;
        }
        for cache in self.layers.iter_mut().flatten() {
            let len = cache.keys.dims()[2];
            cache.keys = cache.keys.clone().narrow(2, count, len - count);
            cache.values = cache.values.clone().narrow(2, count, len - count);
        }
    }
}

impl<B: ModelBackend> Model<B> {
    /// Loads `config.json` and the safetensors weights of a local model directory.
    pub fn load(dir: &Path, device: &B::Device) -> Result<Self> {
        let config = ModelConfig::from_file(&dir.join("config.json"))?;
        let weights = WeightFiles::open(dir)?;
        Self::from_source(config, &weights, device)
    }

    /// Loads a model directory but puts another head on the decoder: the decoder weights come
    /// from the checkpoint, a head the checkpoint does not hold is freshly initialised with
    /// `seed` (this is how a critic is made from a policy).
    pub fn load_with_head(
        dir: &Path,
        head: HeadKind,
        seed: u64,
        device: &B::Device,
    ) -> Result<Self> {
        let stored = ModelConfig::from_file(&dir.join("config.json"))?;
        let config = stored.with_head(head);
        let weights = WeightFiles::open(dir)?;
        let fresh = RandomInit::new(&config, seed);
        let source = HeadFallback {
            weights: &weights,
            fresh: &fresh,
            keep_stored_head: stored.head == head,
        };
        Self::from_source(config, &source, device)
    }

    /// A model with random weights (normal with the config's `initializer_range`, norms at 1),
    /// the same for a given seed on every backend.
    pub fn random(config: ModelConfig, seed: u64, device: &B::Device) -> Self {
        let source = RandomInit::new(&config, seed);
        Self::from_source(config, &source, device).expect("random parameters have the right shapes")
    }

    /// Builds the model from any source of Hugging Face-named tensors.
    pub fn from_source(
        config: ModelConfig,
        source: &dyn ParamSource,
        device: &B::Device,
    ) -> Result<Self> {
        let c = &config;
        let (h, kv, hd, hidden) = (
            c.num_attention_heads,
            c.num_key_value_heads,
            c.head_dim,
            c.hidden_size,
        );
        let load = |name: &str, shape: &[usize]| source.get(name, shape);
        let param1 = |values: Vec<f32>| -> Param<Tensor<B, 1>> {
            let len = values.len();
            Param::from_tensor(Tensor::from_data(TensorData::new(values, [len]), device))
        };
        let param2 = |values: Vec<f32>, shape: [usize; 2]| -> Param<Tensor<B, 2>> {
            Param::from_tensor(Tensor::from_data(TensorData::new(values, shape), device))
        };
        // A PyTorch `[out, in]` weight (or several stacked along `out`) as our `[in, out]`.
        let linear =
            |names: &[String], outs: &[usize], d_in: usize, bias: bool| -> Result<Linear<B>> {
                let mut parts = Vec::with_capacity(names.len());
                for (name, &out) in names.iter().zip(outs) {
                    parts.push((load(&format!("{name}.weight"), &[out, d_in])?, out));
                }
                let d_out = outs.iter().sum();
                let weight = param2(transpose_concat(&parts, d_in), [d_in, d_out]);
                let bias = if bias {
                    let mut values = Vec::with_capacity(d_out);
                    for (name, &out) in names.iter().zip(outs) {
                        values.extend(load(&format!("{name}.bias"), &[out])?);
                    }
                    Some(param1(values))
                } else {
                    None
                };
                Ok(Linear { weight, bias })
            };
        let norm = |name: &str, dim: usize| -> Result<RmsNorm<B>> {
            Ok(RmsNorm {
                weight: param1(load(name, &[dim])?),
                eps: c.rms_norm_eps,
            })
        };
        let qwen3 = c.architecture == crate::config::Architecture::Qwen3;

        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let n = hf_names::layer(i);
            let attention = Attention {
                qkv: linear(
                    &[n.q_proj(), n.k_proj(), n.v_proj()],
                    &[h * hd, kv * hd, kv * hd],
                    hidden,
                    c.attention_bias,
                )?,
                o_proj: linear(&[n.o_proj()], &[hidden], h * hd, c.attention_bias)?,
                q_norm: if qwen3 {
                    Some(norm(&n.q_norm(), hd)?)
                } else {
                    None
                },
                k_norm: if qwen3 {
                    Some(norm(&n.k_norm(), hd)?)
                } else {
                    None
                },
                num_heads: h,
                num_kv_heads: kv,
                head_dim: hd,
            };
            let inter = c.intermediate_size;
            let mlp = Mlp {
                gate_up: linear(
                    &[n.gate_proj(), n.up_proj()],
                    &[inter, inter],
                    hidden,
                    c.mlp_bias,
                )?,
                down: linear(&[n.down_proj()], &[hidden], inter, c.mlp_bias)?,
            };
            layers.push(DecoderLayer {
                input_norm: norm(&n.input_norm(), hidden)?,
                attention,
                post_attention_norm: norm(&n.post_attention_norm(), hidden)?,
                mlp,
            });
        }

        let embed = param2(
            load(hf_names::EMBED, &[c.vocab_size, hidden])?,
            [c.vocab_size, hidden],
        );
        let (lm_head, score) = match c.head {
            HeadKind::CausalLm if c.tie_word_embeddings => (None, None),
            HeadKind::CausalLm => {
                let w = load(hf_names::LM_HEAD, &[c.vocab_size, hidden])?;
                (
                    Some(param2(
                        transpose(&w, c.vocab_size, hidden),
                        [hidden, c.vocab_size],
                    )),
                    None,
                )
            }
            HeadKind::SequenceClassification { num_labels } => (
                None,
                Some(linear(
                    &["score".to_string()],
                    &[num_labels],
                    hidden,
                    false,
                )?),
            ),
            HeadKind::TokenClassification { num_labels } => (
                None,
                Some(linear(&["score".to_string()], &[num_labels], hidden, true)?),
            ),
        };
        Ok(Model {
            embed,
            layers,
            norm: norm(hf_names::NORM, hidden)?,
            lm_head,
            score,
            rope: Rope::new(c),
            precision: Precision::F32,
            config,
        })
    }

    pub fn device(&self) -> B::Device {
        self.embed.device()
    }

    /// Checks that every id is inside the vocabulary.
    pub fn check_ids(&self, ids: &[u32]) -> Result<()> {
        let vocab = self.config.vocab_size;
        match ids.iter().position(|&id| id as usize >= vocab) {
            Some(position) => Err(Error::InvalidInput(format!(
                "token id {} at position {position} is outside the vocabulary (size {vocab})",
                ids[position]
            ))),
            None => Ok(()),
        }
    }

    /// Runs the decoder and returns the final-norm hidden states `[batch * seq, hidden]`.
    /// With a cache, the batch continues the cached rows (same rows, in order).
    pub fn forward_hidden(
        &self,
        batch: &TokenBatch,
        cache: Option<&mut KvCache<B>>,
    ) -> Tensor<B, 2> {
        let cached = cache.as_ref().map(|c| c.len()).unwrap_or(0);
        let pass = self.pass(batch, cached);
        let mut x = self.embed_tokens(batch); // [tokens, hidden]
        match cache {
            Some(cache) => {
                for (layer, slot) in self.layers.iter().zip(cache.layers.iter_mut()) {
                    x = layer.forward(x, &pass, Some(KvSlot::Append(slot)));
                }
            }
            None => {
                for layer in &self.layers {
                    x = layer.forward(x, &pass, None);
                }
            }
        }
        self.norm.forward(x)
    }

    /// One decoding step of the engine's running rows: `ids` holds the next token of every
    /// occupied slot of `cache` (in slot order; slot `r`'s token sits at position
    /// `cache.lengths[r]`). Its keys and values are written into the slots, which then hold one
    /// more token each. Returns the final-norm hidden states `[rows, hidden]`.
    pub fn forward_slots(&self, ids: &[u32], cache: &mut SlotCache<B>) -> Tensor<B, 2> {
        assert_eq!(ids.len(), cache.rows(), "one token per occupied slot");
        let lengths = &cache.lengths;
        let longest = lengths.iter().copied().max().unwrap_or(0);
        let uneven = lengths.iter().any(|&l| l != longest);
        let batch = TokenBatch {
            batch: ids.len(),
            seq: 1,
            ids: ids.to_vec(),
            positions: lengths.clone(),
            // Row r sees its own `lengths[r]` cached keys and the new one.
            key_windows: uneven.then(|| lengths.iter().map(|&l| (0, l + 1)).collect()),
            lengths: vec![1; ids.len()],
        };
        let pass = self.pass(&batch, longest);
        let mut x = self.embed_tokens(&batch); // [rows, hidden]
        let SlotCache {
            layers, lengths, ..
        } = cache;
        for (layer, slot) in self.layers.iter().zip(layers.iter_mut()) {
            x = layer.forward(x, &pass, Some(KvSlot::Slots(slot, lengths)));
        }
        cache.advance();
        self.norm.forward(x)
    }

    /// The embeddings of a batch's tokens, `[batch * seq, hidden]` in f32 (the residual
    /// stream's dtype).
    pub fn embed_tokens(&self, batch: &TokenBatch) -> Tensor<B, 2> {
        let tokens = batch.batch * batch.seq;
        let ids: Vec<i64> = batch.ids.iter().map(|&id| id as i64).collect();
        let ids = Tensor::<B, 1, Int>::from_data(TensorData::new(ids, [tokens]), &self.device());
        to_dtype(self.embed.val().select(0, ids), DType::F32)
    }

    /// What the layers of one forward pass over `batch` share, after `cached` cached keys.
    pub fn pass(&self, batch: &TokenBatch, cached: usize) -> Pass<B> {
        let device = self.device();
        let c = &self.config;
        let (heads, kv_heads) = (c.num_attention_heads, c.num_key_value_heads);
        let rope = self
            .rope
            .tables::<B>(&batch.positions, batch.batch, heads, kv_heads, &device);
        let keys = cached + batch.seq;
        let attention = AttentionSpec::new(
            batch.batch,
            heads,
            kv_heads,
            c.head_dim,
            batch.seq,
            keys,
            batch.key_windows.clone(),
            B::attention_block_elements(),
        );
        let fused = batch.seq > 1 && batch.key_windows.is_none() && !B::ad_enabled(&device);
        Pass {
            batch: batch.batch,
            rope,
            attention,
            fused,
            compute: self.precision.dtype(),
        }
    }

    /// Vocabulary logits for hidden states: `[n, hidden] -> [n, vocab]` in f32 (the product in
    /// the compute dtype).
    pub fn lm_logits(&self, hidden: Tensor<B, 2>) -> Tensor<B, 2> {
        let compute = self.precision.dtype();
        let hidden = to_dtype(hidden, compute);
        let logits = match &self.lm_head {
            Some(head) => hidden.matmul(to_dtype(head.val(), compute)),
            None => hidden.matmul(to_dtype(self.embed.val(), compute).transpose()),
        };
        to_dtype(logits, DType::F32)
    }

    /// The model with every parameter stored in `dtype` (bf16 halves an inference model's
    /// memory and bandwidth); computing in that dtype too.
    pub fn cast_params(self, dtype: DType) -> Self {
        let precision = if dtype == DType::BF16 {
            Precision::Bf16
        } else {
            self.precision
        };
        self.map(&mut CastParams { dtype })
            .with_precision(precision)
    }

    /// The model as an inference engine holds it: in bf16 where the backend prefers it
    /// ([`ModelBackend::holds_inference_models_in_bf16`]: on CUDA), as it is elsewhere.
    pub fn for_inference(self) -> Self {
        if B::holds_inference_models_in_bf16() {
            self.cast_params(DType::BF16)
        } else {
            self
        }
    }

    /// Sets the dtype matmuls and attention compute in.
    pub fn with_precision(mut self, precision: Precision) -> Self {
        self.precision = precision;
        self
    }

    /// The classification or value head: `[n, hidden] -> [n, labels]`.
    pub fn score_head(&self, hidden: Tensor<B, 2>) -> Result<Tensor<B, 2>> {
        match &self.score {
            Some(score) => Ok(score.forward(hidden)),
            None => Err(Error::InvalidInput(format!(
                "{} has no score head (it is not a sequence- or token-classification model)",
                self.config.class_name()
            ))),
        }
    }

    /// Vocabulary logits at every position of one unpadded sequence, `[seq, vocab]`.
    pub fn logits(&self, ids: &[u32]) -> Result<Tensor<B, 2>> {
        if ids.is_empty() {
            return Err(Error::InvalidInput("the sequence is empty".into()));
        }
        self.check_ids(ids)?;
        let batch = TokenBatch::right_padded(&[ids.to_vec()], 0);
        Ok(self.lm_logits(self.forward_hidden(&batch, None)))
    }

    /// Sequence-classification scores read at each row's last token, `[rows, labels]`.
    pub fn score_sequences(&self, rows: &[Vec<u32>]) -> Result<Tensor<B, 2>> {
        if let Some(i) = rows.iter().position(Vec::is_empty) {
            return Err(Error::InvalidInput(format!("sequence {i} is empty")));
        }
        for row in rows {
            self.check_ids(row)?;
        }
        let pad = self.config.pad_token_id.unwrap_or(0);
        let batch = TokenBatch::right_padded(rows, pad);
        let hidden = self.forward_hidden(&batch, None); // [rows * seq, hidden]
        let last: Vec<i64> = batch
            .lengths
            .iter()
            .enumerate()
            .map(|(row, len)| (row * batch.seq + len - 1) as i64)
            .collect();
        let index =
            Tensor::<B, 1, Int>::from_data(TensorData::new(last, [rows.len()]), &self.device());
        self.score_head(hidden.select(0, index))
    }

    /// Number of parameters.
    pub fn num_parameters(&self) -> usize {
        self.num_params()
    }
}

impl<B: ModelBackend> Model<B> {
    /// The log-probability of each target token under the language-model head, and the
    /// entropy of the predictive distribution when asked, for hidden states `[n, hidden]` and
    /// `n` targets: computed a chunk of tokens at a time, never the whole `[n, vocab]` logits
    /// (see [`crate::lm_head`]).
    pub fn token_logprobs(
        &self,
        hidden: Tensor<B, 2>,
        targets: &[u32],
        with_entropy: bool,
    ) -> TokenLogprobs<B> {
        let compute = self.precision.dtype();
        let weight = match &self.lm_head {
            Some(head) => to_dtype(head.val(), compute),
            None => to_dtype(self.embed.val(), compute).transpose(), // [hidden, vocab]
        };
        let hidden = to_dtype(hidden, compute);
        let n = targets.len();
        let targets: Vec<i64> = targets.iter().map(|&t| t as i64).collect();
        let targets = Tensor::<B, 1, Int>::from_data(TensorData::new(targets, [n]), &self.device());
        B::token_logprobs(hidden, weight, targets, with_entropy)
    }
}

/// Casts every float parameter to one dtype.
struct CastParams {
    dtype: DType,
}

impl<B: Backend> burn::module::ModuleMapper<B> for CastParams {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        Param::from_mapped_value(id, to_dtype(tensor, self.dtype), mapper)
    }
}

/// Reads a tensor back to the host as f32.
pub fn to_f32_vec<B: Backend, const D: usize>(tensor: Tensor<B, D>) -> Vec<f32> {
    tensor
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .expect("converted to f32")
}

/// `[rows, cols]` → `[cols, rows]`.
pub(crate) fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; values.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = values[r * cols + c];
        }
    }
    out
}

/// Stacks `[out_i, d_in]` matrices along `out` and transposes: the result is `[d_in, Σ out_i]`.
fn transpose_concat(parts: &[(Vec<f32>, usize)], d_in: usize) -> Vec<f32> {
    let d_out: usize = parts.iter().map(|(_, out)| out).sum();
    let mut out = vec![0f32; d_in * d_out];
    let mut col = 0;
    for (values, rows) in parts {
        for r in 0..*rows {
            for i in 0..d_in {
                out[i * d_out + col + r] = values[r * d_in + i];
            }
        }
        col += rows;
    }
    out
}

/// Reads the decoder from a checkpoint and the head from fresh parameters, unless the
/// checkpoint's own head is the one wanted.
struct HeadFallback<'a> {
    weights: &'a WeightFiles,
    fresh: &'a RandomInit,
    keep_stored_head: bool,
}

impl ParamSource for HeadFallback<'_> {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let is_head = name.starts_with("score.") || name == hf_names::LM_HEAD;
        if is_head && !self.keep_stored_head {
            return self.fresh.get(name, shape);
        }
        if name == hf_names::LM_HEAD
            && !self.weights.contains(name)
            && self.weights.contains(hf_names::EMBED)
        {
            // A classifier checkpoint turned into a policy: tie the head to the embedding.
            return self.weights.read_f32(hf_names::EMBED, shape);
        }
        self.weights.read_f32(name, shape)
    }
}
