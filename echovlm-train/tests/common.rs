//! Reading the transformers training goldens and turning their inputs into training samples.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use burn::tensor::{DType, Device, Tensor, TensorData};
use echovlm_pipeline::{EchoVlm, LoadOptions, PreparedPrompt};
use echovlm_train::{LoraConfig, TrainSample, Trainable, Trainer};
use echovlm_vision::preprocess::PixelValues;
use safetensors::{Dtype, SafeTensors};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn model_dir() -> PathBuf {
    root().join("fixtures/models/tiny-echovlm")
}

/// The golden tensors: name → (shape, values as f64).
pub struct Golden {
    pub tensors: HashMap<String, (Vec<usize>, Vec<f64>)>,
    pub json: serde_json::Value,
}

impl Golden {
    pub fn load() -> Self {
        let dir = root().join("fixtures/goldens");
        let bytes = std::fs::read(dir.join("train-tiny-echovlm.safetensors")).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let mut tensors = HashMap::new();
        for (name, view) in st.tensors() {
            let data = view.data();
            let v: Vec<f64> = match view.dtype() {
                Dtype::F32 => data
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
                    .collect(),
                Dtype::I64 => data
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64)
                    .collect(),
                d => panic!("{name}: {d:?}"),
            };
            tensors.insert(name, (view.shape().to_vec(), v));
        }
        let json = serde_json::from_str(
            &std::fs::read_to_string(dir.join("train-tiny-echovlm.json")).unwrap(),
        )
        .unwrap();
        Self { tensors, json }
    }

    pub fn get(&self, name: &str) -> &(Vec<usize>, Vec<f64>) {
        self.tensors
            .get(name)
            .unwrap_or_else(|| panic!("golden has no {name}"))
    }

    pub fn scalar(&self, name: &str) -> f64 {
        self.get(name).1[0]
    }

    /// The samples of a case (`text` or `image`), unpadded, as the Rust side builds them.
    pub fn samples(&self, case: &str) -> Vec<TrainSample> {
        let (shape, ids) = self.get(&format!("{case}.input_ids"));
        let (_, mask) = self.get(&format!("{case}.attention_mask"));
        let (_, labels) = self.get(&format!("{case}.labels"));
        let (b, s) = (shape[0], shape[1]);
        let mut images: Vec<PixelValues> = Vec::new();
        if let Some((pshape, pixels)) = self.tensors.get(&format!("{case}.pixel_values")) {
            let (_, grids) = self.get(&format!("{case}.image_grid_thw"));
            let cols = pshape[1];
            let mut row = 0;
            for g in grids.chunks_exact(3) {
                let grid = [g[0] as usize, g[1] as usize, g[2] as usize];
                let rows = grid.iter().product::<usize>();
                let data = pixels[row * cols..(row + rows) * cols]
                    .iter()
                    .map(|&x| x as f32)
                    .collect();
                images.push(PixelValues {
                    data,
                    rows,
                    grid_thw: grid,
                });
                row += rows;
            }
        }
        let mut images = images.into_iter();
        (0..b)
            .map(|r| {
                let len = mask[r * s..(r + 1) * s]
                    .iter()
                    .filter(|&&m| m > 0.5)
                    .count();
                let row_ids: Vec<u32> = ids[r * s..r * s + len].iter().map(|&x| x as u32).collect();
                let row_labels: Vec<i64> = labels[r * s..r * s + len]
                    .iter()
                    .map(|&x| x as i64)
                    .collect();
                let imgs: Vec<PixelValues> = if case == "image" {
                    vec![images.next().unwrap()]
                } else {
                    Vec::new()
                };
                TrainSample {
                    sequence: PreparedPrompt::new(row_ids, imgs, Vec::new()),
                    labels: row_labels,
                }
            })
            .collect()
    }

    /// The parameter names of a trainable set, as the reference lists them.
    pub fn set_params(&self, set: &str) -> Vec<String> {
        serde_json::from_value(self.json["sets"][set]["params"].clone()).unwrap()
    }
}

pub fn load_model() -> EchoVlm {
    let opts = LoadOptions::default()
        .device(Device::flex().autodiff())
        .dtype(DType::F32);
    EchoVlm::load(model_dir(), &opts).unwrap()
}

/// The trainable selections of the reference's sets.
pub fn trainable(set: &str) -> Trainable {
    match set {
        "moe" => Trainable::default(),
        "lora" => Trainable {
            moe: true,
            merger: false,
            lora: Some(LoraConfig {
                rank: 4,
                alpha: 8.0,
                ..LoraConfig::new(4)
            }),
            full: Vec::new(),
        },
        _ => panic!("{set}"),
    }
}

/// Installs the reference's initial LoRA tensors.
pub fn install_lora_init(trainer: &mut Trainer, golden: &Golden) {
    let device = trainer.values()[0].device();
    let values: Vec<Tensor<2>> = trainer
        .params()
        .iter()
        .zip(trainer.values())
        .map(
            |(p, v)| match golden.tensors.get(&format!("lora_init.{}", p.name())) {
                Some((shape, data)) => Tensor::from_data(
                    TensorData::new(
                        data.iter().map(|&x| x as f32).collect::<Vec<_>>(),
                        [shape[0], shape[1]],
                    ),
                    (&device, DType::F32),
                ),
                None => v,
            },
        )
        .collect();
    trainer.set_values(values);
}

/// max |a − b| / max |b| (absolute when the reference is all zeros).
pub fn rel_err(a: &[f32], b: &[f64]) -> f64 {
    let scale = b.iter().fold(0f64, |m, x| m.max(x.abs()));
    let diff = a
        .iter()
        .zip(b)
        .fold(0f64, |m, (&x, &y)| m.max((x as f64 - y).abs()));
    if scale < 1e-12 { diff } else { diff / scale }
}
