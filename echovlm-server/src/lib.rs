//! An OpenAI-compatible HTTP server for EchoVLM.
//!
//! `POST /v1/chat/completions` (streaming or not, images as base64 `data:` URIs),
//! `GET /v1/models`, `GET /health`, `GET /ready` and `GET /metrics` (Prometheus text). One
//! loaded model is shared; generation runs on a worker thread fed by a bounded queue, and
//! requests are batched continuously: each joins the running batch between two decode steps and
//! leaves it when it finishes.
//!
//! ```no_run
//! use std::sync::Arc;
//! use echovlm_pipeline::{EchoVlm, LoadOptions};
//! use echovlm_server::{Server, ServerConfig};
//!
//! # async fn demo() -> std::io::Result<()> {
//! let model = EchoVlm::load("path/to/EchoVLM", &LoadOptions::default()).unwrap();
//! let server = Server::new(Arc::new(model), ServerConfig::default());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! server.serve(listener, echovlm_server::shutdown_signal()).await
//! # }
//! ```

#![warn(missing_docs)]

pub mod api;
pub mod engine;
pub mod error;
pub mod metrics;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request as HttpRequest, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use echovlm_pipeline::{CancelToken, EchoVlm};
use serde_json::json;
use tokio::sync::mpsc;

use crate::api::{ChatRequest, RequestLimits};
use crate::engine::{Engine, Event, Finished, Job};
pub use crate::error::ApiError;
use crate::metrics::Metrics;

/// Server settings.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerConfig {
    /// The name `/v1/models` lists and responses carry.
    pub model_name: String,
    /// Most requests waiting for the worker; more are answered 503.
    pub max_queue: usize,
    /// Most sequences decoded together (continuous batching: requests join and leave the
    /// running batch between decode steps).
    pub max_batch: usize,
    /// Largest request body, in bytes; larger ones are answered 413.
    pub max_body_bytes: usize,
    /// Most images (and cine loops) in one request.
    pub max_images: usize,
    /// A bearer token every `/v1/` request must carry.
    pub api_key: Option<String>,
    /// A directory under which `image_url` may name local files.
    pub allow_local_files: Option<PathBuf>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            model_name: "echovlm".into(),
            max_queue: 64,
            max_batch: 8,
            max_body_bytes: 32 << 20,
            max_images: 16,
            api_key: None,
            allow_local_files: None,
        }
    }
}

impl ServerConfig {
    /// Sets [`model_name`](Self::model_name).
    pub fn model_name(mut self, v: impl Into<String>) -> Self {
        self.model_name = v.into();
        self
    }
    /// Sets [`max_queue`](Self::max_queue).
    pub fn max_queue(mut self, v: usize) -> Self {
        self.max_queue = v;
        self
    }
    /// Sets [`max_batch`](Self::max_batch).
    pub fn max_batch(mut self, v: usize) -> Self {
        self.max_batch = v;
        self
    }
    /// Sets [`max_body_bytes`](Self::max_body_bytes).
    pub fn max_body_bytes(mut self, v: usize) -> Self {
        self.max_body_bytes = v;
        self
    }
    /// Sets [`max_images`](Self::max_images).
    pub fn max_images(mut self, v: usize) -> Self {
        self.max_images = v;
        self
    }
    /// Sets [`api_key`](Self::api_key).
    pub fn api_key(mut self, v: Option<String>) -> Self {
        self.api_key = v.filter(|k| !k.is_empty());
        self
    }
    /// Sets [`allow_local_files`](Self::allow_local_files).
    pub fn allow_local_files(mut self, v: Option<PathBuf>) -> Self {
        self.allow_local_files = v;
        self
    }
}

struct AppState {
    config: ServerConfig,
    limits: RequestLimits,
    engine: Engine,
    metrics: Arc<Metrics>,
    draining: AtomicBool,
    next_id: AtomicU64,
    created: u64,
    load_failed: Arc<tokio::sync::Notify>,
}

/// A server over one loaded model.
#[derive(Clone)]
pub struct Server {
    state: Arc<AppState>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("model", &self.state.config.model_name)
            .field("engine", &self.state.engine)
            .finish()
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Server {
    /// Starts the generation worker on a loaded model. An `allow_local_files` directory that
    /// cannot be canonicalised allows nothing.
    pub fn new(model: Arc<EchoVlm>, config: ServerConfig) -> Self {
        Self::build(
            Box::new(|| Err(echovlm_pipeline::EchoError::Device("no model".into()))),
            Some(model),
            config,
        )
    }

    /// Starts the generation worker, which loads the model with `loader` first: the server
    /// answers `/health` at once, and `/ready` (and chat completions) only once the model is
    /// loaded; when loading fails, [`serve`](Self::serve) stops with the error.
    pub fn loading(
        config: ServerConfig,
        loader: impl FnOnce() -> Result<EchoVlm, echovlm_pipeline::EchoError> + Send + 'static,
    ) -> Self {
        Self::build(Box::new(loader), None, config)
    }

    fn build(loader: engine::Loader, model: Option<Arc<EchoVlm>>, config: ServerConfig) -> Self {
        let metrics = Arc::new(Metrics::default());
        let load_failed = Arc::new(tokio::sync::Notify::new());
        let notify = load_failed.clone();
        let engine = Engine::start_loading(
            loader,
            model,
            config.max_queue,
            config.max_batch,
            metrics.clone(),
            Box::new(move |_| notify.notify_one()),
        );
        let limits = RequestLimits {
            max_images: config.max_images,
            local_files: config
                .allow_local_files
                .as_ref()
                .and_then(|d| d.canonicalize().ok()),
        };
        Self {
            state: Arc::new(AppState {
                config,
                limits,
                engine,
                metrics,
                draining: AtomicBool::new(false),
                next_id: AtomicU64::new(0),
                created: now_secs(),
                load_failed,
            }),
        }
    }

    /// Whether the model is loaded.
    pub fn is_loaded(&self) -> bool {
        self.state.engine.model().is_some()
    }

    /// The routes.
    pub fn router(&self) -> Router {
        let st = self.state.clone();
        let v1 = Router::new()
            .route("/v1/chat/completions", post(chat_completions))
            .route("/v1/models", get(models))
            .layer(middleware::from_fn_with_state(st.clone(), auth));
        Router::new()
            .merge(v1)
            .route("/health", get(health))
            .route("/ready", get(ready))
            .route("/metrics", get(metrics_text))
            .fallback(not_found)
            .layer(DefaultBodyLimit::max(st.config.max_body_bytes))
            .layer(middleware::from_fn_with_state(st.clone(), count))
            .with_state(st)
    }

    /// Serves on `listener` until `shutdown` resolves, then stops taking requests, lets the
    /// ones in flight finish (streams included) and stops the worker. Returns an error when
    /// the model failed to load.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let st = self.state.clone();
        let app = self.router();
        let failed = st.load_failed.clone();
        let signal = async move {
            tokio::select! {
                _ = shutdown => {},
                _ = failed.notified() => {},
            }
            st.draining.store(true, Ordering::SeqCst);
        };
        let result = axum::serve(listener, app)
            .with_graceful_shutdown(signal)
            .await;
        let st = self.state.clone();
        st.draining.store(true, Ordering::SeqCst);
        let engine_state = st.clone();
        let _ = tokio::task::spawn_blocking(move || engine_state.engine.shutdown()).await;
        if let Some(e) = st.engine.load_error() {
            return Err(std::io::Error::other(format!(
                "loading the model failed: {e}"
            )));
        }
        result
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

async fn count(State(st): State<Arc<AppState>>, req: HttpRequest, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "other".to_string(), |p| p.as_str().to_string());
    let resp = next.run(req).await;
    st.metrics.request(&route, resp.status().as_u16());
    resp
}

/// Compares in time independent of where the strings differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn auth(State(st): State<Arc<AppState>>, req: HttpRequest, next: Next) -> Response {
    if let Some(key) = &st.config.api_key {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        if !given.is_some_and(|g| same_secret(g.as_bytes(), key.as_bytes())) {
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "missing or wrong API key (Authorization: Bearer …)",
            )
            .code("invalid_api_key")
            .into_response();
        }
    }
    next.run(req).await
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "no such route",
    )
    .code("not_found")
}

async fn health() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

async fn ready(State(st): State<Arc<AppState>>) -> Response {
    let status = if st.engine.load_error().is_some() {
        "failed"
    } else if st.engine.model().is_none() {
        "loading"
    } else if st.draining.load(Ordering::SeqCst) || !st.engine.alive() {
        "unavailable"
    } else {
        ""
    };
    if !status.is_empty() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": status})),
        )
            .into_response();
    }
    Json(json!({"status": "ready", "model": st.config.model_name})).into_response()
}

async fn metrics_text(State(st): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        st.metrics.render(st.engine.queue_depth()),
    )
        .into_response()
}

async fn models(State(st): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let architecture = st.engine.model().map(|m| m.architecture().as_str());
    Json(json!({
        "object": "list",
        "data": [{
            "id": st.config.model_name,
            "object": "model",
            "created": st.created,
            "owned_by": "echovlm",
            "architecture": architecture,
        }]
    }))
}

/// Counts a completion as in flight until dropped; records its latency then.
struct InFlight {
    st: Arc<AppState>,
    start: Instant,
    cancel: CancelToken,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        // the client is gone or the answer is complete: either way stop generating
        self.cancel.cancel();
        self.st.metrics.in_flight(-1);
        self.st.metrics.latency(self.start.elapsed().as_secs_f64());
    }
}

fn usage(f: &Finished) -> serde_json::Value {
    json!({
        "prompt_tokens": f.prompt_tokens,
        "completion_tokens": f.completion_tokens,
        "total_tokens": f.prompt_tokens + f.completion_tokens,
    })
}

async fn chat_completions(
    State(st): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let start = Instant::now();
    let body = body.map_err(|e| {
        let status = e.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                status,
                "invalid_request_error",
                format!(
                    "the request body is larger than {} bytes",
                    st.config.max_body_bytes
                ),
            )
            .code("request_too_large")
        } else {
            ApiError::new(status, "invalid_request_error", e.body_text())
        }
    })?;
    if st.draining.load(Ordering::SeqCst) {
        return Err(engine::shutting_down());
    }
    let req: ChatRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::invalid(format!(
            "the body is not a valid chat completion request: {e}"
        ))
        .code("invalid_json")
    })?;
    let plan = api::plan(&req, &st.limits)?;
    let Some(model) = st.engine.model() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "the model is not loaded yet",
        )
        .code("model_loading"));
    };
    let ticket = st.engine.admit()?;
    let model2 = model.clone();
    let plan2 = plan.clone();
    let prompt = tokio::task::spawn_blocking(move || {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| plan2.prepare(&model2)))
    })
    .await
    .map_err(|_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "preparing failed",
        )
    })?
    .map_err(|_| ApiError::invalid("the request could not be prepared"))??;
    let context = model.text_model().config.max_position_embeddings;
    let opts = api::options(
        &req,
        &model.default_generation(),
        plan.max_tokens,
        prompt.ids.len(),
        context,
    )?;
    let cancel = CancelToken::new();
    let (tx, mut rx) = mpsc::unbounded_channel();
    st.metrics.in_flight(1);
    let guard = InFlight {
        st: st.clone(),
        start,
        cancel: cancel.clone(),
    };
    st.engine.submit(Job {
        prompt,
        opts,
        stops: plan.stops.clone(),
        stream: plan.stream,
        cancel,
        events: tx,
        ticket: Some(ticket),
    })?;
    let id = format!(
        "chatcmpl-{:x}{:06x}",
        now_secs(),
        st.next_id.fetch_add(1, Ordering::Relaxed)
    );
    let created = now_secs();
    let model_name = st.config.model_name.clone();
    if !plan.stream {
        let done = loop {
            match rx.recv().await {
                Some(Event::Delta(_)) => continue,
                Some(Event::Done(d)) => break d,
                None => {
                    break Err(ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "server_error",
                        "the generation worker stopped",
                    ));
                }
            }
        };
        drop(guard);
        let f = done?;
        return Ok(Json(json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": model_name,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": f.text},
                "finish_reason": f.finish_reason,
                "logprobs": null,
            }],
            "usage": usage(&f),
        }))
        .into_response());
    }
    let include_usage = plan.include_usage;
    let chunk = move |delta: serde_json::Value, finish: Option<&str>| {
        json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model_name,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": null}],
        })
    };
    let first = chunk(json!({"role": "assistant", "content": ""}), None).to_string();
    let state = (rx, VecDeque::from([first]), false, guard);
    let stream =
        futures_util::stream::unfold(state, move |(mut rx, mut pending, mut done, guard)| {
            let chunk = chunk.clone();
            async move {
                loop {
                    if let Some(data) = pending.pop_front() {
                        let event = Ok::<_, Infallible>(SseEvent::default().data(data));
                        return Some((event, (rx, pending, done, guard)));
                    }
                    if done {
                        return None;
                    }
                    match rx.recv().await {
                        Some(Event::Delta(t)) => {
                            pending.push_back(chunk(json!({"content": t}), None).to_string());
                            continue;
                        }
                        Some(Event::Done(Ok(f))) => {
                            pending.push_back(chunk(json!({}), Some(f.finish_reason)).to_string());
                            if include_usage {
                                let mut last = chunk(json!({}), None);
                                last["choices"] = json!([]);
                                last["usage"] = usage(&f);
                                pending.push_back(last.to_string());
                            }
                        }
                        Some(Event::Done(Err(e))) => pending.push_back(e.body().to_string()),
                        None => pending.push_back(
                            ApiError::new(
                                StatusCode::INTERNAL_SERVER_ERROR,
                                "server_error",
                                "the generation worker stopped",
                            )
                            .body()
                            .to_string(),
                        ),
                    }
                    pending.push_back("[DONE]".to_string());
                    done = true;
                }
            }
        });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}
