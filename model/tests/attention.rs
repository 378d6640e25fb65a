//! Block-wise attention against the materialised reference: outputs and gradients with
//! respect to q, k and v, for lengths 1 to 300, left and right padding, cached keys,
//! grouped-query attention with 1, 2 and 4 heads a group, several rows, and block sizes from
//! many tiny blocks to one.

mod common;

use burn::backend::{Autodiff, Flex};
use burn::tensor::{Tensor, TensorData};
use grlo_model::attention::{AttentionSpec, blockwise, reference};
use grlo_model::backend::ModelBackend;
use grlo_model::model::to_f32_vec;

type B = Flex;
type A = Autodiff<Flex>;

struct Case {
    batch: usize,
    heads: usize,
    kv_heads: usize,
    queries: usize,
    keys: usize,
    windows: Option<Vec<(usize, usize)>>,
    blocks: Option<(usize, usize)>,
}

fn random<const D: usize>(shape: [usize; D], seed: u64) -> Tensor<A, D> {
    let values = common::normal_values(shape.iter().product(), 1.0, seed);
    Tensor::<A, D>::from_data(TensorData::new(values, shape), &Default::default())
}

fn max_abs_diff(a: Tensor<B, 4>, b: Tensor<B, 4>) -> f32 {
    to_f32_vec(a)
        .iter()
        .zip(to_f32_vec(b))
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Output and the gradients of `sum(out * w)` for a random `w`, by both paths.
fn check(case: &Case, seed: u64) {
    let d = 8;
    let g = case.heads / case.kv_heads;
    let mut spec = AttentionSpec::new(
        case.batch,
        case.heads,
        case.kv_heads,
        d,
        case.queries,
        case.keys,
        case.windows.clone(),
        <A as ModelBackend>::attention_block_elements(),
    );
    if let Some((q, k)) = case.blocks {
        spec = spec.with_blocks(q, k);
    }
    let q = random([case.batch, case.kv_heads, case.queries * g, d], seed);
    let k = random([case.batch, case.kv_heads, case.keys, d], seed + 1);
    let v = random([case.batch, case.kv_heads, case.keys, d], seed + 2);
    let w = random([case.batch, case.kv_heads, case.queries * g, d], seed + 3).detach();

    let run = |blockwise: bool| {
        let (q, k, v) = (
            q.clone().detach().require_grad(),
            k.clone().detach().require_grad(),
            v.clone().detach().require_grad(),
        );
        let out = if blockwise {
            A::block_attention(q.clone(), k.clone(), v.clone(), &spec)
        } else {
            reference::attention(q.clone(), k.clone(), v.clone(), &spec)
        };
        let grads = out.clone().mul(w.clone()).sum().backward();
        (
            out.inner(),
            q.grad(&grads).unwrap(),
            k.grad(&grads).unwrap(),
            v.grad(&grads).unwrap(),
        )
    };
    let ours = run(true);
    let theirs = run(false);
    let what = ["output", "dq", "dk", "dv"];
    for (i, (a, b)) in [
        (ours.0, theirs.0),
        (ours.1, theirs.1),
        (ours.2, theirs.2),
        (ours.3, theirs.3),
    ]
    .into_iter()
    .enumerate()
    {
        let diff = max_abs_diff(a, b);
        assert!(
            diff < 1e-5,
            "{}: max |diff| {diff} for batch {} heads {}/{} queries {} keys {} windows {:?} blocks {:?} ({:?})",
            what[i],
            case.batch,
            case.heads,
            case.kv_heads,
            case.queries,
            case.keys,
            case.windows,
            case.blocks,
            (spec.query_block, spec.key_block),
        );
    }
}

#[test]
fn causal_passes_of_every_length_match_the_reference() {
    for (i, &t) in [1usize, 2, 7, 16, 33, 64, 129, 300].iter().enumerate() {
        for blocks in [None, Some((16, 16)), Some((7, 32)), Some((64, 5))] {
            check(
                &Case {
                    batch: 2,
                    heads: 4,
                    kv_heads: 2,
                    queries: t,
                    keys: t,
                    windows: None,
                    blocks,
                },
                10 * i as u64,
            );
        }
    }
}

#[test]
fn grouped_query_attention_with_1_2_and_4_heads_a_group() {
    for (heads, kv_heads) in [(4, 4), (4, 2), (8, 2)] {
        check(
            &Case {
                batch: 3,
                heads,
                kv_heads,
                queries: 50,
                keys: 50,
                windows: None,
                blocks: Some((16, 8)),
            },
            heads as u64,
        );
    }
}

#[test]
fn left_and_right_padding_from_per_row_windows() {
    // Left padding (generation): rows start late; their first queries see nothing.
    let t = 77;
    let left = vec![(0, t), (10, t), (40, t)];
    // Right padding (training): rows end early.
    let right = vec![(0, t), (0, 60), (0, 13)];
    for windows in [left, right] {
        for blocks in [None, Some((16, 16)), Some((32, 8))] {
            check(
                &Case {
                    batch: 3,
                    heads: 4,
                    kv_heads: 2,
                    queries: t,
                    keys: t,
                    windows: Some(windows.clone()),
                    blocks,
                },
                5,
            );
        }
    }
}

#[test]
fn queries_after_cached_keys() {
    // Decoding one token, and a chunk of 9 tokens, after 40 cached keys with left padding.
    for queries in [1, 9] {
        let keys = 40 + queries;
        check(
            &Case {
                batch: 2,
                heads: 4,
                kv_heads: 1,
                queries,
                keys,
                windows: Some(vec![(0, keys), (12, keys)]),
                blocks: Some((4, 16)),
            },
            queries as u64,
        );
    }
}

#[test]
fn the_forward_pass_alone_matches_on_the_inner_backend() {
    let spec = AttentionSpec::new(2, 4, 2, 8, 37, 37, None, 1 << 22).with_blocks(8, 8);
    let q = random([2, 2, 74, 8], 1).inner();
    let k = random([2, 2, 37, 8], 2).inner();
    let v = random([2, 2, 37, 8], 3).inner();
    let (out, lse) = blockwise::forward(q.clone(), k.clone(), v.clone(), &spec);
    let expected = reference::attention(q.clone(), k.clone(), v, &spec);
    assert!(max_abs_diff(out, expected) < 1e-5);
    // The log-sum-exp of the first query (which sees only key 0) is its one score.
    let first = to_f32_vec(lse)[0];
    let score: f32 =
        to_f32_vec(q.narrow(2, 0, 1).mul(k.narrow(2, 0, 1)).sum_dim(3))[0] * (8f32).powf(-0.5);
    assert!((first - score).abs() < 1e-5, "{first} vs {score}");
}
