//! The coordinator's embedded database (redb): jobs, rollout tasks and workers as JSON
//! records, each change committed before the coordinator answers, so a restart loses nothing.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::records::{JobRecord, TaskRecord, WorkerRecord};

const JOBS: TableDefinition<&str, &str> = TableDefinition::new("jobs");
/// Keyed by `job_id/task_id`.
const TASKS: TableDefinition<&str, &str> = TableDefinition::new("tasks");
const WORKERS: TableDefinition<&str, &str> = TableDefinition::new("workers");
const META: TableDefinition<&str, &str> = TableDefinition::new("meta");

/// A database failure, naming the file.
#[derive(Debug, thiserror::Error)]
#[error("coordinator database {path}: {message}")]
pub struct DbError {
    pub path: String,
    pub message: String,
}

pub struct Db {
    db: Database,
    path: String,
}

/// Everything the database holds.
pub struct Snapshot {
    pub jobs: Vec<JobRecord>,
    pub tasks: Vec<TaskRecord>,
    pub workers: Vec<WorkerRecord>,
    pub next_id: u64,
}

/// One change to write.
pub enum Change<'a> {
    Job(&'a JobRecord),
    Task(&'a TaskRecord),
    RemoveTask { job_id: &'a str, task_id: &'a str },
    Worker(&'a WorkerRecord),
    NextId(u64),
}

impl Db {
    /// Opens (or creates) `DATA_DIR/coordinator.redb`.
    pub fn open(data_dir: &Path) -> Result<Self, DbError> {
        let path = data_dir.join("coordinator.redb");
        let display = path.display().to_string();
        let fail = |message: String| DbError {
            path: display.clone(),
            message,
        };
        std::fs::create_dir_all(data_dir).map_err(|e| fail(e.to_string()))?;
        let db = Database::create(&path).map_err(|e| fail(e.to_string()))?;
        // Make sure every table exists, so reads never fail on a fresh file.
        let txn = db.begin_write().map_err(|e| fail(e.to_string()))?;
        for table in [JOBS, TASKS, WORKERS, META] {
            txn.open_table(table).map_err(|e| fail(e.to_string()))?;
        }
        txn.commit().map_err(|e| fail(e.to_string()))?;
        Ok(Db { db, path: display })
    }

    fn error(&self, e: impl std::fmt::Display) -> DbError {
        DbError {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }

    /// Reads every record.
    pub fn load(&self) -> Result<Snapshot, DbError> {
        let txn = self.db.begin_read().map_err(|e| self.error(e))?;
        let jobs = self.read_all(&txn, JOBS)?;
        let tasks = self.read_all(&txn, TASKS)?;
        let workers = self.read_all(&txn, WORKERS)?;
        let meta = txn.open_table(META).map_err(|e| self.error(e))?;
        let next_id = meta
            .get("next_id")
            .map_err(|e| self.error(e))?
            .and_then(|v| v.value().parse().ok())
            .unwrap_or(1);
        Ok(Snapshot {
            jobs,
            tasks,
            workers,
            next_id,
        })
    }

    fn read_all<T: DeserializeOwned>(
        &self,
        txn: &redb::ReadTransaction,
        table: TableDefinition<&str, &str>,
    ) -> Result<Vec<T>, DbError> {
        let table = txn.open_table(table).map_err(|e| self.error(e))?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(|e| self.error(e))? {
            let (key, value) = entry.map_err(|e| self.error(e))?;
            let record = serde_json::from_str(value.value())
                .map_err(|e| self.error(format!("record {}: {e}", key.value())))?;
            out.push(record);
        }
        Ok(out)
    }

    /// Writes changes in one transaction.
    pub fn write(&self, changes: &[Change<'_>]) -> Result<(), DbError> {
        if changes.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin_write().map_err(|e| self.error(e))?;
        {
            let mut jobs = txn.open_table(JOBS).map_err(|e| self.error(e))?;
            let mut tasks = txn.open_table(TASKS).map_err(|e| self.error(e))?;
            let mut workers = txn.open_table(WORKERS).map_err(|e| self.error(e))?;
            let mut meta = txn.open_table(META).map_err(|e| self.error(e))?;
            for change in changes {
                match change {
                    Change::Job(job) => {
                        jobs.insert(job.id.as_str(), json(job).as_str())
                            .map_err(|e| self.error(e))?;
                    }
                    Change::Task(task) => {
                        let key = format!("{}/{}", task.job_id, task.task_id);
                        tasks
                            .insert(key.as_str(), json(task).as_str())
                            .map_err(|e| self.error(e))?;
                    }
                    Change::RemoveTask { job_id, task_id } => {
                        let key = format!("{job_id}/{task_id}");
                        tasks.remove(key.as_str()).map_err(|e| self.error(e))?;
                    }
                    Change::Worker(worker) => {
                        workers
                            .insert(worker.id.as_str(), json(worker).as_str())
                            .map_err(|e| self.error(e))?;
                    }
                    Change::NextId(id) => {
                        meta.insert("next_id", id.to_string().as_str())
                            .map_err(|e| self.error(e))?;
                    }
                }
            }
        }
        txn.commit().map_err(|e| self.error(e))
    }
}

fn json(value: &impl Serialize) -> String {
    serde_json::to_string(value).expect("records serialise")
}
