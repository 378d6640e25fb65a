//! Reading and writing Hugging Face safetensors checkpoints: one `model.safetensors`, or
//! shards listed in `model.safetensors.index.json`; tensors stored as bf16, f16 or f32.
//!
//! Reading maps each file into memory once, checks its header against its length (so a
//! truncated file is an error naming it), and converts a requested tensor to f32 after
//! checking its shape. Writing streams one tensor at a time (a [`LazyTensor`] produces its values
//! only when the writer reaches it) and is atomic per file: a temporary file, synced, renamed
//! into place.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use burn::tensor::TensorData;
use memmap2::Mmap;
use safetensors::Dtype;
use safetensors::tensor::{Metadata, TensorInfo};
use serde_json::{Value, json};

use crate::error::{Error, Result};

/// The single-file weights name.
pub const SINGLE_FILE: &str = "model.safetensors";
/// The index of a sharded checkpoint.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// The storage dtype of a saved checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoredDtype {
    F32,
    Bf16,
    F16,
}

impl StoredDtype {
    /// Parses `f32|float32|bf16|bfloat16|f16|float16`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "f32" | "float32" => Some(StoredDtype::F32),
            "bf16" | "bfloat16" => Some(StoredDtype::Bf16),
            "f16" | "float16" => Some(StoredDtype::F16),
            _ => None,
        }
    }

    /// The name transformers writes in `config.json` (`torch_dtype`).
    pub fn torch_name(self) -> &'static str {
        match self {
            StoredDtype::F32 => "float32",
            StoredDtype::Bf16 => "bfloat16",
            StoredDtype::F16 => "float16",
        }
    }

    fn safetensors_dtype(self) -> Dtype {
        match self {
            StoredDtype::F32 => Dtype::F32,
            StoredDtype::Bf16 => Dtype::BF16,
            StoredDtype::F16 => Dtype::F16,
        }
    }

    fn size(self) -> usize {
        match self {
            StoredDtype::F32 => 4,
            StoredDtype::Bf16 | StoredDtype::F16 => 2,
        }
    }
}

/// One mapped safetensors file with its parsed header.
struct WeightFile {
    path: PathBuf,
    map: Mmap,
    data_start: usize,
    metadata: Metadata,
}

impl WeightFile {
    fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::read(path, e))?;
        // SAFETY: the file is opened read-only and checkpoints are not modified while loaded;
        // every access below goes through bounds checks against the validated header.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::read(path, e))?;
        let (header_len, metadata) =
            safetensors::SafeTensors::read_metadata(&map).map_err(|e| Error::CorruptWeights {
                path: path.to_path_buf(),
                message: describe_safetensors_error(&e),
            })?;
        Ok(WeightFile {
            path: path.to_path_buf(),
            map,
            data_start: 8 + header_len,
            metadata,
        })
    }

    fn bytes(&self, info: &TensorInfo) -> &[u8] {
        let (start, end) = info.data_offsets;
        &self.map[self.data_start + start..self.data_start + end]
    }
}

fn describe_safetensors_error(e: &safetensors::SafeTensorError) -> String {
    use safetensors::SafeTensorError as E;
    match e {
        E::MetadataIncompleteBuffer => {
            "the file is shorter or longer than its header says (truncated or corrupt)".into()
        }
        E::HeaderTooSmall | E::InvalidHeaderLength => "the header is truncated".into(),
        other => format!("{other:?}"),
    }
}

/// The tensors of a checkpoint directory, mapped but not yet converted.
pub struct WeightFiles {
    dir: PathBuf,
    files: Vec<WeightFile>,
    /// Tensor name → index into `files`.
    index: HashMap<String, usize>,
}

impl WeightFiles {
    /// Opens `model.safetensors.index.json` and its shards, or `model.safetensors`.
    pub fn open(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::read(
                dir,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such directory"),
            ));
        }
        let index_path = dir.join(INDEX_FILE);
        if index_path.is_file() {
            return Self::open_sharded(dir, &index_path);
        }
        let single = dir.join(SINGLE_FILE);
        if single.is_file() {
            let file = WeightFile::open(&single)?;
            let index = file
                .metadata
                .tensors()
                .into_keys()
                .map(|name| (name, 0))
                .collect();
            return Ok(WeightFiles {
                dir: dir.to_path_buf(),
                files: vec![file],
                index,
            });
        }
        Err(Error::NoWeights {
            dir: dir.to_path_buf(),
        })
    }

    fn open_sharded(dir: &Path, index_path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(index_path).map_err(|e| Error::read(index_path, e))?;
        let value: Value = serde_json::from_str(&text).map_err(|error| Error::Json {
            path: index_path.to_path_buf(),
            error,
        })?;
        let weight_map = value
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| Error::CorruptWeights {
                path: index_path.to_path_buf(),
                message: "missing the weight_map object".into(),
            })?;
        let mut file_ids: HashMap<String, usize> = HashMap::new();
        let mut files = Vec::new();
        let mut index = HashMap::new();
        for (tensor, file_name) in weight_map {
            let Some(file_name) = file_name.as_str() else {
                return Err(Error::CorruptWeights {
                    path: index_path.to_path_buf(),
                    message: format!("weight_map entry for {tensor} is not a file name"),
                });
            };
            if file_name.contains('/') || file_name.contains("..") {
                return Err(Error::CorruptWeights {
                    path: index_path.to_path_buf(),
                    message: format!("weight_map names a file outside the directory: {file_name}"),
                });
            }
            let id = match file_ids.get(file_name) {
                Some(id) => *id,
                None => {
                    files.push(WeightFile::open(&dir.join(file_name))?);
                    file_ids.insert(file_name.to_string(), files.len() - 1);
                    files.len() - 1
                }
            };
            index.insert(tensor.clone(), id);
        }
        Ok(WeightFiles {
            dir: dir.to_path_buf(),
            files,
            index,
        })
    }

    /// Opens a single safetensors file on its own (any name).
    pub fn open_file(path: &Path) -> Result<Self> {
        let file = WeightFile::open(path)?;
        let index = file
            .metadata
            .tensors()
            .into_keys()
            .map(|name| (name, 0))
            .collect();
        Ok(WeightFiles {
            dir: path.parent().unwrap_or(Path::new(".")).to_path_buf(),
            files: vec![file],
            index,
        })
    }

    /// The stored shape of a tensor.
    pub fn shape(&self, name: &str) -> Option<Vec<usize>> {
        let file = &self.files[*self.index.get(name)?];
        file.metadata.info(name).map(|info| info.shape.clone())
    }

    /// Whether the checkpoint holds a tensor of this name.
    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// All tensor names, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.index.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// The storage dtype of the first tensor, if it is one we read.
    pub fn stored_dtype(&self) -> Option<StoredDtype> {
        let file = self.files.first()?;
        let (_, info) = file.metadata.tensors().into_iter().next()?;
        match info.dtype {
            Dtype::F32 => Some(StoredDtype::F32),
            Dtype::BF16 => Some(StoredDtype::Bf16),
            Dtype::F16 => Some(StoredDtype::F16),
            _ => None,
        }
    }

    /// Reads one tensor as f32 values (row-major), checking that its shape is `expected`.
    pub fn read_f32(&self, name: &str, expected: &[usize]) -> Result<Vec<f32>> {
        let Some(&file_id) = self.index.get(name) else {
            return Err(Error::MissingTensor {
                tensor: name.into(),
                location: self.dir.display().to_string(),
            });
        };
        let file = &self.files[file_id];
        let info = file
            .metadata
            .info(name)
            .ok_or_else(|| Error::MissingTensor {
                tensor: name.into(),
                location: file.path.display().to_string(),
            })?;
        if info.shape != expected {
            return Err(Error::ShapeMismatch {
                tensor: name.into(),
                path: file.path.clone(),
                found: info.shape.clone(),
                expected: expected.to_vec(),
            });
        }
        let bytes = file.bytes(info);
        let values = match info.dtype {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32())
                .collect(),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32())
                .collect(),
            other => {
                return Err(Error::UnsupportedDtype {
                    tensor: name.into(),
                    path: file.path.clone(),
                    dtype: format!("{other:?}"),
                });
            }
        };
        Ok(values)
    }
}

/// A tensor read back whole: its name, shape and f32 values (row-major).
pub struct NamedTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

/// A tensor to save: its name and shape, and how to produce its values, which the writer calls
/// only when it reaches the tensor, so that one tensor at a time is on the host. A model's
/// tensors hold a clone of the device tensor (a reference count) and the slice or transpose
/// to apply there.
pub struct LazyTensor {
    pub name: String,
    pub shape: Vec<usize>,
    values: Box<dyn FnOnce() -> TensorData>,
}

impl LazyTensor {
    /// A tensor whose values `values` produces (any float dtype; row-major in `shape`).
    pub fn new(
        name: impl Into<String>,
        shape: Vec<usize>,
        values: impl FnOnce() -> TensorData + 'static,
    ) -> Self {
        LazyTensor {
            name: name.into(),
            shape,
            values: Box::new(values),
        }
    }

    /// The number of values.
    pub fn num_elements(&self) -> usize {
        self.shape.iter().product()
    }

    /// Produces the values as f32 (on the host).
    pub fn into_data(self) -> TensorData {
        (self.values)().convert::<f32>()
    }

    /// Produces the values into a [`NamedTensor`].
    pub fn into_named(self) -> NamedTensor {
        let (name, shape) = (self.name.clone(), self.shape.clone());
        let values = self
            .into_data()
            .into_vec::<f32>()
            .expect("converted to f32");
        NamedTensor {
            name,
            shape,
            values,
        }
    }
}

impl From<NamedTensor> for LazyTensor {
    fn from(t: NamedTensor) -> Self {
        let len = t.values.len();
        LazyTensor::new(t.name, t.shape, move || TensorData::new(t.values, [len]))
    }
}

/// Writes tensors as `model.safetensors`, or as shards of at most `max_shard_bytes` plus
/// `model.safetensors.index.json` when they do not fit in one. Returns the file names written.
///
/// Shards are packed greedily in the given order, as transformers' `save_pretrained` does;
/// each file is streamed (see [`write_safetensors_file`]).
pub fn write_safetensors<T: Into<LazyTensor>>(
    dir: &Path,
    tensors: impl IntoIterator<Item = T>,
    dtype: StoredDtype,
    max_shard_bytes: usize,
) -> Result<Vec<String>> {
    let tensors: Vec<LazyTensor> = tensors.into_iter().map(Into::into).collect();
    let size = |t: &LazyTensor| t.num_elements() * dtype.size();
    let total_size: usize = tensors.iter().map(size).sum();

    let mut shards: Vec<Vec<LazyTensor>> = vec![Vec::new()];
    let mut current = 0usize;
    for tensor in tensors {
        let bytes = size(&tensor);
        if current > 0 && current + bytes > max_shard_bytes {
            shards.push(Vec::new());
            current = 0;
        }
        shards.last_mut().expect("at least one shard").push(tensor);
        current += bytes;
    }

    let count = shards.len();
    let mut written = Vec::new();
    let mut weight_map = BTreeMap::new();
    for (i, shard) in shards.into_iter().enumerate() {
        let file_name = if count == 1 {
            SINGLE_FILE.to_string()
        } else {
            format!("model-{:05}-of-{:05}.safetensors", i + 1, count)
        };
        for tensor in &shard {
            weight_map.insert(tensor.name.clone(), file_name.clone());
        }
        write_safetensors_file(&dir.join(&file_name), shard, dtype)?;
        written.push(file_name);
    }
    let index_path = dir.join(INDEX_FILE);
    if count > 1 {
        let index = json!({ "metadata": { "total_size": total_size }, "weight_map": weight_map });
        let text = serde_json::to_string_pretty(&index).expect("an index is valid JSON");
        write_atomically(&index_path, text.as_bytes())?;
        written.push(INDEX_FILE.to_string());
    } else if index_path.exists() {
        // A stale index would shadow the single file on the next load.
        std::fs::remove_file(&index_path).map_err(|e| Error::write(&index_path, e))?;
    }
    Ok(written)
}

/// Reads every tensor of one safetensors file, with its stored shape.
pub fn read_safetensors_file(path: &Path) -> Result<Vec<NamedTensor>> {
    let files = WeightFiles::open_file(path)?;
    let mut out = Vec::new();
    for name in files.names() {
        let shape = files.shape(name).unwrap_or_default();
        let values = files.read_f32(name, &shape)?;
        out.push(NamedTensor {
            name: name.to_string(),
            shape,
            values,
        });
    }
    Ok(out)
}

/// Writes tensors as one safetensors file at `path`, atomically and one tensor at a time: the
/// header is computed from the names, shapes and dtype alone, then each tensor's values are
/// produced, encoded a block at a time and written before the next tensor is produced.
///
/// The bytes are those of `safetensors::serialize` (transformers' `format: pt` metadata,
/// tensors in the crate's order: by name, as they share one dtype; the header padded with
/// spaces to a multiple of 8 bytes).
pub fn write_safetensors_file<T: Into<LazyTensor>>(
    path: &Path,
    tensors: impl IntoIterator<Item = T>,
    dtype: StoredDtype,
) -> Result<()> {
    let mut tensors: Vec<LazyTensor> = tensors.into_iter().map(Into::into).collect();
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    if let Some(pair) = tensors.windows(2).find(|w| w[0].name == w[1].name) {
        return Err(Error::InvalidInput(format!(
            "tensor {} is given twice for {}",
            pair[0].name,
            path.display()
        )));
    }
    let header = header_bytes(&tensors, dtype, path)?;
    write_atomically_with(path, |out| {
        out.write_all(&(header.len() as u64).to_le_bytes())?;
        out.write_all(&header)?;
        let mut block = Vec::new();
        for tensor in tensors {
            let (name, expected) = (tensor.name.clone(), tensor.num_elements());
            let data = tensor.into_data();
            let bytes = data.as_bytes();
            if bytes.len() != expected * 4 {
                return Err(std::io::Error::other(format!(
                    "tensor {name} produced {} values, its shape holds {expected}",
                    bytes.len() / 4
                )));
            }
            write_encoded(out, bytes, dtype, &mut block)?;
        }
        Ok(())
    })
}

/// The JSON header of a safetensors file holding `tensors` (sorted by name), as
/// `safetensors::serialize` writes it.
fn header_bytes(tensors: &[LazyTensor], dtype: StoredDtype, path: &Path) -> Result<Vec<u8>> {
    let mut offset = 0;
    let infos = tensors
        .iter()
        .map(|t| {
            let len = t.num_elements() * dtype.size();
            let info = TensorInfo {
                dtype: dtype.safetensors_dtype(),
                shape: t.shape.clone(),
                data_offsets: (offset, offset + len),
            };
            offset += len;
            (t.name.clone(), info)
        })
        .collect();
    let format = HashMap::from([("format".to_string(), "pt".to_string())]);
    let invalid = |message: String| Error::write(path, std::io::Error::other(message));
    let metadata = Metadata::new(Some(format), infos).map_err(|e| invalid(format!("{e:?}")))?;
    let mut header = serde_json::to_string(&metadata)
        .map_err(|e| invalid(e.to_string()))?
        .into_bytes();
    header.resize(header.len().next_multiple_of(8), b' ');
    Ok(header)
}

/// Values converted and written at a time (4 MiB of f32).
const BLOCK_VALUES: usize = 1 << 20;

/// Writes little-endian f32 `bytes` in the storage dtype, a block at a time through `block`.
fn write_encoded(
    out: &mut impl Write,
    bytes: &[u8],
    dtype: StoredDtype,
    block: &mut Vec<u8>,
) -> std::io::Result<()> {
    if dtype == StoredDtype::F32 && cfg!(target_endian = "little") {
        return out.write_all(bytes);
    }
    for values in bytes.chunks(BLOCK_VALUES * 4) {
        block.clear();
        let floats = values
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        match dtype {
            StoredDtype::F32 => floats.for_each(|v| block.extend_from_slice(&v.to_le_bytes())),
            StoredDtype::Bf16 => floats.for_each(|v| {
                block.extend_from_slice(&half::bf16::from_f32(v).to_bits().to_le_bytes())
            }),
            StoredDtype::F16 => floats.for_each(|v| {
                block.extend_from_slice(&half::f16::from_f32(v).to_bits().to_le_bytes())
            }),
        }
        out.write_all(block)?;
    }
    Ok(())
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename, so a
/// crash or a full disk never leaves a half-written file under the final name.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomically_with(path, |out| out.write_all(bytes))
}

/// Like [`write_atomically`], with the contents streamed by `write`: a temporary file in the
/// same directory, written, flushed and synced, then renamed over `path` (and the directory
/// synced). On any error the temporary file is removed and `path` is left as it was.
pub fn write_atomically_with(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>,
) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Unique within the process too: two threads writing the same path (two deliveries of one
    // task) must not share a temporary file.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".{file_name}.tmp-{}-{n}", std::process::id()));
    let result = (|| {
        let mut out = BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
        write(&mut out)?;
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)?;
        // The rename itself survives a crash once the directory is synced (best effort: not
        // every file system lets a directory be opened for that).
        if let Ok(dir) = File::open(if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        }) {
            let _ = dir.sync_all();
        }
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::write(path, e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<NamedTensor> {
        (0..5)
            .map(|i| NamedTensor {
                name: format!("t{i}"),
                shape: vec![2, 3],
                values: (0..6).map(|v| (v as f32 + i as f32) * 0.37).collect(),
            })
            .collect()
    }

    /// The bytes `safetensors::serialize` makes of the same tensors (encoded by `half`).
    fn reference_bytes(tensors: &[NamedTensor], dtype: StoredDtype) -> Vec<u8> {
        struct Encoded(Dtype, Vec<usize>, Vec<u8>);
        impl safetensors::View for &Encoded {
            fn dtype(&self) -> Dtype {
                self.0
            }
            fn shape(&self) -> &[usize] {
                &self.1
            }
            fn data(&self) -> std::borrow::Cow<'_, [u8]> {
                std::borrow::Cow::Borrowed(&self.2)
            }
            fn data_len(&self) -> usize {
                self.2.len()
            }
        }
        let encoded: Vec<(String, Encoded)> = tensors
            .iter()
            .map(|t| {
                let bytes = t
                    .values
                    .iter()
                    .flat_map(|v| match dtype {
                        StoredDtype::F32 => v.to_le_bytes().to_vec(),
                        StoredDtype::Bf16 => half::bf16::from_f32(*v).to_le_bytes().to_vec(),
                        StoredDtype::F16 => half::f16::from_f32(*v).to_le_bytes().to_vec(),
                    })
                    .collect();
                let tensor = Encoded(dtype.safetensors_dtype(), t.shape.clone(), bytes);
                (t.name.clone(), tensor)
            })
            .collect();
        let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
        safetensors::serialize(encoded.iter().map(|(n, t)| (n.as_str(), t)), Some(metadata))
            .unwrap()
    }

    #[test]
    fn streamed_files_are_byte_identical_to_safetensors_serialize() {
        let dir = tempfile::tempdir().unwrap();
        // Names out of order, and a tensor spanning several encoding blocks.
        let mut tensors = sample();
        tensors.reverse();
        tensors.push(NamedTensor {
            name: "big".into(),
            shape: vec![3, BLOCK_VALUES],
            values: (0..3 * BLOCK_VALUES).map(|i| (i as f32).sin()).collect(),
        });
        for dtype in [StoredDtype::F32, StoredDtype::Bf16, StoredDtype::F16] {
            let path = dir.path().join("x.safetensors");
            let copy: Vec<NamedTensor> = tensors
                .iter()
                .map(|t| NamedTensor {
                    name: t.name.clone(),
                    shape: t.shape.clone(),
                    values: t.values.clone(),
                })
                .collect();
            write_safetensors_file(&path, copy, dtype).unwrap();
            let ours = std::fs::read(&path).unwrap();
            assert!(ours == reference_bytes(&tensors, dtype), "{dtype:?}");
        }
    }

    #[test]
    fn a_failed_write_leaves_the_previous_file_and_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        write_safetensors_file(&path, sample(), StoredDtype::F32).unwrap();
        let before = std::fs::read(&path).unwrap();
        // A tensor whose values do not fill its shape.
        let wrong = LazyTensor::new("t0", vec![4, 4], || TensorData::new(vec![1f32; 3], [3]));
        let err = write_safetensors_file(&path, vec![wrong], StoredDtype::Bf16)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("m.safetensors") && err.contains("tensor t0 produced 3 values"),
            "{err}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), before);
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["m.safetensors"]);

        let twice = vec![sample().remove(0), sample().remove(0)];
        let err = write_safetensors_file(&path, twice, StoredDtype::F32)
            .unwrap_err()
            .to_string();
        assert!(err.contains("tensor t0 is given twice"), "{err}");
    }

    #[test]
    fn single_file_round_trip_is_exact() {
        let dir = tempfile::tempdir().unwrap();
        let written = write_safetensors(dir.path(), sample(), StoredDtype::F32, 1 << 30).unwrap();
        assert_eq!(written, vec![SINGLE_FILE.to_string()]);
        let files = WeightFiles::open(dir.path()).unwrap();
        for t in sample() {
            assert_eq!(files.read_f32(&t.name, &t.shape).unwrap(), t.values);
        }
    }

    #[test]
    fn sharded_round_trip_in_bf16() {
        let dir = tempfile::tempdir().unwrap();
        // 6 values * 2 bytes = 12 bytes a tensor; 30 bytes a shard holds two.
        let written = write_safetensors(dir.path(), sample(), StoredDtype::Bf16, 30).unwrap();
        assert_eq!(written.len(), 4, "{written:?}"); // 3 shards + index
        let files = WeightFiles::open(dir.path()).unwrap();
        assert_eq!(files.stored_dtype(), Some(StoredDtype::Bf16));
        for t in sample() {
            let expected: Vec<f32> = t
                .values
                .iter()
                .map(|v| half::bf16::from_f32(*v).to_f32())
                .collect();
            assert_eq!(files.read_f32(&t.name, &t.shape).unwrap(), expected);
        }
    }

    #[test]
    fn errors_name_the_tensor_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        write_safetensors(dir.path(), sample(), StoredDtype::F32, 1 << 30).unwrap();
        let files = WeightFiles::open(dir.path()).unwrap();
        let err = files.read_f32("nope", &[1]).unwrap_err().to_string();
        assert!(err.contains("missing tensor nope"), "{err}");
        let err = files.read_f32("t1", &[3, 2]).unwrap_err().to_string();
        assert!(
            err.contains("t1") && err.contains("model.safetensors") && err.contains("[2, 3]"),
            "{err}"
        );

        // Truncate the file: the header no longer matches the length.
        let path = dir.path().join(SINGLE_FILE);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 7]).unwrap();
        let err = WeightFiles::open(dir.path()).err().unwrap().to_string();
        assert!(
            err.contains("corrupt safetensors file") && err.contains("truncated"),
            "{err}"
        );

        std::fs::write(&path, b"not a safetensors file").unwrap();
        let err = WeightFiles::open(dir.path()).err().unwrap().to_string();
        assert!(err.contains("corrupt safetensors file"), "{err}");

        let empty = tempfile::tempdir().unwrap();
        let err = WeightFiles::open(empty.path()).err().unwrap().to_string();
        assert!(err.contains("no weights in"), "{err}");
    }

    #[test]
    fn a_missing_shard_is_named() {
        let dir = tempfile::tempdir().unwrap();
        write_safetensors(dir.path(), sample(), StoredDtype::F32, 60).unwrap();
        std::fs::remove_file(dir.path().join("model-00002-of-00003.safetensors")).unwrap();
        let err = WeightFiles::open(dir.path()).err().unwrap().to_string();
        assert!(err.contains("model-00002-of-00003.safetensors"), "{err}");
    }

    #[test]
    fn concurrent_atomic_writes_of_one_path_each_land_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("1-0.json");
        let patterns: Vec<Vec<u8>> = (0..8u8).map(|t| vec![b'a' + t; 64 << 10]).collect();
        std::thread::scope(|scope| {
            for pattern in &patterns {
                let path = &path;
                scope.spawn(move || {
                    for _ in 0..50 {
                        write_atomically(path, pattern).unwrap();
                    }
                });
            }
        });
        let last = std::fs::read(&path).unwrap();
        assert!(patterns.contains(&last), "a torn file");
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert_eq!(left.len(), 1, "temporary files left behind");
    }
}
