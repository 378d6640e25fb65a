#!/usr/bin/env python3
"""One PPO step in PyTorch, the reference for learner/tests/ppo_step.rs.

Loads the tiny fixture policy fixtures/models/qwen3-tiny with transformers (float32), takes a
fixed batch of three prompt+response sequences with fixed behaviour log-probs and advantages,
computes verl's PPO policy loss (token-mean, clip 0.2, dual clip 3), back-propagates, clips the
global gradient norm to 1.0 and takes one torch.optim.AdamW step (lr 1e-3, weight decay 0.01).
Writes learner/tests/reference/ppo_step.json (inputs, loss, gradient norm) and
learner/tests/reference/ppo_step_weights.safetensors (every parameter after the step, in
Hugging Face names).

    python3 learner/tests/reference/make_step_reference.py
"""

import json
from pathlib import Path

import torch
import transformers
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent.parent
MODEL = ROOT / "fixtures" / "models" / "qwen3-tiny"

PROMPTS = [[5, 17, 300, 41], [900, 12], [7, 7, 100, 512, 3, 64]]
RESPONSES = [[8, 250, 33], [600, 1, 2, 777, 90], [421]]
ADVANTAGES = [[0.7, -1.2, 0.3], [1.5, 0.2, -0.4, -2.0, 0.9], [-0.8]]
# Behaviour log-probs: the model's own, shifted so that some ratios leave the clip range.
SHIFTS = [[0.0, 0.5, -0.05], [-0.6, 0.1, 1.4, -1.3, 0.02], [0.35]]
CLIP, CLIP_C, LR, WEIGHT_DECAY, MAX_NORM = 0.2, 3.0, 1e-3, 0.01, 1.0
# Adam's first step moves a weight by lr * g / (|g| + eps): with eps at 1e-8 a gradient entry that
# float cancellation leaves near zero (|g| ~ 1e-8, its bits decided by summation order) still moves
# its weight by a full lr, in a direction float noise decides. With eps = 1e-3 the step is nearly
# linear in the gradient, so the comparison checks AdamW's formula (moments, bias correction, eps,
# decoupled weight decay) and not that noise.
EPS = 1e-3


def response_logprobs(model):
    out = []
    for prompt, response in zip(PROMPTS, RESPONSES):
        ids = torch.tensor([prompt + response])
        logits = model(input_ids=ids).logits[0].float()
        logp = torch.log_softmax(logits, dim=-1)
        positions = torch.arange(len(prompt) - 1, len(prompt) + len(response) - 1)
        out.append(logp[positions, torch.tensor(response)])
    return out


def ppo_loss(logprobs, old, advantages):
    """verl's vanilla PPO loss with dual clip, token-mean over the whole batch."""
    total, tokens = 0.0, 0
    for lp, olp, adv in zip(logprobs, old, advantages):
        log_ratio = torch.clamp(lp - olp, -20.0, 20.0)
        ratio = torch.exp(log_ratio)
        losses1 = -adv * ratio
        losses2 = -adv * torch.clamp(ratio, 1 - CLIP, 1 + CLIP)
        clipped = torch.maximum(losses1, losses2)
        losses3 = -adv * CLIP_C
        dual = torch.minimum(losses3, clipped)
        losses = torch.where(adv < 0, dual, clipped)
        total = total + losses.sum()
        tokens += len(lp)
    return total / tokens


def main():
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32, attn_implementation="eager")
    model.train()
    with torch.no_grad():
        base = response_logprobs(model)
    old = [b + torch.tensor(s) for b, s in zip(base, SHIFTS)]
    advantages = [torch.tensor(a) for a in ADVANTAGES]

    logprobs = response_logprobs(model)
    loss = ppo_loss(logprobs, old, advantages)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_NORM)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.999), eps=EPS, weight_decay=WEIGHT_DECAY)
    optimizer.step()

    weights = {name: p.detach().contiguous() for name, p in model.named_parameters()}
    save_file(weights, str(HERE / "ppo_step_weights.safetensors"), metadata={"format": "pt"})
    reference = {
        "prompts": PROMPTS,
        "responses": RESPONSES,
        "advantages": ADVANTAGES,
        "old_logprobs": [o.tolist() for o in old],
        "clip": CLIP,
        "clip_c": CLIP_C,
        "lr": LR,
        "weight_decay": WEIGHT_DECAY,
        "max_norm": MAX_NORM,
        "eps": EPS,
        "loss": loss.item(),
        "grad_norm": grad_norm.item(),
    }
    (HERE / "ppo_step.json").write_text(json.dumps(reference, indent=1) + "\n")
    print(f"loss {loss.item():.6f}, grad norm {grad_norm.item():.6f}, {len(weights)} tensors")


if __name__ == "__main__":
    main()
