//! The thread pool is sized once: the first request wins, a later different explicit size is a
//! typed error naming both sizes, and `None` keeps whatever runs; `on_pool` runs work on it.
//! (Its own test binary: the pool is process-global.)

use echovlm_core::cpu::{CpuError, on_pool, physical_cores, set_threads};

#[test]
fn the_pool_is_sized_once_and_later_requests_are_checked() {
    assert!(physical_cores() >= 1);
    assert_eq!(
        set_threads(Some(0)),
        Err(CpuError::Threads {
            wanted: 0,
            running: None
        })
    );
    assert_eq!(set_threads(Some(1)), Ok(1));
    assert_eq!(rayon::current_num_threads(), 1);
    // the same size again, and the default, keep the running pool
    assert_eq!(set_threads(Some(1)), Ok(1));
    assert_eq!(set_threads(None), Ok(1));
    let err = set_threads(Some(3)).unwrap_err();
    assert_eq!(
        err,
        CpuError::Threads {
            wanted: 3,
            running: Some(1)
        }
    );
    assert!(err.to_string().contains("already runs 1"), "{err}");
    assert_eq!(rayon::current_num_threads(), 1);

    // `on_pool` moves work from this (outside) thread onto the pool's thread and back; called
    // on a pool thread it runs in place
    assert_eq!(rayon::current_thread_index(), None);
    let caller = std::thread::current().id();
    let (index, nested, id) = on_pool(|| {
        let here = std::thread::current().id();
        let nested = on_pool(|| (rayon::current_thread_index(), std::thread::current().id()));
        assert_eq!(nested.1, here, "a nested call stays on its thread");
        (rayon::current_thread_index(), nested.0, here)
    });
    assert_eq!(index, Some(0));
    assert_eq!(nested, Some(0));
    assert_ne!(id, caller);
}
