//! Attention whose memory is linear in the sequence length, forward and backward.
//!
//! Scores are computed one block of queries × one block of keys at a time with an online
//! softmax (FlashAttention-2, Algorithm 1); the forward keeps only the output and each query's
//! log-sum-exp, and the backward recomputes every block's probabilities from them (Algorithm
//! 2), so no `[t, t]` tensor lives beyond one block. Masks are never materialised for the
//! whole pass: which keys a query sees follows from per-row key windows and causality, blocks
//! that nothing sees are skipped, and a block that is partly hidden gets a bias of its own
//! size, built on the device from the rows' key windows (once per pass and shared by the
//! layers, unless a pass would hold more than [`BIAS_CACHE_ELEMENTS`] of them).
//!
//! Grouped-query attention uses the key and value heads as they are: the queries of the heads
//! sharing a key head are stacked along the query axis (`[batch, kv_heads, queries * groups,
//! head_dim]`, query-major), so one matmul serves the whole group.
//!
//! - [`blockwise`]: the forward and backward passes in Burn tensor ops (every backend).
//! - [`autodiff`]: the custom backward that makes them one differentiable operation.
//! - [`reference`]: the materialised computation the block-wise one is tested against.

pub mod autodiff;
pub mod blockwise;
pub mod reference;

use std::any::Any;
use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Int, Tensor, TensorCreationOptions, TensorData};

/// A value added to attention scores to hide a key: finite, so that the online softmax never
/// computes `inf - inf`.
pub const MASKED: f32 = -1e30;

/// What every query of one attention pass may see, and how the pass is cut into blocks.
///
/// Query `i` of a row sits at key position `offset + i` (`offset = keys - queries`: the cached
/// keys come first). It sees key `k` when `k <= offset + i` (causal) and `k` lies in its row's
/// window `[key_start, key_end)` (left padding before it, right padding after it). A query that
/// sees no key at all (a left-padding position) gets an output of zero.
#[derive(Clone, Debug)]
pub struct AttentionSpec {
    pub batch: usize,
    pub kv_heads: usize,
    /// Query heads per key/value head.
    pub groups: usize,
    pub head_dim: usize,
    /// New tokens per row.
    pub queries: usize,
    /// Keys per row (cached ones first, then the new tokens').
    pub keys: usize,
    /// Per row, the first key it may see.
    pub key_start: Vec<usize>,
    /// Per row, one past the last key it may see.
    pub key_end: Vec<usize>,
    /// Multiplies the scores (`head_dim^-0.5`).
    pub scale: f64,
    pub query_block: usize,
    pub key_block: usize,
    /// Block biases already built for this pass, per backend (see [`AttentionSpec::bias`]).
    biases: Arc<Mutex<HashMap<BiasKey, Box<dyn Any + Send>>>>,
    /// Whether the pass keeps its block biases (see [`AttentionSpec::caches_biases`]),
    /// decided once for its blocks.
    keeps_biases: bool,
}

/// A block of queries and keys, named by where it starts and how long it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct BiasKey {
    /// The backend's type, so one spec can serve a backend and its autodiff wrapper.
    backend: std::any::TypeId,
    queries: (usize, usize),
    keys: (usize, usize),
}

impl AttentionSpec {
    /// A pass of `queries` new tokens per row over `keys` keys, with per-row key windows
    /// (`None`: every row sees all its keys). Blocks hold about `block_elements` scores.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        batch: usize,
        heads: usize,
        kv_heads: usize,
        head_dim: usize,
        queries: usize,
        keys: usize,
        windows: Option<Vec<(usize, usize)>>,
        block_elements: usize,
    ) -> Self {
        let (key_start, key_end) = match windows {
            Some(windows) => {
                assert_eq!(windows.len(), batch, "one key window per row");
                windows
                    .into_iter()
                    .map(|(start, end)| (start.min(keys), end.min(keys)))
                    .unzip()
            }
            None => (vec![0; batch], vec![keys; batch]),
        };
        let (query_block, key_block) = block_sizes(batch * heads, queries, keys, block_elements);
        let spec = AttentionSpec {
            batch,
            kv_heads,
            groups: heads / kv_heads,
            head_dim,
            queries,
            keys,
            key_start,
            key_end,
            scale: (head_dim as f64).powf(-0.5),
            query_block,
            key_block,
            biases: Arc::default(),
            keeps_biases: false,
        };
        spec.decide_bias_caching()
    }

    /// Sets [`AttentionSpec::caches_biases`] for the current blocks: it walks every block, so
    /// it is done once, not at each block's bias.
    fn decide_bias_caching(mut self) -> Self {
        self.keeps_biases = self.all_bias_elements() <= BIAS_CACHE_ELEMENTS;
        self
    }

    /// Uses these block sizes instead (tests use small ones to exercise many blocks).
    pub fn with_blocks(mut self, query_block: usize, key_block: usize) -> Self {
        self.query_block = query_block.max(1);
        self.key_block = key_block.max(1);
        self.biases = Arc::default();
        self.decide_bias_caching()
    }

    /// Key position of query 0.
    pub fn offset(&self) -> usize {
        self.keys - self.queries
    }

    pub fn query_blocks(&self) -> Vec<Range<usize>> {
        blocks(self.queries, self.query_block)
    }

    pub fn key_blocks(&self) -> Vec<Range<usize>> {
        blocks(self.keys, self.key_block)
    }

    /// Whether query `query` of row `row` sees key `key`.
    pub fn sees(&self, row: usize, query: usize, key: usize) -> bool {
        key <= self.offset() + query && key >= self.key_start[row] && key < self.key_end[row]
    }

    /// Whether any query of the block sees any key of it (else the block is skipped).
    pub fn visible(&self, queries: &Range<usize>, keys: &Range<usize>) -> bool {
        (0..self.batch).any(|row| {
            let lo = keys.start.max(self.key_start[row]);
            let hi = keys
                .end
                .min(self.key_end[row])
                .min(self.offset() + queries.end);
            lo < hi
        })
    }

    /// Whether some query sees no key at all, so outputs must be zeroed where nothing is seen.
    pub fn has_blind_queries(&self) -> bool {
        (0..self.batch).any(|row| {
            self.key_start[row] >= self.key_end[row] || self.key_start[row] > self.offset()
        })
    }

    /// Whether every row has the same window (the block biases are then shared by the rows).
    fn uniform_windows(&self) -> bool {
        self.key_start.iter().all(|&s| s == self.key_start[0])
            && self.key_end.iter().all(|&e| e == self.key_end[0])
    }

    /// Whether some query of the block fails to see some key of it.
    fn needs_mask(&self, queries: &Range<usize>, keys: &Range<usize>) -> bool {
        let causal = keys.end - 1 > self.offset() + queries.start;
        let windows = (0..self.batch)
            .any(|row| self.key_start[row] > keys.start || self.key_end[row] < keys.end);
        causal || windows
    }

    /// Elements of every block bias of one whole pass (each visible block that hides
    /// something has one).
    fn all_bias_elements(&self) -> usize {
        let rows = self.bias_rows(true);
        let keys = self.key_blocks();
        self.query_blocks()
            .iter()
            .flat_map(|q| keys.iter().map(move |k| (q, k)))
            .filter(|(q, k)| self.visible(q, k) && self.needs_mask(q, k))
            .map(|(q, k)| rows * q.len() * self.groups * k.len())
            .sum()
    }

    /// Whether the pass keeps its block biases (built once, shared by the layers) or builds
    /// each when it is needed (when keeping them all would cost more than
    /// [`BIAS_CACHE_ELEMENTS`]: a prefill of many padded rows).
    fn caches_biases(&self) -> bool {
        self.keeps_biases
    }

    /// Elements of block biases the pass holds at once: all of them when it keeps them, else
    /// the largest block's.
    pub fn bias_elements(&self) -> usize {
        if self.caches_biases() {
            return self.all_bias_elements();
        }
        self.query_block * self.groups * self.key_block * self.bias_rows(false)
    }

    /// The slabs of a block bias (see [`AttentionSpec::bias`]): one when every row has the
    /// same window, else one per row, and per row and key/value head for a bias kept for the
    /// whole pass.
    fn bias_rows(&self, kept: bool) -> usize {
        match (self.uniform_windows(), kept) {
            (true, _) => 1,
            (false, true) => self.batch * self.kv_heads,
            (false, false) => self.batch,
        }
    }

    /// The additive bias of a block in f32: `[1, 1, queries * groups * keys]` when every row
    /// has the same window, else `[batch, 1, ...]`, or `[batch, kv_heads, ...]` (the scores'
    /// own shape) when the pass keeps its biases: small, and built once for every layer, where
    /// adding a bias broadcast over the middle dimension takes the CPU backend's strided path,
    /// ten times slower than a contiguous add. 0 where a query sees a key, [`MASKED`] elsewhere; `None` when the block hides nothing. Built on the device from the rows' key
    /// windows (only those cross from the host), once per pass and backend when
    /// [`AttentionSpec::caches_biases`].
    pub fn bias<B: Backend>(
        &self,
        queries: &Range<usize>,
        keys: &Range<usize>,
        device: &B::Device,
    ) -> Option<Tensor<B, 3>> {
        if !self.needs_mask(queries, keys) {
            return None;
        }
        if !self.caches_biases() {
            return Some(self.build_bias(queries, keys, device));
        }
        let key = BiasKey {
            backend: std::any::TypeId::of::<B>(),
            queries: (queries.start, queries.len()),
            keys: (keys.start, keys.len()),
        };
        let mut cache = self.biases.lock().expect("not poisoned");
        if let Some(bias) = cache
            .get(&key)
            .and_then(|b| b.downcast_ref::<Tensor<B, 3>>())
        {
            return Some(bias.clone());
        }
        let bias = self.build_bias(queries, keys, device);
        cache.insert(key, Box::new(bias.clone()));
        Some(bias)
    }

    fn build_bias<B: Backend>(
        &self,
        queries: &Range<usize>,
        keys: &Range<usize>,
        device: &B::Device,
    ) -> Tensor<B, 3> {
        let rows = if self.uniform_windows() {
            1
        } else {
            self.batch
        };
        let (q_rows, k_len) = (queries.len() * self.groups, keys.len());
        let shape = [rows, q_rows, k_len];
        let ints = |values: Vec<i64>, dims: [usize; 3]| {
            Tensor::<B, 3, Int>::from_data(TensorData::new(values, dims), device).expand(shape)
        };
        let key_position = Tensor::<B, 1, Int>::arange(keys.start as i64..keys.end as i64, device)
            .reshape([1, 1, k_len])
            .expand(shape);
        // Query-major rows: row `q * groups + g` is the query at position `offset + q`.
        let query_position: Vec<i64> = queries
            .clone()
            .flat_map(|q| std::iter::repeat_n((self.offset() + q) as i64, self.groups))
            .collect();
        let query_position = ints(query_position, [1, q_rows, 1]);
        let starts = ints(
            self.key_start[..rows].iter().map(|&s| s as i64).collect(),
            [rows, 1, 1],
        );
        let ends = ints(
            self.key_end[..rows].iter().map(|&e| e as i64).collect(),
            [rows, 1, 1],
        );
        let seen = key_position
            .clone()
            .lower_equal(query_position)
            .bool_and(key_position.clone().greater_equal(starts))
            .bool_and(key_position.lower(ends)); // [rows, q_rows, k_len]
        let options = TensorCreationOptions::new(device.clone()).with_dtype(DType::F32);
        let bias = Tensor::<B, 3>::full(shape, MASKED, options)
            .mask_fill(seen, 0.0)
            .reshape([rows, 1, q_rows * k_len]);
        if rows > 1 && self.kv_heads > 1 && self.caches_biases() {
            bias.repeat_dim(1, self.kv_heads)
        } else {
            bias
        }
    }
}

/// Most bias elements a pass keeps for its layers to share (64 MiB of f32); a pass that would
/// need more builds each block's bias when it uses it.
pub const BIAS_CACHE_ELEMENTS: usize = 1 << 24;

/// Query and key block sizes for `heads_total = batch × heads` score matrices of
/// `queries × keys` within a budget of `elements` scores a block.
fn block_sizes(heads_total: usize, queries: usize, keys: usize, elements: usize) -> (usize, usize) {
    let per_head = (elements / heads_total.max(1)).max(256);
    // Square blocks, a power of two on a side, when both dimensions are long.
    let side = 1usize << ((per_head as f64).sqrt().log2().floor() as u32);
    let query_block = queries.min(side).max(1);
    let key_block = keys.min((per_head / query_block).max(side)).max(1);
    (query_block, key_block)
}

fn blocks(len: usize, size: usize) -> Vec<Range<usize>> {
    (0..len.div_ceil(size))
        .map(|i| i * size..((i + 1) * size).min(len))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_sizes_fit_the_budget() {
        // 4 rows × 32 heads, 4096 × 4096, 2^22 scores a block: 128 × 256.
        let (q, k) = block_sizes(128, 4096, 4096, 1 << 22);
        assert!(q * k * 128 <= 1 << 22, "{q} {k}");
        assert_eq!((q, k), (128, 256));
        // Decoding: one query, every key in one block when they fit.
        assert_eq!(block_sizes(128, 1, 3000, 1 << 22), (1, 3000));
        // Short passes are one block.
        assert_eq!(block_sizes(8, 10, 10, 1 << 22), (10, 10));
    }

    #[test]
    fn device_biases_follow_sees() {
        use crate::backend::Cpu;
        // Rows with different windows (left padding, right padding, both), cached keys, GQA.
        let windows = vec![(0, 9), (3, 9), (1, 6)];
        let spec = AttentionSpec::new(3, 4, 2, 8, 5, 9, Some(windows), 1 << 20).with_blocks(2, 4);
        let device = Default::default();
        for queries in spec.query_blocks() {
            for keys in spec.key_blocks() {
                let Some(bias) = spec.bias::<Cpu>(&queries, &keys, &device) else {
                    assert!(!spec.needs_mask(&queries, &keys));
                    continue;
                };
                // Kept for the pass, it has the scores' shape: a slab per row and kv head.
                let slabs = bias.dims()[1];
                assert_eq!(slabs, if spec.caches_biases() { 2 } else { 1 });
                let values: Vec<f32> = bias.into_data().convert::<f32>().into_vec().unwrap();
                let mut i = 0;
                for row in 0..3 {
                    for _ in 0..slabs {
                        for q in queries.clone() {
                            for _ in 0..spec.groups {
                                for k in keys.clone() {
                                    let expected = if spec.sees(row, q, k) { 0.0 } else { MASKED };
                                    assert_eq!(values[i], expected, "row {row} q {q} k {k}");
                                    i += 1;
                                }
                            }
                        }
                    }
                }
                assert_eq!(i, values.len());
            }
        }
    }

    #[test]
    fn a_pass_with_many_padded_rows_builds_its_biases_per_block() {
        // 256 left-padded rows of 1024 tokens, 32 heads over 8: keeping every block's bias
        // would take 256 x 1024 x 4 x 1024 floats (4 GiB); one block at a time is kept.
        let windows: Vec<(usize, usize)> = (0..256).map(|r| (r % 7, 1024)).collect();
        let spec = AttentionSpec::new(256, 32, 8, 128, 1024, 1024, Some(windows), 1 << 26);
        assert!(!spec.caches_biases());
        assert_eq!(
            spec.bias_elements(),
            256 * spec.query_block * spec.groups * spec.key_block
        );
        assert!(
            spec.bias_elements() * 4 < 1 << 31,
            "{}",
            spec.bias_elements()
        );
        // A training pass (right padding: one causal bias for every row) keeps its biases.
        let training = AttentionSpec::new(8, 32, 8, 128, 4096, 4096, None, 1 << 26);
        assert!(training.caches_biases());
    }

    #[test]
    fn visibility_follows_causality_and_windows() {
        // Two rows of 6 keys, 4 new queries (2 cached keys); row 1 starts at key 3.
        let spec = AttentionSpec::new(2, 2, 1, 4, 4, 6, Some(vec![(0, 6), (3, 6)]), 1 << 20)
            .with_blocks(2, 2);
        assert_eq!(spec.offset(), 2);
        assert!(spec.sees(0, 0, 2) && !spec.sees(0, 0, 3));
        assert!(!spec.sees(1, 0, 2) && spec.sees(1, 1, 3));
        assert!(spec.has_blind_queries(), "row 1's query 0 sees nothing");
        // Queries 0..2 (positions 2, 3) never see keys 4..6.
        assert!(!spec.visible(&(0..2), &(4..6)));
        assert!(spec.visible(&(2..4), &(4..6)));
        // Keys 0..2 of the first query block: row 0 sees them, so the block runs, with a mask
        // because row 1 does not.
        assert!(spec.visible(&(0..2), &(0..2)) && spec.needs_mask(&(0..2), &(0..2)));
        let full = AttentionSpec::new(1, 1, 1, 4, 4, 4, None, 1 << 20).with_blocks(2, 2);
        assert!(!full.needs_mask(&(2..4), &(0..2)), "below the diagonal");
        assert!(full.needs_mask(&(0..2), &(0..2)), "on the diagonal");
        assert!(!full.visible(&(0..2), &(2..4)), "above the diagonal");
        assert!(!full.has_blind_queries());
    }
}
