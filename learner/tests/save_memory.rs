//! Memory while checkpointing: the AdamW moments are written and read back one tensor at a
//! time, and a checkpoint is uploaded to (and downloaded from) its store a part at a time.
//!
//! A counting global allocator (this test binary only) tracks the bytes allocated now and at
//! the peak. Writing and uploading must peak below 2 × the largest tensor's f32 bytes + 64 MiB
//! above what was held before; loading the moments may add what they hold on the device (here
//! the host) and no more than that bound besides. The model is a 320 MB Qwen3 whose largest
//! tensor is 8 MiB; its moments are 640 MB.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use grlo_learner::checkpoint::CheckpointStore;
use grlo_learner::config::OptimSection;
use grlo_learner::optim::AdamW;
use grlo_model::backend::Cpu;
use grlo_model::safetensors_io::{LazyTensor, StoredDtype, WeightFiles, write_safetensors_file};
use grlo_model::{Model, ModelConfig};

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

/// Runs `f` and returns its result with the peak bytes allocated above those held before it,
/// and the bytes still held after it above those.
fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize, usize) {
    let before = CURRENT.load(Ordering::SeqCst);
    PEAK.store(before, Ordering::SeqCst);
    let out = f();
    let peak = PEAK.load(Ordering::SeqCst).saturating_sub(before);
    let held = CURRENT.load(Ordering::SeqCst).saturating_sub(before);
    (out, peak, held)
}

/// A Qwen3 of 24 layers, 79.7M parameters (320 MB in f32); its largest tensors are the
/// embedding and the head, `[4096, 512]` (8 MiB in f32).
fn model() -> Model<Cpu> {
    let json = r#"{"model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"],
      "vocab_size": 4096, "hidden_size": 512, "intermediate_size": 1536, "num_hidden_layers": 24,
      "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 64, "rope_theta": 1000000.0,
      "rms_norm_eps": 1e-6, "max_position_embeddings": 4096, "tie_word_embeddings": false,
      "hidden_act": "silu", "initializer_range": 0.02}"#;
    let config = ModelConfig::from_json_str(json, Path::new("save-memory")).unwrap();
    Model::<Cpu>::random(config, 5, &Default::default())
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / MIB as f64
}

#[test]
fn moments_and_checkpoint_transfers_hold_about_one_tensor_at_a_time() {
    let model = model();
    let tensors = model.lazy_tensors();
    let params: usize = tensors.iter().map(LazyTensor::num_elements).sum();
    let largest = tensors.iter().map(|t| t.num_elements() * 4).max().unwrap();
    drop(tensors);
    assert_eq!(largest, 8 * MIB);
    let limit = 2 * largest + 64 * MIB;
    let root = tempfile::tempdir().unwrap();

    // Moments as a checkpoint holds them: two flat f32 tensors per parameter, written here
    // from the model's own tensors (lazily, so the file costs no memory to make).
    let moments_file = root.path().join("moments.safetensors");
    let moments: Vec<LazyTensor> = model
        .lazy_tensors()
        .into_iter()
        .zip(model.lazy_tensors())
        .flat_map(|(m, v)| {
            let len = m.num_elements();
            let path = m.name.clone();
            [
                LazyTensor::new(format!("exp_avg.{path}"), vec![len], move || m.into_data()),
                LazyTensor::new(format!("exp_avg_sq.{path}"), vec![len], move || {
                    v.into_data()
                }),
            ]
        })
        .collect();
    write_safetensors_file(&moments_file, moments, StoredDtype::F32).unwrap();

    let optim_config: OptimSection = toml::from_str("lr = 1e-3").unwrap();
    let mut optim = AdamW::<Cpu>::new(optim_config);
    let ((), load_peak, load_held) = peak_during(|| {
        optim
            .load_state(7, &moments_file, &Default::default())
            .unwrap()
    });
    assert_eq!(optim.step, 7);
    let moment_bytes = 2 * 4 * params;
    assert!(
        load_held >= moment_bytes,
        "the loaded moments hold {:.1} MiB",
        mib(load_held)
    );

    let written = root.path().join("written.safetensors");
    let ((), write_peak, _) = peak_during(|| {
        write_safetensors_file(&written, optim.state_tensors(), StoredDtype::F32).unwrap()
    });
    // The round trip keeps every byte (same names, same values, same order).
    assert!(
        std::fs::read(&written).unwrap() == std::fs::read(&moments_file).unwrap(),
        "the moments written back differ from those loaded"
    );
    drop(optim);

    // A checkpoint of the model, uploaded to a local store and downloaded back.
    let local = root.path().join("staging");
    model
        .save(&local.join("policy"), StoredDtype::F32, 5_000_000_000)
        .unwrap();
    std::fs::rename(&moments_file, local.join("moments.safetensors")).unwrap();
    let store = CheckpointStore::open(root.path().join("ckpt").to_str().unwrap()).unwrap();
    let ((), upload_peak, _) = peak_during(|| store.save("step-1", &local).unwrap());
    let back = root.path().join("back");
    let ((), download_peak, _) = peak_during(|| store.download("step-1", &back).unwrap());
    for file in ["policy/model.safetensors", "moments.safetensors"] {
        let (a, b) = (local.join(file), back.join(file));
        assert_eq!(
            std::fs::metadata(&a).unwrap().len(),
            std::fs::metadata(&b).unwrap().len(),
            "{file}"
        );
    }
    let files = WeightFiles::open(&back.join("policy")).unwrap();
    assert_eq!(files.names().len(), 3 + 24 * 11);

    eprintln!(
        "peak above what was held: moments load {:.1} MiB (of which {:.1} MiB stay: the \
         moments), moments write {:.1} MiB, checkpoint upload {:.1} MiB, download {:.1} MiB; \
         limit {:.1} MiB",
        mib(load_peak),
        mib(load_held),
        mib(write_peak),
        mib(upload_peak),
        mib(download_peak),
        mib(limit)
    );
    assert!(
        load_peak < moment_bytes + limit,
        "loading the moments peaked {:.1} MiB, over their {:.1} MiB + {:.1} MiB",
        mib(load_peak),
        mib(moment_bytes),
        mib(limit)
    );
    for (what, peak) in [
        ("writing the moments", write_peak),
        ("uploading the checkpoint", upload_peak),
        ("downloading the checkpoint", download_peak),
    ] {
        assert!(
            peak < limit,
            "{what} peaked {:.1} MiB, over 2 x {:.1} MiB + 64 MiB",
            mib(peak),
            mib(largest)
        );
    }
}
