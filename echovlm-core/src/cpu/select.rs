//! Which kernel runs: the CPU's features and the `ECHOVLM_CPU_KERNEL` switch, read once.

use std::sync::OnceLock;

use super::CpuError;

/// Environment variable that forces a kernel: `portable`, `avx2`, `avx512`, `avx512bf16` or
/// `auto`.
pub const KERNEL_ENV: &str = "ECHOVLM_CPU_KERNEL";

/// A family of matrix-vector kernels. Ordered from slowest to fastest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Kernel {
    /// Plain Rust loops the compiler vectorises for the target's baseline.
    Portable,
    /// AVX2 with FMA and F16C (x86-64).
    Avx2,
    /// AVX-512F (x86-64).
    Avx512,
    /// AVX-512F with AVX-512BW, AVX512_BF16 and AVX-512 VNNI (x86-64; every CPU with
    /// AVX512_BF16 has VNNI): as [`Kernel::Avx512`], and products of bf16 weights run on
    /// `vdpbf16ps` (two bf16 multiply-adds per f32 lane, twice the multiply-adds of an f32 FMA
    /// per instruction), decode products of int8 weights on `vpdpbusd` (four byte
    /// multiply-adds per 32-bit lane).
    Avx512Bf16,
}

impl Kernel {
    /// Every kernel, slowest first.
    pub const ALL: [Kernel; 4] = [
        Kernel::Portable,
        Kernel::Avx2,
        Kernel::Avx512,
        Kernel::Avx512Bf16,
    ];

    /// The name [`KERNEL_ENV`] accepts for it.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Portable => "portable",
            Kernel::Avx2 => "avx2",
            Kernel::Avx512 => "avx512",
            Kernel::Avx512Bf16 => "avx512bf16",
        }
    }

    /// Whether this CPU can run the kernel.
    pub fn is_supported(self) -> bool {
        match self {
            Kernel::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                    && std::arch::is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Bf16 => {
                std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512bf16")
                    && std::arch::is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The fastest kernel this CPU runs.
    pub fn best_supported() -> Kernel {
        resolve_kernel(Kernel::Avx512Bf16, Kernel::is_supported)
    }
}

impl std::fmt::Display for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Kernel {
    type Err = CpuError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Kernel::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| CpuError::UnknownName {
                what: "kernel",
                name: s.to_string(),
                expected: "portable, avx2, avx512 or avx512bf16",
            })
    }
}

/// The fastest kernel no faster than `wanted` that `supported` accepts (portable at worst).
pub(super) fn resolve_kernel(wanted: Kernel, supported: impl Fn(Kernel) -> bool) -> Kernel {
    Kernel::ALL
        .into_iter()
        .rev()
        .find(|&k| k <= wanted && (k == Kernel::Portable || supported(k)))
        .unwrap_or(Kernel::Portable)
}

/// The kernel for a value of [`KERNEL_ENV`] (`None`: unset), and a note when the value could not
/// be followed as given.
fn choose_kernel(
    value: Option<&str>,
    supported: impl Fn(Kernel) -> bool,
) -> (Kernel, Option<String>) {
    let best = resolve_kernel(Kernel::Avx512Bf16, &supported);
    let value = value.map(str::trim).unwrap_or("");
    if value.is_empty() || value.eq_ignore_ascii_case("auto") {
        return (best, None);
    }
    match value.to_ascii_lowercase().parse::<Kernel>() {
        Ok(wanted) => {
            let got = resolve_kernel(wanted, &supported);
            let note = (got != wanted).then(|| {
                format!(
                    "{KERNEL_ENV}={value}: this CPU cannot run the {wanted} kernel; using {got}"
                )
            });
            (got, note)
        }
        Err(e) => (best, Some(format!("{KERNEL_ENV}: {e}; using {best}"))),
    }
}

/// The kernel every product in this process runs: chosen on first use from the CPU and
/// [`KERNEL_ENV`] (see the [module documentation](crate::cpu)), then fixed.
pub fn active_kernel() -> Kernel {
    static ACTIVE: OnceLock<Kernel> = OnceLock::new();
    *ACTIVE.get_or_init(|| {
        let value = std::env::var(KERNEL_ENV).ok();
        let (kernel, note) = choose_kernel(value.as_deref(), Kernel::is_supported);
        if let Some(note) = note {
            eprintln!("warning: {note}");
        }
        kernel
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kernel_the_cpu_lacks_falls_back_to_the_fastest_below_it() {
        let avx2_only = |k: Kernel| k <= Kernel::Avx2;
        let none = |_: Kernel| false;
        let all = |_: Kernel| true;
        assert_eq!(choose_kernel(None, avx2_only), (Kernel::Avx2, None));
        assert_eq!(choose_kernel(Some("auto"), all), (Kernel::Avx512Bf16, None));
        let avx512_only = |k: Kernel| k <= Kernel::Avx512;
        let (k, note) = choose_kernel(Some("avx512bf16"), avx512_only);
        assert_eq!(k, Kernel::Avx512);
        assert!(
            note.unwrap()
                .contains("cannot run the avx512bf16 kernel; using avx512")
        );
        assert_eq!(choose_kernel(Some(" AVX2 "), all), (Kernel::Avx2, None));
        assert_eq!(
            choose_kernel(Some("portable"), all),
            (Kernel::Portable, None)
        );
        let (k, note) = choose_kernel(Some("avx512"), avx2_only);
        assert_eq!(k, Kernel::Avx2);
        assert!(
            note.unwrap()
                .contains("cannot run the avx512 kernel; using avx2")
        );
        let (k, note) = choose_kernel(Some("avx2"), none);
        assert_eq!(k, Kernel::Portable);
        assert!(note.is_some());
        let (k, note) = choose_kernel(Some("neon"), avx2_only);
        assert_eq!(k, Kernel::Avx2);
        assert!(note.unwrap().contains("unknown kernel \"neon\""));
    }
}
