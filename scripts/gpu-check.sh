#!/usr/bin/env bash
# The GPU check, run on a machine with an NVIDIA GPU from the repository root: CUDA against CPU
# parity on the fixtures, the tiny training job on CUDA, generation and training throughput on
# Qwen3-shaped random models beside transformers on the same GPU, then long-context training
# (tokens/s and peak memory) beside PyTorch sdpa. There is no Rust toolchain on the GPU machine:
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
#   the tiny job, 5 steps                                           ~1 min
#   throughput, qwen3-25m and qwen3-0.6b, both sides, 3 rounds      ~2.5 min
#   long context, qwen3-25m, 4 lengths x 2 sides, a process each    ~1 min
#   long context, qwen3-0.6b, 4 lengths x 2 sides, a process each   ~2.5 min (0.6B random init
#                                                                    and t=4096 steps of ~1 s)
#   total                                                           ~8 min
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

section 180 "parity: cuda against cpu" python3 scripts/gpu_parity.py --grlo "$GRLO"

export GRLO
section 180 "the tiny training job on the GPU (5 steps)" bash -c 'set -o pipefail
  "$GRLO" train --set "trainer.device=\"cuda\"" --set trainer.total_steps=5 \
    --set "trainer.run_dir=\"/tmp/grlo-gpu-run\"" 2>&1 | tail -12'

section 300 "throughput on the GPU, beside transformers on the same GPU" \
  "$GRLO" bench model --device cuda --configs qwen3-25m,qwen3-0.6b --rounds 3 \
  --decode-batches 1,8,32,128

# Long-context training: a forward+backward pass (next-token cross-entropy) over one sequence,
# batch 1, beside PyTorch sdpa; tokens/s and peak memory growth over the loaded model (grlo: the
# cubecl pools' reserved bytes; transformers: max_memory_reserved, and max_memory_allocated
# beside it). Each length runs in a process of its own on each side. A length that runs out of
# memory is reported in its row and the others still run.
section 180 "long-context training, qwen3-25m (fwd+bwd, batch 1)" \
  "$GRLO" bench model --device cuda --configs qwen3-25m --long-context 512,1024,2048,4096 \
  --long-context-only --rounds 2

section 300 "long-context training, qwen3-0.6b (fwd+bwd, batch 1)" \
  "$GRLO" bench model --device cuda --configs qwen3-0.6b --long-context 512,1024,2048,4096 \
  --long-context-only --rounds 2

# ---------------------------------------------------------------------------------------------
# Qwen3-4B-shaped PPO step (placeholder: to be filled in by the learner's owner).
# A PPO step (policy + critic forward/backward, AdamW) on a random model of Qwen3-4B's shape,
# with its time and peak memory. Keep the whole script within ~8 minutes: make room for this
# section in the estimate above (trim the rounds or lengths above if needed).
#
# section 240 "Qwen3-4B-shaped PPO step" \
#   "$GRLO" bench ...
# ---------------------------------------------------------------------------------------------

exit $status
