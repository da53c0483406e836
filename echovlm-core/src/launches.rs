//! Kernel launches on the GPU backends (wgpu, CUDA): how many a piece of work issues, of which
//! kernels, and (on request) how long each ran on the device.
//!
//! A decode step on a GPU is bound by how many kernels it launches as much as by the bytes it
//! reads: each launch costs the host Burn's fusion bookkeeping and CubeCL's dispatch, and the
//! device an idle gap if the host falls behind. [`Launches`] watches every launch of the process
//! while it lives (CubeCL's launch observer), so tests can pin a launch budget per decode step
//! and a probe on a real GPU can say where a step's time goes.
//!
//! It also counts the operations Burn's fusion registers meanwhile (its fusion observer): every
//! tensor operation, including the ones that launch nothing (reshapes, transposes, drops), costs
//! the host its share of the fusion bookkeeping.
//!
//! Only in builds with the `wgpu` or `cuda` feature; the CPU backend launches no kernels.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use burn_fusion::observer::{BlockOperations, FusionObservation, FusionObserver};
use burn_ir::OperationIr;
use cubecl_runtime::config::{TypeNameFormatLevel, type_name_format};
use cubecl_runtime::logging::{
    LaunchObservation, LaunchObserver, ProfileDuration, TimingMethod, TimingRequest,
};

/// One kernel's launches seen by a [`Launches`].
#[derive(Debug, Clone, PartialEq)]
pub struct KernelLaunches {
    /// The kernel's name, shortened the way CubeCL's profiler prints it.
    pub name: String,
    /// How many times it was launched.
    pub count: u64,
    /// Device time summed over its timed launches ([`Launches::timed`] only; zero otherwise).
    pub device_time: Duration,
    /// Of `device_time`, how much the backend timed on the host instead of the device
    /// (wgpu falls back to that once its timestamp queries run out).
    pub host_timed: Duration,
}

#[derive(Default)]
struct Seen {
    operations: HashMap<String, u64>,
    total: u64,
    counts: HashMap<&'static str, u64>,
    pending: Vec<(&'static str, ProfileDuration)>,
    timed: HashMap<&'static str, (Duration, Duration)>,
}

struct Observer {
    timed: bool,
    seen: Mutex<Seen>,
}

impl Observer {
    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl LaunchObserver for Observer {
    fn launched(&self, kernel: &'static str) {
        let mut seen = self.seen();
        seen.total += 1;
        *seen.counts.entry(kernel).or_default() += 1;
    }

    fn timing(&self) -> TimingRequest {
        if self.timed {
            TimingRequest::Deferred
        } else {
            TimingRequest::None
        }
    }

    fn profiled(&self, kernel: &'static str, profile: ProfileDuration) {
        self.seen().pending.push((kernel, profile));
    }

    fn timed(&self, kernel: &'static str, duration: Duration, method: TimingMethod) {
        add_time(&mut self.seen(), kernel, duration, method);
    }
}

impl FusionObserver for Observer {
    fn registered(&self, operation: &OperationIr) {
        *self
            .seen()
            .operations
            .entry(operation_kind(operation))
            .or_default() += 1;
    }

    fn block_starts(&self, _block: BlockOperations<'_>) {}

    fn block_ran(&self) {}
}

/// `Family::Operation` of an operation, from its debug form (`BaseFloat(Reshape(…))` →
/// `BaseFloat::Reshape`; `NumericFloat(F32, Add(…))` → `NumericFloat::Add`: a float type in
/// between is skipped).
fn operation_kind(operation: &OperationIr) -> String {
    let text = format!("{operation:?}");
    let is_dtype = |w: &str| {
        let digits = w.trim_start_matches(|c: char| c.is_ascii_uppercase());
        w != digits && !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit())
    };
    let mut names = text
        .split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with(char::is_uppercase) && !is_dtype(w));
    match (names.next(), names.next()) {
        (Some(a), Some(b)) => format!("{a}::{b}"),
        (Some(a), None) => a.to_string(),
        _ => text,
    }
}

fn add_time(seen: &mut Seen, kernel: &'static str, d: Duration, method: TimingMethod) {
    let t = seen.timed.entry(kernel).or_default();
    t.0 += d;
    if method == TimingMethod::System {
        t.1 += d;
    }
}

/// Watches every kernel launch in the process, and every operation Burn's fusion registers,
/// from [`count`](Self::count) or [`timed`](Self::timed) until it is dropped.
///
/// One observation at a time: CubeCL has one observer slot per process, so a second
/// `Launches` replaces the first until it is dropped, and launches from other threads are
/// counted too. Tests that count launches should take turns.
pub struct Launches {
    observer: Arc<Observer>,
    _observation: LaunchObservation,
    _fusion: FusionObservation,
}

impl std::fmt::Debug for Launches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Launches")
            .field("total", &self.total())
            .finish()
    }
}

impl Launches {
    /// Counts launches (by kernel) without timing them: the launches run as they would
    /// unobserved.
    pub fn count() -> Self {
        Self::start(false)
    }

    /// Counts launches and times each on the device without waiting for it (CubeCL's
    /// deferred timing); [`by_kernel`](Self::by_kernel) then waits for the measurements. Each
    /// timed launch costs the host a round trip to the device's server, so the pass runs
    /// slower than unobserved: use it for where the device time goes, not for the step time.
    pub fn timed() -> Self {
        Self::start(true)
    }

    fn start(timed: bool) -> Self {
        let observer = Arc::new(Observer {
            timed,
            seen: Mutex::new(Seen::default()),
        });
        let _observation = LaunchObservation::new(observer.clone());
        let _fusion = FusionObservation::new(observer.clone());
        Self {
            observer,
            _observation,
            _fusion,
        }
    }

    /// Tensor operations Burn's fusion registered so far (on its server thread, which lags
    /// the calls that recorded them: synchronise the device before reading), by kind
    /// (`BaseFloat::Reshape`, `Float::Matmul`, …), most first (ties by name).
    pub fn operations(&self) -> Vec<(String, u64)> {
        let mut v: Vec<_> = self
            .observer
            .seen()
            .operations
            .iter()
            .map(|(k, &n)| (k.clone(), n))
            .collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v
    }

    /// Launches seen so far.
    pub fn total(&self) -> u64 {
        self.observer.seen().total
    }

    /// Launches seen so far, by kernel, most launched first (ties by name). Under
    /// [`timed`](Self::timed) this first waits for every pending measurement: synchronise the
    /// device before calling it.
    pub fn by_kernel(&self) -> Vec<KernelLaunches> {
        let pending = std::mem::take(&mut self.observer.seen().pending);
        for (kernel, profile) in pending {
            let method = profile.timing_method();
            if let Some(ticks) = block_on(profile.resolve()) {
                add_time(&mut self.observer.seen(), kernel, ticks.duration(), method);
            }
        }
        let seen = self.observer.seen();
        let mut merged: HashMap<String, KernelLaunches> = HashMap::new();
        for (&kernel, &count) in &seen.counts {
            let name = type_name_format(kernel, TypeNameFormatLevel::Balanced);
            let e = merged.entry(name.clone()).or_insert(KernelLaunches {
                name,
                count: 0,
                device_time: Duration::ZERO,
                host_timed: Duration::ZERO,
            });
            e.count += count;
            if let Some(&(d, h)) = seen.timed.get(kernel) {
                e.device_time += d;
                e.host_timed += h;
            }
        }
        let mut v: Vec<_> = merged.into_values().collect();
        v.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.name.cmp(&b.name)));
        v
    }
}

/// Runs a future to completion on this thread, parking between polls.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    use std::task::{Context, Poll, Wake, Waker};
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        match f.as_mut().poll(&mut cx) {
            Poll::Ready(v) => return v,
            Poll::Pending => std::thread::park_timeout(Duration::from_millis(1)),
        }
    }
}

/// While alive, every kernel launch is compiled and dropped instead of run (CubeCL's dry run):
/// what a pass then costs is the host's side alone (Burn's tensor bookkeeping and fusion, and
/// CubeCL's dispatch). Anything read back meanwhile is meaningless.
pub use cubecl_runtime::dry_run::DryRun;
