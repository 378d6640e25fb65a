//! The engine thread: one [`Engine`] over the served model, stepped while anything runs, fed
//! by the HTTP handlers through a channel. Every request of every client shares its
//! continuous batch. A reload waits for the running requests to finish (new ones queue
//! meanwhile), swaps the model, and goes on with the queued requests.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use grlo_model::backend::ModelBackend;
use grlo_model::engine::{Engine, EngineLimits, Request, RequestId, TokenEvent};
use grlo_model::{Model, Pretrained, Tokenizer};
use tokio::sync::{mpsc, oneshot};

/// A request's name on the channel, chosen by the handler (the engine's own ids start over
/// with each model version).
pub type Ticket = u64;

/// What handlers ask of the engine thread.
pub enum Command {
    Submit {
        ticket: Ticket,
        request: Request,
        events: Events,
    },
    /// A stop string ended one sample.
    FinishSample { ticket: Ticket, sample: usize },
    /// The client went away.
    Cancel { ticket: Ticket },
    /// Load the checkpoint at `location` and serve it from now on.
    Reload { location: String, reply: Reply },
}

/// The answer to a reload: the new checkpoint's tokenizer, or why it did not load.
pub type Reply = oneshot::Sender<Result<Option<Tokenizer>, String>>;

/// Where a request's events go, each with its ticket (an HTTP request with several prompts
/// hears about all of them on one channel).
pub type Events = mpsc::UnboundedSender<(Ticket, Event)>;

/// What a request hears back.
#[derive(Debug)]
pub enum Event {
    Token(TokenEvent),
    /// The engine refused the request (bad parameters for this model): a 400.
    Rejected(String),
    /// The engine failed while running it: a 500.
    Failed(String),
}

/// What the handlers may read of the engine's state (for `/metrics` and admission).
#[derive(Default)]
pub struct Gauges {
    pub running_rows: AtomicUsize,
    pub waiting_requests: AtomicUsize,
    pub cache_bytes: AtomicUsize,
    pub generated_tokens: AtomicUsize,
}

/// Loads a checkpoint (a directory, or an object-store URL fetched into `cache_dir`).
pub type Loader<B> = dyn Fn(&str) -> anyhow::Result<Pretrained<B>> + Send;

/// Runs until every sender of `commands` is gone.
pub fn run<B: ModelBackend>(
    mut model: Model<B>,
    limits: EngineLimits,
    load: Box<Loader<B>>,
    mut commands: mpsc::UnboundedReceiver<Command>,
    gauges: Arc<Gauges>,
) {
    let mut queued: Vec<Command> = Vec::new();
    loop {
        match serve_version(&model, limits, &mut commands, &mut queued, &gauges) {
            Some((location, reply)) => match load(&location) {
                Ok(next) => {
                    model = next.model;
                    tracing::info!(%location, "weights reloaded");
                    let _ = reply.send(Ok(next.tokenizer));
                }
                Err(e) => {
                    tracing::warn!(%location, error = %format!("{e:#}"), "reload failed");
                    let _ = reply.send(Err(format!("{e:#}")));
                }
            },
            None => return,
        }
    }
}

/// Serves one model version until a reload is asked for and the running requests are done
/// (returns the reload), or until the channel closes (`None`).
fn serve_version<B: ModelBackend>(
    model: &Model<B>,
    limits: EngineLimits,
    commands: &mut mpsc::UnboundedReceiver<Command>,
    queued: &mut Vec<Command>,
    gauges: &Gauges,
) -> Option<(String, Reply)> {
    let mut engine = match Engine::new(model, limits) {
        Ok(engine) => engine,
        Err(e) => {
            // Limits are checked at start-up; fail every request rather than spin.
            tracing::error!(error = %e, "the engine cannot start");
            while let Some(command) = commands.blocking_recv() {
                if let Command::Submit { ticket, events, .. } = command {
                    let _ = events.send((ticket, Event::Failed(e.to_string())));
                }
            }
            return None;
        }
    };
    // The running requests by engine id; a ticket is found by a scan (cancels and stop
    // strings are rare beside tokens).
    let mut requests: HashMap<RequestId, (Ticket, Events)> = HashMap::new();
    let id_of = |requests: &HashMap<RequestId, (Ticket, Events)>, ticket: Ticket| {
        requests
            .iter()
            .find_map(|(&id, (t, _))| (*t == ticket).then_some(id))
    };
    let mut reload: Option<(String, Reply)> = None;
    let mut pending: Vec<Command> = std::mem::take(queued);
    loop {
        // Block for work only when nothing runs.
        publish(&engine, gauges);
        if engine.is_idle() && pending.is_empty() {
            if let Some(reload) = reload.take() {
                return Some(reload);
            }
            match commands.blocking_recv() {
                Some(command) => pending.push(command),
                None => return None,
            }
        }
        while let Ok(command) = commands.try_recv() {
            pending.push(command);
        }
        for command in pending.drain(..) {
            match command {
                Command::Submit {
                    ticket,
                    request,
                    events,
                } => {
                    if reload.is_some() {
                        queued.push(Command::Submit {
                            ticket,
                            request,
                            events,
                        });
                        continue;
                    }
                    match engine.submit(request) {
                        Ok(id) => {
                            requests.insert(id, (ticket, events));
                        }
                        Err(e) => {
                            let _ = events.send((ticket, Event::Rejected(e.to_string())));
                        }
                    }
                }
                Command::FinishSample { ticket, sample } => {
                    if let Some(id) = id_of(&requests, ticket) {
                        let _ = engine.finish_sample(id, sample);
                        if !engine.has_request(id) {
                            requests.remove(&id);
                        }
                    }
                }
                Command::Cancel { ticket } => {
                    queued.retain(
                        |c| !matches!(c, Command::Submit { ticket: t, .. } if *t == ticket),
                    );
                    if let Some(id) = id_of(&requests, ticket) {
                        engine.cancel(id);
                        requests.remove(&id);
                    }
                }
                Command::Reload { location, reply } => {
                    if let Some((_, earlier)) = reload.replace((location, reply)) {
                        let _ = earlier.send(Err("superseded by a later reload".into()));
                    }
                }
            }
        }
        if engine.is_idle() {
            continue;
        }
        let stepped = engine.step();
        match stepped {
            Ok(out) => {
                gauges
                    .generated_tokens
                    .fetch_add(out.tokens.len(), Ordering::Relaxed);
                for event in out.tokens {
                    // A handler that is gone cancels its request; until then, send on.
                    if let Some((ticket, events)) = requests.get(&event.request) {
                        let _ = events.send((*ticket, Event::Token(event)));
                    }
                }
                // Requests with every sample finished are forgotten.
                for completion in out.finished {
                    let id = completion.prompt_index;
                    if !engine.has_request(id) {
                        requests.remove(&id);
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "an engine step failed; its requests fail");
                for (_, (ticket, events)) in requests.drain() {
                    let _ = events.send((ticket, Event::Failed(e.to_string())));
                }
                engine = match Engine::new(model, limits) {
                    Ok(engine) => engine,
                    Err(_) => return None,
                };
            }
        }
    }
}

fn publish<B: ModelBackend>(engine: &Engine<'_, B>, gauges: &Gauges) {
    let store = |gauge: &AtomicUsize, value| gauge.store(value, Ordering::Relaxed);
    store(&gauges.running_rows, engine.running_rows());
    store(&gauges.waiting_requests, engine.waiting_requests());
    store(&gauges.cache_bytes, engine.cache_bytes());
}
