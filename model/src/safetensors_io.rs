//! Reading and writing Hugging Face safetensors checkpoints: one `model.safetensors`, or
//! shards listed in `model.safetensors.index.json`; tensors stored as bf16, f16 or f32.
//!
//! Reading maps each file into memory once, checks its header against its length (so a
//! truncated file is an error naming it), and converts a requested tensor to f32 after
//! checking its shape. Writing is atomic per file: a temporary file renamed into place.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::tensor::{Metadata, TensorInfo};
use safetensors::{Dtype, View};
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

    fn encode(self, values: &[f32]) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(values.len() * self.size());
        match self {
            StoredDtype::F32 => values
                .iter()
                .for_each(|v| bytes.extend_from_slice(&v.to_le_bytes())),
            StoredDtype::Bf16 => values.iter().for_each(|v| {
                bytes.extend_from_slice(&half::bf16::from_f32(*v).to_bits().to_le_bytes())
            }),
            StoredDtype::F16 => values.iter().for_each(|v| {
                bytes.extend_from_slice(&half::f16::from_f32(*v).to_bits().to_le_bytes())
            }),
        }
        bytes
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

/// A tensor to save: its name, shape and f32 values (row-major).
pub struct NamedTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

/// Encoded bytes of one tensor, as safetensors' `View` wants them.
struct EncodedTensor {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl View for &EncodedTensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// Writes tensors as `model.safetensors`, or as shards of at most `max_shard_bytes` plus
/// `model.safetensors.index.json` when they do not fit in one. Returns the file names written.
pub fn write_safetensors(
    dir: &Path,
    tensors: Vec<NamedTensor>,
    dtype: StoredDtype,
    max_shard_bytes: usize,
) -> Result<Vec<String>> {
    let encoded = encode(tensors, dtype);
    let total_size: usize = encoded.iter().map(|(_, t)| t.bytes.len()).sum();

    // Greedy packing in the given order, as transformers' `save_pretrained` does.
    let mut shards: Vec<Vec<&(String, EncodedTensor)>> = vec![Vec::new()];
    let mut current = 0usize;
    for entry in &encoded {
        let size = entry.1.bytes.len();
        if current > 0 && current + size > max_shard_bytes {
            shards.push(Vec::new());
            current = 0;
        }
        shards.last_mut().expect("at least one shard").push(entry);
        current += size;
    }

    let count = shards.len();
    let mut written = Vec::new();
    let mut weight_map = BTreeMap::new();
    for (i, shard) in shards.iter().enumerate() {
        let file_name = if count == 1 {
            SINGLE_FILE.to_string()
        } else {
            format!("model-{:05}-of-{:05}.safetensors", i + 1, count)
        };
        let path = dir.join(&file_name);
        let bytes = serialize(
            shard.iter().map(|entry| (entry.0.as_str(), &entry.1)),
            &path,
        )?;
        write_atomically(&path, &bytes)?;
        for (name, _) in shard {
            weight_map.insert(name.clone(), file_name.clone());
        }
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

/// Writes tensors as one safetensors file at `path` (atomically).
pub fn write_safetensors_file(
    path: &Path,
    tensors: Vec<NamedTensor>,
    dtype: StoredDtype,
) -> Result<()> {
    let encoded = encode(tensors, dtype);
    let entries = encoded.iter().map(|(name, t)| (name.as_str(), t));
    write_atomically(path, &serialize(entries, path)?)
}

/// Each tensor's values encoded in the storage dtype.
fn encode(tensors: Vec<NamedTensor>, dtype: StoredDtype) -> Vec<(String, EncodedTensor)> {
    tensors
        .into_iter()
        .map(|t| {
            let bytes = dtype.encode(&t.values);
            let tensor = EncodedTensor {
                dtype: dtype.safetensors_dtype(),
                shape: t.shape,
                bytes,
            };
            (t.name, tensor)
        })
        .collect()
}

/// The bytes of a safetensors file holding `entries`, with transformers' `format: pt` metadata.
fn serialize<'a>(
    entries: impl IntoIterator<Item = (&'a str, &'a EncodedTensor)>,
    path: &Path,
) -> Result<Vec<u8>> {
    let metadata: HashMap<String, String> = HashMap::from([("format".into(), "pt".into())]);
    safetensors::serialize(entries, Some(metadata))
        .map_err(|e| Error::write(path, std::io::Error::other(format!("{e:?}"))))
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename, so a
/// crash or a full disk never leaves a half-written file under the final name.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
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
}
