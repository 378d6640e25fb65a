//! Streaming copies between local files and object store objects, a part at a time, so that
//! no file is ever held whole in memory: the shared plumbing of published weight versions
//! ([`crate::weights_store`]), remote model directories ([`crate::store`]) and the learner's
//! checkpoints.
//!
//! An upload is one PUT for a file of at most [`CHUNK`] bytes and a multipart upload of
//! [`CHUNK`]-byte parts beyond (S3 refuses a single PUT over 5 GB and allows 10,000 parts, so
//! files up to 80 GiB), with at most [`PARTS_IN_FLIGHT`] parts in flight. A download streams
//! the object into a file, writing a [`CHUNK`] at a time. Either can hash what it moves
//! (SHA-256) and stops between parts once its [`Transfer`]'s stop flag is set (another file
//! of the same batch failed).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path as StorePath;
use object_store::{
    GetResult, GetResultPayload, ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart,
};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Bytes read, hashed and written at a time; also the multipart upload part size.
pub const CHUNK: usize = 8 << 20;

/// Parts of one multipart upload in flight at the same time.
pub const PARTS_IN_FLIGHT: usize = 4;

/// The end of the message of a transfer stopped because another one of its batch failed.
pub const STOPPED: &str = "stopped because another file failed";

/// What one upload or download moved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Copied {
    pub bytes: u64,
    /// Lower-case hex SHA-256 of the bytes, when asked for.
    pub sha256: Option<String>,
}

/// Copies files to and from one object store; errors name `location` (as the user gave it).
#[derive(Clone)]
pub struct Transfer {
    store: Arc<dyn ObjectStore>,
    location: String,
    stop: Arc<AtomicBool>,
}

impl Transfer {
    pub fn new(store: Arc<dyn ObjectStore>, location: impl Into<String>) -> Self {
        Transfer {
            store,
            location: location.into(),
            stop: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Asks every transfer sharing this one's flag to stop at its next part.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn error(&self, message: String) -> Error {
        Error::Store {
            location: self.location.clone(),
            message,
        }
    }

    /// Uploads the local file `path` as `object` (`name` is how errors call it); hashes it
    /// when `hash` is set. A failed multipart upload is aborted, leaving no object behind.
    pub async fn upload(
        &self,
        path: &Path,
        object: &StorePath,
        name: &str,
        hash: bool,
    ) -> Result<Copied> {
        let opened = path.to_path_buf();
        let (file, size) = blocking(move || {
            let file = File::open(&opened).map_err(|e| Error::read(&opened, e))?;
            let size = file.metadata().map_err(|e| Error::read(&opened, e))?.len();
            Ok((file, size))
        })
        .await?;
        let hasher = hash.then(Sha256::new);
        let (hasher, bytes) = if size <= CHUNK as u64 {
            let (_, hasher, bytes) = read_chunk(file, hasher, path.to_path_buf()).await?;
            let total = bytes.len() as u64;
            self.store
                .put(object, PutPayload::from(bytes))
                .await
                .map_err(|e| self.error(format!("uploading {name}: {e}")))?;
            (hasher, total)
        } else {
            let upload = self
                .store
                .put_multipart(object)
                .await
                .map_err(|e| self.error(format!("uploading {name}: {e}")))?;
            let mut writer = WriteMultipart::new_with_chunk_size(upload, CHUNK);
            match self
                .upload_parts(&mut writer, file, hasher, path, name)
                .await
            {
                Ok(streamed) => {
                    writer
                        .finish()
                        .await
                        .map_err(|e| self.error(format!("uploading {name}: {e}")))?;
                    streamed
                }
                Err(e) => {
                    if let Err(abort) = writer.abort().await {
                        tracing::warn!(location = %self.location, file = name, %abort,
                            "failed to abort a multipart upload");
                    }
                    return Err(e);
                }
            }
        };
        Ok(Copied {
            bytes,
            sha256: hasher.map(|h| hex(&h.finalize())),
        })
    }

    /// Feeds a file to a multipart upload a part at a time; returns its hash and size.
    async fn upload_parts(
        &self,
        writer: &mut WriteMultipart,
        mut file: File,
        mut hasher: Option<Sha256>,
        path: &Path,
        name: &str,
    ) -> Result<(Option<Sha256>, u64)> {
        let mut total = 0u64;
        loop {
            if self.stopped() {
                return Err(self.error(format!("uploading {name}: {STOPPED}")));
            }
            let bytes;
            (file, hasher, bytes) = read_chunk(file, hasher, path.to_path_buf()).await?;
            if bytes.is_empty() {
                return Ok((hasher, total));
            }
            total += bytes.len() as u64;
            writer
                .wait_for_capacity(PARTS_IN_FLIGHT)
                .await
                .map_err(|e| self.error(format!("uploading {name}: {e}")))?;
            writer.put(bytes);
        }
    }

    /// Downloads `object` into a new file at `path` (`name` is how errors call it).
    pub async fn download(
        &self,
        object: &StorePath,
        name: &str,
        path: &Path,
        hash: bool,
    ) -> Result<Copied> {
        let got = self
            .store
            .get(object)
            .await
            .map_err(|e| self.error(format!("downloading {name}: {e}")))?;
        self.write_object(got, name, path, hash).await
    }

    /// Streams an object already asked for into a new file at `path`, hashing the bytes when
    /// `hash` is set.
    pub async fn write_object(
        &self,
        got: GetResult,
        name: &str,
        path: &Path,
        hash: bool,
    ) -> Result<Copied> {
        let mut hasher = hash.then(Sha256::new);
        let out_path = path.to_path_buf();
        let created = out_path.clone();
        let mut out =
            blocking(move || File::create(&created).map_err(|e| Error::write(&created, e))).await?;
        let mut total = 0u64;
        match got.payload {
            // A local file: read it on a blocking thread, a chunk at a time.
            GetResultPayload::File(mut file, source) => {
                let range = got.range;
                let this = self.clone();
                let name = name.to_string();
                (total, hasher) = blocking(move || {
                    let read = |e: std::io::Error| {
                        this.error(format!("reading {name} ({}): {e}", source.display()))
                    };
                    file.seek(SeekFrom::Start(range.start)).map_err(read)?;
                    let mut reader = file.take(range.end - range.start);
                    let mut buffer = vec![0u8; CHUNK];
                    let mut total = 0u64;
                    loop {
                        if this.stopped() {
                            return Err(this.error(format!("downloading {name}: {STOPPED}")));
                        }
                        let n = read_full(&mut reader, &mut buffer).map_err(read)?;
                        if n == 0 {
                            break;
                        }
                        if let Some(h) = hasher.as_mut() {
                            h.update(&buffer[..n]);
                        }
                        out.write_all(&buffer[..n])
                            .map_err(|e| Error::write(&out_path, e))?;
                        total += n as u64;
                    }
                    Ok((total, hasher))
                })
                .await?;
            }
            // A remote object: batch the received chunks and write them on a blocking thread.
            GetResultPayload::Stream(mut stream) => {
                let mut batch: Vec<Bytes> = Vec::new();
                let mut batched = 0usize;
                loop {
                    let chunk = stream
                        .try_next()
                        .await
                        .map_err(|e| self.error(format!("downloading {name}: {e}")))?;
                    if let Some(chunk) = &chunk {
                        batched += chunk.len();
                        batch.push(chunk.clone());
                    }
                    if batched >= CHUNK || (chunk.is_none() && batched > 0) {
                        if self.stopped() {
                            return Err(self.error(format!("downloading {name}: {STOPPED}")));
                        }
                        let chunks = std::mem::take(&mut batch);
                        total += batched as u64;
                        batched = 0;
                        let written = out_path.clone();
                        (out, hasher) = blocking(move || {
                            for chunk in &chunks {
                                if let Some(h) = hasher.as_mut() {
                                    h.update(chunk);
                                }
                                out.write_all(chunk)
                                    .map_err(|e| Error::write(&written, e))?;
                            }
                            Ok((out, hasher))
                        })
                        .await?;
                    }
                    if chunk.is_none() {
                        break;
                    }
                }
            }
        }
        Ok(Copied {
            bytes: total,
            sha256: hasher.map(|h| hex(&h.finalize())),
        })
    }
}

/// Reads the next chunk of a file (up to [`CHUNK`] bytes; empty at the end) on a blocking
/// thread, adding it to the hash.
async fn read_chunk(
    mut file: File,
    mut hasher: Option<Sha256>,
    path: PathBuf,
) -> Result<(File, Option<Sha256>, Bytes)> {
    blocking(move || {
        let mut buffer = vec![0u8; CHUNK];
        let n = read_full(&mut file, &mut buffer).map_err(|e| Error::read(&path, e))?;
        buffer.truncate(n);
        if let Some(h) = hasher.as_mut() {
            h.update(&buffer);
        }
        Ok((file, hasher, Bytes::from(buffer)))
    })
    .await
}

/// Fills `buffer` unless the reader ends first; returns the bytes read.
pub(crate) fn read_full(reader: &mut impl Read, buffer: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match reader.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs file I/O and hashing off the async executor.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .expect("a blocking file task does not panic")
}
