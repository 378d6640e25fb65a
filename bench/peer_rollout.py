#!/usr/bin/env python3
"""The peer side of `grlo bench rollout`: the same rollout requests through transformers' `generate`.

Loads the model directory grlo wrote or loaded (the same weights, in float32), then for each
batch size cuts that batch size's requests, in the order given, into batches of that many rows,
left-pads each
batch and runs `generate` with a static KV cache (`cache_implementation="static"`), sampling at
temperature 1.0 with no top-k / top-p filtering and no EOS (grlo's side does not stop at EOS
either, so both sides produce exactly the tokens the requests are entitled to).

`generate` takes one `max_new_tokens` per call, so each batch runs to its longest request's
limit; the rows that were entitled to fewer tokens keep decoding. Only the tokens each request is
entitled to count as useful: tokens/s = useful tokens / wall time of all batches. Prints one JSON
object: {"batches": {"8": {"seconds": s, "useful_tokens": n, "generated_tokens": m}, ...}, ...}.
The random stream is seeded once per batch size (`--seed`): `generate` has no per-row seeds.

Called by `grlo bench rollout`; it can also be run alone:
    python3 bench/peer_rollout.py --model DIR --requests REQUESTS.json --threads 2
where REQUESTS.json is [{"batch": 8, "requests": [{"prompt": [ids...], "max_new_tokens": n,
"seed": s}, ...]}, ...].
"""

import argparse
import json
import time

import torch
import transformers


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def left_padded(prompts, pad, device):
    """input_ids and attention_mask `[rows, longest]`, prompts right-aligned."""
    longest = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), longest), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), longest), dtype=torch.long)
    for r, prompt in enumerate(prompts):
        ids[r, longest - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
        mask[r, longest - len(prompt):] = 1
    return ids.to(device), mask.to(device)


@torch.inference_mode()
def run_batch(model, requests, pad, device):
    """Generates one padded batch to its longest limit; the number of tokens generated."""
    ids, mask = left_padded([r["prompt"] for r in requests], pad, device)
    new = max(r["max_new_tokens"] for r in requests)
    # A fresh config: nothing from the checkpoint's generation_config.json (EOS, filters) applies.
    config = transformers.GenerationConfig(
        do_sample=True, temperature=1.0, top_k=0, top_p=1.0, eos_token_id=None,
        pad_token_id=pad, bos_token_id=None, cache_implementation="static", max_new_tokens=new)
    out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
    generated = out.shape[1] - ids.shape[1]
    assert generated == new, f"generate stopped after {generated} of {new} tokens"
    return len(requests) * generated


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a Hugging Face model directory")
    parser.add_argument("--requests", required=True, help="JSON list of batch sizes and requests")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        args.model, dtype=torch.float32, attn_implementation="sdpa")
    model.to(device).eval()
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    results = {}
    for plan in json.load(open(args.requests)):
        batch, requests = plan["batch"], plan["requests"]
        chunks = [requests[i:i + batch] for i in range(0, len(requests), batch)]
        # Warm-up: one short batch of this shape (allocators, the static cache's first build).
        warm = [dict(r, max_new_tokens=min(r["max_new_tokens"], 4)) for r in chunks[0]]
        run_batch(model, warm, pad, device)
        torch.manual_seed(args.seed)
        sync(device)
        start = time.perf_counter()
        generated = sum(run_batch(model, chunk, pad, device) for chunk in chunks)
        sync(device)
        seconds = time.perf_counter() - start
        results[str(batch)] = {
            "seconds": seconds,
            "useful_tokens": sum(r["max_new_tokens"] for r in requests),
            "generated_tokens": generated,
        }
    print(json.dumps({"batches": results, "torch": torch.__version__,
                      "transformers": transformers.__version__, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
