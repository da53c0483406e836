//! The linear layer every EchoVLM module uses.
//!
//! On Burn's flex (CPU) device the weights can live in host memory in f32, bf16, int8 or int4
//! ([`WeightFormat`]) and run through the kernels of [`crate::cpu`]; everywhere else, and when
//! no CPU format is chosen, the layer is a Burn tensor multiplied by Burn's matmul.

use std::sync::Arc;

use burn::tensor::{DType, Tensor, TensorData};

use crate::backend;
use crate::cpu::{PackedWeight, WeightFormat};
use crate::host::{from_f32_vec, with_flex_f32};
use crate::loader::WeightLoader;

/// How linear layers keep their weights.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LinearOptions {
    /// On the flex CPU device: pack weights in this format for the CPU kernels. `None` keeps
    /// them as Burn tensors of the model's float type. Other devices ignore it.
    pub cpu_format: Option<WeightFormat>,
}

impl Default for LinearOptions {
    /// f32 weights through the CPU kernels on the CPU.
    fn default() -> Self {
        Self {
            cpu_format: Some(WeightFormat::F32),
        }
    }
}

impl LinearOptions {
    /// Burn tensors and Burn's matmul on every device (the portable path).
    pub fn portable() -> Self {
        Self { cpu_format: None }
    }

    /// Packed weights in `format` on the CPU.
    pub fn cpu(format: WeightFormat) -> Self {
        Self {
            cpu_format: Some(format),
        }
    }
}

/// Where a linear layer's weight lives.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // a tensor handle is the common case; boxing it buys nothing
pub enum LinearWeight {
    /// A Burn tensor `[d_out, d_in]` (the HF layout), multiplied with Burn's matmul.
    Tensor(Tensor<2>),
    /// Packed host weights for the CPU kernels.
    Packed(Arc<PackedWeight>),
}

/// A low-rank adapter on a linear layer (LoRA): adds `scaling · (x · Aᵀ) · Bᵀ` to its output.
///
/// The tensor names follow PEFT: `lora_A` is `[r, d_in]`, `lora_B` is `[d_out, r]`, and
/// `scaling` is `lora_alpha / r`.
#[derive(Debug, Clone)]
pub struct LoraAdapter {
    /// `[r, d_in]`.
    pub lora_a: Tensor<2>,
    /// `[d_out, r]`.
    pub lora_b: Tensor<2>,
    /// `lora_alpha / r`.
    pub scaling: f64,
}

impl LoraAdapter {
    /// The rank `r`.
    pub fn rank(&self) -> usize {
        self.lora_a.dims()[0]
    }

    /// The adapter's update as a dense `[d_out, d_in]` matrix, `scaling · B · A` (what merging
    /// adds to the weight).
    pub fn delta(&self) -> Tensor<2> {
        self.lora_b
            .clone()
            .matmul(self.lora_a.clone())
            .mul_scalar(self.scaling)
    }

    /// `scaling · (x · Aᵀ) · Bᵀ` over the last dimension of `x`.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let a = self.lora_a.clone().transpose().cast(x.dtype());
        let b = self.lora_b.clone().transpose().cast(x.dtype());
        burn::tensor::module::linear(burn::tensor::module::linear(x, a, None), b, None)
            .mul_scalar(self.scaling)
    }
}

/// `y = x · Wᵀ + b`, with `W` stored `[out, in]` exactly as in the checkpoint.
#[derive(Debug, Clone)]
pub struct Linear {
    /// The weight.
    pub weight: LinearWeight,
    /// Optional bias, `[d_out]`.
    pub bias: Option<Tensor<1>>,
    /// Optional low-rank adapter added to the output (for fine-tuning; `None` after loading).
    pub lora: Option<LoraAdapter>,
    d_in: usize,
    d_out: usize,
}

impl Linear {
    /// Wraps an existing tensor (`weight` is `[d_out, d_in]`).
    pub fn new(weight: Tensor<2>, bias: Option<Tensor<1>>) -> Self {
        let [d_out, d_in] = weight.dims();
        Self {
            weight: LinearWeight::Tensor(weight),
            bias,
            lora: None,
            d_in,
            d_out,
        }
    }

    /// Wraps packed host weights (used on the flex device only).
    pub fn packed(weight: PackedWeight, bias: Option<Tensor<1>>) -> Self {
        let (d_out, d_in) = (weight.rows(), weight.cols());
        Self {
            weight: LinearWeight::Packed(Arc::new(weight)),
            bias,
            lora: None,
            d_in,
            d_out,
        }
    }

    /// A layer over packed host weights that something else shares (a tied LM head using the
    /// embedding table).
    pub fn shared(weight: Arc<PackedWeight>, bias: Option<Tensor<1>>) -> Self {
        let (d_out, d_in) = (weight.rows(), weight.cols());
        Self {
            weight: LinearWeight::Packed(weight),
            bias,
            lora: None,
            d_in,
            d_out,
        }
    }

    /// Loads `prefix.weight` and, if `bias`, `prefix.bias`, packing the weight for the CPU
    /// kernels when the loader's options and device call for it.
    pub fn load(
        loader: &mut WeightLoader<'_>,
        prefix: &str,
        d_in: usize,
        d_out: usize,
        bias: bool,
    ) -> Self {
        let key = format!("{prefix}.weight");
        let weight = match loader.packed_format() {
            Some(format) => match loader.packed(&key, d_out, d_in, format) {
                Some(p) => LinearWeight::Packed(Arc::new(p)),
                None => LinearWeight::Tensor(Tensor::zeros([1, 1], loader.device())),
            },
            None => LinearWeight::Tensor(loader.tensor(&key, [d_out, d_in])),
        };
        let bias = bias.then(|| loader.tensor(&format!("{prefix}.bias"), [d_out]));
        Self {
            weight,
            bias,
            lora: None,
            d_in,
            d_out,
        }
    }

    /// One layer computing every part's output side by side, `[.., Σ d_out]` (the parts'
    /// weights stacked by rows, their biases joined, zeros standing in for a part without
    /// one), so that layers reading the same input take one matrix product instead of several.
    /// Each part is left holding a view of its rows of the stacked weight: the weights are not
    /// duplicated, and each part still computes what it did.
    ///
    /// `None` (and nothing changed) unless every part holds a Burn tensor weight of the same
    /// input width and float type and has no adapter: packed CPU weights have their own
    /// kernels.
    pub fn fuse_outputs(parts: &mut [&mut Linear]) -> Option<Linear> {
        let (d_in, dtype) = Self::fusable(parts)?;
        if parts.iter().any(|p| p.d_in != d_in) {
            return None;
        }
        let weights = parts
            .iter()
            .map(|p| p.tensor_weight())
            .collect::<Option<Vec<_>>>()?;
        let weight = Tensor::cat(weights, 0);
        let device = weight.device();
        let bias = parts.iter().any(|p| p.bias.is_some()).then(|| {
            let pieces = parts
                .iter()
                .map(|p| match &p.bias {
                    Some(b) => b.clone().cast(dtype),
                    None => Tensor::zeros([p.d_out], (&device, dtype)),
                })
                .collect();
            Tensor::cat(pieces, 0)
        });
        let mut start = 0;
        for p in parts.iter_mut() {
            p.weight = LinearWeight::Tensor(weight.clone().narrow(0, start, p.d_out));
            if p.bias.is_some() {
                p.bias = bias.as_ref().map(|b| b.clone().narrow(0, start, p.d_out));
            }
            start += p.d_out;
        }
        Some(Linear::new(weight, bias))
    }

    /// One layer over the parts' inputs laid side by side, `[.., Σ d_in] → [.., d_out]` (their
    /// weights joined by columns): the sum of the parts' outputs in one matrix product. Each
    /// part is left holding a view of its columns.
    ///
    /// `None` (and nothing changed) unless every part holds a Burn tensor weight of the same
    /// output width and float type, without bias or adapter.
    pub fn fuse_inputs(parts: &mut [&mut Linear]) -> Option<Linear> {
        let d_out = parts.first()?.d_out;
        Self::fusable(parts)?;
        if parts.iter().any(|p| p.d_out != d_out || p.bias.is_some()) {
            return None;
        }
        let weights = parts
            .iter()
            .map(|p| p.tensor_weight())
            .collect::<Option<Vec<_>>>()?;
        let weight = Tensor::cat(weights, 1);
        let mut start = 0;
        for p in parts.iter_mut() {
            p.weight = LinearWeight::Tensor(weight.clone().narrow(1, start, p.d_in));
            start += p.d_in;
        }
        Some(Linear::new(weight, None))
    }

    /// The input width and float type shared by `parts`, if they can be fused at all.
    fn fusable(parts: &[&mut Linear]) -> Option<(usize, DType)> {
        let first = parts.first()?;
        let dtype = first.tensor_weight()?.dtype();
        parts
            .iter()
            .all(|p| p.lora.is_none() && p.tensor_weight().is_some_and(|w| w.dtype() == dtype))
            .then_some((first.d_in, dtype))
    }

    /// The weight as it is held, when it is a Burn tensor (`[d_out, d_in]`); `None` for packed
    /// CPU weights.
    pub fn tensor_weight(&self) -> Option<Tensor<2>> {
        match &self.weight {
            LinearWeight::Tensor(t) => Some(t.clone()),
            LinearWeight::Packed(_) => None,
        }
    }

    /// Input width.
    pub fn d_in(&self) -> usize {
        self.d_in
    }

    /// Output width.
    pub fn d_out(&self) -> usize {
        self.d_out
    }

    /// Bytes the weight occupies (packed or as a tensor), bias excluded.
    pub fn weight_bytes(&self) -> usize {
        match &self.weight {
            LinearWeight::Tensor(t) => t.shape().num_elements() * t.dtype().size(),
            LinearWeight::Packed(p) => p.nbytes(),
        }
    }

    /// The weight as an f32 `[d_out, d_in]` tensor on `x`'s device (dequantised if packed).
    pub fn weight_tensor(&self, like: &Tensor<2>) -> Tensor<2> {
        match &self.weight {
            LinearWeight::Tensor(t) => t.clone(),
            LinearWeight::Packed(p) => Tensor::from_data(
                TensorData::new(p.to_f32(), [self.d_out, self.d_in]),
                (&like.device(), DType::F32),
            ),
        }
    }

    /// Applies the layer (and its adapter, if any) to the last dimension of `x`.
    ///
    /// # Panics
    /// If the last dimension of `x` is not [`d_in`](Self::d_in) (as Burn's matmul does on
    /// mismatched shapes).
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        match &self.lora {
            None => self.forward_base(x),
            Some(lora) => self.forward_base(x.clone()) + lora.forward(x),
        }
    }

    /// Every part applied to the same `x` (over its last dimension), in order: where all hold
    /// packed CPU weights of one format and input width and none has an adapter, as one pass of
    /// the CPU kernels ([`PackedWeight::matmul_parts`]; biases are added after); otherwise each
    /// part's [`forward`](Self::forward). The values are the same either way.
    ///
    /// # Panics
    /// If the last dimension of `x` is not the parts' input width.
    pub fn forward_parts<const D: usize>(parts: &[&Linear], x: Tensor<D>) -> Vec<Tensor<D>> {
        let packed = parts
            .iter()
            .map(|p| match (&p.weight, &p.lora) {
                (LinearWeight::Packed(w), None) => Some(&**w),
                _ => None,
            })
            .collect::<Option<Vec<_>>>();
        let Some(weights) = packed.filter(|w| {
            w.len() > 1
                && w.iter()
                    .all(|p| (p.cols(), p.format()) == (w[0].cols(), w[0].format()))
        }) else {
            return parts.iter().map(|p| p.forward(x.clone())).collect();
        };
        let dims = x.dims();
        let m = parts[0].input_rows(&dims);
        let mut outs: Vec<Vec<f32>> = parts.iter().map(|p| vec![0f32; m * p.d_out]).collect();
        let mut ys: Vec<&mut [f32]> = outs.iter_mut().map(|o| &mut o[..]).collect();
        let (device, dtype) = (x.device(), x.dtype());
        if let Err(e) = with_flex_f32(x, |xv| PackedWeight::matmul_parts(&weights, xv, m, &mut ys))
        {
            panic!("packed linear layers: {e}");
        }
        parts
            .iter()
            .zip(outs)
            .map(|(p, y)| p.host_output(y, dims, &device, dtype))
            .collect()
    }

    /// The SwiGLU hidden layer `silu(gate(x)) ⊙ up(x)` over the last dimension of `x` in one
    /// pass of the CPU kernels ([`PackedWeight::swiglu`]), where both layers hold packed
    /// weights of one shape and format and neither has a bias or an adapter; `None` otherwise
    /// (then compute the two layers and [`backend::silu_mul`] them, which gives the same
    /// values).
    ///
    /// # Panics
    /// If the last dimension of `x` is not the layers' input width.
    pub fn swiglu<const D: usize>(gate: &Linear, up: &Linear, x: &Tensor<D>) -> Option<Tensor<D>> {
        let (LinearWeight::Packed(g), LinearWeight::Packed(u)) = (&gate.weight, &up.weight) else {
            return None;
        };
        let plain = |l: &Linear| l.bias.is_none() && l.lora.is_none();
        if !plain(gate)
            || !plain(up)
            || (g.rows(), g.cols(), g.format()) != (u.rows(), u.cols(), u.format())
        {
            return None;
        }
        let dims = x.dims();
        let m = gate.input_rows(&dims);
        let mut act = vec![0f32; m * gate.d_out];
        if let Err(e) = with_flex_f32(x.clone(), |xv| g.swiglu(u, xv, m, &mut act)) {
            panic!("packed SwiGLU: {e}");
        }
        // gate has no bias (checked above): the activations as they are
        Some(gate.host_output(act, dims, &x.device(), x.dtype()))
    }

    /// The layer without its adapter.
    fn forward_base<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        match &self.weight {
            LinearWeight::Tensor(w) => {
                burn::tensor::module::linear(x, w.clone().transpose(), self.bias.clone())
            }
            LinearWeight::Packed(p) => {
                let dims = x.dims();
                let dtype = x.dtype();
                let device = x.device();
                debug_assert!(
                    backend::is_flex(&device),
                    "packed weights on a non-CPU device"
                );
                let m = self.input_rows(&dims);
                let mut y = vec![0f32; m * self.d_out];
                if let Err(e) = with_flex_f32(x, |xv| p.matmul(xv, m, &mut y)) {
                    panic!("packed linear layer: {e}");
                }
                self.host_output(y, dims, &device, dtype)
            }
        }
    }

    /// The rows of activations in an input of shape `dims` (all dimensions but the last).
    ///
    /// # Panics
    /// If the last dimension is not [`d_in`](Self::d_in) (as Burn's matmul does on mismatched
    /// shapes).
    fn input_rows<const D: usize>(&self, dims: &[usize; D]) -> usize {
        assert_eq!(
            dims[D - 1],
            self.d_in,
            "linear layer of input width {} applied to {dims:?}",
            self.d_in
        );
        dims[..D - 1].iter().product()
    }

    /// This layer's output computed on the host (`y`, row-major, for an input of shape `dims`)
    /// as a tensor on `device`, with the bias added.
    fn host_output<const D: usize>(
        &self,
        y: Vec<f32>,
        mut dims: [usize; D],
        device: &burn::tensor::Device,
        dtype: DType,
    ) -> Tensor<D> {
        dims[D - 1] = self.d_out;
        let out = from_f32_vec(y, dims, device, dtype);
        match &self.bias {
            Some(b) => out + b.clone().unsqueeze(),
            None => out,
        }
    }
}
