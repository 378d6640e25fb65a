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
    JobRecord, JobStatus, StepRecord, TaskPrompt, TaskRecord, TaskState, Usage, WorkerRecord,
};

mod budget;
pub mod gauges;
mod tasks;

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
        self.save_job_with_step(id, now, event_metrics, None)
    }

    /// Saves the job and the step it just trained in one transaction, so the history never
    /// misses a step the job record counts.
    fn save_job_with_step(
        &mut self,
        id: &str,
        now: i64,
        event_metrics: Option<String>,
        step: Option<&StepRecord>,
    ) -> Outcome<JobRecord> {
        let job = self.jobs.get_mut(id).expect("a known job");
        job.updated_ms = now;
        let mut changes = vec![Change::Job(job)];
        changes.extend(step.map(Change::Step));
        self.db.write(&changes).map_err(internal)?;
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

    /// [`Self::update_job_spec`] with `section.key=value` overrides of the job's spec. (Specs
    /// are stored with their paths resolved: they are read here with an empty base, which
    /// leaves every path as it is.)
    pub fn update_job(
        &mut self,
        id: &str,
        overrides: &[String],
        now: i64,
    ) -> Outcome<(JobRecord, Vec<String>)> {
        let job = self.job(id)?;
        let spec = TrainConfig::from_toml(&job.spec_toml, "the job's spec", Path::new(""))
            .map_err(|e| (Failure::Internal, e.to_string()))?
            .with_overrides(overrides, "the job's spec")
            .map_err(|e| (Failure::InvalidArgument, e.to_string()))?;
        let spec_toml = toml::to_string_pretty(&spec).map_err(internal)?;
        let changed = self.update_job_spec(id, &spec_toml, now)?;
        self.schedule(now);
        Ok((self.job(id)?, changed))
    }

    /// Gives a job a new spec between runs (`grlo train --resume RUN_DIR --set ...`): only the
    /// keys [`TrainConfig::changes_on_resume`] allows may differ from its spec. A job that
    /// succeeded or ran out of budget is queued again, to go on from its last checkpoint with
    /// the new total steps or budget; a running one is queued again too, its workers let go,
    /// so that its learner starts with the new spec. Failed and cancelled jobs stay ended, and
    /// a paused one is refused (resume it first).
    /// Returns the changed keys.
    pub fn update_job_spec(&mut self, id: &str, spec_toml: &str, now: i64) -> Outcome<Vec<String>> {
        let job = self.job(id)?;
        match job.status {
            JobStatus::Failed | JobStatus::Cancelled => {
                return refuse(
                    Failure::FailedPrecondition,
                    format!(
                        "job {id} is {}: it cannot be resumed; submit it again",
                        job.status.name()
                    ),
                );
            }
            JobStatus::Paused => {
                return refuse(
                    Failure::FailedPrecondition,
                    format!("job {id} is paused: resume it first"),
                );
            }
            _ => {}
        }
        let old = TrainConfig::from_toml(&job.spec_toml, "the job's spec", Path::new(""))
            .map_err(|e| (Failure::Internal, e.to_string()))?;
        let new = TrainConfig::from_toml(spec_toml, "the new spec", Path::new(""))
            .map_err(|e| (Failure::InvalidArgument, e.to_string()))?;
        let changed = old
            .changes_on_resume(&new)
            .map_err(|e| (Failure::InvalidArgument, e.to_string()))?;
        if changed.is_empty() {
            return Ok(changed);
        }
        let spec_toml = toml::to_string_pretty(&new).map_err(internal)?;
        self.data.remove(id);
        if job.status == JobStatus::Running {
            self.release_workers(id, false)?;
        }
        let job = self.jobs.get_mut(id).expect("known");
        job.spec_toml = spec_toml;
        if !new.job.name.is_empty() {
            job.name = new.job.name.clone();
        }
        job.status = JobStatus::Queued;
        job.stop_requested = false;
        job.message = format!("resumed with {}", changed.join(", "));
        self.save_job(id, now, None)?;
        Ok(changed)
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

    /// The job's trained steps after step `after` (0: all of them) in step order: the
    /// learner's metrics and the budget spent by then. Pollers pass the last step they hold,
    /// so a long run is not sent again every time.
    pub fn step_history(&self, id: &str, after: u64) -> Outcome<Vec<StepRecord>> {
        self.job(id)?;
        self.db.steps(id, after).map_err(internal)
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
        if !request.job_failure.is_empty() {
            self.learner_failed(
                &request.worker_id,
                &request.job_id,
                &request.job_failure,
                now,
            )?;
        }
        self.schedule(now);
        Ok(self.outcome_for(&request.worker_id))
    }

    /// The job's learner says its work for the job cannot go on: the job fails with the
    /// reason (a report from any other worker, or for a job that has ended, changes nothing).
    fn learner_failed(
        &mut self,
        worker_id: &str,
        job_id: &str,
        reason: &str,
        now: i64,
    ) -> Outcome<()> {
        let Some(job) = self.jobs.get(job_id) else {
            return Ok(());
        };
        if job.learner.as_deref() != Some(worker_id) || job.status.is_final() {
            return Ok(());
        }
        let name = self.workers[worker_id].name.clone();
        let reason: String = reason.chars().take(4000).collect();
        tracing::warn!(job = %job_id, learner = %name, %reason, "the job's learner failed: the job fails");
        let job = self.jobs.get_mut(job_id).expect("known");
        job.status = JobStatus::Failed;
        job.message = format!("the learner {name} failed: {reason}");
        self.release_workers(job_id, false)?;
        self.save_job(job_id, now, None)?;
        Ok(())
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
        // A job started before (then given a longer run by `update_job_spec`) goes on where its
        // dataset cursor is: the same prompts, in the same order, as one uninterrupted run.
        if job.cursor.is_none() {
            job.cursor = Some(cursor);
        }
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
}
