//! What the coordinator remembers, as plain records: they are what the database stores (as
//! JSON), so a restarted coordinator rebuilds its whole state from them.

use std::collections::BTreeMap;

use grlo_learner::data::DatasetCursor;
use serde::{Deserialize, Serialize};

/// Where a job is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Queued,
    Running,
    Paused,
    Succeeded,
    Failed,
    Cancelled,
    BudgetExhausted,
}

impl JobStatus {
    /// Whether the job has ended (nothing will change it any more).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobStatus::Succeeded
                | JobStatus::Failed
                | JobStatus::Cancelled
                | JobStatus::BudgetExhausted
        )
    }

    pub fn name(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Paused => "paused",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
            JobStatus::BudgetExhausted => "budget_exhausted",
        }
    }
}

/// Device-seconds a job has used, by kind of work ("generation", "reward", "training", "idle").
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub gpu_seconds: BTreeMap<String, f64>,
    pub cpu_seconds: BTreeMap<String, f64>,
    /// (time, total GPU-seconds, total CPU-seconds) samples of the last minutes, for the
    /// forecast of when the budget runs out.
    pub recent: Vec<(i64, f64, f64)>,
}

impl Usage {
    pub fn gpu_total(&self) -> f64 {
        self.gpu_seconds.values().sum()
    }

    pub fn cpu_total(&self) -> f64 {
        self.cpu_seconds.values().sum()
    }
}

/// A job and its progress.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: String,
    pub name: String,
    pub status: JobStatus,
    /// The resolved specification, as TOML.
    pub spec_toml: String,
    /// Steps trained and published.
    pub step: u64,
    pub total_steps: u64,
    /// The newest published weight version and where it is; `None` until the learner has
    /// published the initial policy (version 0).
    pub weight_version: Option<u64>,
    pub weights_location: String,
    /// Why the job failed or stopped.
    pub message: String,
    pub created_ms: i64,
    pub updated_ms: i64,
    pub last_metrics_json: String,
    /// Where the next step's prompts come from; `None` until the job starts.
    pub cursor: Option<DatasetCursor>,
    /// Rollout tasks have been created for every step up to this one.
    pub tasks_created_to_step: u64,
    pub learner: Option<String>,
    pub reward_server: Option<String>,
    /// The learner was told to write a final checkpoint and stop.
    pub stop_requested: bool,
    pub usage: Usage,
}

/// Where a rollout task is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum TaskState {
    Pending,
    Leased { worker: String, deadline_ms: i64 },
    Done,
}

/// One prompt of a task (see `PromptItem` in coordinator.proto).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskPrompt {
    pub prompt_id: u64,
    pub group: u32,
    pub seed: u64,
}

/// A unit of rollout work: some prompts of one step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub job_id: String,
    pub task_id: String,
    pub step: u64,
    /// The oldest weight version the task may be generated with (`step - 1 - staleness`).
    pub min_version: u64,
    pub prompts: Vec<TaskPrompt>,
    pub state: TaskState,
    /// Times it was leased (a re-lease after an expired deadline counts).
    pub leases: u32,
}

/// A registered worker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkerRecord {
    pub id: String,
    pub name: String,
    /// "actor", "reward_server" or "learner".
    pub role: String,
    pub address: String,
    /// (kind, count); kind "cpu" is counted in CPU-hours.
    pub accelerators: Vec<(String, u32)>,
    /// What it reported doing last.
    pub activity: String,
    pub job_id: Option<String>,
    pub weight_version: u64,
    pub last_heartbeat_ms: i64,
    pub alive: bool,
}

impl WorkerRecord {
    /// (GPUs, CPU devices) the worker counts with.
    pub fn devices(&self) -> (f64, f64) {
        let mut gpus = 0.0;
        let mut cpus = 0.0;
        for (kind, count) in &self.accelerators {
            if kind == "cpu" {
                cpus += *count as f64;
            } else {
                gpus += *count as f64;
            }
        }
        if self.accelerators.is_empty() {
            cpus = 1.0;
        }
        (gpus, cpus)
    }
}

/// One trained step of a job, kept for good so the dashboard and `grlo ctl job plot` can
/// draw the whole run (the job record keeps only the newest step's metrics).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub job_id: String,
    pub step: u64,
    /// When the learner published the step, in milliseconds since the Unix epoch.
    pub time_ms: i64,
    /// The learner's metrics.jsonl line for the step.
    pub metrics_json: String,
    /// The job's GPU-seconds spent when the step landed, and its budget (0: none).
    pub gpu_seconds_used: f64,
    pub gpu_seconds_limit: f64,
    /// The same in CPU-seconds, for CPU-only clusters (0: no CPU budget).
    #[serde(default)]
    pub cpu_seconds_used: f64,
    #[serde(default)]
    pub cpu_seconds_limit: f64,
}
