//! EchoVLM for Rust: load a checkpoint, build ultrasound requests, generate reports.

#![warn(missing_docs)]

pub mod metrics;
