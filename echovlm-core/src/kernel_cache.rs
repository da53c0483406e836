//! Where the GPU backends keep compiled kernels and autotune results between processes.
//!
//! The first run of a model on a GPU compiles every kernel it meets and times the candidates
//! of each tunable one (matrix products, attention, fused blocks): on an NVIDIA H200 the first
//! image encode at Qwen2.5-VL-7B's shapes took 96 s and the first prefill 39 s, against 0.13 s
//! and 0.05 s once compiled. CubeCL can keep both in a store on disk so that the next
//! process finds them there; this module turns that on (builds with the `kernel-cache`
//! feature) before the first GPU device starts.
//!
//! The setting is process-wide and taken once: by the first call of [`configure`], or else by
//! CubeCL itself at the first GPU use (its defaults: autotune results kept, compiled kernels
//! not). A `cubecl.toml` in the working directory or above, and CubeCL's `CUBECL_*`
//! environment variables, are read first and kept where this module does not override them.

use std::ffi::OsStr;
use std::path::PathBuf;

/// Where compiled kernels and autotune results persist.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum KernelCache {
    /// CubeCL's default place: `target/environment` of the Cargo workspace the process runs in,
    /// else the user's cache directory (`~/.cache/cubecl` on Linux).
    #[default]
    Default,
    /// This directory.
    Dir(PathBuf),
    /// Nothing persists: every process compiles and tunes again.
    Off,
}

impl KernelCache {
    /// From `ECHOVLM_KERNEL_CACHE`, read as [`from_setting`](Self::from_setting); unset is
    /// [`Default`](Self::Default).
    pub fn from_env() -> Self {
        std::env::var_os("ECHOVLM_KERNEL_CACHE").map_or(Self::Default, Self::from_setting)
    }

    /// From a setting as `ECHOVLM_KERNEL_CACHE` and the CLI's `--kernel-cache` take it: empty
    /// is [`Default`](Self::Default), `off` (or `0`, `false`) is [`Off`](Self::Off), anything
    /// else a directory.
    pub fn from_setting(setting: impl AsRef<OsStr>) -> Self {
        let setting = setting.as_ref();
        match setting.to_str() {
            Some("") => Self::Default,
            Some("off" | "0" | "false") => Self::Off,
            _ => Self::Dir(PathBuf::from(setting)),
        }
    }
}

/// Whether this build can keep kernels between processes (the `kernel-cache` feature).
pub const AVAILABLE: bool = cfg!(feature = "kernel-cache");

/// Sets where compiled kernels and autotune results persist, for the whole process; returns
/// whether this call set it: `false` when CubeCL was already configured (by an earlier call,
/// by the application, or by a GPU device already in use), or when the build lacks the
/// `kernel-cache` feature.
pub fn configure(cache: &KernelCache) -> bool {
    #[cfg(feature = "kernel-cache")]
    {
        use cubecl_runtime::config::cache::CacheConfig;
        use cubecl_runtime::config::{CubeClRuntimeConfig, RuntimeConfig};
        let mut config = CubeClRuntimeConfig::from_current_dir().override_from_env();
        match cache {
            KernelCache::Default => config.compilation.cache = true,
            KernelCache::Dir(dir) => {
                config.compilation.cache = true;
                config.autotune.disable_cache = false;
                config.environment.path = CacheConfig::Directory(dir.clone());
            }
            KernelCache::Off => {
                config.compilation.cache = false;
                config.autotune.disable_cache = true;
            }
        }
        CubeClRuntimeConfig::try_set(config)
    }
    #[cfg(not(feature = "kernel-cache"))]
    {
        let _ = cache;
        false
    }
}
