//! A full ultrasound report (findings + impression) from several key frames of one study.
//!
//! Run with: `cargo run --release --example report_from_frames -- [MODEL_DIR FRAME...]`
//!
//! Without arguments it uses the random-weight demo checkpoint and two fixture frames.

use std::path::{Path, PathBuf};

use echovlm_pipeline::{EchoVlm, Lang, LoadOptions, Request, Task};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let mut args = std::env::args().skip(1);
    let (model_dir, frames): (PathBuf, Vec<PathBuf>) = match args.next() {
        Some(dir) => (dir.into(), args.map(PathBuf::from).collect()),
        None => (
            fixtures.join("models/tiny-echovlm"),
            vec![
                fixtures.join("images/thyroid_300x220.png"),
                fixtures.join("images/liver_182x238.png"),
            ],
        ),
    };
    let model = EchoVlm::load(&model_dir, &LoadOptions::default())?;

    // every frame of the study goes into one request; the preset asks for findings and impression
    let mut request = Request::task(Task::Report, Lang::En);
    for frame in &frames {
        request = request.image(frame.clone());
    }
    let mut opts = model.default_generation();
    opts.max_new_tokens = 64;
    let out = model.generate(&request, &opts)?;

    println!("{}", out.text);
    eprintln!(
        "{} frames -> {} image tokens; {} tokens generated ({:?}), {:.1} tokens/s",
        frames.len(),
        out.image_grid_thw
            .iter()
            .map(|g| g[0] * g[1] * g[2] / 4)
            .sum::<usize>(),
        out.generated_token_ids.len(),
        out.finish_reason,
        out.timings.decode_tokens_per_s
    );
    Ok(())
}
