//! Moving small tensors to and from the host.

use burn::tensor::{DType, Device, Int, Tensor, TensorData};

/// Reads a float tensor back as f32 values in row-major order.
///
/// # Panics
/// If the backend cannot read tensors back synchronously (a device failure).
pub fn to_f32_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.try_into_vec_as::<f32>()
        .expect("reading a tensor back from the device")
}

/// Builds a tensor of float type `dtype` on `device` from f32 values computed on the host.
pub fn from_f32_vec<const D: usize>(
    values: Vec<f32>,
    shape: [usize; D],
    device: &Device,
    dtype: DType,
) -> Tensor<D> {
    let t = Tensor::<D>::from_data(TensorData::new(values, shape), (device, DType::F32));
    if dtype == DType::F32 {
        t
    } else {
        t.cast(dtype)
    }
}

/// Builds an integer index tensor on `device`.
pub fn int_tensor<const D: usize>(
    values: Vec<i64>,
    shape: [usize; D],
    device: &Device,
) -> Tensor<D, Int> {
    Tensor::from_data(TensorData::new(values, shape), device)
}
