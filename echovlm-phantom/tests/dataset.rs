//! The dataset writer, and the committed held-out set read the way the evaluation reads it.

use std::path::PathBuf;

use echovlm_eval::runner::read_samples;
use echovlm_phantom::{
    Attributes, DEFAULT_SIZE, DatasetLine, HELDOUT_SEEDS_START, Lang, PhantomError, TRAINING_SEEDS,
    prompt, render, report, write_dataset, write_dataset_alternating,
};

fn heldout() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/phantoms/heldout.jsonl")
}

#[test]
fn the_heldout_set_reads_as_evaluation_samples() {
    let path = heldout();
    let samples = read_samples(&path).unwrap();
    assert_eq!(samples.len(), 200);
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<DatasetLine> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 200);
    for (i, (sample, line)) in samples.iter().zip(&lines).enumerate() {
        let seed = HELDOUT_SEEDS_START + i as u64;
        assert_eq!(line.seed, seed);
        assert!(!TRAINING_SEEDS.contains(&seed));
        let lang = if seed.is_multiple_of(2) {
            Lang::En
        } else {
            Lang::Zh
        };
        assert_eq!(line.lang, lang);
        assert_eq!(sample.lang.as_deref(), Some(lang.as_str()));
        let attrs = Attributes::from_seed(seed);
        assert_eq!(line.attributes, attrs);
        assert_eq!(sample.attributes, Some(attrs));
        assert_eq!(sample.reference, report(&attrs, lang));
        assert_eq!(sample.prompt.as_deref(), Some(prompt(lang)));
        assert_eq!(line.images, [format!("heldout/{seed}.png")]);
        assert_eq!(sample.images.len(), 1);
        let image = &sample.images[0];
        assert!(image.is_file(), "{}", image.display());
        // the PNG is the phantom the generator draws now (up to floating-point differences
        // between math libraries)
        let stored = image::open(image).unwrap().to_luma8();
        assert_eq!(stored.dimensions(), (DEFAULT_SIZE, DEFAULT_SIZE));
        let drawn = render(seed, &attrs, DEFAULT_SIZE);
        let diff: u64 = stored
            .pixels()
            .zip(drawn.pixels())
            .map(|(a, b)| u64::from(a.0[0].abs_diff(b.0[0])))
            .sum();
        let mean = diff as f64 / f64::from(DEFAULT_SIZE * DEFAULT_SIZE);
        assert!(mean < 0.5, "seed {seed}: mean difference {mean}");
    }
    // the folder holds exactly these images
    let dir = path.with_extension("");
    assert_eq!(std::fs::read_dir(dir).unwrap().count(), 200);
}

#[test]
fn the_writer_writes_one_line_per_seed_and_language() {
    let dir = tempfile::tempdir().unwrap();
    let jsonl = write_dataset(dir.path(), "tiny", 10..13, &[Lang::En, Lang::Zh], 64).unwrap();
    assert_eq!(jsonl, dir.path().join("tiny.jsonl"));
    let samples = read_samples(&jsonl).unwrap();
    assert_eq!(samples.len(), 6);
    let langs: Vec<_> = samples.iter().map(|s| s.lang.clone().unwrap()).collect();
    assert_eq!(langs, ["en", "zh", "en", "zh", "en", "zh"]);
    for s in &samples {
        let img = image::open(&s.images[0]).unwrap();
        assert_eq!((img.width(), img.height()), (64, 64));
    }
    // the same call writes the same bytes
    let first = std::fs::read(dir.path().join("tiny/11.png")).unwrap();
    let text = std::fs::read_to_string(&jsonl).unwrap();
    write_dataset(dir.path(), "tiny", 10..13, &[Lang::En, Lang::Zh], 64).unwrap();
    assert_eq!(
        std::fs::read(dir.path().join("tiny/11.png")).unwrap(),
        first
    );
    assert_eq!(std::fs::read_to_string(&jsonl).unwrap(), text);

    let alt =
        write_dataset_alternating(dir.path(), "alt", 7..11, &[Lang::En, Lang::Zh], 48).unwrap();
    let langs: Vec<_> = read_samples(&alt)
        .unwrap()
        .iter()
        .map(|s| s.lang.clone().unwrap())
        .collect();
    assert_eq!(langs, ["zh", "en", "zh", "en"]);
}

#[test]
fn the_writer_refuses_bad_arguments() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["", ".", "..", "a/b", "../x", "/abs"] {
        assert!(
            matches!(
                write_dataset(dir.path(), name, 0..1, &[Lang::En], 64),
                Err(PhantomError::InvalidName { .. })
            ),
            "{name:?}"
        );
    }
    assert!(matches!(
        write_dataset(dir.path(), "x", 0..1, &[Lang::En], 8),
        Err(PhantomError::Size { size: 8 })
    ));
    assert!(matches!(
        write_dataset(dir.path(), "x", 0..1, &[Lang::En], 100_000),
        Err(PhantomError::Size { .. })
    ));
    assert!(matches!(
        write_dataset(dir.path(), "x", 0..1, &[], 64),
        Err(PhantomError::NoLanguage)
    ));
    // a folder that cannot be created
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let err = write_dataset(&file, "x", 0..1, &[Lang::En], 64).unwrap_err();
    assert!(matches!(err, PhantomError::Io { .. }), "{err}");
    assert!(err.to_string().contains("file"), "{err}");
    // an empty range writes an empty file
    let empty = write_dataset(dir.path(), "none", 5..5, &[Lang::En], 64).unwrap();
    assert_eq!(std::fs::read_to_string(empty).unwrap(), "");
}
