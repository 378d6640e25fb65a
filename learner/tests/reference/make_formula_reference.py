#!/usr/bin/env python3
"""Reference values for learner/tests/formulas.rs, computed independently with numpy.

Every quantity is computed straight from the formulas of verl's
`verl/trainer/ppo/core_algos.py` and `verl/utils/torch_functional.py`, on right-padded
`[batch, width]` arrays with a response mask, the way verl's torch code does it (the Rust
code works on ragged rows or on its own tensors, so the two implementations share nothing).
Everything here is float64; inputs are rounded to float32 first so that Rust reads exactly
the numbers used here.

Run from anywhere:  python3 learner/tests/reference/make_formula_reference.py
It writes formulas.json beside itself (deterministic: fixed seed and hand-placed cases).
"""

import json
import math
import os
from collections import defaultdict

import numpy as np

rng = np.random.default_rng(20240611)


def f32(x):
    """Rounds to float32 and back, so JSON carries exactly what Rust will hold."""
    return np.asarray(x, dtype=np.float32).astype(np.float64)


# ----------------------------------------------------------------------------- inputs

LENGTHS = [3, 1, 5, 6, 2, 4, 7]  # 7 responses, one of length 1
WIDTH = 8  # padded width (> every length, so every row has padding)
GROUP_IDS = [5, 2, 5, 9, 2, 7, 9]  # groups 5, 2, 9 of two (9 tied); group 7 alone
SCORES = f32([1.0, 0.3, -0.5, 1.0, 0.7, 2.0, 1.0])
B = len(LENGTHS)
MASK = np.array([[1.0 if t < n else 0.0 for t in range(WIDTH)] for n in LENGTHS])
REAL = MASK > 0

GAMMA_GAE, LAMBDA_GAE = 0.99, 0.95
GAMMA_RPP = 0.9
KL_COEF = 0.05
GRPO_EPS = 1e-6
TIS_CAP = 1.5
CLIPRANGE_VALUE = 0.2


def junk(shape, scale=10.0):
    """Finite garbage for padding positions: the Rust code must never let it through."""
    return rng.normal(0.0, scale, size=shape)


def padded(real_values):
    """Real values where the mask is 1, junk elsewhere."""
    return np.where(REAL, real_values, junk(real_values.shape))


old_logprobs = -rng.uniform(0.05, 3.0, size=(B, WIDTH))
delta = rng.normal(0.0, 0.1, size=(B, WIDTH))
advantages = rng.normal(0.0, 1.2, size=(B, WIDTH))
# Hand-placed (row, token): (log-ratio, advantage), covering every branch of the loss.
SPECIAL = {
    (0, 0): (0.5, 1.2),  # ratio 1.65, A > 0: clipped at 1 + clip_high
    (0, 1): (0.5, -0.8),  # ratio 1.65, A < 0: unclipped, below the dual bound
    (2, 0): (-0.7, -1.0),  # ratio 0.50, A < 0: clipped at 1 - clip_low
    (2, 3): (-0.7, 0.9),  # ratio 0.50, A > 0: unclipped
    (3, 2): (1.5, -1.3),  # ratio 4.48 > 3, A < 0: dual clip
    (3, 5): (3.0, -0.4),  # ratio 20, A < 0: dual clip
    (5, 1): (3.0, 0.6),  # ratio 20, A > 0: clipped
    (6, 4): (-25.0, -2.0),  # log-ratio clamped to -20, A < 0: clipped
    (6, 6): (1.5, 1.1),  # ratio 4.48, A > 0: clipped
    (4, 1): (0.21, 0.7),  # ratio 1.234: clipped when symmetric (1.2), not with clip_high 0.28
    (4, 0): (0.21, -0.7),  # ratio 1.234, A < 0: unclipped
    (1, 0): (0.1, 0.3),  # the length-1 row
}
for (i, t), (d, a) in SPECIAL.items():
    assert t < LENGTHS[i]
    delta[i, t], advantages[i, t] = d, a
old_logprobs = f32(padded(old_logprobs))
logprobs = f32(np.where(REAL, old_logprobs + delta, junk((B, WIDTH))))
advantages = f32(padded(advantages))

behaviour = old_logprobs - rng.normal(0.0, 0.3, size=(B, WIDTH))
behaviour[0, 2] = old_logprobs[0, 2] - 0.9  # weight e^0.9 = 2.46 -> capped at 1.5
behaviour[3, 0] = old_logprobs[3, 0] + 1.0  # weight e^-1
behaviour = f32(padded(behaviour))

ref_logprobs = old_logprobs + rng.normal(0.0, 0.5, size=(B, WIDTH))
ref_logprobs[5, 3] = logprobs[5, 3] + 4.0  # k3 = e^4 - 5 > 10: clamped to 10
ref_logprobs[2, 4] = logprobs[2, 4] - 30.0  # k3 log-ratio clamped to -20, then k3 to 10
ref_logprobs = f32(padded(ref_logprobs))

old_values = f32(padded(rng.normal(0.0, 1.0, size=(B, WIDTH))))
values = f32(np.where(REAL, old_values + rng.normal(0.0, 0.4, size=(B, WIDTH)), junk((B, WIDTH))))
returns = f32(np.where(REAL, old_values + rng.normal(0.0, 0.6, size=(B, WIDTH)), junk((B, WIDTH))))

logits = rng.normal(0.0, 3.0, size=(6, 11))
logits[1] += 500.0  # a large offset (entropy is shift invariant)
logits[2, 4] = 60.0  # nearly one-hot
logits[3] = 0.0  # uniform: ln 11
logits = f32(logits)

chosen = f32(np.concatenate([rng.normal(0.0, 2.0, size=6), [60.0, -60.0]]))
rejected = f32(np.concatenate([rng.normal(0.0, 2.0, size=6), [-60.0, 60.0]]))


# ------------------------------------------------------------------ verl's helpers, numpy


def masked_sum(x, mask, axis=None):
    return (np.where(mask > 0, x, 0.0) * mask).sum(axis=axis)


def masked_mean(x, mask, axis=None):
    return masked_sum(x, mask, axis) / (mask.sum(axis=axis) + 1e-8)


def masked_var(x, mask):
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    n = mask.sum()
    return var * n / (n - 1)


def masked_whiten(x, mask, shift_mean=True):
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) / np.sqrt(var + 1e-8)
    return out + mean if not shift_mean else out


def ragged(x):
    return [[float(v) for v in x[i, : LENGTHS[i]]] for i in range(B)]


def matrix(x):
    return [[float(v) for v in row] for row in x]


# --------------------------------------------------------------------------- advantages


def kl_penalty(lp, rp, kind):
    if kind == "k1":
        return lp - rp
    if kind == "abs":
        return np.abs(lp - rp)
    if kind == "k2":
        return 0.5 * (lp - rp) ** 2
    kl = np.clip(rp - lp, -20.0, 20.0)
    return np.clip(np.exp(kl) - kl - 1.0, -10.0, 10.0)


def token_level_scores():
    """verl's reward manager: the score on the last valid response token."""
    s = np.zeros((B, WIDTH))
    for i, n in enumerate(LENGTHS):
        s[i, n - 1] = SCORES[i]
    return s


def apply_kl_penalty(scores, kld, beta):
    """verl apply_kl_penalty: token_level_rewards = scores - beta * kld * mask."""
    return scores - beta * kld * MASK


def gae(rewards, vals, mask, gamma, lam):
    nextvalues, lastgaelam = np.zeros(B), np.zeros(B)
    rev = []
    for t in reversed(range(WIDTH)):
        d = rewards[:, t] + gamma * nextvalues - vals[:, t]
        lastgaelam_ = d + gamma * lam * lastgaelam
        nextvalues = vals[:, t] * mask[:, t] + (1 - mask[:, t]) * nextvalues
        lastgaelam = lastgaelam_ * mask[:, t] + (1 - mask[:, t]) * lastgaelam
        rev.append(lastgaelam)
    adv = np.stack(rev[::-1], axis=1)
    return adv, adv + vals


def grpo(rewards, mask, index, eps, norm_by_std):
    scores = rewards.sum(-1)
    id2score = defaultdict(list)
    for i in range(B):
        id2score[index[i]].append(scores[i])
    id2mean, id2std = {}, {}
    for idx, xs in id2score.items():
        if len(xs) == 1:
            id2mean[idx], id2std[idx] = 0.0, 1.0
        else:
            id2mean[idx], id2std[idx] = np.mean(xs), np.std(xs, ddof=1)  # torch.std is unbiased
    out = scores.copy()
    for i in range(B):
        c = scores[i] - id2mean[index[i]]
        out[i] = c / (id2std[index[i]] + eps) if norm_by_std else c
    adv = out[:, None] * mask
    return adv, adv


def rloo(rewards, mask, index):
    scores = rewards.sum(-1)
    id2score = defaultdict(list)
    for i in range(B):
        id2score[index[i]].append(scores[i])
    id2mean = {k: (0.0 if len(v) == 1 else np.mean(v)) for k, v in id2score.items()}
    out = scores.copy()
    for i in range(B):
        n = len(id2score[index[i]])
        if n > 1:
            out[i] = scores[i] * n / (n - 1) - id2mean[index[i]] * n / (n - 1)
    adv = out[:, None] * mask
    return adv, adv


def reinforce_pp(rewards, mask, gamma):
    rets = np.zeros_like(rewards)
    running = np.zeros(B)
    for t in reversed(range(WIDTH)):
        running = rewards[:, t] + gamma * running
        rets[:, t] = running
        running = running * mask[:, t]
    return masked_whiten(rets, mask) * mask, rets


def reinforce_pp_baseline(rewards, mask, index):
    scores = rewards.sum(-1)
    id2score = defaultdict(list)
    for i in range(B):
        id2score[index[i]].append(scores[i])
    id2mean = {k: (0.0 if len(v) == 1 else np.mean(v)) for k, v in id2score.items()}
    out = np.array([scores[i] - id2mean[index[i]] for i in range(B)])
    adv = np.tile(out[:, None], [1, WIDTH]) * mask
    adv = masked_whiten(adv, mask) * mask
    return adv, adv


# ------------------------------------------------------------------------------- losses

TOTAL_TOKENS = float(sum(LENGTHS))
TOTAL_SEQUENCES = float(sum(1 for n in LENGTHS if n > 0))
NORM_LENGTH = float(WIDTH)  # verl: loss_mask.shape[-1]
MODES = ["token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"]


def agg_loss(loss_mat, mask, mode):
    """verl agg_loss with no global batch info (one micro-batch = the mini-batch)."""
    if mode == "token-mean":
        return masked_sum(loss_mat, mask) / mask.sum()
    if mode == "seq-mean-token-sum":
        seq_losses = masked_sum(loss_mat, mask, axis=-1)
        seq_mask = (mask.sum(-1) > 0).astype(float)
        return masked_sum(seq_losses, seq_mask) / seq_mask.sum()
    if mode == "seq-mean-token-mean":
        lens = mask.sum(-1)
        seq_losses = masked_sum(loss_mat, mask, axis=-1) / (lens + 1e-8)
        seq_mask = (lens > 0).astype(float)
        return masked_sum(seq_losses, seq_mask) / seq_mask.sum()
    if mode == "seq-mean-token-sum-norm":
        return masked_sum(loss_mat, mask, axis=-1).sum() / mask.shape[-1]
    raise ValueError(mode)


def agg_weights(mode):
    """d agg_loss / d loss_mat at each real token (the aggregation is linear)."""
    lens = MASK.sum(-1, keepdims=True)
    if mode == "token-mean":
        return MASK / TOTAL_TOKENS
    if mode == "seq-mean-token-sum":
        return MASK / TOTAL_SEQUENCES
    if mode == "seq-mean-token-mean":
        return MASK / lens / TOTAL_SEQUENCES
    return MASK / NORM_LENGTH


POLICY_CONFIGS = {
    "symmetric": dict(clip_low=0.2, clip_high=0.2, clip_ratio_c=None, tis=False),
    "asymmetric": dict(clip_low=0.2, clip_high=0.28, clip_ratio_c=None, tis=False),
    "dual": dict(clip_low=0.2, clip_high=0.2, clip_ratio_c=3.0, tis=False),
    "asymmetric_dual_tis": dict(clip_low=0.2, clip_high=0.28, clip_ratio_c=3.0, tis=True),
}


def tis_weights(old, beh, cap):
    return np.minimum(np.exp(np.clip(old - beh, -20.0, 20.0)), cap)


def policy_token_losses(lp, cfg):
    """verl compute_policy_loss_vanilla up to agg_loss, plus the metrics' numerators."""
    neg_kl = np.clip(lp - old_logprobs, -20.0, 20.0)
    ratio = np.exp(neg_kl)
    l1 = -advantages * ratio
    l2 = -advantages * np.clip(ratio, 1 - cfg["clip_low"], 1 + cfg["clip_high"])
    lc = np.maximum(l1, l2)
    clipped = (l2 > l1).astype(float)
    if cfg["clip_ratio_c"] is not None:
        l3 = -advantages * cfg["clip_ratio_c"]
        dual = ((lc > l3) & (advantages < 0)).astype(float)
        losses = np.where(advantages < 0, np.minimum(l3, lc), lc)
    else:
        dual = np.zeros_like(lc)
        losses = lc
    if cfg["tis"]:
        losses = losses * tis_weights(old_logprobs, behaviour, TIS_CAP)
    metrics = dict(
        clipped_tokens=masked_sum(clipped, MASK),
        dual_clipped_tokens=masked_sum(dual, MASK),
        approx_kl_sum=masked_sum(-neg_kl, MASK),
        tokens=MASK.sum(),
    )
    return losses, metrics


def policy_grad(cfg, mode):
    """Analytic d loss / d logprobs: only tokens on the unclipped branch carry -A * ratio."""
    diff = logprobs - old_logprobs
    ratio = np.exp(np.clip(diff, -20.0, 20.0))
    l1 = -advantages * ratio
    l2 = -advantages * np.clip(ratio, 1 - cfg["clip_low"], 1 + cfg["clip_high"])
    on_l1 = l1 >= l2
    g = np.where(on_l1 & (np.abs(diff) < 20.0), -advantages * ratio, 0.0)
    if cfg["clip_ratio_c"] is not None:
        lc = np.maximum(l1, l2)
        l3 = -advantages * cfg["clip_ratio_c"]
        g = np.where((advantages < 0) & (lc > l3), 0.0, g)
    if cfg["tis"]:
        g = g * tis_weights(old_logprobs, behaviour, TIS_CAP)
    return g * agg_weights(mode)


def value_token_losses(v):
    vclip = np.maximum(np.minimum(v, old_values + CLIPRANGE_VALUE), old_values - CLIPRANGE_VALUE)
    l1 = (v - returns) ** 2
    l2 = (vclip - returns) ** 2
    metrics = dict(
        clipped_tokens=masked_sum((l2 > l1).astype(float), MASK),
        sq_error_sum=masked_sum(l1, MASK),
        tokens=MASK.sum(),
    )
    return np.maximum(l1, l2), metrics


def value_grad(mode):
    vclip = np.maximum(np.minimum(values, old_values + CLIPRANGE_VALUE), old_values - CLIPRANGE_VALUE)
    l1 = (values - returns) ** 2
    l2 = (vclip - returns) ** 2
    # When the clipped error is strictly larger, the prediction is outside the clip range and
    # the clipped branch is constant in it.
    g = np.where(l1 >= l2, 2.0 * (values - returns), 0.0)
    return 0.5 * g * agg_weights(mode)


def entropy_from_logits(x):
    m = x.max(-1, keepdims=True)
    lse = (m + np.log(np.exp(x - m).sum(-1, keepdims=True)))[:, 0]
    p = np.exp(x - m) / np.exp(x - m).sum(-1, keepdims=True)
    return lse - (p * x).sum(-1)


def entropy_grad(x):
    """d sum_i H_i / d logits = -p * (l - sum_k p_k l_k)."""
    m = x.max(-1, keepdims=True)
    p = np.exp(x - m) / np.exp(x - m).sum(-1, keepdims=True)
    return -p * (x - (p * x).sum(-1, keepdims=True))


def bt_loss(c, r):
    d = c - r
    return float(np.mean(np.logaddexp(0.0, -d)))  # -log sigmoid(d)


def finite_difference_check(fn, x, grad, skip):
    """Central differences of fn at x agree with grad away from kinks (self-check)."""
    h = 1e-6
    for i in range(B):
        for t in range(WIDTH):
            if skip[i, t]:
                continue
            xp, xm = x.copy(), x.copy()
            xp[i, t] += h
            xm[i, t] -= h
            num = (fn(xp) - fn(xm)) / (2 * h)
            assert abs(num - grad[i, t]) < 1e-6 * max(1.0, abs(grad[i, t])), (i, t, num, grad[i, t])


# ------------------------------------------------------------------------------ compute

kl_rows = kl_penalty(old_logprobs, ref_logprobs, "k1")
tlr_plain = apply_kl_penalty(token_level_scores(), np.zeros_like(kl_rows), 0.0)
tlr = apply_kl_penalty(token_level_scores(), kl_rows, KL_COEF)
token_rewards_f32 = f32(tlr)  # what Rust feeds to GAE / REINFORCE++ (read from the JSON)

gae_adv, gae_ret = gae(token_rewards_f32, old_values, MASK, GAMMA_GAE, LAMBDA_GAE)
gae_adv_whitened = masked_whiten(gae_adv, MASK)
values_whitened_no_shift = masked_whiten(old_values, MASK, shift_mean=False)
outcome = np.where(REAL, token_level_scores(), 0.0)  # verl sums token rewards to the score
grpo_adv, _ = grpo(outcome, MASK, GROUP_IDS, GRPO_EPS, True)
drgrpo_adv, _ = grpo(outcome, MASK, GROUP_IDS, GRPO_EPS, False)
rloo_adv, _ = rloo(outcome, MASK, GROUP_IDS)
rpp_adv, rpp_ret = reinforce_pp(token_rewards_f32, MASK, GAMMA_RPP)
rppb_adv, _ = reinforce_pp_baseline(outcome, MASK, GROUP_IDS)

policy = {}
for name, cfg in POLICY_CONFIGS.items():
    losses, metrics = policy_token_losses(logprobs, cfg)
    policy[name] = dict(
        config=dict(
            clip_low=cfg["clip_low"],
            clip_high=cfg["clip_high"],
            clip_ratio_c=cfg["clip_ratio_c"],
            tis_cap=TIS_CAP if cfg["tis"] else None,
        ),
        loss={mode: float(agg_loss(losses, MASK, mode)) for mode in MODES},
        metrics={k: float(v) for k, v in metrics.items()},
        grad={mode: matrix(policy_grad(cfg, mode)) for mode in MODES},
    )
    for mode in MODES:
        fn = lambda lp, cfg=cfg, mode=mode: agg_loss(policy_token_losses(lp, cfg)[0], MASK, mode)
        finite_difference_check(fn, logprobs.copy(), policy_grad(cfg, mode), ~REAL)

value_losses, value_metrics = value_token_losses(values)
value = dict(
    loss={mode: float(0.5 * agg_loss(value_losses, MASK, mode)) for mode in MODES},
    metrics={k: float(v) for k, v in value_metrics.items()},
    grad={mode: matrix(value_grad(mode)) for mode in MODES},
)
for mode in MODES:
    fn = lambda v, mode=mode: 0.5 * agg_loss(value_token_losses(v)[0], MASK, mode)
    finite_difference_check(fn, values.copy(), value_grad(mode), ~REAL)

h = 1e-6
for i, j in [(0, 0), (0, 5), (4, 10), (5, 3)]:
    xp, xm = logits.copy(), logits.copy()
    xp[i, j] += h
    xm[i, j] -= h
    num = (entropy_from_logits(xp).sum() - entropy_from_logits(xm).sum()) / (2 * h)
    assert abs(num - entropy_grad(logits)[i, j]) < 1e-6, (i, j, num)

KINDS = ["k1", "abs", "k2", "k3"]
reference = dict(
    note="Generated by make_formula_reference.py (numpy, float64, verl's formulas). Do not edit.",
    inputs=dict(
        lengths=LENGTHS,
        width=WIDTH,
        group_ids=GROUP_IDS,
        scores=[float(s) for s in SCORES],
        gamma_gae=GAMMA_GAE,
        lambda_gae=LAMBDA_GAE,
        gamma_rpp=GAMMA_RPP,
        kl_coef=KL_COEF,
        grpo_eps=GRPO_EPS,
        tis_cap=TIS_CAP,
        cliprange_value=CLIPRANGE_VALUE,
        total_tokens=TOTAL_TOKENS,
        total_sequences=TOTAL_SEQUENCES,
        norm_length=NORM_LENGTH,
        token_rewards=ragged(token_rewards_f32),
        logprobs=matrix(logprobs),
        old_logprobs=matrix(old_logprobs),
        behaviour_logprobs=matrix(behaviour),
        ref_logprobs=matrix(ref_logprobs),
        advantages=matrix(advantages),
        old_values=matrix(old_values),
        values=matrix(values),
        returns=matrix(returns),
        logits=matrix(logits),
        chosen=[float(x) for x in chosen],
        rejected=[float(x) for x in rejected],
    ),
    expected=dict(
        token_rewards=ragged(tlr_plain),
        token_rewards_kl=ragged(tlr),
        kl_host={k: ragged(kl_penalty(old_logprobs, ref_logprobs, k)) for k in KINDS},
        kl_tensor={k: matrix(kl_penalty(logprobs, ref_logprobs, k)) for k in KINDS},
        gae=dict(advantages=ragged(gae_adv), returns=ragged(gae_ret), whitened=ragged(gae_adv_whitened)),
        whiten_values_no_shift=ragged(values_whitened_no_shift),
        grpo=ragged(grpo_adv),
        dr_grpo=ragged(drgrpo_adv),
        rloo=ragged(rloo_adv),
        reinforce_plus_plus=dict(advantages=ragged(rpp_adv), returns=ragged(rpp_ret)),
        reinforce_plus_plus_baseline=ragged(rppb_adv),
        policy=policy,
        value=value,
        tis_weights=matrix(tis_weights(old_logprobs, behaviour, TIS_CAP)),
        entropy=[float(x) for x in entropy_from_logits(logits)],
        entropy_grad=matrix(entropy_grad(logits)),
        bradley_terry=bt_loss(chosen, rejected),
    ),
)

# Sanity of the fixture itself: every branch is exercised.
m = policy["asymmetric_dual_tis"]["metrics"]
assert m["clipped_tokens"] >= 5 and m["dual_clipped_tokens"] >= 2, m
assert policy["symmetric"]["metrics"]["clipped_tokens"] > policy["asymmetric"]["metrics"]["clipped_tokens"]
assert 0 < value["metrics"]["clipped_tokens"] < TOTAL_TOKENS, value["metrics"]
w = tis_weights(old_logprobs, behaviour, TIS_CAP)
assert (w[REAL] == TIS_CAP).any() and (w[REAL] < 1).any()
assert (kl_penalty(logprobs, ref_logprobs, "k3")[REAL] == 10.0).sum() >= 2
assert abs(entropy_from_logits(logits)[3] - math.log(11)) < 1e-12

out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "formulas.json")
with open(out, "w") as f:
    json.dump(reference, f, indent=1)
    f.write("\n")
print(f"wrote {out}")
