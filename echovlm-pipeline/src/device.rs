//! Choosing the backend at run time.

use burn::tensor::{DType, Device};

use crate::error::EchoError;

/// Backends this build can run on (`cpu` always; `wgpu` and `cuda` with their cargo features).
pub fn available_devices() -> Vec<&'static str> {
    let mut v = vec!["cpu"];
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
            return Ok(Device::wgpu(burn::tensor::DeviceKind::DefaultDevice));
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
                return Ok(Device::cuda(index));
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

/// Checks that `device` can run: creates and reads back a small tensor. A backend that finds no
/// adapter or driver (a GPU device on a machine without one) panics inside Burn; that panic is
/// caught, kept off the terminal, and returned as an error naming the device.
pub fn probe_device(device: &Device) -> Result<(), EchoError> {
    use burn::tensor::Tensor;
    let d = device.clone();
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = std::panic::catch_unwind(move || {
        let t = Tensor::<1>::from_floats([1.0f32, 2.0], &d);
        t.sum().into_scalar::<f32>()
    });
    std::panic::set_hook(previous);
    match result {
        Ok(3.0) => Ok(()),
        Ok(v) => Err(EchoError::InvalidRequest(format!(
            "device {device:?} computed 1 + 2 = {v}"
        ))),
        Err(e) => {
            let msg = e
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| e.downcast_ref::<&str>().copied())
                .unwrap_or("unknown failure");
            Err(EchoError::InvalidRequest(format!(
                "device {device:?} is not available: {}",
                msg.lines().next().unwrap_or(msg)
            )))
        }
    }
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
