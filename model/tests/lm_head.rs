//! The chunked log-prob head against the materialised reference (full logits, `log_softmax`,
//! `gather`, `-Σ p log p`, differentiated by Burn's autodiff): log-probabilities, entropies and
//! the gradients with respect to the hidden states and the weight, for 1 to 300 tokens, vocab
//! sizes that are and are not multiples of anything, chunks from one token to all of them,
//! losses that use the log-probabilities, the entropies or both, frozen inputs, bf16 inputs,
//! and the model's tied and untied heads.

mod common;

use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::{Autodiff, Flex};
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Int, Tensor, TensorData};
use grlo_model::backend::ModelBackend;
use grlo_model::lm_head::{self, TokenLogprobs, autodiff::token_logprobs_chunked, reference};
use grlo_model::model::to_f32_vec;
use grlo_model::{Model, TokenBatch};

type B = Flex;
type A = Autodiff<Flex>;

fn random<const D: usize>(shape: [usize; D], std: f64, seed: u64) -> Tensor<A, D> {
    let values = common::normal_values(shape.iter().product(), std, seed);
    Tensor::<A, D>::from_data(TensorData::new(values, shape), &Default::default())
}

fn targets(tokens: usize, vocab: usize, seed: u64) -> Tensor<A, 1, Int> {
    // A simple LCG: every id in range, some repeated.
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let ids: Vec<i64> = (0..tokens)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((x >> 33) % vocab as u64) as i64
        })
        .collect();
    Tensor::from_data(TensorData::new(ids, [tokens]), &Default::default())
}

fn max_abs_diff<Bk: Backend, const D: usize>(a: Tensor<Bk, D>, b: Tensor<Bk, D>) -> f32 {
    assert_eq!(a.dims(), b.dims());
    to_f32_vec(a)
        .iter()
        .zip(to_f32_vec(b))
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn max_abs<Bk: Backend, const D: usize>(a: Tensor<Bk, D>) -> f32 {
    to_f32_vec(a).iter().fold(0.0, |m, x| m.max(x.abs()))
}

/// Which parts of the head's output the loss uses.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Loss {
    /// `sum(lp * w1) + sum(ent * w2)`.
    Both,
    /// `sum(lp * w1)`, the entropy computed but unused.
    LogprobsOnly,
    /// `sum(lp * w1)`, the entropy not computed.
    NoEntropy,
    /// `sum(ent * w2)`.
    EntropyOnly,
}

struct Outcome {
    logprobs: Tensor<B, 1>,
    entropy: Option<Tensor<B, 1>>,
    grad_hidden: Option<Tensor<B, 2>>,
    grad_weight: Option<Tensor<B, 2>>,
}

/// Runs one path (`chunk: None` is the reference) on copies of the inputs that require grad as
/// asked, and back-propagates the loss.
#[allow(clippy::too_many_arguments)]
fn run(
    hidden: &Tensor<A, 2>,
    weight: &Tensor<A, 2>,
    targets: &Tensor<A, 1, Int>,
    loss: Loss,
    chunk: Option<usize>,
    grad_hidden: bool,
    grad_weight: bool,
) -> Outcome {
    let [tokens, _] = hidden.dims();
    let leaf = |x: &Tensor<A, 2>, grad: bool| {
        let x = x.clone().detach();
        if grad { x.require_grad() } else { x }
    };
    let (h, w) = (leaf(hidden, grad_hidden), leaf(weight, grad_weight));
    let with_entropy = loss != Loss::NoEntropy;
    let TokenLogprobs { logprobs, entropy } = match chunk {
        Some(chunk) => token_logprobs_chunked::<B, NoCheckpointing>(
            h.clone(),
            w.clone(),
            targets.clone(),
            with_entropy,
            chunk,
        ),
        None => reference::token_logprobs(h.clone(), w.clone(), targets.clone(), with_entropy),
    };
    let w1 = random([tokens], 1.0, 101).detach();
    let w2 = random([tokens], 1.0, 102).detach();
    let lp_term = || logprobs.clone().mul(w1.clone()).sum();
    let ent_term = || entropy.clone().unwrap().mul(w2.clone()).sum();
    let total = match loss {
        Loss::Both => lp_term().add(ent_term()),
        Loss::LogprobsOnly | Loss::NoEntropy => lp_term(),
        Loss::EntropyOnly => ent_term(),
    };
    let grads = total.backward();
    Outcome {
        logprobs: logprobs.inner(),
        entropy: entropy.map(|e| e.inner()),
        grad_hidden: h.grad(&grads),
        grad_weight: w.grad(&grads),
    }
}

/// Both paths on random inputs; every output and gradient within `1e-5`.
fn check(tokens: usize, d: usize, vocab: usize, chunk: usize, loss: Loss, seed: u64) {
    let hidden = random([tokens, d], 1.0, seed);
    let weight = random([d, vocab], 0.5, seed + 1);
    let targets = targets(tokens, vocab, seed + 2);
    let ours = run(&hidden, &weight, &targets, loss, Some(chunk), true, true);
    let theirs = run(&hidden, &weight, &targets, loss, None, true, true);
    let what = format!("tokens {tokens} d {d} vocab {vocab} chunk {chunk} {loss:?}");
    let close = |name: &str, diff: f32| assert!(diff < 1e-5, "{name}: max |diff| {diff} ({what})");
    close("logprobs", max_abs_diff(ours.logprobs, theirs.logprobs));
    match (ours.entropy, theirs.entropy) {
        (Some(a), Some(b)) => close("entropy", max_abs_diff(a, b)),
        (None, None) => {}
        _ => panic!("entropy computed by one path only ({what})"),
    }
    close(
        "grad hidden",
        max_abs_diff(ours.grad_hidden.unwrap(), theirs.grad_hidden.unwrap()),
    );
    close(
        "grad weight",
        max_abs_diff(ours.grad_weight.unwrap(), theirs.grad_weight.unwrap()),
    );
}

#[test]
fn every_length_and_chunk_size_matches_the_reference() {
    for (i, &tokens) in [1usize, 2, 7, 33, 128, 300].iter().enumerate() {
        // 97 is prime: no chunk divides it; 64 is a power of two.
        for vocab in [97, 64] {
            for chunk in [1, 7, 64, 1000] {
                check(tokens, 16, vocab, chunk, Loss::Both, 10 * i as u64);
            }
        }
    }
}

#[test]
fn losses_that_ignore_or_use_only_one_output() {
    for loss in [Loss::LogprobsOnly, Loss::NoEntropy, Loss::EntropyOnly] {
        for chunk in [5, 300] {
            check(123, 16, 211, chunk, loss, 7);
        }
    }
}

/// Log-probabilities and entropies in f64 on the host from f32 logits `[tokens, vocab]`: at
/// vocabularies of tens of thousands an f32 sum over the vocabulary is itself off by ~1e-5
/// relative, in the materialised reference as much as in the chunked head (more, measured).
fn f64_head(logits: &[f32], targets: &[i64], vocab: usize) -> (Vec<f64>, Vec<f64>) {
    let mut logprobs = Vec::new();
    let mut entropies = Vec::new();
    for (row, &target) in logits.chunks_exact(vocab).zip(targets) {
        let max = row.iter().fold(f64::MIN, |m, &x| m.max(x as f64));
        let sum: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
        let lse = max + sum.ln();
        let expected: f64 = row.iter().map(|&x| (x as f64 - lse).exp() * x as f64).sum();
        logprobs.push(row[target as usize] as f64 - lse);
        entropies.push(lse - expected);
    }
    (logprobs, entropies)
}

/// In f64 on the host, the gradients of `sum(lp) + sum(entropy)` with respect to `hidden`
/// (`[tokens, d]`) and `weight` (`[d, vocab]`) from f32 logits: `dz_k = 1[k = target] - p_k
/// - p_k (log p_k + H)`, `d hidden = dz · weightᵀ`, `d weight = hiddenᵀ · dz`.
fn f64_grads(
    logits: &[f32],
    hidden: &[f32],
    weight: &[f32],
    targets: &[i64],
    d: usize,
    vocab: usize,
) -> (Vec<f64>, Vec<f64>) {
    let (_, entropies) = f64_head(logits, targets, vocab);
    let mut grad_hidden = vec![0f64; targets.len() * d];
    let mut grad_weight = vec![0f64; d * vocab];
    for (i, row) in logits.chunks_exact(vocab).enumerate() {
        let max = row.iter().fold(f64::MIN, |m, &x| m.max(x as f64));
        let lse = max
            + row
                .iter()
                .map(|&x| (x as f64 - max).exp())
                .sum::<f64>()
                .ln();
        for (k, &z) in row.iter().enumerate() {
            let logp = z as f64 - lse;
            let p = logp.exp();
            let mut dz = -p - p * (logp + entropies[i]);
            if k == targets[i] as usize {
                dz += 1.0;
            }
            for j in 0..d {
                grad_hidden[i * d + j] += dz * weight[j * vocab + k] as f64;
                grad_weight[j * vocab + k] += dz * hidden[i * d + j] as f64;
            }
        }
    }
    (grad_hidden, grad_weight)
}

/// `max |a - b| / max(1, max |b|)`.
fn rel_diff_f64(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(1f64, |m, x| m.max(x.abs()));
    a.iter()
        .zip(b)
        .map(|(&x, y)| (x as f64 - y).abs())
        .fold(0.0, f64::max)
        / scale
}

/// `max |a - b| / max(1, max |b|)` of two tensors.
fn rel_diff<Bk: Backend, const D: usize>(a: Tensor<Bk, D>, b: Tensor<Bk, D>) -> f32 {
    let scale = max_abs(b.clone()).max(1.0);
    max_abs_diff(a, b) / scale
}

#[test]
fn the_default_chunk_size_runs_through_the_backend_trait() {
    // 1 << 24 elements / 50,000 = 335 tokens a chunk: 700 tokens make three chunks.
    let (tokens, d, vocab) = (700, 8, 50_000);
    assert_eq!(
        lm_head::chunk_tokens(vocab, <A as ModelBackend>::logits_chunk_elements()),
        335
    );
    let hidden = random([tokens, d], 1.0, 3);
    let weight = random([d, vocab], 0.5, 4);
    let targets = targets(tokens, vocab, 5);
    let ids = targets
        .clone()
        .inner()
        .into_data()
        .convert::<i64>()
        .into_vec::<i64>()
        .unwrap();
    let logits = to_f32_vec(hidden.clone().inner().matmul(weight.clone().inner()));
    let (lp64, ent64) = f64_head(&logits, &ids, vocab);

    let h = hidden.clone().detach().require_grad();
    let w = weight.clone().detach().require_grad();
    let out = A::token_logprobs(h.clone(), w.clone(), targets.clone(), true);
    let lp = to_f32_vec(out.logprobs.clone().inner());
    let ent = to_f32_vec(out.entropy.clone().unwrap().inner());
    assert!(
        rel_diff_f64(&lp, &lp64) < 1e-5,
        "{}",
        rel_diff_f64(&lp, &lp64)
    );
    assert!(
        rel_diff_f64(&ent, &ent64) < 1e-5,
        "{}",
        rel_diff_f64(&ent, &ent64)
    );
    let grads = out
        .logprobs
        .sum()
        .add(out.entropy.unwrap().sum())
        .backward();

    let (rh, rw) = (
        hidden.clone().detach().require_grad(),
        weight.clone().detach().require_grad(),
    );
    let r = reference::token_logprobs(rh.clone(), rw.clone(), targets.clone(), true);
    let rgrads = r.logprobs.sum().add(r.entropy.unwrap().sum()).backward();
    // At this vocabulary an f32 gradient is ~1e-4 relative from the f64 one whichever way it
    // is computed: the chunked head must be as close as the materialised reference.
    let (gh64, gw64) = f64_grads(
        &logits,
        &to_f32_vec(hidden.clone().inner()),
        &to_f32_vec(weight.clone().inner()),
        &ids,
        d,
        vocab,
    );
    for (name, ours, theirs, truth) in [
        (
            "grad hidden",
            h.grad(&grads).unwrap(),
            rh.grad(&rgrads).unwrap(),
            gh64,
        ),
        (
            "grad weight",
            w.grad(&grads).unwrap(),
            rw.grad(&rgrads).unwrap(),
            gw64,
        ),
    ] {
        let ours = rel_diff_f64(&to_f32_vec(ours), &truth);
        let theirs = rel_diff_f64(&to_f32_vec(theirs), &truth);
        assert!(
            ours < 1e-4 && ours <= 1.5 * theirs,
            "{name}: relative max |diff| from f64 {ours}, the reference's {theirs}"
        );
    }

    // The inner backend's forward (no graph) gives the same numbers.
    let inner = B::token_logprobs(hidden.inner(), weight.inner(), targets.inner(), true);
    assert!(rel_diff_f64(&to_f32_vec(inner.logprobs), &lp64) < 1e-5);
    assert!(rel_diff_f64(&to_f32_vec(inner.entropy.unwrap()), &ent64) < 1e-5);
}

#[test]
fn a_frozen_weight_or_frozen_hidden_states_get_no_gradient() {
    let (tokens, d, vocab) = (50, 8, 77);
    let hidden = random([tokens, d], 1.0, 11);
    let weight = random([d, vocab], 0.5, 12);
    let targets = targets(tokens, vocab, 13);
    for (grad_hidden, grad_weight) in [(true, false), (false, true)] {
        let ours = run(
            &hidden,
            &weight,
            &targets,
            Loss::Both,
            Some(16),
            grad_hidden,
            grad_weight,
        );
        let theirs = run(
            &hidden,
            &weight,
            &targets,
            Loss::Both,
            None,
            grad_hidden,
            grad_weight,
        );
        assert_eq!(ours.grad_hidden.is_some(), grad_hidden);
        assert_eq!(ours.grad_weight.is_some(), grad_weight);
        for (a, b) in [
            (ours.grad_hidden, theirs.grad_hidden),
            (ours.grad_weight, theirs.grad_weight),
        ] {
            if let (Some(a), Some(b)) = (a, b) {
                assert!(max_abs_diff(a, b) < 1e-5);
            }
        }
    }
    // Nothing requires grad: the forward alone, still right.
    let out = token_logprobs_chunked::<B, NoCheckpointing>(
        hidden.clone(),
        weight.clone(),
        targets.clone(),
        true,
        16,
    );
    let expected = reference::token_logprobs(hidden, weight, targets, true);
    assert!(max_abs_diff(out.logprobs, expected.logprobs) < 1e-5);
}

#[test]
fn no_tokens_give_empty_outputs_and_zero_gradients() {
    let h = random([0, 8], 1.0, 1).require_grad();
    let w = random([8, 33], 1.0, 2).require_grad();
    let t = Tensor::<A, 1, Int>::from_data(TensorData::new(Vec::<i64>::new(), [0]), &h.device());
    let out = A::token_logprobs(h.clone(), w.clone(), t, true);
    assert_eq!(out.logprobs.dims(), [0]);
    assert_eq!(out.entropy.as_ref().unwrap().dims(), [0]);
    // A loss that is a sum over nothing, plus a term that keeps the graph's root tracked.
    let grads = out
        .logprobs
        .sum()
        .add(out.entropy.unwrap().sum())
        .add(w.clone().sum().mul_scalar(0.0))
        .backward();
    assert_eq!(max_abs(w.grad(&grads).unwrap()), 0.0);
    assert_eq!(h.grad(&grads).map(|g| g.dims()), Some([0, 8]));
}

#[test]
fn bf16_inputs_give_close_logprobs_and_gradients_in_bf16() {
    let (tokens, d, vocab) = (64, 16, 300);
    let hidden = random([tokens, d], 1.0, 21);
    let weight = random([d, vocab], 0.5, 22);
    let targets = targets(tokens, vocab, 23);
    let f32_run = run(&hidden, &weight, &targets, Loss::Both, Some(10), true, true);

    let h = hidden.clone().detach().cast(DType::BF16).require_grad();
    let w = weight.clone().detach().cast(DType::BF16).require_grad();
    let out = token_logprobs_chunked::<B, NoCheckpointing>(
        h.clone(),
        w.clone(),
        targets.clone(),
        true,
        10,
    );
    assert_eq!(out.logprobs.dtype(), DType::F32);
    let w1 = random([tokens], 1.0, 101).detach();
    let w2 = random([tokens], 1.0, 102).detach();
    let grads = out
        .logprobs
        .clone()
        .mul(w1)
        .sum()
        .add(out.entropy.clone().unwrap().mul(w2).sum())
        .backward();
    let lp_diff = max_abs_diff(out.logprobs.inner(), f32_run.logprobs);
    assert!(lp_diff < 5e-2, "logprobs: max |diff| {lp_diff}");
    let ent_diff = max_abs_diff(out.entropy.unwrap().inner(), f32_run.entropy.unwrap());
    assert!(ent_diff < 5e-2, "entropy: max |diff| {ent_diff}");
    let gh = h.grad(&grads).unwrap();
    let gw = w.grad(&grads).unwrap();
    assert_eq!(gh.dtype(), DType::BF16);
    assert_eq!(gw.dtype(), DType::BF16);
    for (name, ours, theirs) in [
        (
            "grad hidden",
            gh.cast(DType::F32),
            f32_run.grad_hidden.unwrap(),
        ),
        (
            "grad weight",
            gw.cast(DType::F32),
            f32_run.grad_weight.unwrap(),
        ),
    ] {
        let scale = max_abs(theirs.clone()).max(1.0);
        let diff = max_abs_diff(ours, theirs);
        assert!(
            diff < 5e-2 * scale,
            "{name}: max |diff| {diff} (scale {scale})"
        );
    }
}

#[test]
fn bf16_hidden_states_with_an_f32_weight_give_each_its_own_gradient_dtype() {
    // Mixed precision with f32 parameters: the weight is cast to the hidden states' dtype for
    // the matmuls and its gradient comes back in f32.
    let (tokens, d, vocab) = (40, 16, 123);
    let hidden = random([tokens, d], 1.0, 31);
    let weight = random([d, vocab], 0.5, 32);
    let targets = targets(tokens, vocab, 33);
    let f32_run = run(&hidden, &weight, &targets, Loss::Both, Some(9), true, true);
    let h = hidden.detach().cast(DType::BF16).require_grad();
    let w = weight.detach().require_grad();
    let out = token_logprobs_chunked::<B, NoCheckpointing>(h.clone(), w.clone(), targets, true, 9);
    let w1 = random([tokens], 1.0, 101).detach();
    let w2 = random([tokens], 1.0, 102).detach();
    let lp = out.logprobs.clone().inner();
    let grads = out
        .logprobs
        .mul(w1)
        .sum()
        .add(out.entropy.unwrap().mul(w2).sum())
        .backward();
    let diff = max_abs_diff(lp, f32_run.logprobs);
    assert!(diff < 5e-2, "logprobs: max |diff| {diff}");
    let (gh, gw) = (h.grad(&grads).unwrap(), w.grad(&grads).unwrap());
    assert_eq!((gh.dtype(), gw.dtype()), (DType::BF16, DType::F32));
    let theirs = f32_run.grad_weight.unwrap();
    let scale = max_abs(theirs.clone()).max(1.0);
    let diff = max_abs_diff(gw, theirs);
    assert!(
        diff < 5e-2 * scale,
        "grad weight: max |diff| {diff} (scale {scale})"
    );
}

/// `Model::token_logprobs` against `lm_logits` + `log_softmax` + `gather` on a fixture model:
/// values, and the gradients of every parameter the head touches.
fn check_model_head(name: &str) {
    let device = Default::default();
    let model = Model::<A>::load(&common::model_dir(name), &device).expect("fixture loads");
    let vocab = model.config.vocab_size;
    let rows = vec![vec![3u32, 17, 99, 4, 250, 8, 11], vec![5, 6, 700, 2]];
    let batch = TokenBatch::right_padded(&rows, 0);
    let tokens = batch.batch * batch.seq;
    let targets: Vec<u32> = (0..tokens as u32)
        .map(|i| (i * 7919 + 13) % vocab as u32)
        .collect();
    let w2 = random([tokens], 1.0, 5).detach();

    let hidden = model.forward_hidden(&batch, None);
    let ours = model.token_logprobs(hidden, &targets, true);
    let ours_lp = to_f32_vec(ours.logprobs.clone().inner());
    let ours_ent = to_f32_vec(ours.entropy.clone().unwrap().inner());
    let grads = ours
        .logprobs
        .sum()
        .add(ours.entropy.unwrap().mul(w2.clone()).sum())
        .backward();

    let hidden = model.forward_hidden(&batch, None);
    let logits = model.lm_logits(hidden); // [tokens, vocab]
    let ids: Vec<i64> = targets.iter().map(|&t| t as i64).collect();
    let (lp64, ent64) = f64_head(&to_f32_vec(logits.clone().inner()), &ids, vocab);
    let diff = rel_diff_f64(&ours_lp, &lp64);
    assert!(diff < 1e-5, "{name}: logprobs relative max |diff| {diff}");
    let diff = rel_diff_f64(&ours_ent, &ent64);
    assert!(diff < 1e-5, "{name}: entropy relative max |diff| {diff}");

    let logp = log_softmax(logits, 1); // [tokens, vocab]
    let index = Tensor::<A, 2, Int>::from_data(TensorData::new(ids, [tokens, 1]), &device);
    let ref_lp = logp.clone().gather(1, index).reshape([tokens]);
    let ref_ent = logp
        .clone()
        .exp()
        .mul(logp)
        .sum_dim(1)
        .neg()
        .reshape([tokens]);
    let ref_grads = ref_lp.sum().add(ref_ent.mul(w2).sum()).backward();

    let embed = model.embed.val();
    let diff = rel_diff(embed.grad(&grads).unwrap(), embed.grad(&ref_grads).unwrap());
    assert!(
        diff < 1e-5,
        "{name}: embedding gradient relative max |diff| {diff}"
    );
    if let Some(head) = &model.lm_head {
        let head = head.val();
        let diff = rel_diff(head.grad(&grads).unwrap(), head.grad(&ref_grads).unwrap());
        assert!(
            diff < 1e-5,
            "{name}: lm_head gradient relative max |diff| {diff}"
        );
    }
}

#[test]
fn the_tied_embedding_head_matches_lm_logits() {
    // qwen3-chat-tiny ties its head to the embedding and has Qwen3's 151,936-token vocabulary.
    check_model_head("qwen3-chat-tiny");
}

#[test]
fn the_untied_head_matches_lm_logits() {
    check_model_head("qwen3-tiny");
}
