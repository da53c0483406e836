//! A free question about one ultrasound image, with the answer streamed as it is generated.
//!
//! Run with: `cargo run --release --example vqa -- [MODEL_DIR IMAGE "QUESTION"]`
//!
//! Without arguments it uses the random-weight demo checkpoint and a fixture frame.

use std::io::Write;
use std::ops::ControlFlow;
use std::path::Path;

use echovlm_pipeline::{EchoVlm, LoadOptions, Request};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (model_dir, image, question) = match args.as_slice() {
        [m, i, q] => (m.into(), i.into(), q.clone()),
        _ => (
            fixtures.join("models/tiny-echovlm"),
            fixtures.join("images/kidney_gray_256x200.jpg"),
            "这个肾脏有积水吗？".to_string(),
        ),
    };
    let model = EchoVlm::load(model_dir, &LoadOptions::default())?;
    let request = Request::new(question)
        .system("你是一名经验丰富的超声科医生。")
        .image(image);
    let mut opts = model.default_generation();
    opts.max_new_tokens = 48;
    let mut stdout = std::io::stdout();
    let out = model.generate_stream(&request, &opts, |piece| {
        let _ = write!(stdout, "{piece}");
        let _ = stdout.flush();
        ControlFlow::Continue(())
    })?;
    println!();
    eprintln!("finish reason: {:?}", out.finish_reason);
    Ok(())
}
