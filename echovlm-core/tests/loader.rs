//! Loading problems that come from the module side are recorded, never asserted.

use burn::tensor::{DType, Device};
use echovlm_core::{Checkpoint, LinearOptions, LoadError, TensorProblem, load};

fn checkpoint_with(key: &str, shape: &[usize]) -> (tempfile::TempDir, Checkpoint) {
    let dir = tempfile::tempdir().unwrap();
    let n: usize = shape.iter().product();
    let bytes: Vec<u8> = (0..n).flat_map(|i| (i as f32).to_le_bytes()).collect();
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.to_vec(), &bytes)
            .unwrap();
    let path = dir.path().join("model.safetensors");
    safetensors::serialize_to_file([(key, view)], None, &path).unwrap();
    let ckpt = Checkpoint::open_dir(dir.path()).unwrap();
    (dir, ckpt)
}

#[test]
fn a_view_with_another_element_count_is_a_shape_problem() {
    let (_dir, ckpt) = checkpoint_with("visual.patch_embed.proj.weight", &[4, 3, 2, 2]);
    let device = Device::default();
    // stored [4, 3, 2, 2] = 48 elements viewed as [4, 13] = 52: refused, no panic
    let err = load(&ckpt, &device, DType::F32, LinearOptions::portable(), |l| {
        Ok(l.tensor_as("visual.patch_embed.proj.weight", [4, 3, 2, 2], [4, 13]))
    })
    .unwrap_err();
    let LoadError::Tensors(problems) = err else {
        panic!("expected a tensor problem, got {err}");
    };
    assert!(
        matches!(
            problems.problems(),
            [TensorProblem::Shape { key, expected, found }]
                if key == "visual.patch_embed.proj.weight" && expected == &[4, 13] && found == &[4, 3, 2, 2]
        ),
        "{problems}"
    );
    // the right view loads the stored values in row-major order
    let t = load(&ckpt, &device, DType::F32, LinearOptions::portable(), |l| {
        Ok(l.tensor_as("visual.patch_embed.proj.weight", [4, 3, 2, 2], [4, 12]))
    })
    .unwrap();
    let v = echovlm_core::host::to_f32_vec(t).unwrap();
    assert_eq!(v, (0..48).map(|i| i as f32).collect::<Vec<_>>());
}

#[test]
fn overflowing_views_are_refused() {
    let (_dir, ckpt) = checkpoint_with("w", &[2, 2]);
    let err = load(
        &ckpt,
        &Device::default(),
        DType::F32,
        LinearOptions::portable(),
        |l| Ok(l.tensor_as("w", [usize::MAX, 2], [2, 2])),
    )
    .unwrap_err();
    assert!(matches!(err, LoadError::Tensors(_)), "{err}");
}
