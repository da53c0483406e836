//! The error type of the CPU path and the checked size arithmetic every buffer goes through.

/// What is wrong with a shape or buffer handed to the CPU kernels.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CpuError {
    /// A size computed from the given dimensions does not fit in the address space.
    #[error("{what} of dimensions {dims:?} is too large for the address space")]
    Overflow {
        /// What was being sized.
        what: &'static str,
        /// The dimensions whose product overflowed.
        dims: Vec<usize>,
    },
    /// A buffer's length does not match the shape it comes with.
    #[error("{what} has {found} elements, expected {expected}")]
    Length {
        /// The buffer.
        what: &'static str,
        /// Length the shape calls for.
        expected: usize,
        /// Length given.
        found: usize,
    },
    /// Dimensions that do not fit together.
    #[error("{what}: dimensions {dims:?} do not fit together")]
    Shape {
        /// What was being shaped, and the order of `dims`.
        what: &'static str,
        /// The dimensions given.
        dims: Vec<usize>,
    },
    /// A row index past the last row.
    #[error("row {row} of a matrix with {rows} rows")]
    Row {
        /// The index asked for.
        row: usize,
        /// Rows of the matrix.
        rows: usize,
    },
    /// Storage that is not a float format.
    #[error("cannot pack {0} storage (F32, F16 or BF16 only)")]
    Storage(&'static str),
    /// The memory for a buffer could not be allocated.
    #[error("cannot allocate {bytes} bytes")]
    Alloc {
        /// Bytes asked for.
        bytes: usize,
    },
    /// A name that is not one of the accepted ones.
    #[error("unknown {what} {name:?} (use {expected})")]
    UnknownName {
        /// What was being named.
        what: &'static str,
        /// The name given.
        name: String,
        /// The accepted names.
        expected: &'static str,
    },
    /// A thread count the pool cannot take: zero, or another size than the one it already runs.
    #[error("cannot run on {wanted} threads{}", match running {
        Some(n) => format!(": the thread pool already runs {n} (set the thread count before the first model loads)"),
        None => String::new(),
    })]
    Threads {
        /// Threads asked for.
        wanted: usize,
        /// Threads the pool already runs.
        running: Option<usize>,
    },
}

/// Largest byte size of one buffer (Rust allocations are limited to `isize::MAX` bytes).
const MAX_BYTES: usize = isize::MAX as usize;

/// `a · b · size ≤ MAX_BYTES`, or [`CpuError::Overflow`] about `what`.
pub(super) fn checked_bytes(
    what: &'static str,
    a: usize,
    b: usize,
    size: usize,
) -> Result<usize, CpuError> {
    a.checked_mul(b)
        .and_then(|n| n.checked_mul(size))
        .filter(|&n| n <= MAX_BYTES)
        .ok_or_else(|| CpuError::Overflow {
            what,
            dims: vec![a, b, size],
        })
}

/// The product of `dims` as elements of `size` bytes, checked like [`checked_bytes`]; returns
/// the number of elements.
pub(super) fn checked_elements(
    what: &'static str,
    dims: &[usize],
    size: usize,
) -> Result<usize, CpuError> {
    dims.iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .filter(|&n| n.checked_mul(size).is_some_and(|b| b <= MAX_BYTES))
        .ok_or_else(|| CpuError::Overflow {
            what,
            dims: dims.to_vec(),
        })
}

/// Elements of a `[rows, cols]` weight matrix, checked so that its f32 copy fits in memory
/// addresses (the dequantised matrix and the gemm scratch are sized from it).
pub(super) fn matrix_elements(rows: usize, cols: usize) -> Result<usize, CpuError> {
    checked_bytes("weight matrix", rows, cols, 4).map(|bytes| bytes / 4)
}

/// `Ok` when `found == expected`, else [`CpuError::Length`] about `what`.
pub(super) fn check_len(what: &'static str, expected: usize, found: usize) -> Result<(), CpuError> {
    if expected == found {
        Ok(())
    } else {
        Err(CpuError::Length {
            what,
            expected,
            found,
        })
    }
}
