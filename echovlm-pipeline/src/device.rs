//! Choosing the backend at run time.

use burn::tensor::{DType, Device};

use crate::error::EchoError;

/// Backends this build can run on: `cpu`, `wgpu` and `cuda`, each with its cargo feature
/// (`flex`, on by default, for `cpu`).
pub fn available_devices() -> Vec<&'static str> {
    let mut v = Vec::new();
    if cfg!(feature = "flex") {
        v.push("cpu");
    }
    if cfg!(feature = "wgpu") {
        v.push("wgpu");
    }
    if cfg!(feature = "cuda") {
        v.push("cuda");
    }
    v
}

/// The device for a name: `cpu` (Burn's flex backend), `wgpu` (the default GPU through
/// Vulkan, Metal or DirectX), `cuda` or `cuda:N`.
pub fn device_from_name(name: &str) -> Result<Device, EchoError> {
    // used for the backends this build lacks (none when all three features are on)
    #[allow(unused_variables)]
    let unavailable = |feature: &str| {
        EchoError::InvalidRequest(format!(
            "device {name:?} needs the `{feature}` feature of echovlm-pipeline, which this build lacks (available: {})",
            available_devices().join(", ")
        ))
    };
    match name {
        "cpu" | "flex" => {
            #[cfg(feature = "flex")]
            return Ok(Device::flex());
            #[cfg(not(feature = "flex"))]
            return Err(unavailable("flex"));
        }
        "wgpu" | "gpu" => {
            #[cfg(feature = "wgpu")]
            {
                gpu_defaults();
                Ok(Device::wgpu(burn::tensor::DeviceKind::DefaultDevice))
            }
            #[cfg(not(feature = "wgpu"))]
            return Err(unavailable("wgpu"));
        }
        n if n == "cuda" || n.starts_with("cuda:") => {
            #[cfg(feature = "cuda")]
            {
                let index = match n.strip_prefix("cuda:") {
                    Some(i) => i.parse::<usize>().map_err(|_| {
                        EchoError::InvalidRequest(format!("bad CUDA device index in {n:?}"))
                    })?,
                    None => 0,
                };
                gpu_defaults();
                Ok(Device::cuda(index))
            }
            #[cfg(not(feature = "cuda"))]
            return Err(unavailable("cuda"));
        }
        other => Err(EchoError::InvalidRequest(format!(
            "unknown device {other:?} (use one of: {})",
            available_devices().join(", ")
        ))),
    }
}

/// Settings the GPU backends take once per process, before the first GPU device starts: where
/// compiled kernels and autotune results persist (`KernelCache::from_env`, unless
/// `set_kernel_cache` or CubeCL was configured first).
pub(crate) fn gpu_defaults() {
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    echovlm_core::kernel_cache::configure(&echovlm_core::kernel_cache::KernelCache::from_env());
}

/// Checks that `device` can run: creates a small tensor and reads back its sum.
///
/// A GPU device is first looked up among the devices Burn enumerates on this machine (a
/// backend without its driver or adapter lists none, without panicking), so a machine without
/// the GPU gets an error naming the device and nothing is printed. Only a device that is
/// listed and still fails while starting (a broken driver) panics inside Burn; that panic is
/// caught and returned as an error too, but Rust's panic hook, which this function leaves
/// alone, prints its message to standard error.
pub fn probe_device(device: &Device) -> Result<(), EchoError> {
    if !echovlm_core::backend::is_flex(device) {
        gpu_defaults();
    }
    use burn::tensor::Tensor;
    let unavailable =
        |why: &str| EchoError::InvalidRequest(format!("device {device:?} is not available: {why}"));
    if !is_listed(device) {
        return Err(unavailable("this machine has no such device"));
    }
    let d = device.clone();
    let result = std::panic::catch_unwind(move || {
        let t = Tensor::<1>::from_floats([1.0f32, 2.0], &d);
        t.sum().try_into_scalar::<f32>()
    });
    match result {
        Ok(Ok(3.0)) => Ok(()),
        Ok(Ok(v)) => Err(EchoError::InvalidRequest(format!(
            "device {device:?} computed 1 + 2 = {v}"
        ))),
        Ok(Err(e)) => Err(unavailable(&format!("reading back a result failed: {e:?}"))),
        Err(e) => {
            let msg = e
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| e.downcast_ref::<&str>().copied())
                .unwrap_or("unknown failure");
            Err(unavailable(msg.lines().next().unwrap_or(msg)))
        }
    }
}

/// Whether `device` is among the devices Burn finds on this machine (the flex CPU device
/// always is; a backend's default device is when the backend lists any).
fn is_listed(device: &Device) -> bool {
    #[allow(unused_imports)]
    use burn::tensor::DeviceType;
    #[cfg(feature = "flex")]
    if *device == Device::flex() {
        return true;
    }
    let types: Vec<DeviceType> = [
        #[cfg(feature = "wgpu")]
        DeviceType::Wgpu,
        #[cfg(feature = "cuda")]
        DeviceType::Cuda,
    ]
    .into();
    if types.is_empty() {
        return false;
    }
    let found = Device::enumerate(types);
    if found.contains(device) {
        return true;
    }
    #[cfg(feature = "wgpu")]
    if *device == Device::wgpu(burn::tensor::DeviceKind::DefaultDevice)
        && !Device::enumerate(DeviceType::Wgpu).is_empty()
    {
        return true;
    }
    #[cfg(feature = "cuda")]
    if *device == Device::cuda(burn::tensor::DeviceIndex::Default)
        && !Device::enumerate(DeviceType::Cuda).is_empty()
    {
        return true;
    }
    false
}

/// The float type for a name (`f32`, `f16`, `bf16`), falling back to a supported one when the
/// device lacks it. Returns the type used and, when it differs, a sentence saying so.
pub fn dtype_for(device: &Device, name: &str) -> Result<(DType, Option<String>), EchoError> {
    let wanted = match name {
        "f32" | "float32" => DType::F32,
        "f16" | "float16" => DType::F16,
        "bf16" | "bfloat16" => DType::BF16,
        other => {
            return Err(EchoError::InvalidRequest(format!(
                "unknown dtype {other:?} (use f32, f16 or bf16)"
            )));
        }
    };
    if device.supports_dtype(wanted) {
        return Ok((wanted, None));
    }
    for fallback in [DType::F16, DType::F32] {
        if fallback != wanted && device.supports_dtype(fallback) {
            return Ok((
                fallback,
                Some(format!(
                    "{name} is not supported on this device; using {fallback:?} instead"
                )),
            ));
        }
    }
    Err(EchoError::InvalidRequest(format!(
        "the device supports none of {name}, f16, f32"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Probing runs the device and leaves the process's panic hook as it found it.
    #[cfg(feature = "flex")]
    #[test]
    fn probing_keeps_the_panic_hook() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = calls.clone();
        std::panic::set_hook(Box::new(move |_| {
            seen.fetch_add(1, Ordering::SeqCst);
        }));
        probe_device(&device_from_name("cpu").unwrap()).unwrap();
        // a panic after the probe still reaches the hook installed before it
        let _ = std::panic::catch_unwind(|| panic!("after the probe"));
        let _ = std::panic::take_hook();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    /// A device this build cannot run is an error naming it, not a panic.
    #[test]
    fn unavailable_devices_are_errors() {
        for name in ["tpu", "cuda:x"] {
            assert!(matches!(
                device_from_name(name),
                Err(EchoError::InvalidRequest(_))
            ));
        }
    }
}
