//! The thread pool is sized once: the first request wins, a later different explicit size is a
//! typed error naming both sizes, and `None` keeps whatever runs. (Its own test binary: the
//! pool is process-global.)

use echovlm_core::cpu::{CpuError, physical_cores, set_threads};

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
}
