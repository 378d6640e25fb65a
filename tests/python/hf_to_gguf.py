"""Writes a small Qwen3 HF checkpoint (config.json, model.safetensors, tokenizer.json) as an
f32 GGUF file for llama.cpp's `llama-server`, with llama.cpp's own `gguf` package (the one
vendored beside the server's source) and numpy; no torch.

    python hf_to_gguf.py CHECKPOINT_DIR OUT.gguf

Only what a test checkpoint has: the Qwen3 architecture, f32 or bf16 tensors in one
safetensors file, a byte-level BPE tokenizer. llama.cpp's full converter
(`convert_hf_to_gguf.py`) needs torch, which the test machines do not have.
"""

import json
import struct
import sys
from pathlib import Path

import gguf
import numpy as np


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """The tensors of one safetensors file as f32 arrays (bf16 widened)."""
    data = path.read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_len])
    body = memoryview(data)[8 + header_len :]
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        raw = body[start:end]
        if info["dtype"] == "F32":
            array = np.frombuffer(raw, dtype="<f4")
        elif info["dtype"] == "BF16":
            array = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            sys.exit(f"{path}: tensor {name} is {info['dtype']}; only F32 and BF16 are handled")
        tensors[name] = array.reshape(info["shape"]).astype(np.float32)
    return tensors


def vocabulary(tokenizer: dict, vocab_size: int) -> tuple[list[str], list[int], list[str]]:
    """Tokens by id, their llama.cpp types, and the BPE merges."""
    model = tokenizer["model"]
    if model["type"] != "BPE":
        sys.exit(f"tokenizer.json: a {model['type']} model; only byte-level BPE is handled")
    by_id = {i: (t, gguf.TokenType.NORMAL) for t, i in model["vocab"].items()}
    for added in tokenizer.get("added_tokens", []):
        kind = gguf.TokenType.CONTROL if added["special"] else gguf.TokenType.USER_DEFINED
        by_id[added["id"]] = (added["content"], kind)
    tokens, types = [], []
    for i in range(vocab_size):
        token, kind = by_id.get(i, (f"[PAD{i}]", gguf.TokenType.UNUSED))
        tokens.append(token)
        types.append(int(kind))
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return tokens, types, merges


def main() -> None:
    source, out = Path(sys.argv[1]), Path(sys.argv[2])
    config = json.loads((source / "config.json").read_text())
    if config.get("model_type") != "qwen3":
        sys.exit(f"{source}: model_type {config.get('model_type')!r}; only qwen3 is handled")
    tokenizer = json.loads((source / "tokenizer.json").read_text())
    tokenizer_config = json.loads((source / "tokenizer_config.json").read_text())
    tensors = read_safetensors(source / "model.safetensors")

    layers = config["num_hidden_layers"]
    writer = gguf.GGUFWriter(out, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.QWEN3])
    writer.add_name(source.name)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(layers)
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config["num_key_value_heads"])
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    rope = config.get("rope_parameters") or {}
    writer.add_rope_freq_base(rope.get("rope_theta", config.get("rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])

    tokens, types, merges = vocabulary(tokenizer, config["vocab_size"])
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    ids = {t: i for i, t in enumerate(tokens)}
    for key, add in [
        ("eos_token", writer.add_eos_token_id),
        ("pad_token", writer.add_pad_token_id),
        ("bos_token", writer.add_bos_token_id),
    ]:
        if tokenizer_config.get(key) in ids:
            add(ids[tokenizer_config[key]])
    writer.add_add_bos_token(False)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN3, layers)
    if config.get("tie_word_embeddings"):
        tensors.pop("lm_head.weight", None)
    for name, array in tensors.items():
        mapped = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if mapped is None:
            sys.exit(f"{source}: no GGUF name for tensor {name}")
        writer.add_tensor(mapped, array)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


if __name__ == "__main__":
    main()
