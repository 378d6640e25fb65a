//! Full-state checkpoints in an object store (a local directory by default).
//!
//! A checkpoint `step-N/` holds the policy and critic in the Hugging Face layout (the policy
//! with its tokenizer, loadable by transformers as it is), the AdamW moments of both, and
//! `state.json` (step, optimizer steps, dataset cursor and epoch). Its files are uploaded
//! first and the `latest` object, naming it, last: a crash while saving leaves `latest` on
//! the previous complete checkpoint, so a resume never sees half a checkpoint.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::TryStreamExt;
use grlo_model::store::block_on;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use crate::data::DatasetCursor;
use crate::error::{LearnerError, Result};

/// The training state beside the weights.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Training steps completed.
    pub step: usize,
    pub policy_optimizer_step: u64,
    pub critic_optimizer_step: u64,
    pub cursor: DatasetCursor,
    /// The run's seed: every random stream of step `s` derives from it and `s`, so the seed
    /// and the step are the whole random state.
    pub seed: u64,
}

/// Where checkpoints are kept.
pub struct CheckpointStore {
    store: Arc<dyn ObjectStore>,
    prefix: StorePath,
    display: String,
}

impl CheckpointStore {
    /// A local directory (created) or an object store URL.
    pub fn open(location: &str) -> Result<Self> {
        let (store, prefix): (Arc<dyn ObjectStore>, StorePath) = if location.contains("://") {
            let url = url_of(location)?;
            let (store, prefix) = object_store::parse_url_opts(
                &url,
                std::env::vars().filter(|(k, _)| k.starts_with("AWS_")),
            )
            .map_err(|e| error(location, e))?;
            (Arc::from(store), prefix)
        } else {
            std::fs::create_dir_all(location).map_err(|e| LearnerError::write(location, e))?;
            let root =
                std::fs::canonicalize(location).map_err(|e| LearnerError::write(location, e))?;
            let store = object_store::local::LocalFileSystem::new_with_prefix(&root)
                .map_err(|e| error(location, e))?;
            (Arc::new(store), StorePath::default())
        };
        Ok(CheckpointStore {
            store,
            prefix,
            display: location.to_string(),
        })
    }

    pub fn location(&self) -> &str {
        &self.display
    }

    /// Uploads a local checkpoint directory as `name`, then points `latest` at it.
    pub fn save(&self, name: &str, local: &Path) -> Result<()> {
        block_on(async {
            for file in files_under(local)? {
                let relative = file.strip_prefix(local).expect("under the directory");
                let key = self.key(&format!("{name}/{}", relative.to_string_lossy()));
                let bytes =
                    std::fs::read(&file).map_err(|e| error(&file.display().to_string(), e))?;
                self.store
                    .put(&key, PutPayload::from(bytes))
                    .await
                    .map_err(|e| error(&self.display, e))?;
            }
            self.store
                .put(
                    &self.key("latest"),
                    PutPayload::from(name.as_bytes().to_vec()),
                )
                .await
                .map_err(|e| error(&self.display, e))?;
            Ok(())
        })
    }

    /// The name of the newest complete checkpoint, if any.
    pub fn latest(&self) -> Result<Option<String>> {
        block_on(async {
            match self.store.get(&self.key("latest")).await {
                Ok(result) => {
                    let bytes = result.bytes().await.map_err(|e| error(&self.display, e))?;
                    Ok(Some(String::from_utf8_lossy(&bytes).trim().to_string()))
                }
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(error(&self.display, e)),
            }
        })
    }

    /// Downloads checkpoint `name` into `dest`.
    pub fn download(&self, name: &str, dest: &Path) -> Result<()> {
        block_on(async {
            let prefix = self.key(name);
            let objects: Vec<_> = self
                .store
                .list(Some(&prefix))
                .try_collect()
                .await
                .map_err(|e| error(&self.display, e))?;
            if objects.is_empty() {
                return Err(LearnerError::Checkpoint {
                    path: format!("{}/{name}", self.display),
                    message: "no files".into(),
                });
            }
            for object in objects {
                let relative: Vec<_> = object
                    .location
                    .prefix_match(&prefix)
                    .map(|parts| parts.map(|p| p.as_ref().to_string()).collect())
                    .unwrap_or_default();
                let path = relative
                    .iter()
                    .fold(dest.to_path_buf(), |p, part| p.join(part));
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| LearnerError::write(parent, e))?;
                }
                let bytes = self
                    .store
                    .get(&object.location)
                    .await
                    .map_err(|e| error(&self.display, e))?
                    .bytes()
                    .await
                    .map_err(|e| error(&self.display, e))?;
                std::fs::write(&path, &bytes).map_err(|e| LearnerError::write(&path, e))?;
            }
            Ok(())
        })
    }

    fn key(&self, relative: &str) -> StorePath {
        relative
            .split('/')
            .filter(|p| !p.is_empty())
            .fold(self.prefix.clone(), |key, part| key.join(part))
    }
}

fn url_of(location: &str) -> Result<url::Url> {
    url::Url::parse(location).map_err(|e| error(location, e))
}

fn error(location: &str, e: impl std::fmt::Display) -> LearnerError {
    LearnerError::Checkpoint {
        path: location.to_string(),
        message: e.to_string(),
    }
}

/// Every file under a directory, recursively, sorted.
fn files_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        let entries =
            std::fs::read_dir(&current).map_err(|e| error(&current.display().to_string(), e))?;
        for entry in entries {
            let path = entry
                .map_err(|e| error(&current.display().to_string(), e))?
                .path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latest_moves_only_after_a_complete_save() {
        let root = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(root.path().join("ckpt").to_str().unwrap()).unwrap();
        assert_eq!(store.latest().unwrap(), None);

        let local = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(local.path().join("policy")).unwrap();
        std::fs::write(local.path().join("policy/config.json"), b"{}").unwrap();
        std::fs::write(local.path().join("state.json"), b"{\"step\": 2}").unwrap();
        store.save("step-2", local.path()).unwrap();
        assert_eq!(store.latest().unwrap().as_deref(), Some("step-2"));

        let back = tempfile::tempdir().unwrap();
        store.download("step-2", back.path()).unwrap();
        assert_eq!(
            std::fs::read(back.path().join("policy/config.json")).unwrap(),
            b"{}"
        );
        assert_eq!(
            std::fs::read(back.path().join("state.json")).unwrap(),
            b"{\"step\": 2}"
        );
    }

    #[test]
    fn a_missing_checkpoint_is_named() {
        let root = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(root.path().to_str().unwrap()).unwrap();
        let err = store
            .download("step-9", root.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("step-9"), "{err}");
    }
}
