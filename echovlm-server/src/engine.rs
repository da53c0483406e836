//! The generation worker: one thread that owns the model's compute, fed by a bounded queue.
//! Non-streaming requests with the same settings that wait together run as one batch.

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;

use echovlm_pipeline::{
    CancelToken, EchoError, EchoVlm, FinishReason, GenerationOptions, Output, PreparedPrompt,
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

impl Job {
    /// Whether the job can share a batch: no streaming, no stop strings.
    fn batchable(&self) -> bool {
        !self.stream && self.stops.is_empty()
    }
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
    /// Starts the worker on a loaded model.
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

/// Whether two settings may run in one batch.
fn same_settings(a: &GenerationOptions, b: &GenerationOptions) -> bool {
    a.max_new_tokens == b.max_new_tokens
        && a.do_sample == b.do_sample
        && a.temperature == b.temperature
        && a.top_k == b.top_k
        && a.top_p == b.top_p
        && a.repetition_penalty == b.repetition_penalty
        && a.seed == b.seed
        && a.stop_token_ids == b.stop_token_ids
        && a.ignore_eos == b.ignore_eos
}

fn worker(
    model: Arc<EchoVlm>,
    queue: Arc<(Mutex<Queue>, Condvar)>,
    max_batch: usize,
    metrics: Arc<Metrics>,
) {
    let (lock, cv) = &*queue;
    loop {
        let batch = {
            let Ok(mut q) = lock.lock() else { return };
            loop {
                if !q.jobs.is_empty() {
                    break;
                }
                if q.closed {
                    return;
                }
                q = match cv.wait(q) {
                    Ok(q) => q,
                    Err(_) => return,
                };
            }
            let Some(first) = q.jobs.pop_front() else {
                continue;
            };
            let mut batch = vec![first];
            if batch[0].batchable() {
                let mut i = 0;
                while i < q.jobs.len() && batch.len() < max_batch {
                    if q.jobs[i].batchable() && same_settings(&q.jobs[i].opts, &batch[0].opts) {
                        if let Some(j) = q.jobs.remove(i) {
                            batch.push(j);
                        }
                    } else {
                        i += 1;
                    }
                }
            }
            batch
        };
        let mut batch: Vec<Job> = batch
            .into_iter()
            .filter_map(|mut j| {
                j.ticket.take();
                // a client that went away while waiting (its request's guard cancels the
                // token; a stream whose receiver is gone stops at its first text instead)
                (!j.cancel.is_cancelled()).then_some(j)
            })
            .collect();
        if batch.is_empty() {
            continue;
        }
        metrics.batch(batch.len());
        if batch.len() == 1 && !batch[0].batchable() {
            if let Some(job) = batch.pop() {
                run_one(&model, job, &metrics);
            }
        } else {
            run_batch(&model, batch, &metrics);
        }
    }
}

fn finish_reason(r: FinishReason) -> &'static str {
    match r {
        FinishReason::Length => "length",
        _ => "stop",
    }
}

fn run_batch(model: &EchoVlm, jobs: Vec<Job>, metrics: &Metrics) {
    let mut opts = jobs[0].opts.clone();
    // a batch stops early only when every client has gone
    opts.cancel = None;
    let prompts: Vec<PreparedPrompt> = jobs.iter().map(|j| j.prompt.clone()).collect();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        model.run(prompts, &opts, None)
    }));
    match result {
        Ok(Ok(outputs)) => {
            for (job, out) in jobs.into_iter().zip(outputs) {
                metrics.generated(out.generated_token_ids.len());
                let _ = job
                    .events
                    .send(Event::Done(Ok(finished(&out, out.text.clone(), false))));
            }
        }
        Ok(Err(e)) => {
            let e = ApiError::from(e);
            for job in jobs {
                let _ = job.events.send(Event::Done(Err(e.clone())));
            }
        }
        Err(_) => {
            for job in jobs {
                let _ = job
                    .events
                    .send(Event::Done(Err(internal("generation failed unexpectedly"))));
            }
        }
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

fn run_one(model: &EchoVlm, job: Job, metrics: &Metrics) {
    let Job {
        prompt,
        mut opts,
        stops,
        stream,
        cancel,
        events,
        ..
    } = job;
    opts.cancel = Some(cancel);
    let mut matcher = StopMatcher::new(stops);
    let mut text = String::new();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut on_text = |delta: &str| {
            if matcher.stopped() {
                return ControlFlow::Break(());
            }
            let out = matcher.push(delta);
            if !out.is_empty() {
                text.push_str(&out);
                if stream && events.send(Event::Delta(out)).is_err() {
                    return ControlFlow::Break(());
                }
            }
            if matcher.stopped() {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        };
        model.run(vec![prompt], &opts, Some(&mut on_text))
    }));
    let done = match result {
        Ok(Ok(mut outputs)) => match outputs.pop() {
            Some(out) => {
                let rest = matcher.finish();
                if !rest.is_empty() {
                    text.push_str(&rest);
                    if stream {
                        let _ = events.send(Event::Delta(rest));
                    }
                }
                metrics.generated(out.generated_token_ids.len());
                Ok(finished(&out, text, matcher.stopped()))
            }
            None => Err(internal("no output")),
        },
        Ok(Err(e)) => Err(ApiError::from(e)),
        Err(_) => Err(internal("generation failed unexpectedly")),
    };
    let _ = events.send(Event::Done(done));
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
