//! Golden cases as requests, shared by the pipeline's test suites (with `mod support;`).

use echovlm_pipeline::Request;
use serde_json::Value;

use crate::support::image;

/// The request a golden case describes: its prompt, images, cine frames and frame rate.
pub fn request(case: &Value) -> Request {
    let mut r = Request::new(case["prompt"].as_str().unwrap());
    for name in case["images"].as_array().into_iter().flatten() {
        r = r.image(image(name.as_str().unwrap()));
    }
    if let Some(frames) = case["frames"].as_array() {
        r = r.cine(frames.iter().map(|n| image(n.as_str().unwrap())));
    }
    if let Some(fps) = case["fps"].as_f64() {
        r = r.fps(fps);
    }
    r
}
