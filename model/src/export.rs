//! Saving a model in the Hugging Face layout: its tensors under transformers' names, in
//! PyTorch's `[out, in]` layouts, written as (sharded) safetensors with `config.json`.

use std::path::Path;

use burn::tensor::backend::Backend;

use crate::error::{Error, Result};
use crate::layers::Linear;
use crate::model::{Model, to_f32_vec, transpose};
use crate::params::hf_names;
use crate::safetensors_io::{NamedTensor, StoredDtype, write_atomically, write_safetensors};

impl<B: Backend> Model<B> {
    /// The Hugging Face tensors of this model, in PyTorch layouts.
    pub fn named_tensors(&self) -> Vec<NamedTensor> {
        let c = &self.config;
        let (h, kv, hd, hidden, inter) = (
            c.num_attention_heads,
            c.num_key_value_heads,
            c.head_dim,
            c.hidden_size,
            c.intermediate_size,
        );
        let mut out = Vec::new();
        let mut push = |name: String, shape: Vec<usize>, values: Vec<f32>| {
            out.push(NamedTensor {
                name,
                shape,
                values,
            })
        };
        let push_linear = |push: &mut dyn FnMut(String, Vec<usize>, Vec<f32>),
                           linear: &Linear<B>,
                           names: &[String],
                           outs: &[usize]| {
            let d_in = linear.weight.dims()[0];
            let weight = to_f32_vec(linear.weight.val());
            let bias = linear.bias.as_ref().map(|b| to_f32_vec(b.val()));
            let mut start = 0;
            for (name, &d_out) in names.iter().zip(outs) {
                push(
                    format!("{name}.weight"),
                    vec![d_out, d_in],
                    split_transpose(&weight, d_in, start, d_out),
                );
                if let Some(bias) = &bias {
                    push(
                        format!("{name}.bias"),
                        vec![d_out],
                        bias[start..start + d_out].to_vec(),
                    );
                }
                start += d_out;
            }
        };

        push(
            hf_names::EMBED.into(),
            vec![c.vocab_size, hidden],
            to_f32_vec(self.embed.val()),
        );
        for (i, layer) in self.layers.iter().enumerate() {
            let n = hf_names::layer(i);
            let a = &layer.attention;
            push(
                n.input_norm(),
                vec![hidden],
                to_f32_vec(layer.input_norm.weight.val()),
            );
            push_linear(
                &mut push,
                &a.qkv,
                &[n.q_proj(), n.k_proj(), n.v_proj()],
                &[h * hd, kv * hd, kv * hd],
            );
            push_linear(&mut push, &a.o_proj, &[n.o_proj()], &[hidden]);
            if let (Some(q_norm), Some(k_norm)) = (&a.q_norm, &a.k_norm) {
                push(n.q_norm(), vec![hd], to_f32_vec(q_norm.weight.val()));
                push(n.k_norm(), vec![hd], to_f32_vec(k_norm.weight.val()));
            }
            push(
                n.post_attention_norm(),
                vec![hidden],
                to_f32_vec(layer.post_attention_norm.weight.val()),
            );
            push_linear(
                &mut push,
                &layer.mlp.gate_up,
                &[n.gate_proj(), n.up_proj()],
                &[inter, inter],
            );
            push_linear(&mut push, &layer.mlp.down, &[n.down_proj()], &[hidden]);
        }
        push(
            hf_names::NORM.into(),
            vec![hidden],
            to_f32_vec(self.norm.weight.val()),
        );
        if let Some(head) = &self.lm_head {
            push(
                hf_names::LM_HEAD.into(),
                vec![c.vocab_size, hidden],
                transpose(&to_f32_vec(head.val()), hidden, c.vocab_size),
            );
        }
        if let Some(score) = &self.score {
            let labels = score.d_out();
            push_linear(&mut push, score, &["score".to_string()], &[labels]);
        }
        out
    }

    /// Writes `config.json` and the weights in the Hugging Face layout, sharded when the
    /// weights exceed `max_shard_bytes`, so that transformers and vLLM load the directory.
    pub fn save(&self, dir: &Path, dtype: StoredDtype, max_shard_bytes: usize) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::write(dir, e))?;
        write_safetensors(dir, self.named_tensors(), dtype, max_shard_bytes)?;
        let config = serde_json::to_string_pretty(&self.config.to_json(dtype.torch_name()))
            .expect("config is valid JSON");
        write_atomically(&dir.join("config.json"), config.as_bytes())
    }
}

/// Columns `start..start + d_out` of a `[d_in, total]` matrix, as `[d_out, d_in]`.
fn split_transpose(values: &[f32], d_in: usize, start: usize, d_out: usize) -> Vec<f32> {
    let total = values.len() / d_in;
    let mut out = vec![0f32; d_out * d_in];
    for i in 0..d_in {
        for o in 0..d_out {
            out[o * d_in + i] = values[i * total + start + o];
        }
    }
    out
}
