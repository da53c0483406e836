//! Errors of image loading and preprocessing.
