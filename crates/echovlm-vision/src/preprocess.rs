//! Image loading and preprocessing.
