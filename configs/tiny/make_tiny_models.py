#!/usr/bin/env python3
"""Builds the tiny models of the embedded default job (configs/tiny.toml).

Writes, under configs/tiny/:
  policy/             a Qwen3ForCausalLM with random weights (about 150K parameters) and a
                      Qwen-style tokenizer: byte-level BPE with 1024 tokens trained on the
                      repo's prompts, <|im_start|>/<|im_end|>/<|endoftext|>, and the real
                      Qwen3 chat template;
  reward-model-init/  a LlamaForSequenceClassification (one label) with random weights and a
                      Llama-3-style tokenizer of its own (another BPE, <|eot_id|> turns), the
                      starting point of `grlo rm train`.

The reward model the job uses (configs/tiny/reward-model/) is then trained by grlo itself:

    grlo rm make-pairs --prompts configs/data/grlo-train.jsonl --out configs/tiny/pairs.jsonl
    grlo rm train --model configs/tiny/reward-model-init --pairs configs/tiny/pairs.jsonl \
        --out configs/tiny/reward-model

`bash configs/tiny/make.sh` runs all three. Everything is seeded; torch, transformers and
tokenizers from PyPI are needed only to rerun this script, never to build or test grlo.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
import transformers
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
PROMPTS = ROOT / "configs" / "data" / "grlo-train.jsonl"
QWEN3_TOKENIZER_CONFIG = ROOT / "fixtures" / "qwen3-tokenizer" / "tokenizer_config.json"
VOCAB = 1024

# Words the tiny reward model learns to like (see `grlo rm make-pairs`): they are put into the
# tokenizer training text often enough to become single tokens of both vocabularies, so a tiny
# policy can learn to say them.
CHEERFUL_WORDS = ["fun", "great", "happy", "thanks", "yes", "love", "nice", "best", "glad", "wonderful"]

SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    " + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{%- endif %}"
)


def training_text() -> list[str]:
    texts = [json.loads(line)["prompt"][0]["content"] for line in PROMPTS.read_text().splitlines() if line.strip()]
    cheerful = " ".join(CHEERFUL_WORDS)
    return texts + [f"{cheerful} {cheerful.capitalize()}"] * 1000


def bpe(special_tokens: list[str]) -> Tokenizer:
    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB - len(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(training_text(), trainer)
    tok.add_special_tokens(special_tokens)
    assert tok.get_vocab_size() == VOCAB, tok.get_vocab_size()
    return tok


def save_tokenizer(hf: transformers.PreTrainedTokenizerFast, out: Path) -> None:
    hf.save_pretrained(out)
    jinja = out / "chat_template.jinja"
    config_path = out / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    if jinja.exists():
        config["chat_template"] = jinja.read_text()
        jinja.unlink()
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")



def make_policy() -> None:
    out = HERE / "policy"
    shutil.rmtree(out, ignore_errors=True)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = bpe(specials)
    qwen_template = json.loads(QWEN3_TOKENIZER_CONFIG.read_text())["chat_template"]
    hf = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=4096,
        chat_template=qwen_template,
    )
    save_tokenizer(hf, out)
    im_end, endoftext = tok.token_to_id("<|im_end|>"), tok.token_to_id("<|endoftext|>")
    torch.manual_seed(0)
    config = transformers.Qwen3Config(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=192,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=4096,
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        initializer_range=0.02,
        bos_token_id=None,
        eos_token_id=im_end,
        pad_token_id=endoftext,
    )
    model = transformers.Qwen3ForCausalLM(config).float()
    model.save_pretrained(out, safe_serialization=True)
    generation = {"eos_token_id": [im_end, endoftext], "pad_token_id": endoftext}
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    print(f"policy: {sum(p.numel() for p in model.parameters())} parameters, vocab {VOCAB}")


def make_reward_model_init() -> None:
    out = HERE / "reward-model-init"
    shutil.rmtree(out, ignore_errors=True)
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|pad|>"]
    tok = bpe(specials)
    hf = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        pad_token="<|pad|>",
        model_max_length=4096,
        chat_template=LLAMA_TEMPLATE,
    )
    save_tokenizer(hf, out)
    torch.manual_seed(1)
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=192,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=4096,
        rope_theta=500_000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        initializer_range=0.02,
        num_labels=1,
        bos_token_id=tok.token_to_id("<|begin_of_text|>"),
        eos_token_id=tok.token_to_id("<|eot_id|>"),
        pad_token_id=tok.token_to_id("<|pad|>"),
    )
    model = transformers.LlamaForSequenceClassification(config).float()
    model.save_pretrained(out, safe_serialization=True)
    print(f"reward model (initial): {sum(p.numel() for p in model.parameters())} parameters")


def main() -> None:
    make_policy()
    make_reward_model_init()
    for word in CHEERFUL_WORDS:
        for name in ["policy", "reward-model-init"]:
            ids = transformers.AutoTokenizer.from_pretrained(HERE / name)(" " + word, add_special_tokens=False)["input_ids"]
            assert len(ids) == 1, f"' {word}' is {len(ids)} tokens in {name}"


if __name__ == "__main__":
    main()
