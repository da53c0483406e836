//! Prometheus text-format metrics, kept by hand (a few counters, two gauges, one histogram).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Upper bounds (seconds) of the latency histogram buckets.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// The server's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    in_flight: AtomicI64,
    generated_tokens: AtomicU64,
    steps: AtomicU64,
    step_sequences: AtomicU64,
    running: AtomicI64,
    batched_requests: AtomicU64,
    latency: Mutex<([u64; LATENCY_BUCKETS.len()], u64, f64)>,
}

impl Metrics {
    /// Counts a finished HTTP request.
    pub fn request(&self, route: &str, status: u16) {
        if let Ok(mut m) = self.requests.lock() {
            *m.entry((route.to_string(), status)).or_default() += 1;
        }
    }

    /// One more (or, with a negative `d`, fewer) chat completions in progress.
    pub fn in_flight(&self, d: i64) {
        self.in_flight.fetch_add(d, Ordering::SeqCst);
    }

    /// Completions in progress.
    pub fn in_flight_now(&self) -> i64 {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Adds generated tokens.
    pub fn generated(&self, n: usize) {
        self.generated_tokens.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Tokens generated so far.
    pub fn generated_tokens(&self) -> u64 {
        self.generated_tokens.load(Ordering::Relaxed)
    }

    /// Decode steps so far.
    pub fn steps(&self) -> u64 {
        self.steps.load(Ordering::Relaxed)
    }

    /// Sequences decoded, summed over the steps (over [`steps`](Self::steps): the mean batch).
    pub fn step_sequences(&self) -> u64 {
        self.step_sequences.load(Ordering::Relaxed)
    }

    /// Requests that joined the running batch so far.
    pub fn batched_requests(&self) -> u64 {
        self.batched_requests.load(Ordering::Relaxed)
    }

    /// Counts a request joining the running batch.
    pub fn joined(&self) {
        self.batched_requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a decode step over `n` sequences.
    pub fn step(&self, n: usize) {
        self.steps.fetch_add(1, Ordering::Relaxed);
        self.step_sequences.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Sets the number of sequences in the running batch.
    pub fn running(&self, n: usize) {
        self.running.store(n as i64, Ordering::Relaxed);
    }

    /// Records the latency of a chat completion, from arrival to its last byte.
    pub fn latency(&self, seconds: f64) {
        if let Ok(mut l) = self.latency.lock() {
            for (i, b) in LATENCY_BUCKETS.iter().enumerate() {
                if seconds <= *b {
                    l.0[i] += 1;
                }
            }
            l.1 += 1;
            l.2 += seconds;
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self, queue_depth: usize) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# HELP echovlm_http_requests_total HTTP requests answered, by route and status."
        );
        let _ = writeln!(s, "# TYPE echovlm_http_requests_total counter");
        if let Ok(m) = self.requests.lock() {
            for ((route, status), n) in m.iter() {
                let _ = writeln!(
                    s,
                    "echovlm_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
                );
            }
        }
        let scalars: [(&str, &str, &str, String); 7] = [
            (
                "echovlm_requests_in_flight",
                "gauge",
                "Chat completions admitted and not finished.",
                self.in_flight_now().to_string(),
            ),
            (
                "echovlm_queue_depth",
                "gauge",
                "Requests waiting for the generation worker.",
                queue_depth.to_string(),
            ),
            (
                "echovlm_generated_tokens_total",
                "counter",
                "Tokens generated.",
                self.generated_tokens().to_string(),
            ),
            (
                "echovlm_running_sequences",
                "gauge",
                "Sequences in the running batch.",
                self.running.load(Ordering::Relaxed).to_string(),
            ),
            (
                "echovlm_decode_steps_total",
                "counter",
                "Decode steps (one forward pass for every running sequence).",
                self.steps().to_string(),
            ),
            (
                "echovlm_decode_step_sequences_total",
                "counter",
                "Sequences decoded, summed over steps (over the steps: the mean batch size).",
                self.step_sequences().to_string(),
            ),
            (
                "echovlm_batched_requests_total",
                "counter",
                "Requests that joined the running batch.",
                self.batched_requests().to_string(),
            ),
        ];
        for (name, kind, help, value) in scalars {
            let _ = writeln!(s, "# HELP {name} {help}");
            let _ = writeln!(s, "# TYPE {name} {kind}");
            let _ = writeln!(s, "{name} {value}");
        }
        let _ = writeln!(
            s,
            "# HELP echovlm_request_duration_seconds Chat completion latency, arrival to last byte."
        );
        let _ = writeln!(s, "# TYPE echovlm_request_duration_seconds histogram");
        if let Ok(l) = self.latency.lock() {
            for (i, b) in LATENCY_BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    s,
                    "echovlm_request_duration_seconds_bucket{{le=\"{b}\"}} {}",
                    l.0[i]
                );
            }
            let _ = writeln!(
                s,
                "echovlm_request_duration_seconds_bucket{{le=\"+Inf\"}} {}",
                l.1
            );
            let _ = writeln!(s, "echovlm_request_duration_seconds_sum {}", l.2);
            let _ = writeln!(s, "echovlm_request_duration_seconds_count {}", l.1);
        }
        s
    }
}
