#!/usr/bin/env bash
# The GPU check, run on a machine with an NVIDIA GPU from the repository root: CUDA against CPU
# parity on the fixtures, the tiny training job on CUDA, then generation and training
# throughput on Qwen3-shaped random models beside transformers on the same GPU.
#
#   GRLO=path/to/grlo-built-with-cuda bash scripts/gpu-check.sh
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
echo "== parity: cuda against cpu =="
python3 scripts/gpu_parity.py --grlo "$GRLO" || status=1

echo "== the tiny training job on the GPU (5 steps) =="
"$GRLO" train --set 'trainer.device="cuda"' --set trainer.total_steps=5 \
  --set 'trainer.run_dir="/tmp/grlo-gpu-run"' 2>&1 | tail -12 || status=1

echo "== throughput on the GPU, beside transformers on the same GPU =="
"$GRLO" bench model --device cuda --configs qwen3-25m,qwen3-0.6b --rounds 3 \
  --decode-batches 1,8,32,128 || status=1
exit $status
