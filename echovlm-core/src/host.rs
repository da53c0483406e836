//! Moving small tensors to and from the host.

use std::sync::atomic::{AtomicU64, Ordering};

use burn::tensor::{DType, Device, Int, Tensor, TensorData};

/// A tensor could not be read back from its device to the host.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
#[error("reading a tensor back from the device failed: {reason}")]
pub struct ReadBackError {
    /// What the backend reported.
    pub reason: String,
}

static READ_BACKS: AtomicU64 = AtomicU64::new(0);
static READ_BACK_VALUES: AtomicU64 = AtomicU64::new(0);

/// How many tensors this process has read back to the host from a device other than the CPU
/// backend, through [`to_f32_vec`] and [`to_i64_vec`]: every read the inference path makes.
///
/// Each such read waits for the device to finish its queued work, so on a GPU it is what a
/// decode step must do as rarely as possible. Reads of CPU-backend tensors, which are plain
/// copies, are not counted.
pub fn read_backs() -> u64 {
    READ_BACKS.load(Ordering::Relaxed)
}

/// How many values (elements) the reads counted by [`read_backs`] moved to the host.
pub fn read_back_values() -> u64 {
    READ_BACK_VALUES.load(Ordering::Relaxed)
}

fn count_read<const D: usize, K: burn::tensor::kind::Basic>(t: &Tensor<D, K>) {
    if !crate::backend::is_flex(&t.device()) {
        READ_BACKS.fetch_add(1, Ordering::Relaxed);
        READ_BACK_VALUES.fetch_add(t.shape().num_elements() as u64, Ordering::Relaxed);
    }
}

/// Reads a float tensor back as f32 values in row-major order, on any device.
pub fn to_f32_vec<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>, ReadBackError> {
    count_read(&t);
    t.try_into_vec_as::<f32>().map_err(|e| ReadBackError {
        reason: format!("{e:?}"),
    })
}

/// Reads an integer tensor back as i64 values in row-major order, on any device.
pub fn to_i64_vec<const D: usize>(t: Tensor<D, Int>) -> Result<Vec<i64>, ReadBackError> {
    count_read(&t);
    t.try_into_vec_as::<i64>().map_err(|e| ReadBackError {
        reason: format!("{e:?}"),
    })
}

/// Reads a float tensor that lives on the flex CPU device back as f32 values.
///
/// For the CPU fast paths (packed linear layers, host attention, host KV caches), which only
/// ever see flex tensors: their data already is host memory, so the read is a copy and cannot
/// fail. Use [`to_f32_vec`] for tensors on any other device.
///
/// # Panics
/// If `t` is on another device and that device fails to read it back; check with
/// [`backend::is_flex`](crate::backend::is_flex) first.
pub fn flex_f32_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    debug_assert!(crate::backend::is_flex(&t.device()), "not a flex tensor");
    match to_f32_vec(t) {
        Ok(v) => v,
        Err(e) => panic!("{e}"),
    }
}

/// Calls `f` with the f32 values of a float tensor on the flex CPU device, in row-major order,
/// reading them in place where the tensor is a contiguous f32 view of its storage (no copy, even
/// when other tensors share the storage), else from a copy ([`flex_f32_vec`]).
///
/// For the CPU fast paths that only read their input: copying a prompt's activations costs
/// more than the memory traffic (every copy lands in freshly allocated pages).
///
/// # Panics
/// As [`flex_f32_vec`], if `t` is on another device and cannot be read back.
pub fn with_flex_f32<const D: usize, R>(t: Tensor<D>, f: impl FnOnce(&[f32]) -> R) -> R {
    #[cfg(feature = "flex")]
    if t.dtype() == DType::F32
        && let Ok(p) = t.clone().try_into_primitive::<burn::backend::Flex>()
        && let Some(values) = p.as_slice::<f32>()
    {
        return f(values);
    }
    f(&flex_f32_vec(t))
}

/// Builds a tensor of float type `dtype` on `device` from f32 values computed on the host.
pub fn from_f32_vec<const D: usize>(
    values: Vec<f32>,
    shape: [usize; D],
    device: &Device,
    dtype: DType,
) -> Tensor<D> {
    let t = Tensor::<D>::from_data(TensorData::new(values, shape), (device, DType::F32));
    crate::backend::cast_to(t, dtype)
}

/// Builds an integer index tensor on `device`.
pub fn int_tensor<const D: usize>(
    values: Vec<i64>,
    shape: [usize; D],
    device: &Device,
) -> Tensor<D, Int> {
    Tensor::from_data(TensorData::new(values, shape), device)
}
