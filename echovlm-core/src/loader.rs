//! Strict, two-pass weight loading.
//!
//! Module constructors take a [`WeightLoader`] and ask it for tensors by canonical name and
//! expected shape. [`load`] runs the constructor twice: first in a validation pass that reads only
//! headers and collects every missing, unexpected, wrong-shape and wrong-dtype tensor, then (only
//! if nothing is wrong) in the loading pass that converts one tensor at a time straight from the
//! memory map into device memory. A bad checkpoint therefore fails before any large allocation,
//! with one error that lists every problem, and a good one never exists twice in memory.

use std::collections::BTreeSet;

use burn::tensor::{DType, Device, Tensor, TensorData};

use crate::checkpoint::Checkpoint;
use crate::error::{LoadError, TensorProblem, TensorProblems};
use crate::linear::{Linear, LinearOptions};

/// Hands out tensors from a [`Checkpoint`] and records what was asked for.
pub struct WeightLoader<'a> {
    ckpt: &'a Checkpoint,
    device: Device,
    dtype: DType,
    linear: LinearOptions,
    validate_only: bool,
    used: BTreeSet<String>,
    ignored_prefixes: Vec<String>,
    ignored_suffixes: Vec<String>,
    problems: Vec<TensorProblem>,
    held_bytes: usize,
}

impl<'a> WeightLoader<'a> {
    /// A loader that creates tensors of `dtype` on `device`.
    pub fn new(ckpt: &'a Checkpoint, device: &Device, dtype: DType) -> Self {
        Self {
            ckpt,
            device: device.clone(),
            dtype,
            linear: LinearOptions::default(),
            validate_only: false,
            used: BTreeSet::new(),
            ignored_prefixes: Vec::new(),
            ignored_suffixes: Vec::new(),
            problems: Vec::new(),
            held_bytes: 0,
        }
    }

    /// Sets how linear layers store their weights (see [`LinearOptions`]).
    pub fn with_linear_options(mut self, options: LinearOptions) -> Self {
        self.linear = options;
        self
    }

    /// The device tensors are created on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The float type of the created tensors.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// How linear layers store their weights.
    pub fn linear_options(&self) -> &LinearOptions {
        &self.linear
    }

    /// True during the validation pass, when returned tensors are placeholders.
    pub fn is_validating(&self) -> bool {
        self.validate_only
    }

    /// The checkpoint being read.
    pub fn checkpoint(&self) -> &'a Checkpoint {
        self.ckpt
    }

    /// Whether the checkpoint has a tensor of this name.
    pub fn contains(&self, key: &str) -> bool {
        self.ckpt.entry(key).is_some()
    }

    /// The stored shape of a tensor, if present.
    pub fn shape_of(&self, key: &str) -> Option<&'a [usize]> {
        self.ckpt.entry(key).map(|e| e.shape.as_slice())
    }

    /// Accepts and skips every tensor whose name starts with `prefix` (buffers that some
    /// exporters save, such as rotary `inv_freq`, or a tower the caller does not build).
    pub fn ignore_prefix(&mut self, prefix: &str) {
        self.ignored_prefixes.push(prefix.to_string());
    }

    /// Accepts and skips every tensor whose name ends with `suffix`.
    pub fn ignore_suffix(&mut self, suffix: &str) {
        self.ignored_suffixes.push(suffix.to_string());
    }

    /// Whether any tensor name starts with `prefix`.
    pub fn contains_prefix(&self, prefix: &str) -> bool {
        self.ckpt.keys_with_prefix(prefix).next().is_some()
    }

    /// Records a problem found by a module constructor itself.
    pub fn report(&mut self, problem: TensorProblem) {
        self.problems.push(problem);
    }

    /// Takes the float tensor `key`, which must have exactly `shape`.
    ///
    /// On any problem, the problem is recorded and a placeholder is returned; [`load`] turns
    /// recorded problems into an error before the model is used.
    pub fn tensor<const D: usize>(&mut self, key: &str, shape: [usize; D]) -> Tensor<D> {
        match self.check(key, &shape) {
            true if !self.validate_only => {
                let data = self.read(key, &shape);
                self.held_bytes += shape.iter().product::<usize>() * self.dtype.size();
                Tensor::from_data(data, (&self.device, self.dtype))
            }
            _ => Tensor::zeros([1; D], (&self.device, self.dtype)),
        }
    }

    /// Bytes of weights created so far (tensors and packed matrices).
    pub fn held_bytes(&self) -> usize {
        self.held_bytes
    }

    /// Takes the float tensor `key`, stored with shape `stored`, viewed as `shape` (same number
    /// of elements, row-major), e.g. a convolution kernel used as a matrix. A view whose element
    /// count differs from the stored shape's is recorded as a shape problem.
    pub fn tensor_as<const D: usize, const D2: usize>(
        &mut self,
        key: &str,
        stored: [usize; D],
        shape: [usize; D2],
    ) -> Tensor<D2> {
        let (n_stored, n_view) = (
            stored.iter().try_fold(1usize, |a, &d| a.checked_mul(d)),
            shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)),
        );
        if n_stored.is_none() || n_stored != n_view {
            // a view that cannot hold the stored elements: report it as a shape problem
            self.used.insert(key.to_string());
            self.problems.push(TensorProblem::Shape {
                key: key.to_string(),
                expected: shape.to_vec(),
                found: stored.to_vec(),
            });
            return Tensor::zeros([1; D2], (&self.device, self.dtype));
        }
        match self.check(key, &stored) {
            true if !self.validate_only => {
                let data = self.read(key, &shape);
                self.held_bytes += shape.iter().product::<usize>() * self.dtype.size();
                Tensor::from_data(data, (&self.device, self.dtype))
            }
            _ => Tensor::zeros([1; D2], (&self.device, self.dtype)),
        }
    }

    /// Takes `key` as f32 values on the host, checking its shape. Returns `None` on a recorded
    /// problem or during validation.
    pub fn host_f32(&mut self, key: &str, shape: &[usize]) -> Option<Vec<f32>> {
        if !self.check(key, shape) || self.validate_only {
            return None;
        }
        let entry = self.ckpt.entry(key)?;
        let values = self.ckpt.to_f32(entry);
        self.ckpt.release(entry);
        values
    }

    /// The format linear weights are packed in for the CPU kernels, when the device is the flex
    /// CPU device and the options ask for packing.
    pub fn packed_format(&self) -> Option<crate::cpu::WeightFormat> {
        self.linear
            .cpu_format
            .filter(|_| crate::backend::is_flex(&self.device))
    }

    /// Takes the matrix `key` (`[rows, cols]`) packed in `format` for the CPU kernels, straight
    /// from the mapped checkpoint. `None` on a recorded problem or during validation.
    pub fn packed(
        &mut self,
        key: &str,
        rows: usize,
        cols: usize,
        format: crate::cpu::WeightFormat,
    ) -> Option<crate::cpu::PackedWeight> {
        if !self.check(key, &[rows, cols]) || self.validate_only {
            return None;
        }
        self.pack(key, rows, cols, format)
    }

    /// Like [`packed`](Self::packed) for a tensor stored with another shape of the same size
    /// (a convolution kernel used as a `[rows, cols]` matrix). A `stored` shape of another size
    /// is recorded as a problem.
    pub fn packed_as(
        &mut self,
        key: &str,
        stored: &[usize],
        rows: usize,
        cols: usize,
        format: crate::cpu::WeightFormat,
    ) -> Option<crate::cpu::PackedWeight> {
        if !self.check(key, stored) || self.validate_only {
            return None;
        }
        let stored_elems = stored.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
        if stored_elems.is_none() || stored_elems != rows.checked_mul(cols) {
            self.problems.push(TensorProblem::Shape {
                key: key.to_string(),
                expected: vec![rows, cols],
                found: stored.to_vec(),
            });
            return None;
        }
        self.pack(key, rows, cols, format)
    }

    /// Packs the checked tensor `key` as a `[rows, cols]` matrix, recording a failure.
    fn pack(
        &mut self,
        key: &str,
        rows: usize,
        cols: usize,
        format: crate::cpu::WeightFormat,
    ) -> Option<crate::cpu::PackedWeight> {
        let entry = self.ckpt.entry(key)?;
        let packed = crate::cpu::PackedWeight::from_storage(
            rows,
            cols,
            self.ckpt.bytes(entry),
            entry.dtype,
            format,
        );
        self.ckpt.release(entry);
        match packed {
            Ok(packed) => {
                self.held_bytes += packed.nbytes();
                Some(packed)
            }
            Err(error) => {
                self.problems.push(TensorProblem::Packing {
                    key: key.to_string(),
                    error,
                });
                None
            }
        }
    }

    /// Takes a linear layer `prefix.weight` (`[out, in]`) and, if `bias`, `prefix.bias`.
    pub fn linear(&mut self, prefix: &str, d_in: usize, d_out: usize, bias: bool) -> Linear {
        Linear::load(self, prefix, d_in, d_out, bias)
    }

    fn check(&mut self, key: &str, shape: &[usize]) -> bool {
        self.used.insert(key.to_string());
        let Some(entry) = self.ckpt.entry(key) else {
            self.problems.push(TensorProblem::Missing {
                key: key.to_string(),
            });
            return false;
        };
        let mut ok = true;
        if entry.shape != shape {
            self.problems.push(TensorProblem::Shape {
                key: key.to_string(),
                expected: shape.to_vec(),
                found: entry.shape.clone(),
            });
            ok = false;
        }
        if !entry.dtype.is_float() {
            self.problems.push(TensorProblem::Dtype {
                key: key.to_string(),
                expected: "F32, BF16 or F16".into(),
                found: entry.dtype.name().into(),
            });
            ok = false;
        }
        ok
    }

    fn read(&self, key: &str, shape: &[usize]) -> TensorData {
        let entry = self.ckpt.entry(key).expect("checked above");
        let data = match self.dtype {
            DType::BF16 => TensorData::new(self.ckpt.to_bf16(entry).expect("float"), shape),
            DType::F16 => TensorData::new(self.ckpt.to_f16(entry).expect("float"), shape),
            _ => TensorData::new(self.ckpt.to_f32(entry).expect("float"), shape),
        };
        self.ckpt.release(entry);
        data
    }

    fn finish(self) -> Result<(), LoadError> {
        let mut problems = self.problems;
        for key in self.ckpt.keys() {
            if !self.used.contains(key)
                && !self.ignored_prefixes.iter().any(|p| key.starts_with(p))
                && !self.ignored_suffixes.iter().any(|p| key.ends_with(p))
            {
                problems.push(TensorProblem::Unexpected {
                    key: key.to_string(),
                });
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(LoadError::Tensors(TensorProblems(problems)))
        }
    }
}

/// Builds a module from a checkpoint strictly: validates every tensor first, then loads.
///
/// `build` is called twice; it must ask for the same tensors both times and may return its own
/// errors (an inconsistent configuration, say).
pub fn load<T>(
    ckpt: &Checkpoint,
    device: &Device,
    dtype: DType,
    linear: LinearOptions,
    build: impl FnMut(&mut WeightLoader<'_>) -> Result<T, LoadError>,
) -> Result<T, LoadError> {
    load_counted(ckpt, device, dtype, linear, build).map(|(m, _)| m)
}

/// [`load`], also returning the bytes the loaded weights occupy (tensors and packed matrices).
pub fn load_counted<T>(
    ckpt: &Checkpoint,
    device: &Device,
    dtype: DType,
    linear: LinearOptions,
    mut build: impl FnMut(&mut WeightLoader<'_>) -> Result<T, LoadError>,
) -> Result<(T, usize), LoadError> {
    let mut check = WeightLoader::new(ckpt, device, dtype).with_linear_options(linear.clone());
    check.validate_only = true;
    let placeholder = build(&mut check)?;
    drop(placeholder);
    check.finish()?;
    let mut loader = WeightLoader::new(ckpt, device, dtype).with_linear_options(linear);
    let module = build(&mut loader)?;
    let bytes = loader.held_bytes;
    loader.finish()?;
    Ok((module, bytes))
}
