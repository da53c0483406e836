//! The same seed gives the same attributes and bytes; the attribute draw covers every value.

use std::collections::HashSet;

use echovlm_phantom::{
    Attributes, DEFAULT_SIZE, Echogenicity, Horizontal, Margin, NO_LESION_PROBABILITY, Phantom,
    SizeClass, Vertical, encode_png, render,
};

#[test]
fn the_same_seed_gives_identical_bytes() {
    for seed in [0u64, 1, 17, 999_999, 1_000_123, u64::MAX] {
        let a = Phantom::new(seed);
        let b = Phantom::new(seed);
        assert_eq!(a, b);
        let (ia, ib) = (a.image(DEFAULT_SIZE), b.image(DEFAULT_SIZE));
        assert_eq!(ia.as_raw(), ib.as_raw(), "seed {seed}");
        assert_eq!(encode_png(&ia).unwrap(), encode_png(&ib).unwrap());
        // and grey: R = G = B everywhere
        assert!(ia.pixels().all(|p| p.0[0] == p.0[1] && p.0[1] == p.0[2]));
    }
}

#[test]
fn different_seeds_give_different_images() {
    let images: Vec<Vec<u8>> = (0..40u64)
        .map(|s| render(s, &Attributes::NO_LESION, DEFAULT_SIZE).into_raw())
        .collect();
    let distinct: HashSet<&Vec<u8>> = images.iter().collect();
    assert_eq!(distinct.len(), images.len());
    // not just a few pixels apart: the speckle differs everywhere in the fan
    let differing = images[0]
        .iter()
        .zip(&images[1])
        .filter(|(a, b)| a != b)
        .count();
    assert!(differing > images[0].len() / 3, "{differing}");
    // the same seed with other attributes changes the lesion, not the speckle around it
    let p = Phantom::new(5);
    let other = render(5, &Attributes::NO_LESION, DEFAULT_SIZE);
    assert_ne!(p.image(DEFAULT_SIZE), other);
}

#[test]
fn the_draw_covers_every_value_with_about_15_percent_without_a_lesion() {
    let n = 2000u64;
    let mut none = 0u64;
    let mut echo = HashSet::new();
    let mut vertical = HashSet::new();
    let mut horizontal = HashSet::new();
    let mut size = HashSet::new();
    let mut margin = HashSet::new();
    let mut diameters = HashSet::new();
    let mut per_echo = [0u64; 3];
    for seed in 0..n {
        let a = Attributes::from_seed(seed);
        assert_eq!(a, Attributes::from_seed(seed));
        let Some(l) = a.lesion else {
            none += 1;
            continue;
        };
        echo.insert(l.echogenicity);
        vertical.insert(l.vertical);
        horizontal.insert(l.horizontal);
        size.insert(l.size);
        margin.insert(l.margin);
        let (lo, hi) = l.size.diameter_range_mm();
        assert!((lo..=hi).contains(&l.diameter_mm), "{l:?}");
        assert_eq!(SizeClass::from_diameter_mm(l.diameter_mm), Some(l.size));
        diameters.insert(l.diameter_mm);
        per_echo[Echogenicity::ALL
            .iter()
            .position(|e| *e == l.echogenicity)
            .unwrap()] += 1;
    }
    let share = none as f64 / n as f64;
    assert!(
        (share - NO_LESION_PROBABILITY).abs() < 0.03,
        "no lesion in {share:.3}"
    );
    assert_eq!(echo.len(), Echogenicity::ALL.len());
    assert_eq!(vertical.len(), Vertical::ALL.len());
    assert_eq!(horizontal.len(), Horizontal::ALL.len());
    assert_eq!(size.len(), SizeClass::ALL.len());
    assert_eq!(margin.len(), Margin::ALL.len());
    // every whole millimetre of every class: 4 + 5 + 6
    assert_eq!(diameters.len(), 15);
    // uniform: each echogenicity about a third of the lesions
    let lesions = (n - none) as f64;
    for c in per_echo {
        assert!(
            (c as f64 / lesions - 1.0 / 3.0).abs() < 0.05,
            "{per_echo:?}"
        );
    }
}

#[test]
fn attributes_serialise_as_snake_case_strings_and_parse_back() {
    let a = Attributes::from_seed(2);
    let json = serde_json::to_string(&a).unwrap();
    assert_eq!(
        json,
        r#"{"lesion":{"echogenicity":"hypoechoic","vertical":"lower","horizontal":"left","size":"large","margin":"smooth","diameter_mm":25}}"#
    );
    assert_eq!(serde_json::from_str::<Attributes>(&json).unwrap(), a);
    assert_eq!(
        serde_json::to_string(&Attributes::NO_LESION).unwrap(),
        r#"{"lesion":null}"#
    );
    for e in Echogenicity::ALL {
        assert_eq!(e.to_string().parse::<Echogenicity>().unwrap(), *e);
        assert_eq!(serde_json::to_string(e).unwrap(), format!("\"{e}\""));
    }
    for m in Margin::ALL {
        assert_eq!(m.to_string().parse::<Margin>().unwrap(), *m);
    }
    for s in SizeClass::ALL {
        assert_eq!(s.to_string().parse::<SizeClass>().unwrap(), *s);
    }
    assert_eq!(" Upper ".parse::<Vertical>().unwrap(), Vertical::Upper);
    assert_eq!("RIGHT".parse::<Horizontal>().unwrap(), Horizontal::Right);
    let err = "sideways".parse::<Horizontal>().unwrap_err().to_string();
    assert!(err.contains("sideways"), "{err}");
}
