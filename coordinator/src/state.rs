//! The coordinator's state and every rule that changes it: job life cycles, worker
//! assignment, rollout-task leases, weight versions and budget accounting.
//!
//! Everything here is synchronous and takes the current time as an argument, so the rules are
//! tested without a clock or a network; one owner thread runs it (see `lib.rs`) and every
//! change is committed to the database before the caller hears back.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use grlo_learner::TrainConfig;
use grlo_learner::data::DatasetCursor;
use grlo_learner::trainer::{Dataset, load_dataset, rollout_seed};
use grlo_model::Tokenizer;
use grlo_proto::status::Failure;
use grlo_proto::v1;

use crate::db::{Change, Db, DbError};
use crate::records::{
    JobRecord, JobStatus, TaskPrompt, TaskRecord, TaskState, Usage, WorkerRecord,
};

/// A refusal: the kind (for the gRPC code) and a message for the caller.
pub type Refusal = (Failure, String);
pub type Outcome<T> = Result<T, Refusal>;

fn refuse<T>(failure: Failure, message: impl Into<String>) -> Outcome<T> {
    Err((failure, message.into()))
}

fn internal(e: impl std::fmt::Display) -> Refusal {
    (Failure::Internal, e.to_string())
}

/// Timing settings.
#[derive(Clone, Debug)]
pub struct Settings {
    pub heartbeat_interval_ms: u64,
    /// How long an actor holds a rollout task before it goes to another.
    pub lease_ms: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            heartbeat_interval_ms: 1000,
            lease_ms: 120_000,
        }
    }
}

/// A job's configuration and prompts, derived from its spec (not persisted: rebuilt on demand).
struct JobData {
    config: TrainConfig,
    dataset: Dataset,
}

/// What a heartbeat tells a worker.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HeartbeatOutcome {
    pub assignment: Option<v1::Assignment>,
    pub stop: bool,
    pub reregister: bool,
}

/// A change people watching a job should hear about.
#[derive(Clone, Debug)]
pub struct JobEvent {
    pub job: JobRecord,
    pub step_metrics_json: String,
}

pub struct State {
    db: Db,
    settings: Settings,
    jobs: BTreeMap<String, JobRecord>,
    tasks: BTreeMap<String, BTreeMap<String, TaskRecord>>,
    workers: BTreeMap<String, WorkerRecord>,
    data: HashMap<String, Arc<JobData>>,
    next_id: u64,
    /// Events since the owner last drained them.
    pub events: Vec<JobEvent>,
}

impl State {
    /// Opens the database in `data_dir` and rebuilds the state from it. Workers count as away
    /// until they heartbeat again.
    pub fn open(data_dir: &Path, settings: Settings) -> Result<Self, DbError> {
        let db = Db::open(data_dir)?;
        let snapshot = db.load()?;
        let mut tasks: BTreeMap<String, BTreeMap<String, TaskRecord>> = BTreeMap::new();
        for task in snapshot.tasks {
            tasks
                .entry(task.job_id.clone())
                .or_default()
                .insert(task.task_id.clone(), task);
        }
        let workers = snapshot
            .workers
            .into_iter()
            .map(|mut w| {
                w.alive = false;
                (w.id.clone(), w)
            })
            .collect();
        Ok(State {
            db,
            settings,
            jobs: snapshot
                .jobs
                .into_iter()
                .map(|j| (j.id.clone(), j))
                .collect(),
            tasks,
            workers,
            data: HashMap::new(),
            next_id: snapshot.next_id,
            events: Vec::new(),
        })
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    fn new_id(&mut self, prefix: &str) -> Outcome<String> {
        let id = format!("{prefix}-{}", self.next_id);
        self.next_id += 1;
        self.db
            .write(&[Change::NextId(self.next_id)])
            .map_err(internal)?;
        Ok(id)
    }

    fn save_job(
        &mut self,
        id: &str,
        now: i64,
        event_metrics: Option<String>,
    ) -> Outcome<JobRecord> {
        let job = self.jobs.get_mut(id).expect("a known job");
        job.updated_ms = now;
        self.db.write(&[Change::Job(job)]).map_err(internal)?;
        let job = job.clone();
        self.events.push(JobEvent {
            job: job.clone(),
            step_metrics_json: event_metrics.unwrap_or_default(),
        });
        Ok(job)
    }

    fn save_worker(&self, id: &str) -> Outcome<()> {
        self.db
            .write(&[Change::Worker(&self.workers[id])])
            .map_err(internal)
    }

    fn save_task(&self, job_id: &str, task_id: &str) -> Outcome<()> {
        self.db
            .write(&[Change::Task(&self.tasks[job_id][task_id])])
            .map_err(internal)
    }

    // ----- jobs -----

    /// Checks a job spec (every problem listed) and queues the job.
    pub fn submit_job(&mut self, spec_toml: &str, now: i64) -> Outcome<JobRecord> {
        let config = TrainConfig::from_toml(spec_toml, "the job spec", Path::new("."))
            .map_err(|e| (Failure::InvalidArgument, e.to_string()))?;
        let id = self.new_id("job")?;
        let name = if config.job.name.is_empty() {
            id.clone()
        } else {
            config.job.name.clone()
        };
        let spec_toml = toml::to_string_pretty(&config).map_err(internal)?;
        let job = JobRecord {
            id: id.clone(),
            name,
            status: JobStatus::Queued,
            spec_toml,
            step: 0,
            total_steps: 0,
            weight_version: None,
            weights_location: String::new(),
            message: String::new(),
            created_ms: now,
            updated_ms: now,
            last_metrics_json: String::new(),
            cursor: None,
            tasks_created_to_step: 0,
            learner: None,
            reward_server: None,
            stop_requested: false,
            usage: Usage::default(),
        };
        self.jobs.insert(id.clone(), job);
        let job = self.save_job(&id, now, None)?;
        self.schedule(now);
        Ok(job)
    }

    pub fn job(&self, id: &str) -> Outcome<JobRecord> {
        self.jobs.get(id).cloned().ok_or_else(|| {
            (
                Failure::NotFound,
                format!("no job {id} (grlo ctl job list shows the jobs)"),
            )
        })
    }

    pub fn jobs(&self) -> Vec<JobRecord> {
        self.jobs.values().cloned().collect()
    }

    /// Ends a job by request: the learner writes a final checkpoint.
    pub fn cancel_job(&mut self, id: &str, now: i64) -> Outcome<JobRecord> {
        let job = self.job(id)?;
        if job.status.is_final() {
            return refuse(
                Failure::FailedPrecondition,
                format!("job {id} has already ended ({})", job.status.name()),
            );
        }
        self.end_job(id, JobStatus::Cancelled, "cancelled by request", now)
    }

    pub fn pause_job(&mut self, id: &str, now: i64) -> Outcome<JobRecord> {
        let job = self.job(id)?;
        match job.status {
            JobStatus::Running | JobStatus::Queued => {
                self.jobs.get_mut(id).expect("known").status = JobStatus::Paused;
                self.save_job(id, now, None)
            }
            JobStatus::Paused => Ok(job),
            other => refuse(
                Failure::FailedPrecondition,
                format!("job {id} is {} and cannot be paused", other.name()),
            ),
        }
    }

    pub fn resume_job(&mut self, id: &str, now: i64) -> Outcome<JobRecord> {
        let job = self.job(id)?;
        match job.status {
            JobStatus::Paused => {
                let running = job.learner.is_some();
                self.jobs.get_mut(id).expect("known").status = if running {
                    JobStatus::Running
                } else {
                    JobStatus::Queued
                };
                let job = self.save_job(id, now, None)?;
                self.schedule(now);
                Ok(job)
            }
            JobStatus::Running | JobStatus::Queued => Ok(job),
            other => refuse(
                Failure::FailedPrecondition,
                format!("job {id} is {} and cannot be resumed", other.name()),
            ),
        }
    }

    /// Marks a job as ending: no more tasks; its learner is told to checkpoint and stop.
    fn end_job(
        &mut self,
        id: &str,
        status: JobStatus,
        message: &str,
        now: i64,
    ) -> Outcome<JobRecord> {
        let job = self.jobs.get_mut(id).expect("known");
        job.status = status;
        job.message = message.to_string();
        job.stop_requested = job.learner.is_some();
        let keep_learner = job.stop_requested;
        // Actors and the reward server stop working for the job (and accruing) now; a learner
        // that is told to stop stays until it has published its final checkpoint.
        self.release_workers(id, keep_learner)?;
        self.drop_pending_tasks(id)?;
        self.save_job(id, now, None)
    }

    fn drop_pending_tasks(&mut self, id: &str) -> Outcome<()> {
        let Some(tasks) = self.tasks.remove(id) else {
            return Ok(());
        };
        let changes: Vec<Change<'_>> = tasks
            .values()
            .map(|t| Change::RemoveTask {
                job_id: &t.job_id,
                task_id: &t.task_id,
            })
            .collect();
        self.db.write(&changes).map_err(internal)
    }

    /// Frees the job's workers for other jobs (all but the learner when `keep_learner`).
    fn release_workers(&mut self, job_id: &str, keep_learner: bool) -> Outcome<()> {
        let ids: Vec<String> = self
            .workers
            .values()
            .filter(|w| w.job_id.as_deref() == Some(job_id))
            .filter(|w| !(keep_learner && w.role == "learner"))
            .map(|w| w.id.clone())
            .collect();
        for id in ids {
            self.workers.get_mut(&id).expect("known").job_id = None;
            self.save_worker(&id)?;
        }
        if let Some(job) = self.jobs.get_mut(job_id) {
            if !keep_learner {
                job.learner = None;
            }
            job.reward_server = None;
        }
        Ok(())
    }

    // ----- workers -----

    pub fn register_worker(
        &mut self,
        request: &v1::RegisterWorkerRequest,
        now: i64,
    ) -> Outcome<String> {
        let role = match v1::Role::try_from(request.role) {
            Ok(v1::Role::Actor) => "actor",
            Ok(v1::Role::RewardServer) => "reward_server",
            Ok(v1::Role::Learner) => "learner",
            _ => {
                return refuse(
                    Failure::InvalidArgument,
                    "role must be actor, reward server or learner",
                );
            }
        };
        if role != "actor" && request.address.is_empty() {
            return refuse(
                Failure::InvalidArgument,
                format!("a {role} must give the address it serves on"),
            );
        }
        let known = !request.previous_worker_id.is_empty()
            && self
                .workers
                .get(&request.previous_worker_id)
                .is_some_and(|w| w.role == role);
        let id = if known {
            request.previous_worker_id.clone()
        } else {
            self.new_id(role)?
        };
        let previous_job = self.workers.get(&id).and_then(|w| w.job_id.clone());
        let worker = WorkerRecord {
            id: id.clone(),
            name: if request.name.is_empty() {
                id.clone()
            } else {
                request.name.clone()
            },
            role: role.to_string(),
            address: request.address.clone(),
            accelerators: request
                .accelerators
                .iter()
                .map(|a| (a.kind.clone(), a.count))
                .collect(),
            activity: "idle".into(),
            job_id: previous_job,
            weight_version: 0,
            last_heartbeat_ms: now,
            alive: true,
        };
        self.workers.insert(id.clone(), worker);
        self.save_worker(&id)?;
        self.schedule(now);
        Ok(id)
    }

    pub fn workers(&self, now: i64) -> Vec<WorkerRecord> {
        let dead_after = self.dead_after();
        self.workers
            .values()
            .map(|w| {
                let mut w = w.clone();
                w.alive = w.alive && now - w.last_heartbeat_ms <= dead_after;
                w
            })
            .collect()
    }

    fn dead_after(&self) -> i64 {
        3 * self.settings.heartbeat_interval_ms as i64
    }

    /// Records a heartbeat: accrues the worker's device time to its job, enforces the job's
    /// budget, and tells the worker its assignment.
    pub fn heartbeat(
        &mut self,
        request: &v1::HeartbeatRequest,
        now: i64,
    ) -> Outcome<HeartbeatOutcome> {
        self.reap(now)?;
        let Some(worker) = self.workers.get_mut(&request.worker_id) else {
            return Ok(HeartbeatOutcome {
                reregister: true,
                ..HeartbeatOutcome::default()
            });
        };
        let elapsed = (now - worker.last_heartbeat_ms)
            .clamp(0, 3 * self.settings.heartbeat_interval_ms as i64);
        let activity = match v1::Activity::try_from(request.activity) {
            Ok(v1::Activity::Generating) => "generation",
            Ok(v1::Activity::Scoring) => "reward",
            Ok(v1::Activity::Training) => "training",
            _ => "idle",
        };
        worker.activity = activity.to_string();
        worker.weight_version = request.weight_version;
        worker.last_heartbeat_ms = now;
        worker.alive = true;
        let (gpus, cpus) = worker.devices();
        let job_id = worker.job_id.clone();
        self.save_worker(&request.worker_id)?;

        if let Some(job_id) = &job_id {
            self.accrue(job_id, activity, elapsed as f64 / 1000.0, gpus, cpus, now)?;
        }
        self.schedule(now);
        Ok(self.outcome_for(&request.worker_id))
    }

    fn outcome_for(&self, worker_id: &str) -> HeartbeatOutcome {
        let worker = &self.workers[worker_id];
        let Some(job) = worker.job_id.as_ref().and_then(|id| self.jobs.get(id)) else {
            return HeartbeatOutcome::default();
        };
        let address_of = |id: &Option<String>| {
            id.as_ref()
                .and_then(|id| self.workers.get(id))
                .map(|w| w.address.clone())
                .unwrap_or_default()
        };
        HeartbeatOutcome {
            assignment: Some(v1::Assignment {
                job_id: job.id.clone(),
                spec_toml: job.spec_toml.clone(),
                reward_server_address: address_of(&job.reward_server),
                learner_address: address_of(&job.learner),
            }),
            stop: worker.role == "learner" && job.stop_requested,
            reregister: false,
        }
    }

    /// Adds device time to a job's usage and ends the job once a budget is spent.
    fn accrue(
        &mut self,
        job_id: &str,
        activity: &str,
        seconds: f64,
        gpus: f64,
        cpus: f64,
        now: i64,
    ) -> Outcome<()> {
        let Some(job) = self.jobs.get_mut(job_id) else {
            return Ok(());
        };
        if job.status.is_final() && !job.stop_requested {
            return Ok(());
        }
        if seconds > 0.0 {
            *job.usage
                .gpu_seconds
                .entry(activity.to_string())
                .or_default() += seconds * gpus;
            *job.usage
                .cpu_seconds
                .entry(activity.to_string())
                .or_default() += seconds * cpus;
            let (gpu, cpu) = (job.usage.gpu_total(), job.usage.cpu_total());
            job.usage.recent.push((now, gpu, cpu));
            job.usage.recent.retain(|(t, _, _)| now - t <= 120_000);
        }
        let config: TrainConfig = toml::from_str(&job.spec_toml).map_err(internal)?;
        // Stop a heartbeat early rather than late: the job ends once the next interval's burn
        // (every assigned worker's devices for one interval) would reach the budget.
        let (gpu_burn, cpu_burn) = self.burn_per_interval(job_id);
        let job = &self.jobs[job_id];
        let over_gpu = config.job.gpu_hours > 0.0
            && job.usage.gpu_total() + gpu_burn >= config.job.gpu_hours * 3600.0;
        let over_cpu = config.job.cpu_hours > 0.0
            && job.usage.cpu_total() + cpu_burn >= config.job.cpu_hours * 3600.0;
        if (over_gpu || over_cpu) && !job.status.is_final() {
            let which = if over_gpu { "GPU" } else { "CPU" };
            tracing::warn!(job = job_id, which, "budget spent, stopping the job");
            self.end_job(
                job_id,
                JobStatus::BudgetExhausted,
                &format!("the {which}-hour budget is spent"),
                now,
            )?;
        } else {
            self.db
                .write(&[Change::Job(&self.jobs[job_id])])
                .map_err(internal)?;
        }
        Ok(())
    }

    /// Completed tasks of steps the learner has not trained go back to the pool.
    fn rerun_untrained_tasks(&mut self, job_id: &str) -> Outcome<()> {
        let trained = self.jobs[job_id].step;
        let mut rerun = Vec::new();
        if let Some(tasks) = self.tasks.get_mut(job_id) {
            for task in tasks.values_mut() {
                if task.step > trained && task.state == TaskState::Done {
                    task.state = TaskState::Pending;
                    rerun.push(task.task_id.clone());
                }
            }
        }
        for task_id in rerun {
            self.save_task(job_id, &task_id)?;
        }
        Ok(())
    }

    /// Device-seconds (GPU, CPU) the job's workers spend in one heartbeat interval.
    fn burn_per_interval(&self, job_id: &str) -> (f64, f64) {
        let interval_s = self.settings.heartbeat_interval_ms as f64 / 1000.0;
        self.workers
            .values()
            .filter(|w| w.alive && w.job_id.as_deref() == Some(job_id))
            .map(|w| w.devices())
            .fold((0.0, 0.0), |(g, c), (wg, wc)| {
                (g + wg * interval_s, c + wc * interval_s)
            })
    }

    /// Workers silent for three heartbeat intervals are away: their leases go back to the pool.
    fn reap(&mut self, now: i64) -> Outcome<()> {
        let dead_after = self.dead_after();
        let dead: Vec<String> = self
            .workers
            .values()
            .filter(|w| w.alive && now - w.last_heartbeat_ms > dead_after)
            .map(|w| w.id.clone())
            .collect();
        for id in dead {
            tracing::warn!(worker = %id, "worker stopped heartbeating");
            self.workers.get_mut(&id).expect("known").alive = false;
            self.save_worker(&id)?;
        }
        // Leases of away workers and leases past their deadline.
        let mut returned = Vec::new();
        for (job_id, tasks) in &mut self.tasks {
            for task in tasks.values_mut() {
                if let TaskState::Leased {
                    worker,
                    deadline_ms,
                } = &task.state
                {
                    let away = self.workers.get(worker).is_none_or(|w| !w.alive);
                    if away || *deadline_ms < now {
                        task.state = TaskState::Pending;
                        returned.push((job_id.clone(), task.task_id.clone()));
                    }
                }
            }
        }
        for (job_id, task_id) in returned {
            tracing::info!(job = %job_id, task = %task_id, "lease returned to the pool");
            self.save_task(&job_id, &task_id)?;
        }
        Ok(())
    }

    /// Starts queued jobs whose roles can be filled and assigns free actors to running jobs.
    fn schedule(&mut self, now: i64) {
        let free = |workers: &BTreeMap<String, WorkerRecord>, role: &str| {
            workers
                .values()
                .find(|w| w.alive && w.role == role && w.job_id.is_none())
                .map(|w| w.id.clone())
        };
        let job_ids: Vec<String> = self.jobs.keys().cloned().collect();
        for job_id in job_ids {
            let job = &self.jobs[&job_id];
            if job.status.is_final() || job.status == JobStatus::Paused && job.learner.is_none() {
                continue;
            }
            // A job keeps its learner and reward server while they are away and no other one is
            // free (they come back after a restart under their old id); a job whose learner or
            // reward server is gone takes a free one of the role (a restarted process that
            // registered afresh, or a spare).
            for role in ["learner", "reward_server"] {
                let job = &self.jobs[&job_id];
                let current = if role == "learner" {
                    job.learner.clone()
                } else {
                    job.reward_server.clone()
                };
                let (needs, away) = match &current {
                    None => (true, None),
                    Some(id) => match self.workers.get(id) {
                        Some(w) if w.job_id.as_deref() != Some(job_id.as_str()) => (true, None),
                        Some(w) => (!w.alive, (!w.alive).then(|| id.clone())),
                        None => (true, None),
                    },
                };
                if needs && let Some(worker) = free(&self.workers, role) {
                    if let Some(away) = away {
                        tracing::warn!(job = %job_id, old = %away, new = %worker, role, "replacing a worker that is away");
                        self.workers.get_mut(&away).expect("known").job_id = None;
                        let _ = self.save_worker(&away);
                        if role == "learner" {
                            // Trajectories the old learner acknowledged but did not train on may
                            // be gone with it: their tasks run again (a learner that kept its
                            // spool stores each task once and ignores the repeat).
                            let _ = self.rerun_untrained_tasks(&job_id);
                        }
                    }
                    self.workers.get_mut(&worker).expect("known").job_id = Some(job_id.clone());
                    let _ = self.save_worker(&worker);
                    let job = self.jobs.get_mut(&job_id).expect("known");
                    if role == "learner" {
                        job.learner = Some(worker);
                    } else {
                        job.reward_server = Some(worker);
                    }
                }
            }
            let job = &self.jobs[&job_id];
            if job.status == JobStatus::Queued
                && job.learner.is_some()
                && job.reward_server.is_some()
                && let Err((_, message)) = self.start_job(&job_id, now)
            {
                let job = self.jobs.get_mut(&job_id).expect("known");
                job.status = JobStatus::Failed;
                job.message = message;
                let _ = self.release_workers(&job_id, false);
                let _ = self.save_job(&job_id, now, None);
            }
        }
        // Free actors go to running jobs, the one with the fewest actors first.
        let running: Vec<String> = self
            .jobs
            .values()
            .filter(|j| matches!(j.status, JobStatus::Running | JobStatus::Paused))
            .map(|j| j.id.clone())
            .collect();
        if running.is_empty() {
            return;
        }
        let idle_actors: Vec<String> = self
            .workers
            .values()
            .filter(|w| {
                w.alive
                    && w.role == "actor"
                    && w.job_id.as_ref().is_none_or(|j| !running.contains(j))
            })
            .map(|w| w.id.clone())
            .collect();
        for actor in idle_actors {
            let target = running
                .iter()
                .min_by_key(|j| {
                    self.workers
                        .values()
                        .filter(|w| w.role == "actor" && w.job_id.as_deref() == Some(j.as_str()))
                        .count()
                })
                .expect("a running job")
                .clone();
            self.workers.get_mut(&actor).expect("known").job_id = Some(target);
            let _ = self.save_worker(&actor);
        }
    }

    /// Loads a job's prompts and makes it running (its learner will publish version 0).
    fn start_job(&mut self, job_id: &str, now: i64) -> Outcome<()> {
        let data = self.job_data(job_id)?;
        let rollout = &data.config.rollout;
        let cursor = DatasetCursor::new(
            data.dataset.records.len(),
            data.config.data.shuffle,
            data.config.trainer.seed,
        );
        let per_epoch = cursor.steps_per_epoch(rollout.batch_size) as u64;
        if per_epoch == 0 {
            return refuse(
                Failure::InvalidArgument,
                format!(
                    "{} prompts are fewer than one batch (rollout.batch_size = {})",
                    data.dataset.records.len(),
                    rollout.batch_size
                ),
            );
        }
        let mut total = per_epoch * data.config.trainer.total_epochs as u64;
        if let Some(cap) = data.config.trainer.total_steps {
            total = total.min(cap as u64);
        }
        let job = self.jobs.get_mut(job_id).expect("known");
        job.cursor = Some(cursor);
        job.total_steps = total;
        job.status = JobStatus::Running;
        self.save_job(job_id, now, None)?;
        tracing::info!(
            job = job_id,
            prompts = data.dataset.records.len(),
            steps = total,
            "job started"
        );
        Ok(())
    }

    /// The job's configuration and prompts, loaded (with the policy's tokenizer) on first use.
    fn job_data(&mut self, job_id: &str) -> Outcome<Arc<JobData>> {
        if let Some(data) = self.data.get(job_id) {
            return Ok(data.clone());
        }
        let spec = &self.jobs[job_id].spec_toml;
        let config: TrainConfig = toml::from_str(spec).map_err(internal)?;
        let dir = grlo_model::store::Location::parse(&config.model.policy)
            .and_then(|l| l.materialize(&grlo_model::store::default_cache_root()))
            .map_err(|e| {
                (
                    Failure::InvalidArgument,
                    format!("policy {}: {e}", config.model.policy),
                )
            })?;
        let tokenizer = Tokenizer::from_dir(&dir)
            .map_err(|e| (Failure::InvalidArgument, format!("policy tokenizer: {e}")))?;
        let dataset = load_dataset(&config, &tokenizer)
            .map_err(|e| (Failure::InvalidArgument, e.to_string()))?;
        let data = Arc::new(JobData { config, dataset });
        self.data.insert(job_id.to_string(), data.clone());
        Ok(data)
    }

    // ----- rollout tasks -----

    /// Creates the tasks of every step the published version allows: step `s` may run once
    /// version `s - 1 - staleness` exists.
    fn create_tasks(&mut self, job_id: &str, now: i64) -> Outcome<()> {
        let data = self.job_data(job_id)?;
        let staleness = data.config.job.staleness;
        let rollout = &data.config.rollout;
        let per_task = match data.config.job.prompts_per_task {
            0 => (rollout.max_batch_rows / rollout.n).max(1),
            n => n,
        };
        let job = self.jobs.get_mut(job_id).expect("known");
        let Some(version) = job.weight_version else {
            return Ok(());
        };
        let last_allowed = (version + 1 + staleness).min(job.total_steps);
        let mut created = Vec::new();
        while job.tasks_created_to_step < last_allowed && job.status == JobStatus::Running {
            let step = job.tasks_created_to_step + 1;
            let cursor = job.cursor.as_mut().expect("a running job has a cursor");
            let (indices, _epoch) = cursor.next_batch(rollout.batch_size);
            for (index, chunk) in indices.chunks(per_task).enumerate() {
                let prompts = chunk
                    .iter()
                    .enumerate()
                    .map(|(k, &prompt)| TaskPrompt {
                        prompt_id: prompt as u64,
                        group: (index * per_task + k) as u32,
                        seed: rollout_seed(data.config.trainer.seed, step - 1, prompt as u64),
                    })
                    .collect();
                created.push(TaskRecord {
                    job_id: job_id.to_string(),
                    task_id: format!("{step}-{index}"),
                    step,
                    min_version: (step - 1).saturating_sub(staleness),
                    prompts,
                    state: TaskState::Pending,
                    leases: 0,
                });
            }
            job.tasks_created_to_step = step;
        }
        if created.is_empty() {
            return Ok(());
        }
        let mut changes: Vec<Change<'_>> = created.iter().map(Change::Task).collect();
        changes.push(Change::Job(&self.jobs[job_id]));
        self.db.write(&changes).map_err(internal)?;
        let tasks = self.tasks.entry(job_id.to_string()).or_default();
        for task in created {
            tasks.insert(task.task_id.clone(), task);
        }
        let _ = now;
        Ok(())
    }

    /// Leases the oldest pending task an actor's job can run now.
    pub fn lease_task(&mut self, worker_id: &str, now: i64) -> Outcome<Option<v1::RolloutTask>> {
        self.reap(now)?;
        let Some(worker) = self.workers.get(worker_id) else {
            return refuse(
                Failure::NotFound,
                format!("unknown worker {worker_id}: register again"),
            );
        };
        if worker.role != "actor" {
            return refuse(
                Failure::FailedPrecondition,
                format!("worker {worker_id} is a {}, not an actor", worker.role),
            );
        }
        if worker.job_id.is_none() {
            self.schedule(now);
        }
        let Some(job_id) = self.workers[worker_id].job_id.clone() else {
            return Ok(None);
        };
        let job = &self.jobs[&job_id];
        let Some(version) = job.weight_version else {
            return Ok(None);
        };
        if job.status != JobStatus::Running {
            return Ok(None);
        }
        let Some(tasks) = self.tasks.get_mut(&job_id) else {
            return Ok(None);
        };
        let next = tasks
            .values_mut()
            .filter(|t| t.state == TaskState::Pending && t.min_version <= version)
            .min_by_key(|t| {
                (
                    t.step,
                    t.task_id
                        .split('-')
                        .nth(1)
                        .and_then(|i| i.parse::<u64>().ok()),
                )
            });
        let Some(task) = next else {
            return Ok(None);
        };
        task.state = TaskState::Leased {
            worker: worker_id.to_string(),
            deadline_ms: now + self.settings.lease_ms as i64,
        };
        task.leases += 1;
        let task = task.clone();
        self.save_task(&job_id, &task.task_id)?;
        let data = self.job_data(&job_id)?;
        let job = &self.jobs[&job_id];
        let address_of = |id: &Option<String>| {
            id.as_ref()
                .and_then(|id| self.workers.get(id))
                .map(|w| w.address.clone())
                .unwrap_or_default()
        };
        let rollout = &data.config.rollout;
        let prompts = task
            .prompts
            .iter()
            .map(|p| {
                let record = &data.dataset.records[p.prompt_id as usize];
                v1::PromptItem {
                    prompt_id: p.prompt_id,
                    group: p.group,
                    prompt_ids: data.dataset.prompt_ids[p.prompt_id as usize].clone(),
                    messages: record
                        .messages
                        .iter()
                        .map(|m| v1::ChatMessage {
                            role: m.role.clone(),
                            content: m.content.clone(),
                        })
                        .collect(),
                    seed: p.seed,
                    reward_style: match record.style {
                        grlo_learner::data::RewardStyle::Model => "model".into(),
                        grlo_learner::data::RewardStyle::Rule => "rule".into(),
                    },
                    ground_truth: record.ground_truth.clone().unwrap_or_default(),
                    data_source: record.data_source.clone(),
                    ability: record.ability.clone().unwrap_or_default(),
                }
            })
            .collect();
        Ok(Some(v1::RolloutTask {
            job_id: job_id.clone(),
            task_id: task.task_id.clone(),
            step: task.step,
            weight_version: version,
            weights_location: job.weights_location.clone(),
            prompts,
            sampling: Some(v1::SamplingConfig {
                temperature: rollout.temperature,
                top_p: rollout.top_p,
                top_k: rollout.top_k as u32,
                n: rollout.n as u32,
                max_new_tokens: data.config.data.max_response_length as u32,
                max_batch_rows: rollout.max_batch_rows as u32,
            }),
            deadline_unix_ms: now + self.settings.lease_ms as i64,
            learner_address: address_of(&job.learner),
            reward_server_address: address_of(&job.reward_server),
        }))
    }

    /// A task is done (its trajectories are stored by the learner) or given back.
    pub fn complete_task(&mut self, request: &v1::CompleteTaskRequest, now: i64) -> Outcome<()> {
        let _ = now;
        let Some(task) = self
            .tasks
            .get_mut(&request.job_id)
            .and_then(|t| t.get_mut(&request.task_id))
        else {
            // Already pruned (its step is trained) or the job ended: nothing to do.
            return Ok(());
        };
        if task.state == TaskState::Done {
            return Ok(());
        }
        if request.succeeded {
            task.state = TaskState::Done;
        } else if matches!(&task.state, TaskState::Leased { worker, .. } if *worker == request.worker_id)
        {
            task.state = TaskState::Pending;
        }
        self.save_task(&request.job_id, &request.task_id)
    }

    // ----- weights -----

    /// The learner has version `version` (after step `step`): record it, create the tasks it
    /// unlocks, and end the job after its last step.
    pub fn publish_weights(
        &mut self,
        request: &v1::PublishWeightsRequest,
        now: i64,
    ) -> Outcome<()> {
        let Some(weights) = &request.weights else {
            return refuse(Failure::InvalidArgument, "weights are missing");
        };
        let job_id = weights.job_id.clone();
        let job = self.job(&job_id)?;
        if job.learner.as_deref() != Some(request.worker_id.as_str()) {
            return refuse(
                Failure::FailedPrecondition,
                format!(
                    "worker {} is not the learner of job {job_id}",
                    request.worker_id
                ),
            );
        }
        {
            let job = self.jobs.get_mut(&job_id).expect("known");
            job.weight_version = Some(weights.version);
            job.weights_location = weights.location.clone();
            job.step = request.step;
            if !request.step_metrics_json.is_empty() {
                job.last_metrics_json = request.step_metrics_json.clone();
            }
        }
        // The trained step's tasks are history now.
        let done: Vec<String> = self
            .tasks
            .get(&job_id)
            .map(|t| {
                t.values()
                    .filter(|t| t.step <= request.step)
                    .map(|t| t.task_id.clone())
                    .collect()
            })
            .unwrap_or_default();
        for task_id in done {
            self.tasks.get_mut(&job_id).expect("known").remove(&task_id);
            self.db
                .write(&[Change::RemoveTask {
                    job_id: &job_id,
                    task_id: &task_id,
                }])
                .map_err(internal)?;
        }
        let job = &self.jobs[&job_id];
        let finished = request.finished || (job.total_steps > 0 && request.step >= job.total_steps);
        if finished {
            let job = self.jobs.get_mut(&job_id).expect("known");
            if !job.status.is_final() {
                job.status = JobStatus::Succeeded;
            }
            job.stop_requested = false;
            self.release_workers(&job_id, false)?;
            self.drop_pending_tasks(&job_id)?;
        } else {
            self.create_tasks(&job_id, now)?;
        }
        let metrics =
            (!request.step_metrics_json.is_empty()).then(|| request.step_metrics_json.clone());
        self.save_job(&job_id, now, metrics)?;
        self.schedule(now);
        Ok(())
    }

    pub fn weights(&self, job_id: &str) -> Outcome<v1::WeightVersion> {
        let job = self.job(job_id)?;
        match job.weight_version {
            Some(version) => Ok(v1::WeightVersion {
                job_id: job.id,
                version,
                location: job.weights_location,
            }),
            None => refuse(
                Failure::FailedPrecondition,
                format!("job {job_id} has no published weights yet"),
            ),
        }
    }

    /// The budget view of a job.
    pub fn budget(&self, job_id: &str) -> Outcome<v1::BudgetUsage> {
        let job = self.job(job_id)?;
        let config: TrainConfig = toml::from_str(&job.spec_toml).map_err(internal)?;
        let usage = &job.usage;
        let roles: std::collections::BTreeSet<&String> = usage
            .gpu_seconds
            .keys()
            .chain(usage.cpu_seconds.keys())
            .collect();
        let by_role = roles
            .into_iter()
            .map(|role| v1::RoleUsage {
                role: role.clone(),
                gpu_seconds: usage.gpu_seconds.get(role).copied().unwrap_or(0.0),
                cpu_seconds: usage.cpu_seconds.get(role).copied().unwrap_or(0.0),
            })
            .collect();
        let gpu_hours_used = usage.gpu_total() / 3600.0;
        let forecast = match (usage.recent.first(), usage.recent.last()) {
            (Some(first), Some(last))
                if config.job.gpu_hours > 0.0 && last.0 > first.0 && last.1 > first.1 =>
            {
                let rate = (last.1 - first.1) / (last.0 - first.0) as f64; // GPU-seconds per ms
                let remaining = config.job.gpu_hours * 3600.0 - last.1;
                last.0 + (remaining / rate).max(0.0) as i64
            }
            _ => 0,
        };
        Ok(v1::BudgetUsage {
            job_id: job.id.clone(),
            gpu_hours_budget: config.job.gpu_hours,
            cpu_hours_budget: config.job.cpu_hours,
            gpu_hours_used,
            cpu_hours_used: usage.cpu_total() / 3600.0,
            by_role,
            cost: gpu_hours_used * config.job.price_per_gpu_hour,
            forecast_exhausted_unix_ms: forecast,
        })
    }
}
