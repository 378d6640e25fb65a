//! The coordinator's embedded database (redb): jobs, rollout tasks, workers and every trained
//! step's metrics as JSON records, each change committed before the coordinator answers, so a
//! restart loses nothing.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::records::{JobRecord, StepRecord, TaskRecord, WorkerRecord};

const JOBS: TableDefinition<&str, &str> = TableDefinition::new("jobs");
/// Keyed by `job_id/task_id`.
const TASKS: TableDefinition<&str, &str> = TableDefinition::new("tasks");
const WORKERS: TableDefinition<&str, &str> = TableDefinition::new("workers");
const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
/// Keyed by `job_id/step` with the step zero-padded to ten digits, so a job's steps are one
/// contiguous range in step order. Not part of [`Snapshot`]: a long run has many, and they are
/// read on demand.
const STEPS: TableDefinition<&str, &str> = TableDefinition::new("steps");

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
    Step(&'a StepRecord),
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
        for table in [JOBS, TASKS, WORKERS, META, STEPS] {
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
            let mut steps = txn.open_table(STEPS).map_err(|e| self.error(e))?;
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
                    Change::Step(step) => {
                        steps
                            .insert(
                                step_key(&step.job_id, step.step).as_str(),
                                json(step).as_str(),
                            )
                            .map_err(|e| self.error(e))?;
                    }
                }
            }
        }
        txn.commit().map_err(|e| self.error(e))
    }

    /// A job's steps after `after` (0: all of them), in step order.
    pub fn steps(&self, job_id: &str, after: u64) -> Result<Vec<StepRecord>, DbError> {
        let txn = self.db.begin_read().map_err(|e| self.error(e))?;
        let table = txn.open_table(STEPS).map_err(|e| self.error(e))?;
        let start = step_key(job_id, after.saturating_add(1));
        // '0' follows '/': every key of this job sorts before `{job_id}0`, and no other job's.
        let end = format!("{job_id}0");
        let mut out = Vec::new();
        for entry in table
            .range(start.as_str()..end.as_str())
            .map_err(|e| self.error(e))?
        {
            let (key, value) = entry.map_err(|e| self.error(e))?;
            let record = serde_json::from_str(value.value())
                .map_err(|e| self.error(format!("record {}: {e}", key.value())))?;
            out.push(record);
        }
        Ok(out)
    }
}

fn step_key(job_id: &str, step: u64) -> String {
    format!("{job_id}/{step:010}")
}

fn json(value: &impl Serialize) -> String {
    serde_json::to_string(value).expect("records serialise")
}
