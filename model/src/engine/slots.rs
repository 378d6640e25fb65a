//! A preallocated KV cache of slots: one slot per row of the running batch, each row's keys
//! and values at columns `[0, length)` of its slot, the next token's written in place.
//!
//! Per layer the keys (and values) are one `[row capacity, kv_heads, length capacity,
//! head_dim]` tensor. The occupied slots are always `0..rows`: a row that finishes is replaced
//! by the last one (its cache rows moved once), so a decoding step reads the first `rows`
//! slots as a view, narrowed to the longest row, without gathering or copying anything.
//! Capacity grows by doubling (amortised: rare copies); the engine sizes it with the rows'
//! reserved lengths, so a row never outgrows its slot.

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorCreationOptions};

use crate::backend::ModelBackend;
use crate::model::KvCache;

/// Lengths are allocated in multiples of this many positions.
const LENGTH_QUANTUM: usize = 64;

/// Writes on the CPU backend that could not go into the cache's own buffer and so copied the
/// whole cache (`slice_assign`): a decoding step makes none when nothing else holds the cache.
static WHOLE_CACHE_COPIES: AtomicUsize = AtomicUsize::new(0);

/// How many cache writes in this process have copied the whole cache instead of writing in
/// place (CPU backend; CUDA's `slice_assign` is in place and is not counted).
pub fn whole_cache_copies() -> usize {
    WHOLE_CACHE_COPIES.load(Ordering::Relaxed)
}

/// The keys and values of one layer, for every slot.
#[derive(Debug)]
pub struct SlotLayer<B: Backend> {
    /// `[row capacity, kv_heads, length capacity, head_dim]`; `None` until the first row.
    keys: Option<Tensor<B, 4>>,
    values: Option<Tensor<B, 4>>,
}

impl<B: ModelBackend> SlotLayer<B> {
    /// Writes one decoding step's keys and values (`[rows, kv_heads, 1, head_dim]`) at each
    /// row's length and returns the views attention reads: `[rows, kv_heads, longest + 1,
    /// head_dim]` (row `r` sees its first `lengths[r] + 1` positions).
    pub fn write_step(
        &mut self,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
        lengths: &[usize],
    ) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let rows = lengths.len();
        let mut keys = self.keys.take().expect("a slot cache with rows");
        let mut values = self.values.take().expect("a slot cache with rows");
        // Consecutive rows at the same length (the samples of one prompt) in one write.
        let mut start = 0;
        while start < rows {
            let mut end = start + 1;
            while end < rows && lengths[end] == lengths[start] {
                end += 1;
            }
            let (run, column) = (end - start, lengths[start]);
            let part = |t: &Tensor<B, 4>| t.clone().narrow(0, start, run);
            keys = B::kv_write(keys, start..end, column, part(&k));
            values = B::kv_write(values, start..end, column, part(&v));
            start = end;
        }
        drop((k, v));
        let keys_seen = lengths.iter().max().map_or(0, |l| l + 1);
        let view = |t: &Tensor<B, 4>| t.clone().narrow(0, 0, rows).narrow(2, 0, keys_seen);
        let out = (view(&keys), view(&values));
        self.keys = Some(keys);
        self.values = Some(values);
        out
    }
}

/// The slot cache of every layer, with each occupied slot's length.
#[derive(Debug)]
pub struct SlotCache<B: Backend> {
    pub layers: Vec<SlotLayer<B>>,
    /// Tokens cached in each occupied slot (slots `0..lengths.len()`).
    pub lengths: Vec<usize>,
    row_capacity: usize,
    length_capacity: usize,
}

impl<B: ModelBackend> SlotCache<B> {
    pub fn new(num_layers: usize) -> Self {
        SlotCache {
            layers: (0..num_layers)
                .map(|_| SlotLayer {
                    keys: None,
                    values: None,
                })
                .collect(),
            lengths: Vec::new(),
            row_capacity: 0,
            length_capacity: 0,
        }
    }

    /// Occupied slots.
    pub fn rows(&self) -> usize {
        self.lengths.len()
    }

    /// `(rows, length)` the cache has room for.
    pub fn capacity(&self) -> (usize, usize) {
        (self.row_capacity, self.length_capacity)
    }

    /// Makes room for `rows` slots of `length` positions each, keeping what the slots hold.
    /// Capacity grows by doubling, within `max_rows` slots and `max_positions` positions
    /// (slots × length) unless the request itself needs more.
    pub fn reserve(&mut self, rows: usize, length: usize, max_rows: usize, max_positions: usize) {
        if rows <= self.row_capacity && length <= self.length_capacity {
            return;
        }
        let quantized = |l: usize| l.div_ceil(LENGTH_QUANTUM) * LENGTH_QUANTUM;
        let within = |rows: usize, length: usize| rows.saturating_mul(length) <= max_positions;
        // The first of the current length, its double, `length` rounded up, and `length` itself
        // that holds `length` with `rows` slots within the budget (every row's reserve is at
        // most `length`, so a shorter capacity still holds what the slots hold).
        let length_capacity = [
            self.length_capacity,
            quantized(length.max(self.length_capacity * 2)),
            quantized(length),
        ]
        .into_iter()
        .find(|&l| l >= length && within(rows, l))
        .unwrap_or(length);
        let row_capacity = if rows <= self.row_capacity {
            self.row_capacity
        } else {
            let fitting = max_positions / length_capacity.max(1);
            rows.max(self.row_capacity * 2)
                .min(max_rows)
                .min(fitting)
                .max(rows)
        };
        if (row_capacity, length_capacity) == (self.row_capacity, self.length_capacity) {
            return;
        }
        let kept = self.length_capacity.min(length_capacity);
        let grow = |old: Tensor<B, 4>| {
            let [rows, kv, _, hd] = old.dims();
            let shape = [row_capacity, kv, length_capacity, hd];
            let options = TensorCreationOptions::new(old.device()).with_dtype(old.dtype());
            B::kv_write(
                Tensor::zeros(shape, options),
                0..rows,
                0,
                old.narrow(2, 0, kept),
            )
        };
        for layer in &mut self.layers {
            layer.keys = layer.keys.take().map(grow);
            layer.values = layer.values.take().map(grow);
        }
        self.row_capacity = row_capacity;
        self.length_capacity = length_capacity;
    }

    /// Appends `copies` slots holding row `row` of a prefill cache, positions `columns` of it
    /// (the prompt without its left padding). Room must have been made with
    /// [`SlotCache::reserve`].
    pub fn admit(
        &mut self,
        prefill: &KvCache<B>,
        row: usize,
        columns: Range<usize>,
        copies: usize,
    ) {
        let first = self.rows();
        let len = columns.len();
        assert!(
            first + copies <= self.row_capacity && len < self.length_capacity,
            "reserve room before admitting rows"
        );
        for (layer, source) in self.layers.iter_mut().zip(&prefill.layers) {
            let source = source.as_ref().expect("a prefilled layer");
            let part = |t: &Tensor<B, 4>| {
                t.clone()
                    .narrow(0, row, 1)
                    .narrow(2, columns.start, len)
                    .repeat_dim(0, copies) // [copies, kv, len, hd]
            };
            let allocate = |t: &Tensor<B, 4>| {
                let [_, kv, _, hd] = t.dims();
                let shape = [self.row_capacity, kv, self.length_capacity, hd];
                let options = TensorCreationOptions::new(t.device()).with_dtype(t.dtype());
                Tensor::<B, 4>::zeros(shape, options)
            };
            let slots = first..first + copies;
            let keys = (layer.keys.take()).unwrap_or_else(|| allocate(&source.keys));
            let values = (layer.values.take()).unwrap_or_else(|| allocate(&source.values));
            layer.keys = Some(B::kv_write(keys, slots.clone(), 0, part(&source.keys)));
            layer.values = Some(B::kv_write(values, slots, 0, part(&source.values)));
        }
        self.lengths.extend(std::iter::repeat_n(len, copies));
    }

    /// Frees slot `slot`: the last occupied slot moves into it (as `Vec::swap_remove`).
    pub fn swap_remove(&mut self, slot: usize) {
        let last = self.rows() - 1;
        if slot != last {
            let len = self.lengths[last];
            for layer in &mut self.layers {
                for tensor in [&mut layer.keys, &mut layer.values] {
                    let t = tensor.take().expect("a slot cache with rows");
                    // A copy of the moved row, so that the cache is not aliased while written.
                    let moved = t
                        .clone()
                        .narrow(0, last, 1)
                        .narrow(2, 0, len)
                        .mul_scalar(1.0);
                    *tensor = Some(B::kv_write(t, slot..slot + 1, 0, moved));
                }
            }
        }
        self.lengths.swap_remove(slot);
    }

    /// One more token in every occupied slot (after a decoding step wrote it).
    pub fn advance(&mut self) {
        self.lengths.iter_mut().for_each(|l| *l += 1);
    }

    /// Bytes the allocated tensors hold.
    pub fn allocated_bytes(&self) -> usize {
        self.layers
            .iter()
            .flat_map(|l| [&l.keys, &l.values])
            .flatten()
            .map(|t| t.shape().num_elements() * t.dtype().size())
            .sum()
    }
}

/// [`ModelBackend::kv_write`] in Burn tensor ops: `slice_assign`, in place where the backend
/// can (CUDA, when the cache is not shared).
pub fn kv_write_sliced<B: Backend>(
    cache: Tensor<B, 4>,
    rows: Range<usize>,
    column: usize,
    value: Tensor<B, 4>,
) -> Tensor<B, 4> {
    let [_, kv, columns, hd] = value.dims();
    cache.slice_assign([rows, 0..kv, column..column + columns, 0..hd], value)
}

/// [`ModelBackend::kv_write`] on the CPU backend: `slice_assign` there copies the whole
/// destination each time (1.3 ms for 16 MB here), so the values are copied into the cache's
/// own buffer instead when nothing else holds it.
#[cfg(feature = "flex")]
pub fn kv_write_flex(
    cache: Tensor<burn::backend::Flex, 4>,
    rows: Range<usize>,
    column: usize,
    value: Tensor<burn::backend::Flex, 4>,
) -> Tensor<burn::backend::Flex, 4> {
    use burn::tensor::TensorPrimitive;
    let [count, kv, columns, hd] = value.dims();
    let [slots, cache_kv, capacity, cache_hd] = cache.dims();
    assert!(
        count == rows.len()
            && rows.end <= slots
            && (kv, hd) == (cache_kv, cache_hd)
            && column + columns <= capacity,
        "kv_write: values {:?} do not fit slots {rows:?} at position {column} of {:?}",
        value.dims(),
        cache.dims(),
    );
    let dtype = cache.dtype();
    if value.dtype() != dtype || dtype != DType::F32 {
        WHOLE_CACHE_COPIES.fetch_add(1, Ordering::Relaxed);
        return kv_write_sliced(cache, rows, column, value);
    }
    // Contiguous `[count, kv, columns, hd]` values (and the value's hold on the cache, if it
    // was a view of it, released).
    let data = value.into_data();
    let mut primitive = cache.into_primitive().tensor();
    let in_place = primitive.is_contiguous() && primitive.layout().start_offset() == 0;
    let written = match (in_place, data.as_slice::<f32>()) {
        (true, Ok(src)) => match primitive.try_storage_mut::<f32>() {
            Some(dst) => {
                let span = columns * hd;
                for r in 0..count {
                    for h in 0..kv {
                        let to = (((rows.start + r) * kv + h) * capacity + column) * hd;
                        let from = (r * kv + h) * span;
                        dst[to..to + span].copy_from_slice(&src[from..from + span]);
                    }
                }
                true
            }
            None => false,
        },
        _ => false,
    };
    let cache = Tensor::from_primitive(TensorPrimitive::Float(primitive));
    if written {
        cache
    } else {
        WHOLE_CACHE_COPIES.fetch_add(1, Ordering::Relaxed);
        let device = cache.device();
        let options = TensorCreationOptions::new(device).with_dtype(dtype);
        kv_write_sliced(cache, rows, column, Tensor::from_data(data, options))
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use burn::backend::Flex;
    use burn::tensor::Tensor;

    use super::{kv_write_flex, whole_cache_copies};

    /// A write into a cache nothing else holds goes into its buffer; one into a cache a view
    /// still shares copies the whole cache, and is counted.
    #[test]
    fn a_write_copies_the_cache_only_while_a_view_shares_it() {
        let device = Default::default();
        let cache = Tensor::<Flex, 4>::zeros([2, 2, 8, 4], &device);
        let step = || Tensor::<Flex, 4>::ones([1, 2, 1, 4], &device);

        let before = whole_cache_copies();
        let cache = kv_write_flex(cache, 0..1, 3, step());
        assert_eq!(
            whole_cache_copies(),
            before,
            "a write into an unshared cache copied it"
        );

        let view = cache.clone().narrow(2, 0, 4);
        let cache = kv_write_flex(cache, 1..2, 5, step());
        assert_eq!(
            whole_cache_copies(),
            before + 1,
            "a shared cache's copy went uncounted"
        );
        drop(view);

        let values = cache.into_data().to_vec::<f32>().unwrap();
        let at = |slot: usize, head: usize, position: usize| ((slot * 2 + head) * 8 + position) * 4;
        assert_eq!(values[at(0, 1, 3)..at(0, 1, 3) + 4], [1.0; 4]);
        assert_eq!(values[at(1, 0, 5)..at(1, 0, 5) + 4], [1.0; 4]);
        assert_eq!(values.iter().sum::<f32>(), 16.0);
    }
}
