//! The generation worker: one thread that owns the model's compute, fed by a bounded queue.
//! Requests are batched continuously: a request joins the running batch between two decode
//! steps (after its own prefill) and leaves it as soon as it finishes, whatever its settings
//! and whether it streams.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;

use echovlm_pipeline::{
    BatchEvent, CancelToken, ContinuousBatch, EchoError, EchoVlm, FinishReason, GenerationOptions,
    Output, PreparedPrompt, SeqId,
};
use tokio::sync::mpsc::UnboundedSender;

use crate::error::ApiError;
use crate::metrics::Metrics;

/// What the worker sends back for a job.
#[derive(Debug)]
pub enum Event {
    /// New text (streaming jobs, stop strings applied).
    Delta(String),
    /// The end.
    Done(Result<Finished, ApiError>),
}

/// A finished generation.
#[derive(Debug, Clone)]
pub struct Finished {
    /// The text (cut at a stop string).
    pub text: String,
    /// `stop` or `length`.
    pub finish_reason: &'static str,
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Generated tokens.
    pub completion_tokens: usize,
}

/// One request for the worker.
pub struct Job {
    /// The prompt.
    pub prompt: PreparedPrompt,
    /// Its settings.
    pub opts: GenerationOptions,
    /// Stop strings.
    pub stops: Vec<String>,
    /// Stream text deltas.
    pub stream: bool,
    /// Cancelled when the client goes away.
    pub cancel: CancelToken,
    /// Where events go.
    pub events: UnboundedSender<Event>,
    /// Holds a place in the queue until the worker takes the job.
    pub ticket: Option<Ticket>,
}

/// A place in the queue; given back when dropped.
#[derive(Debug)]
pub struct Ticket(Arc<AtomicUsize>);

impl Drop for Ticket {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

struct Queue {
    jobs: VecDeque<Job>,
    closed: bool,
}

/// Loads the model on the worker thread.
pub type Loader = Box<dyn FnOnce() -> Result<EchoVlm, EchoError> + Send>;

/// Called on the worker thread when loading fails.
pub type OnLoadFailure = Box<dyn FnOnce(&EchoError) + Send>;

/// The queue and its worker thread.
pub struct Engine {
    queue: Arc<(Mutex<Queue>, Condvar)>,
    model: Arc<OnceLock<Arc<EchoVlm>>>,
    load_error: Arc<Mutex<Option<String>>>,
    pending: Arc<AtomicUsize>,
    max_queue: usize,
    worker: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("pending", &self.pending.load(Ordering::SeqCst))
            .field("max_queue", &self.max_queue)
            .finish()
    }
}

impl Engine {
    /// Starts the worker on a loaded model; at most `max_batch` sequences decode together.
    pub fn start(
        model: Arc<EchoVlm>,
        max_queue: usize,
        max_batch: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self::start_loading(
            Box::new(|| Err(EchoError::Device("no model".into()))),
            Some(model),
            max_queue,
            max_batch,
            metrics,
            Box::new(|_| {}),
        )
    }

    /// Starts the worker, which first loads the model with `loader` (unless `model` is given);
    /// requests are refused until it is loaded ([`Engine::model`] is `None`). When loading
    /// fails the worker calls `on_failure` and stops.
    pub fn start_loading(
        loader: Loader,
        model: Option<Arc<EchoVlm>>,
        max_queue: usize,
        max_batch: usize,
        metrics: Arc<Metrics>,
        on_failure: OnLoadFailure,
    ) -> Self {
        let queue = Arc::new((
            Mutex::new(Queue {
                jobs: VecDeque::new(),
                closed: false,
            }),
            Condvar::new(),
        ));
        let slot = Arc::new(OnceLock::new());
        // a model given is there before the first request
        if let Some(m) = &model {
            let _ = slot.set(m.clone());
        }
        let load_error = Arc::new(Mutex::new(None));
        let (q, slot2, err2) = (queue.clone(), slot.clone(), load_error.clone());
        let worker = std::thread::Builder::new()
            .name("echovlm-generate".into())
            .spawn(move || {
                let model = match model.map_or_else(|| loader().map(Arc::new), Ok) {
                    Ok(m) => m,
                    Err(e) => {
                        if let Ok(mut slot) = err2.lock() {
                            *slot = Some(e.to_string());
                        }
                        on_failure(&e);
                        fail_all(&q, &e.to_string());
                        return;
                    }
                };
                let _ = slot2.set(model.clone()); // no-op when given
                worker(model, q, max_batch.max(1), metrics)
            })
            .ok();
        Self {
            queue,
            model: slot,
            load_error,
            pending: Arc::new(AtomicUsize::new(0)),
            max_queue,
            worker: Mutex::new(worker),
        }
    }

    /// The model, once loaded.
    pub fn model(&self) -> Option<Arc<EchoVlm>> {
        self.model.get().cloned()
    }

    /// Why loading the model failed, if it did.
    pub fn load_error(&self) -> Option<String> {
        self.load_error.lock().ok().and_then(|e| e.clone())
    }

    /// Requests admitted and not yet taken by the worker (being prepared or queued).
    pub fn queue_depth(&self) -> usize {
        self.pending.load(Ordering::SeqCst)
    }

    /// Whether the worker thread is running.
    pub fn alive(&self) -> bool {
        self.worker
            .lock()
            .map(|w| w.as_ref().is_some_and(|h| !h.is_finished()))
            .unwrap_or(false)
    }

    /// A place in the queue, or a 503 when it is full.
    pub fn admit(&self) -> Result<Ticket, ApiError> {
        let before = self.pending.fetch_add(1, Ordering::SeqCst);
        let ticket = Ticket(self.pending.clone());
        if before >= self.max_queue {
            drop(ticket);
            return Err(ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                format!(
                    "the server is busy: {} requests are already waiting; retry later",
                    self.max_queue
                ),
            )
            .code("queue_full"));
        }
        Ok(ticket)
    }

    /// Queues a job.
    pub fn submit(&self, job: Job) -> Result<(), ApiError> {
        let (lock, cv) = &*self.queue;
        let mut q = lock.lock().map_err(|_| internal("queue lock poisoned"))?;
        if q.closed {
            return Err(shutting_down());
        }
        q.jobs.push_back(job);
        cv.notify_one();
        Ok(())
    }

    /// Lets the worker finish the queued jobs, then waits for it.
    pub fn shutdown(&self) {
        let (lock, cv) = &*self.queue;
        if let Ok(mut q) = lock.lock() {
            q.closed = true;
            cv.notify_all();
        }
        if let Some(h) = self.worker.lock().ok().and_then(|mut w| w.take()) {
            let _ = h.join();
        }
    }
}

/// Closes the queue and answers every queued job with an error.
fn fail_all(queue: &(Mutex<Queue>, Condvar), message: &str) {
    let Ok(mut q) = queue.0.lock() else { return };
    q.closed = true;
    for job in q.jobs.drain(..) {
        let _ = job.events.send(Event::Done(Err(internal(message))));
    }
}

/// A 503 while the server drains.
pub fn shutting_down() -> ApiError {
    ApiError::new(
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        "server_error",
        "the server is shutting down",
    )
    .code("shutting_down")
}

fn internal(m: &str) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
        "server_error",
        m,
    )
}

/// A job in the running batch.
struct Running {
    events: UnboundedSender<Event>,
    stream: bool,
    has_stops: bool,
    matcher: StopMatcher,
    text: String,
}

impl Running {
    fn new(job: &Job) -> Self {
        Self {
            events: job.events.clone(),
            stream: job.stream,
            has_stops: !job.stops.is_empty(),
            matcher: StopMatcher::new(job.stops.clone()),
            text: String::new(),
        }
    }
}

/// The worker loop: takes waiting jobs into the running batch (blocking only while nothing
/// runs), then runs one decode step; a closed queue ends it once everything has finished.
fn worker(
    model: Arc<EchoVlm>,
    queue: Arc<(Mutex<Queue>, Condvar)>,
    max_batch: usize,
    metrics: Arc<Metrics>,
) {
    let (lock, cv) = &*queue;
    let mut batch = ContinuousBatch::new(&model);
    let mut running: HashMap<SeqId, Running> = HashMap::new();
    loop {
        let arrived: Vec<Job> = {
            let Ok(mut q) = lock.lock() else { return };
            while batch.is_empty() && q.jobs.is_empty() {
                if q.closed {
                    return;
                }
                q = match cv.wait(q) {
                    Ok(q) => q,
                    Err(_) => return,
                };
            }
            let room = max_batch.saturating_sub(batch.len());
            let n = room.min(q.jobs.len());
            q.jobs.drain(..n).collect()
        };
        // the new requests' prompts run through the prefill together, then join
        let mut joining: Vec<(Running, PreparedPrompt, GenerationOptions)> = Vec::new();
        for mut job in arrived {
            job.ticket.take();
            // a client that went away while waiting (its request's guard cancels the token; a
            // stream whose receiver is gone stops at its first text instead)
            if job.cancel.is_cancelled() {
                continue;
            }
            let r = Running::new(&job);
            let opts = job.opts.clone().cancel(job.cancel.clone());
            match batch.check(&job.prompt, &opts) {
                Ok(()) => joining.push((r, job.prompt, opts)),
                Err(e) => {
                    let _ = r.events.send(Event::Done(Err(ApiError::from(e))));
                }
            }
        }
        if !joining.is_empty() {
            let (jobs, requests): (Vec<Running>, Vec<(PreparedPrompt, GenerationOptions)>) =
                joining.into_iter().map(|(r, p, o)| (r, (p, o))).unzip();
            let added =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| batch.add_all(requests)));
            match added {
                Ok(Ok(added)) => {
                    let mut events = Vec::new();
                    for (r, (id, first)) in jobs.into_iter().zip(added) {
                        metrics.joined();
                        running.insert(id, r);
                        events.extend(first);
                    }
                    deliver(&mut batch, &mut running, events, &metrics);
                }
                Ok(Err(e)) => {
                    let e = ApiError::from(e);
                    for r in jobs {
                        let _ = r.events.send(Event::Done(Err(e.clone())));
                    }
                }
                Err(_) => {
                    for r in jobs {
                        let _ = r
                            .events
                            .send(Event::Done(Err(internal("generation failed unexpectedly"))));
                    }
                    fail_running(&mut batch, &mut running, "generation failed unexpectedly");
                }
            }
        }
        metrics.running(batch.len());
        if batch.is_empty() {
            continue;
        }
        metrics.step(batch.len());
        let stepped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| batch.step()));
        match stepped {
            Ok(Ok(events)) => deliver(&mut batch, &mut running, events, &metrics),
            Ok(Err(e)) => fail_running(&mut batch, &mut running, &e.to_string()),
            Err(_) => fail_running(&mut batch, &mut running, "generation failed unexpectedly"),
        }
        metrics.running(batch.len());
    }
}

/// Answers every running job with an error and empties the batch (after a failed step).
fn fail_running(
    batch: &mut ContinuousBatch<'_>,
    running: &mut HashMap<SeqId, Running>,
    message: &str,
) {
    batch.clear();
    for (_, r) in running.drain() {
        let _ = r.events.send(Event::Done(Err(internal(message))));
    }
}

/// Sends a step's events to their jobs: text through the job's stop strings (a job that
/// reaches one, or whose stream's receiver is gone, leaves the batch at once), and each
/// finished job's answer.
fn deliver(
    batch: &mut ContinuousBatch<'_>,
    running: &mut HashMap<SeqId, Running>,
    events: Vec<BatchEvent>,
    metrics: &Metrics,
) {
    let mut queue: VecDeque<BatchEvent> = events.into();
    while let Some(event) = queue.pop_front() {
        match event {
            BatchEvent::Text { id, text } => {
                let Some(r) = running.get_mut(&id) else {
                    continue;
                };
                if r.matcher.stopped() {
                    continue;
                }
                let out = r.matcher.push(&text);
                let mut end = r.matcher.stopped();
                if !out.is_empty() {
                    r.text.push_str(&out);
                    if r.stream && r.events.send(Event::Delta(out)).is_err() {
                        end = true;
                    }
                }
                if end {
                    match batch.finish(id) {
                        Ok(more) => queue.extend(more),
                        Err(e) => {
                            if let Some(r) = running.remove(&id) {
                                let _ = r.events.send(Event::Done(Err(ApiError::from(e))));
                            }
                        }
                    }
                }
            }
            BatchEvent::Finished { id, output } => {
                let Some(mut r) = running.remove(&id) else {
                    continue;
                };
                metrics.generated(output.generated_token_ids.len());
                let text = if r.has_stops {
                    let rest = r.matcher.finish();
                    if !rest.is_empty() {
                        r.text.push_str(&rest);
                        if r.stream {
                            let _ = r.events.send(Event::Delta(rest));
                        }
                    }
                    std::mem::take(&mut r.text)
                } else {
                    if r.stream {
                        // what the stream has not sent yet (nothing, unless decoding the
                        // whole sequence differs from the concatenated pieces)
                        if let Some(rest) = output.text.strip_prefix(r.text.as_str())
                            && !rest.is_empty()
                        {
                            let _ = r.events.send(Event::Delta(rest.to_string()));
                        }
                    }
                    output.text.clone()
                };
                let _ = r.events.send(Event::Done(Ok(finished(
                    &output,
                    text,
                    r.matcher.stopped(),
                ))));
            }
            _ => {}
        }
    }
}

fn finish_reason(r: FinishReason) -> &'static str {
    match r {
        FinishReason::Length => "length",
        _ => "stop",
    }
}

fn finished(out: &Output, text: String, stopped: bool) -> Finished {
    Finished {
        text,
        finish_reason: if stopped {
            "stop"
        } else {
            finish_reason(out.finish_reason)
        },
        prompt_tokens: out.prompt_token_ids.len(),
        completion_tokens: out.generated_token_ids.len(),
    }
}

/// Cuts streamed text at the first stop string, holding back a tail that could begin one.
#[derive(Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
    stopped: bool,
}

impl StopMatcher {
    /// A matcher for these stop strings.
    pub fn new(stops: Vec<String>) -> Self {
        Self {
            stops,
            held: String::new(),
            stopped: false,
        }
    }

    /// Whether a stop string was seen.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Adds text; returns what can be emitted.
    pub fn push(&mut self, delta: &str) -> String {
        if self.stopped {
            return String::new();
        }
        self.held.push_str(delta);
        if self.stops.is_empty() {
            return std::mem::take(&mut self.held);
        }
        if let Some(pos) = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min()
        {
            self.stopped = true;
            let out = self.held[..pos].to_string();
            self.held.clear();
            return out;
        }
        // hold back the longest tail that is a prefix of a stop string
        let mut keep = 0;
        for s in &self.stops {
            for (i, _) in self.held.char_indices() {
                let tail = &self.held[i..];
                if s.starts_with(tail) {
                    keep = keep.max(tail.len());
                    break;
                }
            }
        }
        let cut = self.held.len() - keep;
        let out = self.held[..cut].to_string();
        self.held.drain(..cut);
        out
    }

    /// The held-back text at the end of generation.
    pub fn finish(&mut self) -> String {
        if self.stopped {
            return String::new();
        }
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::StopMatcher;

    #[test]
    fn stop_strings_cut_and_hold_back() {
        let mut m = StopMatcher::new(vec!["END".into()]);
        assert_eq!(m.push("abc E"), "abc ");
        assert_eq!(m.push("N"), "");
        assert_eq!(m.push("x"), "ENx");
        assert_eq!(m.push("yEND tail"), "y");
        assert!(m.stopped());
        assert_eq!(m.push("more"), "");
        assert_eq!(m.finish(), "");
        let mut m = StopMatcher::new(vec!["é!".into()]);
        assert_eq!(m.push("aé"), "a");
        assert_eq!(m.finish(), "é");
        let mut m = StopMatcher::new(vec![]);
        assert_eq!(m.push("x"), "x");
    }
}
