//! A diagnosis chosen from given options, with the chosen letter extracted from the answer.
//!
//! Run with: `cargo run --release --example diagnosis -- [MODEL_DIR IMAGE OPTION...]`
//!
//! Without arguments it uses the random-weight demo checkpoint and a fixture frame.

use std::path::Path;

use echovlm_eval::extract_option_letter;
use echovlm_pipeline::{EchoVlm, Lang, LoadOptions, Request, Task};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (model_dir, image, options) = match args.as_slice() {
        [m, i, rest @ ..] if !rest.is_empty() => (m.into(), i.into(), rest.to_vec()),
        _ => (
            fixtures.join("models/tiny-echovlm"),
            fixtures.join("images/breast_rgba_150x120.png"),
            vec![
                "benign lesion (BI-RADS 3)".to_string(),
                "suspicious lesion (BI-RADS 4)".to_string(),
                "highly suggestive of malignancy (BI-RADS 5)".to_string(),
            ],
        ),
    };
    let model = EchoVlm::load(model_dir, &LoadOptions::default())?;
    let request = Request::task(
        Task::Diagnosis {
            options: options.clone(),
        },
        Lang::En,
    )
    .image(image);
    println!("prompt: {}", request.user_text());
    let mut opts = model.default_generation();
    opts.max_new_tokens = 32;
    let out = model.generate(&request, &opts)?;
    println!("answer: {}", out.text);
    match extract_option_letter(&out.text) {
        Some(letter) => {
            let i = (letter as u8 - b'A') as usize;
            println!(
                "chosen: {letter} = {}",
                options.get(i).map_or("?", String::as_str)
            );
        }
        None => println!("chosen: no option letter in the answer"),
    }
    Ok(())
}
