//! Memory while saving: exporting a model (f32 and bf16, single file and sharded) and publishing
//! it as a weight version keep at most about one tensor on the host at a time.
//!
//! A counting global allocator (this test binary only) tracks the bytes allocated now and at
//! the peak; each save must peak below 2 × the largest tensor's f32 bytes + 64 MiB above what
//! was held before it, on a 320 MB model whose largest tensor is 8 MiB.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use grlo_model::backend::Cpu;
use grlo_model::safetensors_io::WeightFiles;
use grlo_model::{Model, ModelConfig, StoredDtype};

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(bytes: usize) {
    let now = CURRENT.fetch_add(bytes, Ordering::SeqCst) + bytes;
    PEAK.fetch_max(now, Ordering::SeqCst);
}

// SAFETY: every call is forwarded to the system allocator unchanged; only counters move.
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
            if new_size >= layout.size() {
                grew(new_size - layout.size());
            } else {
                CURRENT.fetch_sub(layout.size() - new_size, Ordering::SeqCst);
            }
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const MIB: usize = 1 << 20;

/// Runs `f` and returns its result with the peak bytes allocated above those held before it.
fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let before = CURRENT.load(Ordering::SeqCst);
    PEAK.store(before, Ordering::SeqCst);
    let out = f();
    (out, PEAK.load(Ordering::SeqCst).saturating_sub(before))
}

/// A Qwen3 of 24 layers, 79.7M parameters (320 MB in f32); its largest tensors are the embedding
/// and the head, `[4096, 512]` (8 MiB in f32).
fn model() -> Model<Cpu> {
    let json = r#"{"model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"],
      "vocab_size": 4096, "hidden_size": 512, "intermediate_size": 1536, "num_hidden_layers": 24,
      "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 64, "rope_theta": 1000000.0,
      "rms_norm_eps": 1e-6, "max_position_embeddings": 4096, "tie_word_embeddings": false,
      "hidden_act": "silu", "initializer_range": 0.02}"#;
    let config = ModelConfig::from_json_str(json, Path::new("save-memory")).unwrap();
    Model::<Cpu>::random(config, 3, &Default::default())
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

#[test]
fn saving_and_publishing_hold_about_one_tensor_at_a_time() {
    let model = model();
    let tensors = model.lazy_tensors();
    let params: usize = tensors.iter().map(|t| t.num_elements()).sum();
    let largest = tensors.iter().map(|t| t.num_elements() * 4).max().unwrap();
    drop(tensors);
    assert_eq!(params, 79_719_936);
    assert_eq!(largest, 8 * MIB);
    let limit = 2 * largest + 64 * MIB;
    let mib = |b: usize| b as f64 / MIB as f64;

    let root = tempfile::tempdir().unwrap();
    let f32_dir = root.path().join("f32");
    let ((), f32_peak) = peak_during(|| {
        model
            .save(&f32_dir, StoredDtype::F32, 5_000_000_000)
            .unwrap()
    });
    let bf16_dir = root.path().join("bf16");
    let ((), bf16_peak) = peak_during(|| {
        model
            .save(&bf16_dir, StoredDtype::Bf16, 40_000_000)
            .unwrap()
    });
    let location = root.path().join("store/v1").display().to_string();
    let (manifest, publish_peak) = peak_during(|| {
        grlo_model::weights_store::publish_blocking(&f32_dir, &location, 1).unwrap()
    });
    eprintln!(
        "peak above the model: save f32 {:.1} MiB, save bf16 (sharded) {:.1} MiB, \
         publish {:.1} MiB; limit {:.1} MiB",
        mib(f32_peak),
        mib(bf16_peak),
        mib(publish_peak),
        mib(limit)
    );

    // What was written is the whole model: every value, in its dtype.
    let f32_weights = std::fs::metadata(f32_dir.join("model.safetensors"))
        .unwrap()
        .len();
    assert!(f32_weights > 4 * params as u64 && f32_weights < 4 * params as u64 + 65_536);
    let bf16_files = WeightFiles::open(&bf16_dir).unwrap();
    assert_eq!(bf16_files.names().len(), 3 + 24 * 11);
    assert!(
        dir_bytes(&bf16_dir) > 2 * params as u64,
        "bf16 shards hold every value"
    );
    assert!(bf16_dir.join("model.safetensors.index.json").is_file());
    let shards = std::fs::read_dir(&bf16_dir)
        .unwrap()
        .filter(|e| {
            let name = e
                .as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .into_owned();
            name.starts_with("model-") && name.ends_with("-of-00005.safetensors")
        })
        .count();
    assert_eq!(shards, 5, "159 MB of bf16 in shards of at most 40 MB");
    assert_eq!(manifest.total_bytes(), dir_bytes(&f32_dir));

    for (what, peak) in [
        ("save f32", f32_peak),
        ("save bf16", bf16_peak),
        ("publish", publish_peak),
    ] {
        assert!(
            peak < limit,
            "{what} peaked {:.1} MiB above the model, over 2 x {:.1} MiB + 64 MiB",
            mib(peak),
            mib(largest)
        );
    }
}
