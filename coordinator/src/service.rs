//! The Coordinator gRPC service: each call runs on the state's owner thread.

use std::pin::Pin;
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use futures::Stream;
use grlo_proto::v1;
use grlo_proto::v1::coordinator_server::Coordinator;
use tokio::sync::{broadcast, oneshot};
use tonic::{Request, Response, Status};

use crate::records::{JobRecord, JobStatus, WorkerRecord};
use crate::state::{JobEvent, Outcome, State};

/// How long `LeaseTask` holds a request that finds no task before answering "none yet".
const LEASE_POLL: Duration = Duration::from_secs(2);

type Work = Box<dyn FnOnce(&mut State) + Send>;

/// A handle on the state, owned by one thread: calls queue up and run one at a time.
#[derive(Clone)]
pub struct StateHandle {
    work: std_mpsc::Sender<Work>,
    events: broadcast::Sender<JobEvent>,
    dead: tokio_util::sync::CancellationToken,
    panic: std::sync::Arc<std::sync::Mutex<Option<String>>>,
}

impl StateHandle {
    /// Moves `state` to its owner thread. A call that panics there stops the thread (the state
    /// in memory may be half-changed; the database holds every accepted change): [`Self::dead`]
    /// is cancelled, and the coordinator stops serving instead of failing every call.
    pub fn spawn(state: State) -> Self {
        let (work, queue) = std_mpsc::channel::<Work>();
        let (events, _) = broadcast::channel(1024);
        let sender = events.clone();
        let dead = tokio_util::sync::CancellationToken::new();
        let panic = std::sync::Arc::new(std::sync::Mutex::new(None));
        let (on_death, message) = (dead.clone(), panic.clone());
        std::thread::Builder::new()
            .name("coordinator-state".into())
            .spawn(move || {
                let mut state = state;
                while let Ok(job) = queue.recv() {
                    let ran =
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&mut state)));
                    if let Err(payload) = ran {
                        let text = grlo_proto::panic_message(&*payload)
                            .unwrap_or_else(|| "(no message)".into());
                        tracing::error!(panic = %text, "the coordinator's state thread panicked");
                        *message.lock().unwrap_or_else(|p| p.into_inner()) = Some(text);
                        on_death.cancel();
                        return;
                    }
                    for event in state.events.drain(..) {
                        let _ = sender.send(event);
                    }
                }
            })
            .expect("the state thread starts");
        StateHandle {
            work,
            events,
            dead,
            panic,
        }
    }

    /// Cancelled when the state thread has died of a panic.
    pub fn dead(&self) -> tokio_util::sync::CancellationToken {
        self.dead.clone()
    }

    /// The panic's message, once the state thread has died of one.
    pub fn panic_message(&self) -> Option<String> {
        self.panic.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Runs `f` on the state and returns its result.
    pub async fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut State) -> R + Send + 'static,
    ) -> R {
        let (reply, answer) = oneshot::channel();
        let work: Work = Box::new(move |state| {
            let _ = reply.send(f(state));
        });
        self.work
            .send(work)
            .expect("the state thread runs while the service does");
        answer.await.expect("the state thread answers")
    }

    pub fn subscribe(&self) -> broadcast::Receiver<JobEvent> {
        self.events.subscribe()
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn status<T>(outcome: Outcome<T>) -> Result<T, Status> {
    outcome.map_err(|(failure, message)| failure.status(message))
}

pub fn job_status(status: JobStatus) -> v1::JobStatus {
    match status {
        JobStatus::Queued => v1::JobStatus::Queued,
        JobStatus::Running => v1::JobStatus::Running,
        JobStatus::Paused => v1::JobStatus::Paused,
        JobStatus::Succeeded => v1::JobStatus::Succeeded,
        JobStatus::Failed => v1::JobStatus::Failed,
        JobStatus::Cancelled => v1::JobStatus::Cancelled,
        JobStatus::BudgetExhausted => v1::JobStatus::BudgetExhausted,
    }
}

pub fn job_message(job: &JobRecord) -> v1::Job {
    v1::Job {
        id: job.id.clone(),
        name: job.name.clone(),
        status: job_status(job.status) as i32,
        spec_toml: job.spec_toml.clone(),
        step: job.step,
        total_steps: job.total_steps,
        weight_version: job.weight_version.unwrap_or(0),
        message: job.message.clone(),
        created_unix_ms: job.created_ms,
        updated_unix_ms: job.updated_ms,
        last_metrics_json: job.last_metrics_json.clone(),
    }
}

pub fn step_message(step: &crate::records::StepRecord) -> v1::StepRecord {
    v1::StepRecord {
        step: step.step,
        time_ms: step.time_ms,
        metrics_json: step.metrics_json.clone(),
        gpu_seconds_used: step.gpu_seconds_used,
        gpu_seconds_limit: step.gpu_seconds_limit,
        cpu_seconds_used: step.cpu_seconds_used,
        cpu_seconds_limit: step.cpu_seconds_limit,
    }
}

fn worker_message(worker: &WorkerRecord) -> v1::Worker {
    let role = match worker.role.as_str() {
        "actor" => v1::Role::Actor,
        "reward_server" => v1::Role::RewardServer,
        "learner" => v1::Role::Learner,
        _ => v1::Role::Unspecified,
    };
    let activity = match worker.activity.as_str() {
        "generation" => v1::Activity::Generating,
        "reward" => v1::Activity::Scoring,
        "training" => v1::Activity::Training,
        _ => v1::Activity::Idle,
    };
    v1::Worker {
        id: worker.id.clone(),
        name: worker.name.clone(),
        role: role as i32,
        address: worker.address.clone(),
        accelerators: grlo_proto::worker::accelerators(&worker.accelerators),
        activity: activity as i32,
        job_id: worker.job_id.clone().unwrap_or_default(),
        weight_version: worker.weight_version,
        last_heartbeat_unix_ms: worker.last_heartbeat_ms,
        alive: worker.alive,
    }
}

/// The Coordinator service over a [`StateHandle`].
pub struct CoordinatorService {
    pub state: StateHandle,
}

type EventStream = Pin<Box<dyn Stream<Item = Result<v1::JobEvent, Status>> + Send>>;

#[tonic::async_trait]
impl Coordinator for CoordinatorService {
    #[tracing::instrument(skip_all)]
    async fn submit_job(
        &self,
        request: Request<v1::SubmitJobRequest>,
    ) -> Result<Response<v1::Job>, Status> {
        let spec = request.into_inner().spec_toml;
        let job = status(
            self.state
                .call(move |s| s.submit_job(&spec, now_ms()))
                .await,
        )?;
        tracing::info!(job = %job.id, "job submitted");
        Ok(Response::new(job_message(&job)))
    }

    async fn get_job(&self, request: Request<v1::JobRef>) -> Result<Response<v1::Job>, Status> {
        let id = request.into_inner().job_id;
        let job = status(self.state.call(move |s| s.job(&id)).await)?;
        Ok(Response::new(job_message(&job)))
    }

    async fn list_jobs(
        &self,
        _: Request<v1::ListJobsRequest>,
    ) -> Result<Response<v1::ListJobsResponse>, Status> {
        let jobs = self.state.call(|s| s.jobs()).await;
        Ok(Response::new(v1::ListJobsResponse {
            jobs: jobs.iter().map(job_message).collect(),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn cancel_job(&self, request: Request<v1::JobRef>) -> Result<Response<v1::Job>, Status> {
        let id = request.into_inner().job_id;
        let job = status(self.state.call(move |s| s.cancel_job(&id, now_ms())).await)?;
        Ok(Response::new(job_message(&job)))
    }

    async fn pause_job(&self, request: Request<v1::JobRef>) -> Result<Response<v1::Job>, Status> {
        let id = request.into_inner().job_id;
        let job = status(self.state.call(move |s| s.pause_job(&id, now_ms())).await)?;
        Ok(Response::new(job_message(&job)))
    }

    async fn resume_job(&self, request: Request<v1::JobRef>) -> Result<Response<v1::Job>, Status> {
        let id = request.into_inner().job_id;
        let job = status(self.state.call(move |s| s.resume_job(&id, now_ms())).await)?;
        Ok(Response::new(job_message(&job)))
    }

    async fn update_job(
        &self,
        request: Request<v1::UpdateJobRequest>,
    ) -> Result<Response<v1::UpdateJobResponse>, Status> {
        let request = request.into_inner();
        let (job, changed) = status(
            self.state
                .call(move |s| s.update_job(&request.job_id, &request.overrides, now_ms()))
                .await,
        )?;
        Ok(Response::new(v1::UpdateJobResponse {
            job: Some(job_message(&job)),
            changed,
        }))
    }

    type WatchJobStream = EventStream;

    async fn watch_job(
        &self,
        request: Request<v1::JobRef>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        let id = request.into_inner().job_id;
        // Subscribe first, so no event between the snapshot and the stream is lost.
        let events = self.state.subscribe();
        let first = {
            let id = id.clone();
            status(self.state.call(move |s| s.job(&id)).await)?
        };
        let stream = watch_stream(first, id, events);
        Ok(Response::new(stream))
    }

    async fn get_budget(
        &self,
        request: Request<v1::JobRef>,
    ) -> Result<Response<v1::BudgetUsage>, Status> {
        let id = request.into_inner().job_id;
        Ok(Response::new(status(
            self.state.call(move |s| s.budget(&id)).await,
        )?))
    }

    async fn list_steps(
        &self,
        request: Request<v1::JobRef>,
    ) -> Result<Response<v1::ListStepsResponse>, Status> {
        let id = request.into_inner().job_id;
        let steps = status(self.state.call(move |s| s.step_history(&id, 0)).await)?;
        Ok(Response::new(v1::ListStepsResponse {
            steps: steps.iter().map(step_message).collect(),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn register_worker(
        &self,
        request: Request<v1::RegisterWorkerRequest>,
    ) -> Result<Response<v1::RegisterWorkerResponse>, Status> {
        let request = request.into_inner();
        let (id, interval) = status(
            self.state
                .call(move |s| {
                    let interval = s.settings().heartbeat_interval_ms as u32;
                    s.register_worker(&request, now_ms())
                        .map(|id| (id, interval))
                })
                .await,
        )?;
        tracing::info!(worker = %id, "worker registered");
        Ok(Response::new(v1::RegisterWorkerResponse {
            worker_id: id,
            heartbeat_interval_ms: interval,
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<v1::HeartbeatRequest>,
    ) -> Result<Response<v1::HeartbeatResponse>, Status> {
        let request = request.into_inner();
        let outcome = status(
            self.state
                .call(move |s| s.heartbeat(&request, now_ms()))
                .await,
        )?;
        Ok(Response::new(v1::HeartbeatResponse {
            assignment: outcome.assignment,
            stop: outcome.stop,
            reregister: outcome.reregister,
        }))
    }

    async fn list_workers(
        &self,
        _: Request<v1::ListWorkersRequest>,
    ) -> Result<Response<v1::ListWorkersResponse>, Status> {
        let workers = self.state.call(|s| s.workers(now_ms())).await;
        Ok(Response::new(v1::ListWorkersResponse {
            workers: workers.iter().map(worker_message).collect(),
        }))
    }

    async fn lease_task(
        &self,
        request: Request<v1::LeaseTaskRequest>,
    ) -> Result<Response<v1::LeaseTaskResponse>, Status> {
        // A long poll: with no task now, wait (up to LEASE_POLL) for a job change — a new
        // weight version creates the next step's tasks — so that actors start generating with
        // it at once instead of on their next poll.
        let worker = request.into_inner().worker_id;
        let mut changes = self.state.subscribe();
        let until = tokio::time::Instant::now() + LEASE_POLL;
        loop {
            let id = worker.clone();
            let task = status(self.state.call(move |s| s.lease_task(&id, now_ms())).await)?;
            if task.is_some() || tokio::time::Instant::now() >= until {
                return Ok(Response::new(v1::LeaseTaskResponse {
                    retry_after_ms: if task.is_some() { 0 } else { 50 },
                    task,
                }));
            }
            // Leases also free up when deadlines pass, which sends no event: look again soon.
            let waited = tokio::time::timeout(Duration::from_millis(250), changes.recv()).await;
            if let Ok(Err(broadcast::error::RecvError::Closed)) = waited {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    async fn complete_task(
        &self,
        request: Request<v1::CompleteTaskRequest>,
    ) -> Result<Response<v1::CompleteTaskResponse>, Status> {
        let request = request.into_inner();
        status(
            self.state
                .call(move |s| s.complete_task(&request, now_ms()))
                .await,
        )?;
        Ok(Response::new(v1::CompleteTaskResponse {}))
    }

    #[tracing::instrument(skip_all)]
    async fn publish_weights(
        &self,
        request: Request<v1::PublishWeightsRequest>,
    ) -> Result<Response<v1::PublishWeightsResponse>, Status> {
        let request = request.into_inner();
        status(
            self.state
                .call(move |s| s.publish_weights(&request, now_ms()))
                .await,
        )?;
        Ok(Response::new(v1::PublishWeightsResponse {}))
    }

    async fn get_weights(
        &self,
        request: Request<v1::JobRef>,
    ) -> Result<Response<v1::WeightVersion>, Status> {
        let id = request.into_inner().job_id;
        Ok(Response::new(status(
            self.state.call(move |s| s.weights(&id)).await,
        )?))
    }
}

/// The watch stream: the job now, then its events until it has ended.
fn watch_stream(
    first: JobRecord,
    id: String,
    events: broadcast::Receiver<JobEvent>,
) -> EventStream {
    let state = (Some(first), id, events, false);
    Box::pin(futures::stream::unfold(
        state,
        |(first, id, mut events, ended)| async move {
            if ended {
                return None;
            }
            let event = match first {
                Some(job) => JobEvent {
                    job,
                    step_metrics_json: String::new(),
                },
                None => loop {
                    match events.recv().await {
                        Ok(event) if event.job.id == id => break event,
                        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                },
            };
            let ended = event.job.status.is_final() && !event.job.stop_requested;
            let message = v1::JobEvent {
                job: Some(job_message(&event.job)),
                step_metrics_json: event.step_metrics_json,
            };
            Some((Ok(message), (None, id, events, ended)))
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_on_the_state_thread_marks_the_handle_dead() {
        let dir = tempfile::tempdir().unwrap();
        let state = State::open(dir.path(), crate::Settings::default()).unwrap();
        let handle = StateHandle::spawn(state);
        assert_eq!(handle.call(|_| 7).await, 7);
        assert!(!handle.dead().is_cancelled());
        let panicked = tokio::spawn({
            let handle = handle.clone();
            async move {
                handle
                    .call(|_| -> u32 { panic!("a broken invariant") })
                    .await
            }
        })
        .await;
        assert!(panicked.is_err(), "the call does not answer");
        tokio::time::timeout(Duration::from_secs(10), handle.dead().cancelled())
            .await
            .expect("the handle is marked dead");
        assert_eq!(
            handle.panic_message().as_deref(),
            Some("a broken invariant")
        );
    }
}
