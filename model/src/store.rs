//! Model locations: a local directory, or a prefix in an object store given as a URL
//! (`file:///...`, `s3://bucket/prefix` where the build has S3 support).
//!
//! A remote model is downloaded into a local cache directory before loading, file by file,
//! each streamed to a hidden name and renamed into place; saving to a remote location uploads
//! a local directory a part at a time (see [`crate::transfer`]).

use std::path::{Path, PathBuf};

use std::sync::Arc;

use futures::TryStreamExt;
use object_store::ObjectStore;
use object_store::path::Path as StorePath;

use crate::error::{Error, Result};
use crate::transfer::Transfer;

/// Where a model (or any directory of files) lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    Local(PathBuf),
    Remote(url::Url),
}

impl Location {
    /// A string with a `scheme://` is a URL; anything else is a local path.
    pub fn parse(text: &str) -> Result<Self> {
        if text.contains("://") {
            let url = url::Url::parse(text).map_err(|e| Error::Store {
                location: text.into(),
                message: format!("not a valid URL: {e}"),
            })?;
            Ok(Location::Remote(url))
        } else {
            Ok(Location::Local(PathBuf::from(text)))
        }
    }

    /// A local directory holding the files: the directory itself, or a cache directory under
    /// `cache_root` that the remote files are downloaded into.
    pub fn materialize(&self, cache_root: &Path) -> Result<PathBuf> {
        match self {
            Location::Local(dir) => Ok(dir.clone()),
            Location::Remote(url) => {
                let dest = cache_root.join(cache_key(url.as_str()));
                block_on(download_prefix(url, &dest))?;
                Ok(dest)
            }
        }
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Local(dir) => write!(f, "{}", dir.display()),
            Location::Remote(url) => write!(f, "{url}"),
        }
    }
}

/// The default cache for downloaded models: `$GRLO_CACHE_DIR`, else the system temp dir.
pub fn default_cache_root() -> PathBuf {
    std::env::var_os("GRLO_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("grlo-cache"))
}

fn store_error(url: &url::Url, e: impl std::fmt::Display) -> Error {
    Error::Store {
        location: url.to_string(),
        message: e.to_string(),
    }
}

fn open(url: &url::Url) -> Result<(Box<dyn ObjectStore>, StorePath)> {
    open_with_options(url, &[])
}

/// Opens the object store a URL names, and the path of the URL inside it.
///
/// S3 settings come from the standard `AWS_*` environment variables, then from `options`
/// (which win): object_store's `AmazonS3Builder` keys, matched case-insensitively, so
/// `AWS_ENDPOINT` (or `AWS_ENDPOINT_URL`), `AWS_ALLOW_HTTP`, `AWS_REGION`,
/// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN` work in both places.
/// Keys a store does not know are ignored.
pub fn open_with_options(
    url: &url::Url,
    options: &[(String, String)],
) -> Result<(Box<dyn ObjectStore>, StorePath)> {
    let env = std::env::vars().filter(|(k, _)| k.starts_with("AWS_"));
    object_store::parse_url_opts(url, env.chain(options.iter().cloned()))
        .map_err(|e| store_error(url, e))
}

/// Downloads every object under the URL's prefix into `dest` (flat: models are flat
/// directories), replacing files of the same name.
pub async fn download_prefix(url: &url::Url, dest: &Path) -> Result<Vec<String>> {
    let (store, prefix) = open(url)?;
    let store: Arc<dyn ObjectStore> = Arc::from(store);
    let objects: Vec<_> = store
        .list(Some(&prefix))
        .try_collect()
        .await
        .map_err(|e| store_error(url, e))?;
    if objects.is_empty() {
        return Err(store_error(url, "no objects under this prefix"));
    }
    std::fs::create_dir_all(dest).map_err(|e| Error::write(dest, e))?;
    let transfer = Transfer::new(store, url.as_str());
    let mut names = Vec::new();
    for object in objects {
        let Some(name) = object.location.filename() else {
            continue;
        };
        let name = name.to_string();
        let target = dest.join(&name);
        let staged = dest.join(format!(".{name}.{}.partial", std::process::id()));
        let copied = transfer
            .download(&object.location, &name, &staged, false)
            .await
            .and_then(|_| std::fs::rename(&staged, &target).map_err(|e| Error::write(&target, e)));
        if let Err(e) = copied {
            let _ = std::fs::remove_file(&staged);
            return Err(e);
        }
        names.push(name);
    }
    Ok(names)
}

/// Uploads the files of a local directory (not its sub-directories) under the URL's prefix.
pub async fn upload_dir(dir: &Path, url: &url::Url) -> Result<Vec<String>> {
    let (store, prefix) = open(url)?;
    let transfer = Transfer::new(Arc::from(store), url.as_str());
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::read(dir, e))? {
        let entry = entry.map_err(|e| Error::read(dir, e))?;
        if !entry
            .file_type()
            .map_err(|e| Error::read(entry.path(), e))?
            .is_file()
        {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        transfer
            .upload(
                &entry.path(),
                &prefix.clone().join(name.as_str()),
                &name,
                false,
            )
            .await?;
        names.push(name);
    }
    Ok(names)
}

/// Runs a future to completion from synchronous code, also when called inside a tokio
/// runtime (on a separate thread with its own runtime).
pub fn block_on<F: std::future::Future + Send>(future: F) -> F::Output
where
    F::Output: Send,
{
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a tokio runtime starts")
                    .block_on(future)
            })
            .join()
            .expect("the download thread does not panic")
    })
}

/// A directory name for a URL: readable, and unique per URL.
fn cache_key(url: &str) -> String {
    let readable: String = url
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let hash = url.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    });
    let tail = &readable[readable.len().saturating_sub(60)..];
    format!("{tail}-{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_paths_and_urls_are_told_apart() {
        assert_eq!(
            Location::parse("models/x").unwrap(),
            Location::Local("models/x".into())
        );
        assert!(matches!(
            Location::parse("file:///tmp/x").unwrap(),
            Location::Remote(_)
        ));
        let err = Location::parse("s3://[bucket").unwrap_err().to_string();
        assert!(err.contains("not a valid URL"), "{err}");
    }

    #[test]
    fn a_directory_round_trips_through_an_object_store() {
        let src = tempfile::tempdir().unwrap();
        std::fs::write(src.path().join("a.json"), b"{}").unwrap();
        std::fs::write(src.path().join("b.bin"), vec![7u8; 1000]).unwrap();
        let bucket = tempfile::tempdir().unwrap();
        let url = url::Url::parse(&format!("file://{}/run/v1", bucket.path().display())).unwrap();
        std::fs::create_dir_all(bucket.path().join("run/v1")).unwrap();
        let mut uploaded = block_on(upload_dir(src.path(), &url)).unwrap();
        uploaded.sort();
        assert_eq!(uploaded, ["a.json", "b.bin"]);

        let cache = tempfile::tempdir().unwrap();
        let local = Location::Remote(url).materialize(cache.path()).unwrap();
        assert_eq!(std::fs::read(local.join("b.bin")).unwrap(), vec![7u8; 1000]);
        assert_eq!(std::fs::read(local.join("a.json")).unwrap(), b"{}");
    }

    #[test]
    fn an_empty_prefix_is_an_error_naming_it() {
        let bucket = tempfile::tempdir().unwrap();
        let url = format!("file://{}/nothing", bucket.path().display());
        let err = Location::parse(&url)
            .unwrap()
            .materialize(bucket.path())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("nothing") && err.contains("no objects"),
            "{err}"
        );
    }
}
