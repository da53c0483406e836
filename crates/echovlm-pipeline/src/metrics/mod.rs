//! Report metrics.
