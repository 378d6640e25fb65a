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
use grlo_model::transfer::Transfer;
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

/// The object naming the newest complete checkpoint.
const LATEST: &str = "latest";

/// Where checkpoints are kept.
pub struct CheckpointStore {
    store: Arc<dyn ObjectStore>,
    prefix: StorePath,
    display: String,
}

impl CheckpointStore {
    /// A local directory (created) or an object store URL, with S3 settings from `AWS_*`.
    pub fn open(location: &str) -> Result<Self> {
        Self::open_with_options(location, &[])
    }

    /// Like [`CheckpointStore::open`], with object store options (such as `AWS_ENDPOINT`,
    /// `AWS_ALLOW_HTTP`) that override the environment.
    pub fn open_with_options(location: &str, options: &[(String, String)]) -> Result<Self> {
        let local = if location.contains("://") {
            let url = url::Url::parse(location).map_err(|e| error(location, e))?;
            if url.scheme() == "file" {
                Some(
                    url.to_file_path()
                        .map_err(|()| error(location, "not a local file path"))?,
                )
            } else {
                let (store, prefix) = grlo_model::store::open_with_options(&url, options)?;
                return Ok(CheckpointStore {
                    store: Arc::from(store),
                    prefix,
                    display: location.to_string(),
                });
            }
        } else {
            Some(PathBuf::from(location))
        };
        let dir = local.expect("a local directory");
        std::fs::create_dir_all(&dir).map_err(|e| LearnerError::write(&dir, e))?;
        let root = std::fs::canonicalize(&dir).map_err(|e| LearnerError::write(&dir, e))?;
        // Durable writes (a checkpoint must survive a crash once `latest` names it), and
        // deleting a checkpoint's last file removes its directories.
        let store = object_store::local::LocalFileSystem::new_with_prefix(&root)
            .map_err(|e| error(location, e))?
            .with_fsync(true)
            .with_automatic_cleanup(true);
        Ok(CheckpointStore {
            store: Arc::new(store),
            prefix: StorePath::default(),
            display: location.to_string(),
        })
    }

    pub fn location(&self) -> &str {
        &self.display
    }

    fn transfer(&self) -> Transfer {
        Transfer::new(self.store.clone(), self.display.clone())
    }

    /// Uploads a local checkpoint directory as `name`, a file at a time and each file a part
    /// at a time, then points `latest` at it. A failure leaves `latest` where it was.
    pub fn save(&self, name: &str, local: &Path) -> Result<()> {
        let files = files_under(local)?;
        block_on(async {
            // Files of an earlier attempt at this name that this one does not overwrite
            // (never those of the checkpoint `latest` names).
            if self.latest_async().await?.as_deref() != Some(name) {
                self.remove_async(name).await?;
            }
            let transfer = self.transfer();
            for file in files {
                let relative = file
                    .strip_prefix(local)
                    .expect("under the directory")
                    .to_string_lossy()
                    .into_owned();
                let relative = format!("{name}/{relative}");
                transfer
                    .upload(&file, &self.key(&relative), &relative, false)
                    .await?;
            }
            self.store
                .put(
                    &self.key(LATEST),
                    PutPayload::from(name.as_bytes().to_vec()),
                )
                .await
                .map_err(|e| error(&self.display, format!("writing {LATEST}: {e}")))?;
            Ok(())
        })
    }

    /// The name of the newest complete checkpoint, if any.
    pub fn latest(&self) -> Result<Option<String>> {
        block_on(self.latest_async())
    }

    async fn latest_async(&self) -> Result<Option<String>> {
        match self.store.get(&self.key(LATEST)).await {
            Ok(result) => {
                let bytes = result.bytes().await.map_err(|e| error(&self.display, e))?;
                let name = String::from_utf8_lossy(&bytes).trim().to_string();
                // The name becomes a path (the resume directory, the keys read): only a
                // checkpoint's own `step-N` may come back from the store.
                let step = name
                    .strip_prefix("step-")
                    .and_then(|n| n.parse::<u64>().ok());
                if step.is_none_or(|step| format!("step-{step}") != name) {
                    return Err(error(
                        &self.display,
                        format!("{LATEST} names {name:?}, which is not a checkpoint `step-N`"),
                    ));
                }
                Ok(Some(name))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(error(&self.display, e)),
        }
    }

    /// The checkpoints `step-N` in the store (complete or not), oldest first.
    pub fn checkpoints(&self) -> Result<Vec<String>> {
        block_on(self.checkpoints_async())
    }

    async fn checkpoints_async(&self) -> Result<Vec<String>> {
        let listed = self
            .store
            .list_with_delimiter(Some(&self.prefix))
            .await
            .map_err(|e| error(&self.display, e))?;
        let mut steps: Vec<(u64, String)> = listed
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_string))
            .filter_map(|name| Some((name.strip_prefix("step-")?.parse().ok()?, name)))
            .collect();
        steps.sort();
        Ok(steps.into_iter().map(|(_, name)| name).collect())
    }

    /// Deletes the oldest checkpoints beyond the newest `keep` (0 keeps all), never the one
    /// `latest` names. Returns the names deleted.
    pub fn prune(&self, keep: usize) -> Result<Vec<String>> {
        if keep == 0 {
            return Ok(Vec::new());
        }
        block_on(async {
            let latest = self.latest_async().await?;
            let all = self.checkpoints_async().await?;
            let old = all.len().saturating_sub(keep);
            let mut removed = Vec::new();
            for name in &all[..old] {
                if latest.as_deref() == Some(name.as_str()) {
                    continue;
                }
                self.remove_async(name).await?;
                removed.push(name.clone());
            }
            Ok(removed)
        })
    }

    /// Deletes every object of checkpoint `name`, `state.json` first (without it a
    /// half-deleted checkpoint is never taken for a whole one).
    async fn remove_async(&self, name: &str) -> Result<()> {
        let mut objects: Vec<StorePath> = self
            .store
            .list(Some(&self.key(name)))
            .map_ok(|meta| meta.location)
            .try_collect()
            .await
            .map_err(|e| error(&self.display, e))?;
        objects.sort_by_key(|o| o.filename() != Some("state.json"));
        for object in objects {
            match self.store.delete(&object).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => {
                    return Err(error(&self.display, format!("deleting {object}: {e}")));
                }
            }
        }
        Ok(())
    }

    /// Downloads checkpoint `name` into `dest`, streaming each file to disk.
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
            let transfer = self.transfer();
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
                let shown = format!("{name}/{}", relative.join("/"));
                transfer
                    .download(&object.location, &shown, &path, false)
                    .await?;
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

    fn save_step(store: &CheckpointStore, step: usize) {
        let local = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(local.path().join("policy")).unwrap();
        std::fs::write(
            local.path().join("policy/model.safetensors"),
            [step as u8; 9],
        )
        .unwrap();
        std::fs::write(
            local.path().join("state.json"),
            format!("{{\"step\": {step}}}"),
        )
        .unwrap();
        store.save(&format!("step-{step}"), local.path()).unwrap();
    }

    #[test]
    fn pruning_keeps_the_newest_and_never_the_latest() {
        let root = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(root.path().to_str().unwrap()).unwrap();
        for step in [2, 4, 10, 6] {
            save_step(&store, step);
        }
        // Not a checkpoint: left alone.
        std::fs::create_dir_all(root.path().join("weights/v3")).unwrap();
        std::fs::write(root.path().join("weights/v3/manifest.json"), b"{}").unwrap();
        assert_eq!(
            store.checkpoints().unwrap(),
            ["step-2", "step-4", "step-6", "step-10"]
        );
        assert_eq!(store.prune(0).unwrap(), Vec::<String>::new());
        // `latest` is step-6, not the highest step: it stays, and two others with it.
        assert_eq!(store.prune(2).unwrap(), ["step-2", "step-4"]);
        assert_eq!(store.checkpoints().unwrap(), ["step-6", "step-10"]);
        assert_eq!(store.prune(1).unwrap(), Vec::<String>::new());
        assert_eq!(store.latest().unwrap().as_deref(), Some("step-6"));
        assert!(
            !root.path().join("step-2").exists(),
            "its directory is gone too"
        );
        assert!(root.path().join("weights/v3/manifest.json").is_file());
    }

    #[test]
    fn a_save_over_a_broken_attempt_keeps_none_of_its_files() {
        let root = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(root.path().to_str().unwrap()).unwrap();
        save_step(&store, 1);
        std::fs::create_dir_all(root.path().join("step-2/critic")).unwrap();
        std::fs::write(root.path().join("step-2/critic/stale.bin"), b"x").unwrap();
        save_step(&store, 2);
        assert!(!root.path().join("step-2/critic").exists());
        assert_eq!(
            std::fs::read(root.path().join("step-2/policy/model.safetensors")).unwrap(),
            [2u8; 9]
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

    #[test]
    fn a_latest_that_is_not_a_step_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(root.path().to_str().unwrap()).unwrap();
        for hostile in [
            "../..",
            "/etc",
            "step-1/../../x",
            "step-01",
            "step-",
            "latest",
        ] {
            std::fs::write(root.path().join(LATEST), hostile).unwrap();
            let message = store.latest().unwrap_err().to_string();
            assert!(
                message.contains("not a checkpoint `step-N`") && message.contains(hostile),
                "{hostile}: {message}"
            );
        }
        std::fs::write(root.path().join(LATEST), "step-12\n").unwrap();
        assert_eq!(store.latest().unwrap().as_deref(), Some("step-12"));
    }
}
