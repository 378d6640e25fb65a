#!/usr/bin/env bash
# The GPU check, run on a machine with an NVIDIA GPU from the repository root: CUDA against CPU
# parity on the fixtures, the tiny training job on CUDA, generation and training throughput on
# Qwen3-shaped random models beside transformers on the same GPU, then long-context training
# (tokens/s and peak memory) beside PyTorch sdpa, the block-wise attention and its gradients
# against the CPU, and the learner's PPO step at Qwen3-4B's and Qwen3-1.7B's shapes (peak GPU
# memory beside `grlo plan`'s estimate, tokens/s, MFU). There is no Rust toolchain on the GPU machine:
# build the binary here with `cargo build --release --features cuda` and carry it.
#
#   GRLO=path/to/grlo-built-with-cuda bash scripts/gpu-check.sh
#
# Each section prints a header, runs under a time cap and the script goes on if it fails; the
# exit status is 1 if any section failed.
#
# Time on an H100/H200, estimated (each grlo process pays CUDA start-up and NVRTC compilation of
# its kernels, a few seconds; each peer process pays importing torch+transformers, ~5 s):
#   parity (10 grlo runs on the tiny fixtures)                      ~1 min
#   block-wise attention against the CPU, 4 lengths                 ~0.3 min
#   the tiny job, 5 steps                                           ~1 min
#   throughput, qwen3-25m and qwen3-0.6b, both sides, 2 rounds      ~2 min
#   rollout, qwen3-0.6b, sampled at t=1, batch 8/32/128, both sides ~2 min
#   long context, qwen3-25m, 4 lengths x 2 sides, a process each    ~1 min
#   long context, qwen3-0.6b, 4 lengths x 2 sides, a process each   ~2.5 min (0.6B random init
#                                                                    and t=4096 steps of ~1 s)
#   PPO step, Qwen3-4B shape, bf16, checkpointing, 4096 tokens      ~1.5 min (4B random init
#                                                                    on the host, 2 steps)
#   PPO step, Qwen3-1.7B policy + critic on one GPU                 ~1 min
#   total                                                           ~12 min
# Run only some sections with SECTIONS="attention ppo" (names: parity attention tiny throughput
# rollout long ppo); the device time of a lent GPU is short.
# The caps below (`timeout`) bound a hung section, not the estimate.
#
# Burn's CUDA backend loads the driver and NVRTC at run time; NVRTC is looked up in the CUDA
# toolkit and in the NVIDIA wheels that PyTorch installs.
set -uo pipefail
GRLO=${GRLO:-target/release/grlo}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader

nvrtc_dir=$(python3 - <<'PY'
import glob, os, site
paths = glob.glob("/usr/local/cuda*/lib64/libnvrtc.so*") + glob.glob("/usr/local/cuda*/targets/*/lib/libnvrtc.so*")
for s in site.getsitepackages():
    paths += glob.glob(s + "/nvidia/**/libnvrtc.so*", recursive=True)
print(os.path.dirname(paths[0]) if paths else "")
PY
)
echo "nvrtc: ${nvrtc_dir:-not found}"
export LD_LIBRARY_PATH="${nvrtc_dir}:${LD_LIBRARY_PATH:-}"

status=0
# section SECONDS "TITLE" COMMAND...: runs one section under a time cap; a failure is counted and
# the script goes on.
section() {
  local cap=$1 title=$2
  shift 2
  echo
  echo "== ${title} =="
  local start=$SECONDS
  timeout --kill-after=10 "$cap" "$@"
  local rc=$?
  if [ "$rc" -ne 0 ]; then
    status=1
    if [ "$rc" -eq 124 ]; then echo "!! ${title}: ran past ${cap} s"; else echo "!! ${title}: failed (exit ${rc})"; fi
  fi
  echo "-- ${title}: $((SECONDS - start)) s"
}

SECTIONS=${SECTIONS:-parity attention tiny throughput rollout long ppo}
wanted() { [[ " $SECTIONS " == *" $1 "* ]]; }

wanted parity && section 180 "parity: cuda against cpu" python3 scripts/gpu_parity.py --grlo "$GRLO"

# The training path's attention (block-wise, custom backward) and its gradients, CUDA against
# the CPU backend, with left padding and many blocks.
wanted attention && section 120 "block-wise attention and gradients: cuda against cpu" \
  "$GRLO" bench attention-parity --device cuda --lengths 1,37,300,1024

export GRLO
wanted tiny && section 180 "the tiny training job on the GPU (5 steps)" bash -c 'set -o pipefail
  "$GRLO" train --set "trainer.device=\"cuda\"" --set trainer.total_steps=5 \
    --set "trainer.run_dir=\"/tmp/grlo-gpu-run\"" 2>&1 | tail -12'

wanted throughput && section 300 "throughput on the GPU, beside transformers on the same GPU" \
  "$GRLO" bench model --device cuda --configs qwen3-25m,qwen3-0.6b --rounds 2 \
  --decode-batches 1,8,32,128

# Rollouts as an actor runs them: sampled at temperature 1.0 (the paper's setting, through the
# device sampler), the engine with and without continuous batching beside transformers'
# static-cache generate on the same requests, and the decode step against the memory floor
# (goal: within 2x of it at batch 128).
wanted rollout && section 300 "rollout throughput, qwen3-0.6b, beside transformers" \
  "$GRLO" bench rollout --device cuda --config qwen3-0.6b --batch 8,32,128

# Long-context training: a forward+backward pass (next-token cross-entropy) over one sequence,
# batch 1, beside PyTorch sdpa; tokens/s and peak memory growth over the loaded model (grlo: the
# cubecl pools' reserved bytes; transformers: max_memory_reserved, and max_memory_allocated
# beside it). Each length runs in a process of its own on each side. A length that runs out of
# memory is reported in its row and the others still run.
wanted long && section 180 "long-context training, qwen3-25m (fwd+bwd, batch 1)" \
  "$GRLO" bench model --device cuda --configs qwen3-25m --long-context 512,1024,2048,4096 \
  --long-context-only --rounds 2

wanted long && section 300 "long-context training, qwen3-0.6b (fwd+bwd, batch 1)" \
  "$GRLO" bench model --device cuda --configs qwen3-0.6b --long-context 512,1024,2048,4096 \
  --long-context-only --rounds 2

# The learner's PPO step (`Learner::train_on`: value and log-prob recomputation, GAE, critic and
# policy updates with AdamW) on random weights of the published shapes, one 4096-token sequence
# (1024 prompt + 3072 response) a micro-batch, bf16 with per-layer checkpointing: peak GPU memory
# (the pools' reserved bytes after the step) beside `grlo plan`'s estimate, tokens/s and MFU
# against 989 TFLOP/s (H100/H200 SXM bf16 dense).
wanted ppo && section 300 "PPO step, Qwen3-4B-shaped policy, bf16, checkpointing, 4096 tokens" \
  "$GRLO" bench train-step --device cuda --model-config configs/shapes/qwen3-4b-base.json \
  --prompt-tokens 1024 --response-tokens 3072 --precision bf16 --checkpointing --steps 1

wanted ppo && section 240 "PPO step, Qwen3-1.7B-shaped policy and critic on one GPU" \
  "$GRLO" bench train-step --device cuda --model-config configs/shapes/qwen3-1.7b-base.json \
  --prompt-tokens 1024 --response-tokens 3072 --precision bf16 --checkpointing --critic --steps 1

exit $status
