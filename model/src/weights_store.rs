//! Published weight versions: the learner uploads a flat model directory (config, safetensors
//! shards, index, tokenizer files) under a location with a `manifest.json` that lists every
//! file's size and SHA-256; actors download a version and verify every byte against it.
//!
//! A location is a local directory path or an object store URL (`file:///...`,
//! `s3://bucket/prefix`); S3 settings come from the `AWS_*` environment variables
//! (see [`crate::store::open_with_options`]).
//!
//! Ordering guarantees:
//! - `publish` deletes an existing `manifest.json` first, uploads the files, and writes the
//!   new `manifest.json` last, so a reader that finds a manifest finds complete files.
//! - `fetch_verified` stages every downloaded file under a hidden name in `dest`, checks its
//!   size and hash while it streams, and only when every file is verified renames them into
//!   place and writes `dest/manifest.json` last; on failure the staged files are removed and
//!   `dest` is left as it was. Files already in `dest` with the manifest's hash are reused.
//!
//! Files are streamed in chunks of [`CHUNK`] bytes: nothing holds a whole shard in memory.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::safetensors_io::write_atomically;
use crate::store::{Location, block_on, open_with_options};
pub use crate::transfer::CHUNK;
use crate::transfer::{STOPPED, Transfer, blocking, hex, read_full};

/// The name of the manifest object, beside the files it lists.
pub const MANIFEST: &str = "manifest.json";

/// Files uploaded or downloaded at the same time.
const FILE_CONCURRENCY: usize = 4;

/// The manifest of one published weight version: every file with its size and SHA-256.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub version: u64,
    pub files: Vec<ManifestFile>,
}

/// One file of a [`Manifest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestFile {
    pub name: String,
    pub size: u64,
    /// Lower-case hex.
    pub sha256: String,
}

impl Manifest {
    /// The total size of the files in bytes.
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    fn parse(bytes: &[u8]) -> std::result::Result<Self, String> {
        let manifest: Manifest = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if manifest.files.is_empty() {
            return Err("lists no files".into());
        }
        let mut names = std::collections::HashSet::new();
        for file in &manifest.files {
            check_file_name(&file.name)?;
            if !names.insert(file.name.as_str()) {
                return Err(format!("lists {} twice", file.name));
            }
            if file.sha256.len() != 64 || !file.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!("{}: sha256 is not 64 hex digits", file.name));
            }
        }
        Ok(manifest)
    }
}

/// What [`WeightsStore::fetch`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fetched {
    pub manifest: Manifest,
    /// Files downloaded by this call.
    pub downloaded: Vec<String>,
    /// Files that were already in the destination with the right hash.
    pub reused: Vec<String>,
    pub bytes_downloaded: u64,
}

/// A location that weight versions are published to and fetched from.
#[derive(Clone, Debug)]
pub struct WeightsStore {
    store: Arc<dyn ObjectStore>,
    prefix: StorePath,
    location: String,
}

impl WeightsStore {
    /// Opens a local directory path or an object store URL, with S3 settings from `AWS_*`.
    pub fn open(location: &str) -> Result<Self> {
        Self::open_with_options(location, &[])
    }

    /// Like [`WeightsStore::open`], with object store options (such as `AWS_ENDPOINT`,
    /// `AWS_ALLOW_HTTP`) that override the environment.
    pub fn open_with_options(location: &str, options: &[(String, String)]) -> Result<Self> {
        let url = match Location::parse(location)? {
            Location::Remote(url) => url,
            Location::Local(dir) => {
                let absolute = std::path::absolute(&dir).map_err(|e| Error::read(&dir, e))?;
                url::Url::from_directory_path(&absolute).map_err(|()| Error::Store {
                    location: location.into(),
                    message: "not a usable local directory path".into(),
                })?
            }
        };
        let (store, prefix) = open_with_options(&url, options)?;
        Ok(Self {
            store: Arc::from(store),
            prefix,
            location: location.into(),
        })
    }

    /// The location as it was given.
    pub fn location(&self) -> &str {
        &self.location
    }

    fn object(&self, name: &str) -> StorePath {
        self.prefix.clone().join(name)
    }

    fn store_error(&self, e: impl std::fmt::Display) -> Error {
        Error::Store {
            location: self.location.clone(),
            message: e.to_string(),
        }
    }

    /// A transfer of this store's files, with its own stop flag.
    fn transfer(&self) -> Transfer {
        Transfer::new(self.store.clone(), self.location.clone())
    }

    fn verification(&self, file: &str, message: impl Into<String>) -> Error {
        Error::Verification {
            location: self.location.clone(),
            file: file.into(),
            message: message.into(),
        }
    }

    /// Deletes the version: `manifest.json` first (readers stop trusting it), then every
    /// object under the location. Returns how many objects went.
    pub async fn remove(&self) -> Result<usize> {
        match self.store.delete(&self.object(MANIFEST)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(self.store_error(format!("deleting {MANIFEST}: {e}"))),
        }
        let objects: Vec<StorePath> = self
            .store
            .list(Some(&self.prefix))
            .map_ok(|meta| meta.location)
            .try_collect()
            .await
            .map_err(|e| self.store_error(format!("listing: {e}")))?;
        for object in &objects {
            match self.store.delete(object).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(self.store_error(format!("deleting {object}: {e}"))),
            }
        }
        Ok(objects.len() + 1)
    }

    /// Uploads the files of `local_dir` (regular files and links to them; not hidden files,
    /// sub-directories or a `manifest.json`), then `manifest.json` last. Returns the manifest.
    pub async fn publish(&self, local_dir: &Path, version: u64) -> Result<Manifest> {
        let names = publishable_files(local_dir)?;
        match self.store.delete(&self.object(MANIFEST)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(self.store_error(format!("deleting the old {MANIFEST}: {e}"))),
        }
        let transfer = &self.transfer();
        let results: Vec<Result<ManifestFile>> = futures::stream::iter(names)
            .map(|name| async move {
                let copied = transfer
                    .upload(&local_dir.join(&name), &self.object(&name), &name, true)
                    .await;
                if copied.is_err() {
                    transfer.stop();
                }
                copied.map(|copied| ManifestFile {
                    name,
                    size: copied.bytes,
                    sha256: copied.sha256.expect("hashed"),
                })
            })
            .buffered(FILE_CONCURRENCY)
            .collect()
            .await;
        let files = first_error(results)?;
        let manifest = Manifest { version, files };
        let json = serde_json::to_vec_pretty(&manifest).expect("a manifest serializes");
        self.store
            .put(&self.object(MANIFEST), PutPayload::from(json))
            .await
            .map_err(|e| self.store_error(format!("writing {MANIFEST}: {e}")))?;
        tracing::info!(
            location = %self.location,
            version,
            files = manifest.files.len(),
            bytes = manifest.total_bytes(),
            "published weights"
        );
        Ok(manifest)
    }

    /// Reads the manifest of the published version.
    pub async fn manifest(&self) -> Result<Manifest> {
        let got = match self.store.get(&self.object(MANIFEST)).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(self.store_error(format!(
                    "no {MANIFEST}: no version is published here (or its publish has not finished)"
                )));
            }
            Err(e) => return Err(self.store_error(format!("reading {MANIFEST}: {e}"))),
        };
        let bytes = got
            .bytes()
            .await
            .map_err(|e| self.store_error(format!("reading {MANIFEST}: {e}")))?;
        Manifest::parse(&bytes).map_err(|message| self.verification(MANIFEST, message))
    }

    /// Downloads the published version into `dest` and verifies every file (see the module
    /// documentation for what happens in `dest`).
    pub async fn fetch(&self, dest: &Path) -> Result<Fetched> {
        let manifest = self.manifest().await?;
        std::fs::create_dir_all(dest).map_err(|e| Error::write(dest, e))?;
        let transfer = &self.transfer();
        let results: Vec<Result<Fetch>> = futures::stream::iter(manifest.files.clone())
            .map(|file| async move {
                let result = self.fetch_file(&file, dest, transfer).await;
                if result.is_err() {
                    transfer.stop();
                }
                result
            })
            .buffered(FILE_CONCURRENCY)
            .collect()
            .await;
        let staged: Vec<PathBuf> = results
            .iter()
            .filter_map(|r| match r {
                Ok(Fetch::Downloaded { staged, .. }) => Some(staged.clone()),
                _ => None,
            })
            .collect();
        match first_error(results).and_then(|fetches| install(dest, &manifest, fetches)) {
            Ok(fetched) => {
                tracing::info!(
                    location = %self.location,
                    dest = %dest.display(),
                    version = manifest.version,
                    downloaded = fetched.downloaded.len(),
                    reused = fetched.reused.len(),
                    bytes = fetched.bytes_downloaded,
                    "fetched verified weights"
                );
                Ok(fetched)
            }
            Err(e) => {
                for path in staged {
                    let _ = std::fs::remove_file(path);
                }
                Err(e)
            }
        }
    }

    /// Downloads the published version into `dest`, verified; returns its manifest.
    pub async fn fetch_verified(&self, dest: &Path) -> Result<Manifest> {
        Ok(self.fetch(dest).await?.manifest)
    }

    async fn fetch_file(
        &self,
        file: &ManifestFile,
        dest: &Path,
        transfer: &Transfer,
    ) -> Result<Fetch> {
        let target = dest.join(&file.name);
        // Not through a symlink: a link in the cache (to a file outside it) is never taken for
        // the file; it is downloaded, and the rename replaces the link, not what it points to.
        if let Ok(meta) = std::fs::symlink_metadata(&target)
            && meta.is_file()
            && meta.len() == file.size
        {
            let cached = target.clone();
            let sha256 = blocking(move || hash_file(&cached)).await?;
            if sha256 == file.sha256 {
                return Ok(Fetch::Reused {
                    name: file.name.clone(),
                });
            }
        }
        let got = match self.store.get(&self.object(&file.name)).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(self.verification(
                    &file.name,
                    format!("listed in {MANIFEST} but missing from the store"),
                ));
            }
            Err(e) => return Err(self.store_error(format!("downloading {}: {e}", file.name))),
        };
        if got.meta.size != file.size {
            return Err(self.verification(
                &file.name,
                format!(
                    "{} bytes in the store, {} in {MANIFEST}",
                    got.meta.size, file.size
                ),
            ));
        }
        let staged = staged_path(dest, &file.name);
        let copied = transfer.write_object(got, &file.name, &staged, true).await;
        let checked = copied.and_then(|copied| {
            let (bytes, sha256) = (copied.bytes, copied.sha256.expect("hashed"));
            if bytes != file.size {
                Err(self.verification(
                    &file.name,
                    format!("downloaded {bytes} bytes, {MANIFEST} says {}", file.size),
                ))
            } else if sha256 != file.sha256 {
                Err(self.verification(
                    &file.name,
                    format!("sha256 {sha256} differs from {MANIFEST}'s {}", file.sha256),
                ))
            } else {
                Ok(bytes)
            }
        });
        match checked {
            Ok(bytes) => Ok(Fetch::Downloaded {
                name: file.name.clone(),
                staged,
                bytes,
            }),
            Err(e) => {
                let _ = std::fs::remove_file(&staged);
                Err(e)
            }
        }
    }

    /// Copies the files of the published version into `dest` without hashing or verifying
    /// them (the peer of [`WeightsStore::fetch`] in the weight-sync benchmark). Returns the
    /// bytes copied.
    pub async fn raw_copy(&self, dest: &Path) -> Result<u64> {
        let manifest = self.manifest().await?;
        std::fs::create_dir_all(dest).map_err(|e| Error::write(dest, e))?;
        let transfer = &self.transfer();
        let results: Vec<Result<u64>> = futures::stream::iter(manifest.files.clone())
            .map(|file| async move {
                let target = dest.join(&file.name);
                let copied = transfer
                    .download(&self.object(&file.name), &file.name, &target, false)
                    .await;
                if copied.is_err() {
                    transfer.stop();
                }
                Ok(copied?.bytes)
            })
            .buffered(FILE_CONCURRENCY)
            .collect()
            .await;
        Ok(first_error(results)?.into_iter().sum())
    }
}

/// One file of a fetch.
enum Fetch {
    Reused {
        name: String,
    },
    Downloaded {
        name: String,
        staged: PathBuf,
        bytes: u64,
    },
}

/// Moves the verified staged files into place: `dest/manifest.json` is removed first and
/// written last, and files of the previous version that the new one lacks are removed.
fn install(dest: &Path, manifest: &Manifest, fetches: Vec<Fetch>) -> Result<Fetched> {
    let manifest_path = dest.join(MANIFEST);
    let previous = std::fs::read(&manifest_path)
        .ok()
        .and_then(|bytes| Manifest::parse(&bytes).ok());
    match std::fs::remove_file(&manifest_path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::write(&manifest_path, e)),
    }
    let mut fetched = Fetched {
        manifest: manifest.clone(),
        downloaded: Vec::new(),
        reused: Vec::new(),
        bytes_downloaded: 0,
    };
    for fetch in fetches {
        match fetch {
            Fetch::Reused { name } => fetched.reused.push(name),
            Fetch::Downloaded {
                name,
                staged,
                bytes,
            } => {
                let target = dest.join(&name);
                std::fs::rename(&staged, &target).map_err(|e| Error::write(&target, e))?;
                fetched.downloaded.push(name);
                fetched.bytes_downloaded += bytes;
            }
        }
    }
    if let Some(previous) = previous {
        for old in &previous.files {
            if !manifest.files.iter().any(|f| f.name == old.name) {
                let path = dest.join(&old.name);
                if let Err(e) = std::fs::remove_file(&path)
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    return Err(Error::write(&path, e));
                }
            }
        }
    }
    let json = serde_json::to_vec_pretty(manifest).expect("a manifest serializes");
    write_atomically(&manifest_path, &json)?;
    Ok(fetched)
}

/// The names of the files `publish` uploads from a directory, sorted.
fn publishable_files(dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::read(dir, e))? {
        let entry = entry.map_err(|e| Error::read(dir, e))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || name == MANIFEST {
            continue;
        }
        // Follows links: Hugging Face caches link their files to blobs.
        let meta = std::fs::metadata(&path).map_err(|e| Error::read(&path, e))?;
        if !meta.is_file() {
            tracing::warn!(path = %path.display(), "not publishing a non-file (models are flat)");
            continue;
        }
        check_file_name(&name).map_err(|message| {
            Error::InvalidInput(format!("cannot publish {}: {message}", path.display()))
        })?;
        names.push(name);
    }
    if names.is_empty() {
        return Err(Error::InvalidInput(format!(
            "no files to publish in {}",
            dir.display()
        )));
    }
    names.sort();
    Ok(names)
}

/// A file name that is safe to join to a destination directory and to an object prefix.
fn check_file_name(name: &str) -> std::result::Result<(), String> {
    if name.is_empty()
        || name.starts_with('.')
        || name == MANIFEST
        || name.contains(['/', '\\', '\0'])
    {
        Err(format!("{name:?} is not a plain file name"))
    } else {
        Ok(())
    }
}

/// A hidden name in `dest` for a file being downloaded, unique within this machine.
fn staged_path(dest: &Path, name: &str) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    dest.join(format!(".{name}.{}-{n}.partial", std::process::id()))
}

/// The values of a batch, or its first error, preferring the one that stopped the others.
fn first_error<T>(results: Vec<Result<T>>) -> Result<Vec<T>> {
    let mut values = Vec::with_capacity(results.len());
    let mut first: Option<Error> = None;
    for result in results {
        match result {
            Ok(value) => values.push(value),
            Err(e) => {
                let is_cause = |e: &Error| !e.to_string().ends_with(STOPPED);
                if first.as_ref().is_none_or(|f| !is_cause(f) && is_cause(&e)) {
                    first = Some(e);
                }
            }
        }
    }
    match first {
        Some(e) => Err(e),
        None => Ok(values),
    }
}

/// The hex SHA-256 of a file, read a chunk at a time.
fn hash_file(path: &Path) -> Result<String> {
    let mut file = File::open(path).map_err(|e| Error::read(path, e))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; CHUNK];
    loop {
        let n = read_full(&mut file, &mut buffer).map_err(|e| Error::read(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// Uploads the files of a local model directory under `location`, the files first and
/// `manifest.json` last, so a reader that finds a manifest finds complete files.
pub async fn publish(local_dir: &Path, location: &str, version: u64) -> Result<Manifest> {
    WeightsStore::open(location)?
        .publish(local_dir, version)
        .await
}

/// Downloads the version published at `location` into `dest`, checking every file's size and
/// SHA-256 against the manifest; files already in `dest` with the right hash are kept.
pub async fn fetch_verified(location: &str, dest: &Path) -> Result<Manifest> {
    WeightsStore::open(location)?.fetch_verified(dest).await
}

/// Copies the files published at `location` into `dest` without hashing; returns the bytes.
pub async fn raw_copy(location: &str, dest: &Path) -> Result<u64> {
    WeightsStore::open(location)?.raw_copy(dest).await
}

/// [`publish`] from synchronous code.
pub fn publish_blocking(local_dir: &Path, location: &str, version: u64) -> Result<Manifest> {
    block_on(publish(local_dir, location, version))
}

/// Deletes the version published at `location`, from synchronous code.
pub fn remove_blocking(location: &str) -> Result<usize> {
    block_on(async { WeightsStore::open(location)?.remove().await })
}

/// [`fetch_verified`] from synchronous code.
pub fn fetch_verified_blocking(location: &str, dest: &Path) -> Result<Manifest> {
    block_on(fetch_verified(location, dest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_match_a_known_sha256() {
        // FIPS 180-2 test vector for "abc".
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("abc");
        std::fs::write(&path, b"abc").unwrap();
        assert_eq!(
            hash_file(&path).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn manifests_with_unsafe_names_are_rejected() {
        let sha = "0".repeat(64);
        for name in ["../x", "a/b", "", ".hidden", "manifest.json"] {
            let json = format!(
                r#"{{"version": 1, "files": [{{"name": {name:?}, "size": 1, "sha256": "{sha}"}}]}}"#
            );
            let err = Manifest::parse(json.as_bytes()).unwrap_err();
            assert!(err.contains("not a plain file name"), "{name}: {err}");
        }
        let twice = format!(
            r#"{{"version": 1, "files": [{{"name": "a", "size": 1, "sha256": "{sha}"}},
                {{"name": "a", "size": 1, "sha256": "{sha}"}}]}}"#
        );
        assert!(
            Manifest::parse(twice.as_bytes())
                .unwrap_err()
                .contains("twice")
        );
        let short = r#"{"version": 1, "files": [{"name": "a", "size": 1, "sha256": "ab"}]}"#;
        assert!(
            Manifest::parse(short.as_bytes())
                .unwrap_err()
                .contains("64 hex")
        );
    }

    #[test]
    fn a_missing_manifest_says_nothing_is_published() {
        let dir = tempfile::tempdir().unwrap();
        let location = dir.path().join("run/v1").display().to_string();
        let dest = dir.path().join("dest");
        let err = fetch_verified_blocking(&location, &dest)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&location) && err.contains("no manifest.json"),
            "{err}"
        );
    }

    /// A published version whose manifest a stranger wrote: names that leave the cache are
    /// refused before anything is written, and a symlink in the cache is never read through.
    #[test]
    fn a_hostile_manifest_or_a_symlink_cannot_reach_outside_the_cache() {
        let root = tempfile::tempdir().unwrap();
        let published = root.path().join("published");
        let cache = root.path().join("cache");
        std::fs::create_dir_all(&published).unwrap();
        std::fs::write(published.join("a.bin"), b"weights").unwrap();
        let sha = hash_file(&published.join("a.bin")).unwrap();
        for name in [
            "../escape",
            "../../escape",
            "/tmp/grlo-abs-escape",
            "sub/../../x",
        ] {
            let manifest = format!(
                r#"{{"version": 1, "files": [{{"name": {name:?}, "size": 7, "sha256": "{sha}"}}]}}"#
            );
            std::fs::write(published.join(MANIFEST), manifest).unwrap();
            let dest = cache.join("job-1/v1");
            let error = fetch_verified_blocking(published.to_str().unwrap(), &dest).unwrap_err();
            assert!(
                error.to_string().contains("not a plain file name"),
                "{name}: {error}"
            );
            assert!(!root.path().join("escape").exists());
            assert!(!cache.join("escape").exists());
            assert!(!cache.join("job-1/escape").exists());
            assert!(!std::path::Path::new("/tmp/grlo-abs-escape").exists());
        }

        // An honest manifest, with the cache holding a link of the same name to a file outside
        // it with the same bytes: the link is replaced by a verified download, the outside file
        // is left alone.
        let staged = root.path().join("staged");
        std::fs::create_dir_all(&staged).unwrap();
        std::fs::write(staged.join("a.bin"), b"weights").unwrap();
        let version = root.path().join("v1");
        let store = WeightsStore::open(version.to_str().unwrap()).unwrap();
        crate::store::block_on(store.publish(&staged, 1)).unwrap();
        let outside = root.path().join("outside.bin");
        std::fs::write(&outside, b"weights").unwrap();
        let dest = cache.join("job-2/v1");
        std::fs::create_dir_all(&dest).unwrap();
        std::os::unix::fs::symlink(&outside, dest.join("a.bin")).unwrap();
        let fetched = crate::store::block_on(store.fetch(&dest)).unwrap();
        assert_eq!(
            fetched.downloaded,
            ["a.bin"],
            "the link was taken for the file"
        );
        let link = std::fs::symlink_metadata(dest.join("a.bin")).unwrap();
        assert!(link.is_file(), "the link is replaced by the file");
        assert_eq!(std::fs::read(&outside).unwrap(), b"weights");
    }
}
