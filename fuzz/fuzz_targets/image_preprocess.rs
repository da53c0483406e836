//! Bytes → `decode_image` → `preprocess_image` with a small pixel budget.
//!
//! Every input must give either an RGB image or a typed error, never a panic, and an accepted
//! image must preprocess into well-formed patch rows (or be refused for its aspect ratio).
#![no_main]

use echovlm_vision::error::ImageError;
use echovlm_vision::preprocess::{
    MAX_ASPECT_RATIO, MAX_IMAGE_PIXELS, PreprocessConfig, decode_image, preprocess_image,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let img = match decode_image(data) {
        Ok(img) => img,
        Err(
            ImageError::Empty { .. }
            | ImageError::Decode { .. }
            | ImageError::TooLarge { .. }
            | ImageError::ZeroSize { .. },
        ) => return,
        Err(other) => panic!("unexpected error kind from decode_image: {other}"),
    };
    let (w, h) = (img.width() as usize, img.height() as usize);
    assert!(w > 0 && h > 0);
    assert!((w as u64) * (h as u64) <= MAX_IMAGE_PIXELS);
    assert_eq!(img.as_raw().len(), w * h * 3);
    let cfg = PreprocessConfig {
        min_pixels: 4 * 28 * 28,
        max_pixels: 64 * 28 * 28,
        ..PreprocessConfig::default()
    };
    match preprocess_image(&img, &cfg) {
        Ok(px) => {
            let [t, gh, gw] = px.grid_thw;
            assert_eq!(t, 1);
            assert!(
                gh >= 2 && gw >= 2 && gh % 2 == 0 && gw % 2 == 0,
                "{:?}",
                px.grid_thw
            );
            assert_eq!(px.rows, gh * gw);
            assert_eq!(px.data.len(), px.rows * cfg.row_len());
            assert!(px.data.iter().all(|v| v.is_finite()));
        }
        Err(ImageError::AspectRatio { height, width }) => {
            assert_eq!((height, width), (h, w));
            assert!(h.max(w) > MAX_ASPECT_RATIO * h.min(w));
        }
        Err(other) => panic!("preprocess_image refused a decoded {w}x{h} image: {other}"),
    }
});
