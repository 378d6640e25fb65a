//! Saving a model in the Hugging Face layout: its tensors under transformers' names, in
//! PyTorch's `[out, in]` layouts, written as (sharded) safetensors with `config.json`.

use std::path::Path;

use burn::tensor::backend::Backend;

use crate::error::{Error, Result};
use crate::layers::Linear;
use crate::model::Model;
use crate::params::hf_names;
use crate::safetensors_io::{
    LazyTensor, NamedTensor, StoredDtype, write_atomically, write_safetensors,
};

impl<B: Backend> Model<B> {
    /// The Hugging Face tensors of this model, in PyTorch layouts, each produced only when
    /// asked for: a tensor holds a clone of its parameter (a reference count), and a fused
    /// projection's part is cut out and transposed on the device, so that only that part comes
    /// to the host.
    pub fn lazy_tensors(&self) -> Vec<LazyTensor> {
        let c = &self.config;
        let (h, kv, hd, hidden, inter) = (
            c.num_attention_heads,
            c.num_key_value_heads,
            c.head_dim,
            c.hidden_size,
            c.intermediate_size,
        );
        let mut out = Vec::new();
        let whole1 = |name: String, tensor: burn::tensor::Tensor<B, 1>| {
            let shape = tensor.dims().to_vec();
            LazyTensor::new(name, shape, move || tensor.into_data())
        };
        // `[d_in, Σ outs]` weights stored as ours, written as `[out, d_in]` parts.
        let linear =
            |out: &mut Vec<LazyTensor>, linear: &Linear<B>, names: &[String], outs: &[usize]| {
                let weight = linear.weight.val(); // [d_in, Σ outs]
                let d_in = weight.dims()[0];
                let bias = linear.bias.as_ref().map(|b| b.val()); // [Σ outs]
                let mut start = 0;
                for (name, &d_out) in names.iter().zip(outs) {
                    let w = weight.clone();
                    out.push(LazyTensor::new(
                        format!("{name}.weight"),
                        vec![d_out, d_in],
                        move || w.narrow(1, start, d_out).transpose().into_data(), // [d_out, d_in]
                    ));
                    if let Some(bias) = &bias {
                        let b = bias.clone();
                        out.push(LazyTensor::new(
                            format!("{name}.bias"),
                            vec![d_out],
                            move || b.narrow(0, start, d_out).into_data(),
                        ));
                    }
                    start += d_out;
                }
            };

        let embed = self.embed.val(); // [vocab, hidden]
        out.push(LazyTensor::new(
            hf_names::EMBED,
            vec![c.vocab_size, hidden],
            move || embed.into_data(),
        ));
        for (i, layer) in self.layers.iter().enumerate() {
            let n = hf_names::layer(i);
            let a = &layer.attention;
            out.push(whole1(n.input_norm(), layer.input_norm.weight.val()));
            linear(
                &mut out,
                &a.qkv,
                &[n.q_proj(), n.k_proj(), n.v_proj()],
                &[h * hd, kv * hd, kv * hd],
            );
            linear(&mut out, &a.o_proj, &[n.o_proj()], &[hidden]);
            if let (Some(q_norm), Some(k_norm)) = (&a.q_norm, &a.k_norm) {
                out.push(whole1(n.q_norm(), q_norm.weight.val()));
                out.push(whole1(n.k_norm(), k_norm.weight.val()));
            }
            out.push(whole1(
                n.post_attention_norm(),
                layer.post_attention_norm.weight.val(),
            ));
            linear(
                &mut out,
                &layer.mlp.gate_up,
                &[n.gate_proj(), n.up_proj()],
                &[inter, inter],
            );
            linear(&mut out, &layer.mlp.down, &[n.down_proj()], &[hidden]);
        }
        out.push(whole1(hf_names::NORM.into(), self.norm.weight.val()));
        if let Some(head) = &self.lm_head {
            let head = head.val(); // [hidden, vocab]
            out.push(LazyTensor::new(
                hf_names::LM_HEAD,
                vec![c.vocab_size, hidden],
                move || head.transpose().into_data(), // [vocab, hidden]
            ));
        }
        if let Some(score) = &self.score {
            let labels = score.d_out();
            linear(&mut out, score, &["score".to_string()], &[labels]);
        }
        out
    }

    /// The Hugging Face tensors of this model, in PyTorch layouts, all on the host (tests and
    /// small models; saving streams [`Model::lazy_tensors`] instead).
    pub fn named_tensors(&self) -> Vec<NamedTensor> {
        self.lazy_tensors()
            .into_iter()
            .map(LazyTensor::into_named)
            .collect()
    }

    /// Writes `config.json` and the weights in the Hugging Face layout, sharded when the
    /// weights exceed `max_shard_bytes`, so that transformers and vLLM load the directory.
    /// One tensor at a time is on the host (see [`crate::safetensors_io::write_safetensors`]).
    pub fn save(&self, dir: &Path, dtype: StoredDtype, max_shard_bytes: usize) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::write(dir, e))?;
        write_safetensors(dir, self.lazy_tensors(), dtype, max_shard_bytes)?;
        let config = serde_json::to_string_pretty(&self.config.to_json(dtype.torch_name()))
            .expect("config is valid JSON");
        write_atomically(&dir.join("config.json"), config.as_bytes())
    }
}
