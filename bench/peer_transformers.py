#!/usr/bin/env python3
"""The peer side of `grlo bench model`: the same workloads in HF transformers (PyTorch).

Builds the model from the same config.json text with random weights, runs prefill, decode,
forward+backward and a whole training step (with clip_grad_norm_ and AdamW) exactly as grlo's
side does (same shapes, same step counts, greedy decode with a KV cache in a plain loop, logits
only for the last prompt position at prefill), and prints one JSON object:
{"tokens_per_second": {"workload name": tokens/s, ...}, "memory": {...}, ...}.

A "long" workload (`grlo bench model --long-context`) is a forward+backward pass as "train", with
its peak memory growth over what the process holds with the model loaded in "memory": peak RSS
on CPU (VmHWM after resetting it through /proc/self/clear_refs), the caching allocator's
max_memory_reserved (as "peak_bytes", the measure grlo's side has) and max_memory_allocated
(as "peak_allocated_bytes") on CUDA. grlo runs each one alone in a process of its own, so that
nothing else is held.

Called by `grlo bench model`; it can also be run alone:
    python3 bench/peer_transformers.py --config CONFIG.json --plan PLAN.json --threads 2
"""

import argparse
import ctypes
import gc
import json
import statistics
import time

import torch
import transformers


def timed(fn, device, rounds):
    """Median seconds of `rounds` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(rounds):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def random_ids(vocab, batch, seq, seed, device):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, seq), generator=g).to(device)


class PeakMemory:
    """Peak memory growth between start() and peak(), over what was held at start()."""

    def __init__(self, device):
        self.device = device

    def start(self):
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            self.allocated = torch.cuda.memory_allocated(self.device)
            self.reserved = torch.cuda.memory_reserved(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            try:
                ctypes.CDLL("libc.so.6").malloc_trim(0)  # as grlo's side: free heap pages back
            except (OSError, AttributeError):
                pass
            self.rss = proc_status_bytes("VmRSS")
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS

    def peak(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return {
                "measure": "cuda-reserved",
                "peak_bytes": torch.cuda.max_memory_reserved(self.device) - self.reserved,
                "peak_allocated_bytes": torch.cuda.max_memory_allocated(self.device) - self.allocated,
            }
        return {"measure": "rss", "peak_bytes": proc_status_bytes("VmHWM") - self.rss}


def proc_status_bytes(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                value, unit = line.split()[1:3]
                assert unit == "kB", line
                return int(value) * 1024
    raise SystemExit(f"/proc/self/status has no {field}")


@torch.inference_mode()
def prefill(model, ids):
    return model(input_ids=ids, use_cache=True, logits_to_keep=1).logits


@torch.inference_mode()
def decode(model, ids, steps):
    out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
    cache = out.past_key_values
    token = out.logits[:, -1].argmax(-1, keepdim=True)
    position = ids.shape[1]
    for _ in range(steps):
        positions = torch.full_like(token, position)
        out = model(input_ids=token, past_key_values=cache, position_ids=positions, use_cache=True)
        cache = out.past_key_values
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        position += 1
    return token


def forward_backward(model, ids):
    model.zero_grad(set_to_none=True)
    logits = model(input_ids=ids).logits.float()
    # next-token cross-entropy, mean over tokens (as grlo's side computes it)
    loss = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1)
    )
    loss.backward()
    return loss


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="config.json of the model")
    parser.add_argument("--plan", required=True, help="JSON list of workloads")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    config = transformers.AutoConfig.for_model(**json.load(open(args.config)))
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
    model.to(device)
    vocab = config.vocab_size

    results = {}
    memory = {}
    for workload in json.load(open(args.plan)):
        kind, batch, seq = workload["kind"], workload["batch"], workload["seq"]
        ids = random_ids(vocab, batch, seq, 1, device)
        if kind == "prefill":
            seconds = timed(lambda: prefill(model, ids), device, args.rounds)
            tokens = batch * seq
        elif kind == "decode":
            steps = workload["steps"]
            model.eval()
            total = timed(lambda: decode(model, ids, steps), device, args.rounds)
            first = timed(lambda: prefill(model, ids), device, args.rounds)
            seconds = max(total - first, 1e-9)
            tokens = batch * steps
        elif kind == "train":
            model.train()
            seconds = timed(lambda: forward_backward(model, ids), device, args.rounds)
            model.eval()
            tokens = batch * seq
        elif kind == "long":
            model.train()
            meter = PeakMemory(device)
            meter.start()
            seconds = timed(lambda: forward_backward(model, ids), device, args.rounds)
            memory[workload["name"]] = meter.peak()
            model.zero_grad(set_to_none=True)
            model.eval()
            tokens = batch * seq
        elif kind == "step":
            model.train()
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.01)

            def step():
                forward_backward(model, ids)
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()

            seconds = timed(step, device, args.rounds)
            model.eval()
            tokens = batch * seq
        else:
            raise SystemExit(f"unknown workload kind {kind}")
        results[workload["name"]] = tokens / seconds
    print(json.dumps({"tokens_per_second": results, "memory": memory, "torch": torch.__version__,
                      "transformers": transformers.__version__, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
