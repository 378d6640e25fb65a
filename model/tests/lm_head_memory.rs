//! Peak host memory of the chunked log-prob head's forward + backward against the materialised
//! reference, measured with a counting global allocator (its own test binary, one test, so
//! nothing else allocates meanwhile): the chunked head must stay within a few chunks of logits
//! plus its inputs, outputs and gradients, and well below the reference.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use burn::backend::{Autodiff, Flex};
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Int, Tensor, TensorData};
use grlo_model::backend::ModelBackend;
use grlo_model::lm_head::{TokenLogprobs, reference};

/// The system allocator, counting the bytes in use and their peak.
struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(bytes: usize) {
    let now = CURRENT.fetch_add(bytes, Ordering::SeqCst) + bytes;
    PEAK.fetch_max(now, Ordering::SeqCst);
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::SeqCst);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            CURRENT.fetch_sub(layout.size(), Ordering::SeqCst);
            grew(new_size);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Starts a new measurement: the peak becomes the bytes in use now, which are returned.
fn reset_peak() -> usize {
    let now = CURRENT.load(Ordering::SeqCst);
    PEAK.store(now, Ordering::SeqCst);
    now
}

fn peak() -> usize {
    PEAK.load(Ordering::SeqCst)
}

type B = Flex;
type A = Autodiff<Flex>;

const MIB: f64 = (1 << 20) as f64;

/// Bytes above the starting point at the peak of one forward + backward of
/// `sum(lp * w1) + sum(entropy * w2)`, or `sum(lp * w1)` when the entropy is not `used`
/// (computed or not, as `entropy` says).
fn measure(
    chunked: bool,
    entropy: bool,
    used: bool,
    hidden: &Tensor<A, 2>,
    weight: &Tensor<A, 2>,
    targets: &Tensor<A, 1, Int>,
) -> usize {
    let [tokens, _] = hidden.dims();
    let device = hidden.device();
    let w1 = Tensor::<A, 1>::ones([tokens], &device).mul_scalar(0.5);
    let w2 = Tensor::<A, 1>::ones([tokens], &device).mul_scalar(0.25);
    let h = hidden.clone().detach().require_grad();
    let w = weight.clone().detach().require_grad();
    let start = reset_peak();
    {
        let TokenLogprobs { logprobs, entropy } = if chunked {
            A::token_logprobs(h.clone(), w.clone(), targets.clone(), entropy)
        } else {
            reference::token_logprobs(h.clone(), w.clone(), targets.clone(), entropy)
        };
        let mut loss = logprobs.mul(w1).sum();
        if let Some(entropy) = entropy.filter(|_| used) {
            loss = loss.add(entropy.mul(w2).sum());
        }
        let grads = loss.backward();
        let (gh, gw) = (h.grad(&grads).unwrap(), w.grad(&grads).unwrap());
        assert_eq!(gh.dims(), hidden.dims());
        assert_eq!(gw.dims(), weight.dims());
    }
    peak() - start
}

#[test]
fn the_chunked_head_peaks_at_a_few_chunks_far_below_the_full_logits() {
    let (tokens, d, vocab) = (4096, 64, 32768);
    let device = Default::default();
    B::seed(&device, 7);
    let hidden = Tensor::<A, 2>::random([tokens, d], Distribution::Normal(0.0, 1.0), &device);
    let weight = Tensor::<A, 2>::random([d, vocab], Distribution::Normal(0.0, 0.2), &device);
    let ids: Vec<i64> = (0..tokens as i64)
        .map(|i| (i * 7919 + 3) % vocab as i64)
        .collect();
    let targets = Tensor::<A, 1, Int>::from_data(TensorData::new(ids, [tokens]), &device);

    let chunk_bytes = 4 * <A as ModelBackend>::logits_chunk_elements();
    let logits_bytes = 4 * tokens * vocab;
    // Inputs, their gradients, the f32 gradient accumulator, the per-chunk weight gradient and
    // the `[tokens]` outputs: a few times the inputs, each kept or copied at most this often.
    let io_bytes = 4 * 4 * (tokens * d + d * vocab) + 4 * 4 * tokens;
    let budget = 3 * chunk_bytes + io_bytes;

    let reference = measure(false, true, true, &hidden, &weight, &targets);
    eprintln!(
        "reference (full logits {:.0} MiB): peak {:.0} MiB",
        logits_bytes as f64 / MIB,
        reference as f64 / MIB
    );
    let mut peaks = Vec::new();
    for (entropy, used) in [(true, true), (true, false), (false, false)] {
        let ours = measure(true, entropy, used, &hidden, &weight, &targets);
        eprintln!(
            "chunked (chunk {:.0} MiB, entropy computed {entropy} used {used}): peak {:.0} MiB, budget {:.0} MiB, {:.3} of the reference",
            chunk_bytes as f64 / MIB,
            ours as f64 / MIB,
            budget as f64 / MIB,
            ours as f64 / reference as f64
        );
        assert!(
            ours < budget,
            "peak {ours} bytes over the budget of {budget} (entropy {entropy} used {used})"
        );
        assert!(
            ours * 4 < reference,
            "peak {ours} bytes is not below a quarter of the reference's {reference} (entropy {entropy} used {used})"
        );
        peaks.push(ours);
    }
    // An entropy the loss does not use costs no backward memory: the same peak as none at all
    // (within one weight-sized buffer of allocator noise).
    assert!(
        peaks[1] <= peaks[2] + 4 * d * vocab,
        "an unused entropy peaks at {} bytes, no entropy at {}",
        peaks[1],
        peaks[2]
    );
}
