#!/usr/bin/env python3
"""CUDA against CPU for the grlo binary: logits, reward scores and greedy generation on the
committed fixtures must agree between `--device cuda` and `--device cpu`.

Run from the repository root on a machine with a GPU:
    python3 scripts/gpu_parity.py --grlo PATH_TO_CUDA_BUILD
Prints one line per check and a JSON summary; exits 1 if a check fails.
"""

import argparse
import json
import subprocess
import sys


def grlo(binary, *args):
    out = subprocess.run([binary, *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"grlo {' '.join(args)} failed: {out.stderr.strip()}")
    return json.loads(out.stdout)


def max_abs_diff(a, b):
    flat_a = [x for row in a for x in row]
    flat_b = [x for row in b for x in row]
    assert len(flat_a) == len(flat_b)
    return max(abs(x - y) for x, y in zip(flat_a, flat_b))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--grlo", required=True)
    # cubecl runs f32 matmuls on TF32 tensor cores (10-bit mantissa), like PyTorch with
    # allow_tf32: logits agree to about 1e-3 relative, not to f32 rounding.
    parser.add_argument("--tolerance", type=float, default=2e-2)
    parser.add_argument("--devices", default="cpu,cuda", help="reference,device under test")
    args = parser.parse_args()
    ref_device, test_device = args.devices.split(",")
    ids = ",".join(str((i * 37 + 11) % 1000) for i in range(64))
    summary = {"logits_max_abs_diff": {}, "score_abs_diff": {}, "greedy_equal": {}}
    ok = True

    for model in ["qwen3-tiny", "llama31-tiny"]:
        path = f"fixtures/models/{model}"
        cpu = grlo(args.grlo, "model", "logits", "--model", path, "--ids", ids, "--device", ref_device)
        gpu = grlo(args.grlo, "model", "logits", "--model", path, "--ids", ids, "--device", test_device)
        diff = max_abs_diff(cpu["logits"], gpu["logits"])
        scale = max(abs(x) for row in cpu["logits"] for x in row)
        summary["logits_max_abs_diff"][model] = diff
        summary.setdefault("logits_max_abs", {})[model] = scale
        passed = diff <= args.tolerance
        ok &= passed
        print(f"{'ok  ' if passed else 'FAIL'} logits {model}: max |cuda - cpu| = {diff:.2e} (max |logit| {scale:.2f})")

        gen = ["model", "generate", "--model", path, "--ids", ids[:40], "--max-new-tokens", "32", "--greedy"]
        cpu_tokens = grlo(args.grlo, *gen, "--device", ref_device)["completions"][0]["completion_ids"]
        gpu_tokens = grlo(args.grlo, *gen, "--device", test_device)["completions"][0]["completion_ids"]
        # TF32 rounding can flip a near-tie between two tokens, after which the texts part: count
        # the tokens before the first difference and report it rather than fail on it.
        agree = next((i for i, (a, b) in enumerate(zip(cpu_tokens, gpu_tokens)) if a != b), len(cpu_tokens))
        summary["greedy_equal"][model] = f"{agree}/{len(cpu_tokens)}"
        print(f"info greedy generation {model}: first {agree} of {len(cpu_tokens)} tokens equal")

    for model in ["llama31-rm-tiny"]:
        path = f"fixtures/models/{model}"
        cpu = grlo(args.grlo, "model", "score", "--model", path, "--ids", ids[:60], "--device", ref_device)["score"]
        gpu = grlo(args.grlo, "model", "score", "--model", path, "--ids", ids[:60], "--device", test_device)["score"]
        diff = abs(cpu - gpu)
        summary["score_abs_diff"][model] = diff
        passed = diff <= args.tolerance
        ok &= passed
        print(f"{'ok  ' if passed else 'FAIL'} score {model}: |cuda - cpu| = {diff:.2e}")

    print(json.dumps(summary))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
