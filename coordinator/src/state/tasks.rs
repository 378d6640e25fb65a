//! Rollout tasks (created from the dataset cursor per step, leased with deadlines, completed)
//! and weight versions (published by the learner, which creates the next steps' tasks).

use super::*;

impl State {
    // ----- rollout tasks -----

    /// Creates the tasks of every step the published version allows: step `s` may run once
    /// version `s - 1 - staleness` exists.
    pub(super) fn create_tasks(&mut self, job_id: &str, now: i64) -> Outcome<()> {
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
                max_cache_tokens: rollout.max_cache_tokens as u64,
                engine: rollout.engine.name().to_string(),
                endpoints: rollout.endpoints.clone(),
                max_in_flight: rollout.max_in_flight as u32,
                reload: rollout.reload.name().to_string(),
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
    /// unlocks, and end the job after its last step. A version older than the job's newest is
    /// acknowledged and changes nothing (the same version again is recorded again).
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
        if let Some(current) = job.weight_version
            && weights.version < current
        {
            // A restarted learner re-training the steps after its checkpoint, or a late
            // repeat: the job has moved on, and nothing of it may go back.
            tracing::info!(job = %job_id, version = weights.version, current,
                "ignoring an older weight version");
            return Ok(());
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
        // A version with metrics is a trained step (the initial policy and a final checkpoint
        // written on a stop request come without).
        let record = match &metrics {
            Some(metrics) if request.step > 0 => {
                Some(self.step_record(&job_id, request.step, metrics, now)?)
            }
            _ => None,
        };
        self.save_job_with_step(&job_id, now, metrics, record.as_ref())?;
        self.schedule(now);
        Ok(())
    }

    /// The history record of a trained step: its metrics and the budget spent by now.
    fn step_record(
        &self,
        job_id: &str,
        step: u64,
        metrics_json: &str,
        now: i64,
    ) -> Outcome<StepRecord> {
        let job = &self.jobs[job_id];
        let config: TrainConfig = toml::from_str(&job.spec_toml).map_err(internal)?;
        Ok(StepRecord {
            job_id: job_id.to_string(),
            step,
            time_ms: now,
            metrics_json: metrics_json.to_string(),
            gpu_seconds_used: job.usage.gpu_total(),
            gpu_seconds_limit: config.job.gpu_hours * 3600.0,
            cpu_seconds_used: job.usage.cpu_total(),
            cpu_seconds_limit: config.job.cpu_hours * 3600.0,
        })
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

    /// Completed tasks of steps the learner has not trained go back to the pool.
    pub(super) fn rerun_untrained_tasks(&mut self, job_id: &str) -> Outcome<()> {
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
}
