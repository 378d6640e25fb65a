#!/usr/bin/env bash
# Rebuilds configs/tiny/: the tiny policy and reward-model starting point (Python: torch,
# transformers, tokenizers from PyPI), then the preference pairs and the trained reward model
# (grlo itself). Run from the repository root.
set -euo pipefail
python3 configs/tiny/make_tiny_models.py
cargo build --release
target/release/grlo rm make-pairs --prompts configs/data/grlo-train.jsonl --out configs/tiny/pairs.jsonl
target/release/grlo rm train --model configs/tiny/reward-model-init --pairs configs/tiny/pairs.jsonl \
  --out configs/tiny/reward-model --epochs 3 --lr 2e-3 --max-length 512
