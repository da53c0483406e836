//! The dataset writer, and the committed held-out set read the way the evaluation reads it.

use std::path::PathBuf;

use echovlm_eval::runner::read_samples;
use echovlm_phantom::{
    Attributes, DEFAULT_SIZE, DatasetLine, DatasetOptions, Echogenicity, HELDOUT_SEEDS_START, Lang,
    Margin, PhantomError, Question, SizeClass, TRAINING_SEEDS, prompt, render, report,
    write_dataset, write_dataset_alternating, write_dataset_with,
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
fn options_keep_exactly_the_matching_lesions_and_ask_questions() {
    let dir = tempfile::tempdir().unwrap();
    let langs = [Lang::En, Lang::Zh];
    let seeds = 0..60;
    let selection = DatasetOptions::default()
        .with_echogenicity(&[Echogenicity::Anechoic, Echogenicity::Hypoechoic])
        .with_margin(&[Margin::Irregular]);
    let written =
        write_dataset_with(dir.path(), "hard", seeds.clone(), &langs, 48, &selection).unwrap();
    let kept: Vec<u64> = seeds
        .clone()
        .filter(|&s| {
            Attributes::from_seed(s).lesion.is_some_and(|l| {
                l.margin == Margin::Irregular && l.echogenicity != Echogenicity::Hyperechoic
            })
        })
        .collect();
    // a range this long holds some of each, so the check below can fail both ways
    assert!(kept.len() >= 5 && kept.len() <= 30, "{kept:?}");
    assert_eq!(written.images, kept.len() as u64);
    assert_eq!(written.lines, 2 * kept.len() as u64);
    // the kept lines are those of the unselected dataset, byte for byte and in order
    write_dataset(dir.path(), "every", seeds.clone(), &langs, 48).unwrap();
    let every = std::fs::read_to_string(dir.path().join("every.jsonl")).unwrap();
    let expected: String = every
        .lines()
        .filter_map(|l| {
            let line: DatasetLine = serde_json::from_str(l).unwrap();
            kept.contains(&line.seed)
                .then(|| format!("{}\n", l.replace("\"every/", "\"hard/")))
        })
        .collect();
    assert_eq!(std::fs::read_to_string(&written.jsonl).unwrap(), expected);
    for s in seeds.clone() {
        assert_eq!(
            dir.path().join(format!("hard/{s}.png")).is_file(),
            kept.contains(&s),
            "seed {s}"
        );
    }
    // the default keeps every phantom, those without a lesion included
    assert!(DatasetOptions::default().keeps(&Attributes::NO_LESION));
    assert!(!selection.keeps(&Attributes::NO_LESION));
    let all = write_dataset_with(
        dir.path(),
        "all",
        0..10,
        &langs,
        48,
        &DatasetOptions::default().alternating(),
    )
    .unwrap();
    assert_eq!((all.images, all.lines), (10, 10));

    // a question replaces the report, on every phantom with a lesion and no other
    let asked = write_dataset_with(
        dir.path(),
        "ask",
        seeds.clone(),
        &langs,
        48,
        &DatasetOptions::default()
            .alternating()
            .asking(Question::Echogenicity),
    )
    .unwrap();
    let text = std::fs::read_to_string(&asked.jsonl).unwrap();
    let lines: Vec<DatasetLine> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let with_lesion: Vec<u64> = seeds
        .filter(|&s| Attributes::from_seed(s).lesion.is_some())
        .collect();
    assert!(with_lesion.len() < 60);
    assert_eq!(
        lines.iter().map(|l| l.seed).collect::<Vec<_>>(),
        with_lesion
    );
    assert_eq!(asked.lines, with_lesion.len() as u64);
    for line in &lines {
        let lesion = line.attributes.lesion.unwrap();
        let want = match (line.lang, lesion.echogenicity) {
            (Lang::En, Echogenicity::Anechoic) => "Anechoic.",
            (Lang::En, Echogenicity::Hypoechoic) => "Hypoechoic.",
            (Lang::En, Echogenicity::Hyperechoic) => "Hyperechoic.",
            (Lang::Zh, Echogenicity::Anechoic) => "无回声。",
            (Lang::Zh, Echogenicity::Hypoechoic) => "低回声。",
            (Lang::Zh, Echogenicity::Hyperechoic) => "高回声。",
        };
        assert_eq!(line.reference, want, "seed {}", line.seed);
        assert_eq!(line.prompt, Question::Echogenicity.prompt(line.lang));
        assert_ne!(line.prompt, prompt(line.lang));
        assert_eq!(line.lang, langs[(line.seed % 2) as usize]);
    }
    // every echogenicity is asked about in a range this long
    for e in Echogenicity::ALL {
        assert!(
            lines
                .iter()
                .any(|l| l.attributes.lesion.unwrap().echogenicity == *e)
        );
    }
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

#[test]
fn a_set_rendered_in_parallel_keeps_seed_order_and_pixels() {
    // more phantoms than are rendered at once, so that several batches are written
    let dir = tempfile::tempdir().unwrap();
    let seeds = 100..700;
    let jsonl =
        write_dataset_alternating(dir.path(), "many", seeds.clone(), &[Lang::En, Lang::Zh], 32)
            .unwrap();
    let text = std::fs::read_to_string(&jsonl).unwrap();
    let lines: Vec<DatasetLine> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let written: Vec<u64> = lines.iter().map(|l| l.seed).collect();
    assert_eq!(written, seeds.clone().collect::<Vec<_>>());
    for line in lines.iter().step_by(37) {
        let stored = image::open(dir.path().join(&line.images[0]))
            .unwrap()
            .to_rgb8();
        let drawn = render(line.seed, &line.attributes, 32);
        assert!(stored == drawn, "seed {}: not the phantom drawn", line.seed);
        assert_eq!(line.reference, report(&line.attributes, line.lang));
    }
}

#[test]
fn a_question_set_can_point_to_the_images_of_its_report_set() {
    let dir = tempfile::tempdir().unwrap();
    let langs = [Lang::En, Lang::Zh];
    let seeds = 0..40;
    let ask = DatasetOptions::default()
        .alternating()
        .asking(Question::Echogenicity);
    write_dataset_with(
        dir.path(),
        "reports",
        seeds.clone(),
        &langs,
        48,
        &Default::default(),
    )
    .unwrap();
    let own = write_dataset_with(dir.path(), "own", seeds.clone(), &langs, 48, &ask).unwrap();
    let shared = write_dataset_with(
        dir.path(),
        "shared",
        seeds.clone(),
        &langs,
        48,
        &ask.clone().reusing_images_of("reports"),
    )
    .unwrap();
    assert_eq!(shared.images, 0);
    assert_eq!(shared.lines, own.lines);
    assert!(
        !dir.path().join("shared").exists(),
        "no image folder of its own"
    );
    let read = |path: &PathBuf| -> Vec<DatasetLine> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let (own_lines, shared_lines) = (read(&own.jsonl), read(&shared.jsonl));
    for (a, b) in own_lines.iter().zip(&shared_lines) {
        assert_eq!(b.images, vec![format!("reports/{}.png", b.seed)]);
        let (pa, pb) = (dir.path().join(&a.images[0]), dir.path().join(&b.images[0]));
        assert_eq!(std::fs::read(pa).unwrap(), std::fs::read(pb).unwrap());
        assert_eq!(
            (&a.prompt, &a.reference, a.seed),
            (&b.prompt, &b.reference, b.seed)
        );
    }

    // a set of another size, or one that lacks a seed, is refused with the image named
    let err = write_dataset_with(
        dir.path(),
        "bigger",
        seeds.clone(),
        &langs,
        64,
        &ask.clone().reusing_images_of("reports"),
    )
    .unwrap_err();
    assert!(matches!(err, PhantomError::ReusedImage { .. }), "{err}");
    assert!(err.to_string().contains("48x48 pixels, not 64x64"), "{err}");
    let err = write_dataset_with(
        dir.path(),
        "more",
        0..80,
        &langs,
        48,
        &ask.reusing_images_of("reports"),
    )
    .unwrap_err();
    assert!(err.to_string().contains("reports"), "{err}");
}

#[test]
fn a_size_class_keeps_only_lesions_of_that_size() {
    let dir = tempfile::tempdir().unwrap();
    let seeds = 0..60;
    let small = DatasetOptions::default().with_size(&[SizeClass::Small]);
    let written =
        write_dataset_with(dir.path(), "small", seeds.clone(), &[Lang::En], 32, &small).unwrap();
    let kept: Vec<u64> = seeds
        .filter(|&s| {
            Attributes::from_seed(s)
                .lesion
                .is_some_and(|l| l.size == SizeClass::Small)
        })
        .collect();
    assert!(kept.len() >= 5 && kept.len() <= 40, "{kept:?}");
    let text = std::fs::read_to_string(&written.jsonl).unwrap();
    let seeds: Vec<u64> = text
        .lines()
        .map(|l| serde_json::from_str::<DatasetLine>(l).unwrap().seed)
        .collect();
    assert_eq!(seeds, kept);
}
