//! Choosing how the CPU holds a checkpoint's weights when the caller leaves it to the library.

use burn::tensor::Device;
use echovlm_core::cpu::{Kernel, WeightFormat, active_kernel};
use echovlm_core::{Checkpoint, LinearOptions, StorageDtype};

/// How linear layers (and the embedding table) hold their weights.
///
/// ```
/// use echovlm_pipeline::{LinearOptions, LoadOptions, WeightFormat, Weights};
/// // the default: chosen at load from the checkpoint and the memory available
/// assert_eq!(LoadOptions::default().weights, Weights::Auto);
/// // int8 on the CPU, whatever the machine
/// let opts = LoadOptions::default().linear(LinearOptions::cpu(WeightFormat::Int8));
/// assert_eq!(opts.weights, Weights::Exact(LinearOptions::cpu(WeightFormat::Int8)));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Weights {
    /// Chosen at load. On the CPU: the checkpoint's own storage type (bf16 for the released
    /// EchoVLM, so nothing is rounded) where the CPU has a vector kernel for it, else f32; int8,
    /// then int4, when that would not fit in the memory available (`MemAvailable`, and the
    /// cgroup's limit in a container) with headroom for the KV cache and activations. f32 only when the
    /// checkpoint is stored in f32 or f16. Off the CPU: Burn tensors of the model's float type.
    /// [`EchoVlm::weight_choice`](crate::EchoVlm::weight_choice) says what was chosen and why.
    #[default]
    Auto,
    /// Exactly these options.
    Exact(LinearOptions),
}

/// Reads the names the CLI's `--weights` takes: `auto`, `portable` (Burn tensors and Burn's
/// matmul), or a [`WeightFormat`] for the CPU kernels (`f32`, `bf16`, `int8`, `int4`).
impl std::str::FromStr for Weights {
    type Err = echovlm_core::cpu::CpuError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "auto" => Weights::Auto,
            "portable" => Weights::Exact(LinearOptions::portable()),
            format => Weights::Exact(LinearOptions::cpu(format.parse::<WeightFormat>()?)),
        })
    }
}

/// Memory kept free beside the weights: a tenth of them plus 1 GiB (KV cache, activations,
/// the tokenizer, the process itself).
pub(crate) fn headroom(weight_bytes: u64) -> u64 {
    weight_bytes / 10 + (1 << 30)
}

/// The packed format for a checkpoint whose weights are mostly `storage`, with `parameters`
/// elements, given the bytes of memory `available` (None: unknown) and whether the CPU runs a
/// vector kernel (AVX2 or AVX-512) rather than the portable loops. Returns the format and a
/// sentence saying why.
pub(crate) fn choose_format(
    storage: StorageDtype,
    parameters: u64,
    available: Option<u64>,
    vector_kernel: bool,
) -> (WeightFormat, String) {
    let (preferred, why) = match storage {
        StorageDtype::BF16 if vector_kernel => (
            WeightFormat::Bf16,
            "the checkpoint's storage type".to_string(),
        ),
        StorageDtype::BF16 => (
            WeightFormat::F32,
            "the checkpoint is bf16 but this CPU has no AVX2/AVX-512 kernel for it".to_string(),
        ),
        other => (
            WeightFormat::F32,
            format!(
                "the checkpoint is stored in {}",
                other.name().to_lowercase()
            ),
        ),
    };
    let need = |f: WeightFormat| (parameters as f64 * f.bytes_per_weight()) as u64;
    let gb = |b: u64| b as f64 / 1e9;
    let Some(available) = available else {
        return (
            preferred,
            format!("{preferred} ({why}; available memory unknown)"),
        );
    };
    let fits = |f: WeightFormat| need(f).saturating_add(headroom(need(f))) <= available;
    if fits(preferred) {
        return (
            preferred,
            format!(
                "{preferred} ({why}; {:.1} GB of weights, {:.1} GB available)",
                gb(need(preferred)),
                gb(available)
            ),
        );
    }
    // the preferred format does not fit: the largest quantised one that does, else the smallest
    let smaller: Vec<WeightFormat> = [WeightFormat::Int8, WeightFormat::Int4]
        .into_iter()
        .filter(|&f| need(f) < need(preferred))
        .collect();
    let chosen = smaller
        .iter()
        .copied()
        .find(|&f| fits(f))
        .or(smaller.last().copied())
        .unwrap_or(preferred);
    let tail = if fits(chosen) {
        "fits"
    } else {
        "may not fit either; free memory or run on a larger machine"
    };
    (
        chosen,
        format!(
            "{chosen} ({preferred} would need {:.1} GB of weights plus headroom, {:.1} GB available; {chosen} needs {:.1} GB and {tail})",
            gb(need(preferred)),
            gb(available),
            gb(need(chosen)),
        ),
    )
}

/// The float type most of the checkpoint's elements are stored in.
pub(crate) fn storage_dtype(ckpt: &Checkpoint) -> StorageDtype {
    let mut counts = [
        (StorageDtype::F32, 0usize),
        (StorageDtype::BF16, 0),
        (StorageDtype::F16, 0),
    ];
    for key in ckpt.keys() {
        if let Some(e) = ckpt.entry(key)
            && let Some(c) = counts.iter_mut().find(|(d, _)| *d == e.dtype)
        {
            c.1 += e.numel();
        }
    }
    counts
        .iter()
        .max_by_key(|(_, n)| *n)
        .map(|(d, _)| *d)
        .unwrap_or(StorageDtype::F32)
}

/// Bytes this process may still allocate: `MemAvailable` from `/proc/meminfo`, lowered to what
/// the cgroup (v2) leaves when the process runs under a memory limit. None off Linux.
pub(crate) fn available_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse::<u64>()
        .ok()?;
    let mut avail = kb.saturating_mul(1024);
    let read = |p: &str| -> Option<u64> { std::fs::read_to_string(p).ok()?.trim().parse().ok() };
    if let (Some(max), Some(cur)) = (
        read("/sys/fs/cgroup/memory.max"),
        read("/sys/fs/cgroup/memory.current"),
    ) {
        avail = avail.min(max.saturating_sub(cur));
    }
    Some(avail)
}

/// The linear options `weights` stands for on `device` for `ckpt`, and a sentence saying why.
pub(crate) fn resolve(
    weights: &Weights,
    device: &Device,
    ckpt: &Checkpoint,
) -> (LinearOptions, String) {
    match weights {
        Weights::Exact(l) => {
            let why = match l.cpu_format {
                Some(f) if on_cpu(device) => format!("{f} (as asked)"),
                Some(f) => format!(
                    "Burn tensors of the model's float type ({f} weights are a format of the \
                     CPU kernels; off the CPU the weights are Burn tensors)"
                ),
                None => "Burn tensors of the model's float type (as asked)".to_string(),
            };
            (l.clone(), why)
        }
        Weights::Auto if !on_cpu(device) => (
            LinearOptions::portable(),
            "Burn tensors of the model's float type (not on the CPU)".to_string(),
        ),
        Weights::Auto => {
            let (format, why) = choose_format(
                storage_dtype(ckpt),
                ckpt.num_elements() as u64,
                available_memory(),
                active_kernel() != Kernel::Portable,
            );
            (LinearOptions::cpu(format), why)
        }
    }
}

/// Whether `device` is the flex CPU device, where packed weights are used.
pub(crate) fn on_cpu(device: &Device) -> bool {
    #[cfg(feature = "flex")]
    {
        *device == Device::flex()
    }
    #[cfg(not(feature = "flex"))]
    {
        let _ = device;
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GB: u64 = 1_000_000_000;
    // the released EchoVLM: 11.68 B parameters stored in bf16
    const RELEASED: u64 = 11_680_000_000;

    #[test]
    fn bf16_checkpoints_stay_bf16_where_they_fit() {
        let (f, why) = choose_format(StorageDtype::BF16, RELEASED, Some(40 * GB), true);
        assert_eq!(f, WeightFormat::Bf16, "{why}");
        assert!(
            why.contains("storage type") && why.contains("40.0 GB available"),
            "{why}"
        );
    }

    #[test]
    fn too_little_memory_falls_back_to_int8_then_int4_and_says_so() {
        // 23.4 GB of bf16 weights + headroom do not fit in 24 GB; 12.4 GB of int8 do
        let (f, why) = choose_format(StorageDtype::BF16, RELEASED, Some(24 * GB), true);
        assert_eq!(f, WeightFormat::Int8, "{why}");
        assert!(
            why.contains("bf16 would need 23.4 GB")
                && why.ends_with("int8 needs 12.4 GB and fits)"),
            "{why}"
        );
        // int8 and its headroom (14.7 GB) do not fit in 12 GB; 6.6 GB of int4 do
        let (f, why) = choose_format(StorageDtype::BF16, RELEASED, Some(12 * GB), true);
        assert_eq!(f, WeightFormat::Int4, "{why}");
        assert!(why.ends_with("int4 needs 6.6 GB and fits)"), "{why}");
        // not even int4 fits: still int4, with a warning in the reason
        let (f, why) = choose_format(StorageDtype::BF16, RELEASED, Some(8 * GB), true);
        assert_eq!(f, WeightFormat::Int4);
        assert!(why.contains("may not fit"), "{why}");
        // an f32 checkpoint falls back the same way
        let (f, _) = choose_format(StorageDtype::F32, RELEASED, Some(24 * GB), true);
        assert_eq!(f, WeightFormat::Int8);
    }

    #[test]
    fn weights_parse_from_the_cli_names() {
        assert_eq!("auto".parse::<Weights>(), Ok(Weights::Auto));
        assert_eq!(
            "portable".parse::<Weights>(),
            Ok(Weights::Exact(LinearOptions::portable()))
        );
        for f in ["f32", "bf16", "int8", "int4"] {
            assert_eq!(
                f.parse::<Weights>(),
                Ok(Weights::Exact(LinearOptions::cpu(f.parse().unwrap())))
            );
        }
        let err = "int3".parse::<Weights>().unwrap_err().to_string();
        assert!(err.contains("unknown weight format \"int3\""), "{err}");
    }

    #[test]
    fn headroom_is_counted() {
        // the weights alone fit, the weights and their headroom do not
        let params = 10 * GB / 2;
        let weights = params * 2;
        let (f, _) = choose_format(
            StorageDtype::BF16,
            params,
            Some(weights + headroom(weights)),
            true,
        );
        assert_eq!(f, WeightFormat::Bf16);
        let (f, _) = choose_format(
            StorageDtype::BF16,
            params,
            Some(weights + headroom(weights) - 1),
            true,
        );
        assert_eq!(f, WeightFormat::Int8);
    }

    #[test]
    fn f32_only_for_f32_or_f16_checkpoints_or_without_a_vector_kernel() {
        let (f, why) = choose_format(StorageDtype::F32, 1_000_000, Some(8 * GB), true);
        assert_eq!(f, WeightFormat::F32, "{why}");
        assert!(why.contains("stored in f32"), "{why}");
        let (f, _) = choose_format(StorageDtype::F16, 1_000_000, Some(8 * GB), true);
        assert_eq!(f, WeightFormat::F32);
        let (f, why) = choose_format(StorageDtype::BF16, 1_000_000, Some(8 * GB), false);
        assert_eq!(f, WeightFormat::F32);
        assert!(why.contains("no AVX2/AVX-512 kernel"), "{why}");
    }

    #[test]
    fn unknown_memory_keeps_the_storage_type() {
        let (f, why) = choose_format(StorageDtype::BF16, RELEASED, None, true);
        assert_eq!(f, WeightFormat::Bf16);
        assert!(why.contains("unknown"), "{why}");
    }

    #[test]
    fn available_memory_is_read_on_linux() {
        if !std::path::Path::new("/proc/meminfo").exists() {
            eprintln!("SKIPPED: no /proc/meminfo on this system");
            return;
        }
        let avail = available_memory().expect("MemAvailable in /proc/meminfo");
        assert!(avail > 0);
    }
}
