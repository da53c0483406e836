//! How many threads the CPU path runs on: Burn's flex backend, the kernels here and the
//! `gemm` crate all share rayon's global pool, which is sized once per process.

use super::CpuError;

/// Physical cores of this machine (logical CPUs where that is unknown). Decode streams weights
/// from memory; a second hyper-thread per core adds no bandwidth, only contention.
pub fn physical_cores() -> usize {
    num_cpus::get_physical().max(1)
}

/// Sizes the global thread pool before the first parallel work.
///
/// `Some(n)` asks for `n` threads; `None` for the default: `RAYON_NUM_THREADS` when it is set,
/// else [`physical_cores`]. Returns the number of threads the pool runs. The pool can be sized
/// only once per process: when it already runs (an earlier load, or other rayon work) an
/// explicit `n` that differs from its size is [`CpuError::Threads`], and `None` keeps it.
pub fn set_threads(threads: Option<usize>) -> Result<usize, CpuError> {
    if threads == Some(0) {
        return Err(CpuError::Threads {
            wanted: 0,
            running: None,
        });
    }
    let from_env = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0);
    let wanted = threads.or(from_env).unwrap_or_else(physical_cores);
    match rayon::ThreadPoolBuilder::new()
        .num_threads(wanted)
        .build_global()
    {
        Ok(()) => Ok(wanted),
        Err(_) => {
            // already built: keep it, unless the caller asked for another size
            let running = rayon::current_num_threads();
            match threads {
                Some(n) if n != running => Err(CpuError::Threads {
                    wanted: n,
                    running: Some(running),
                }),
                _ => Ok(running),
            }
        }
    }
}

/// Runs `f` on a thread of the global pool and returns its result (directly when the caller
/// already is one).
///
/// A model's forward pass alternates parallel products with short serial steps. Called from a
/// thread outside the pool, every product wakes all the pool's threads while the caller waits,
/// and between products they spin on their cores while the caller runs the serial steps: on a
/// machine with as many pool threads as cores, one thread too many competes for them. Run from
/// a pool thread, the caller itself takes part in each product and nothing spins beside it
/// (measured: 15% faster decode on 2 cores).
pub fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        f()
    } else {
        rayon::scope(move |_| f())
    }
}
