//! The report templates read back to their attributes; other text never panics the parser.

use echovlm_phantom::{
    AttributeScores, Attributes, Echogenicity, Horizontal, Lang, Lesion, Margin, ParsedAttributes,
    SizeClass, Vertical, parse_report, prompt, report, score,
};

fn lesion() -> Attributes {
    Attributes {
        lesion: Some(Lesion {
            echogenicity: Echogenicity::Hypoechoic,
            vertical: Vertical::Upper,
            horizontal: Horizontal::Left,
            size: SizeClass::Medium,
            margin: Margin::Smooth,
            diameter_mm: 14,
        }),
    }
}

#[test]
fn the_templates_read_as_documented() {
    assert_eq!(
        report(&lesion(), Lang::En),
        "Findings: The organ shows a hypoechoic lesion in the upper left region, about 1.4 cm (medium), with a smooth margin. Impression: Hypoechoic lesion, medium, smooth margin."
    );
    assert_eq!(
        report(&lesion(), Lang::Zh),
        "超声所见：脏器左上区见一低回声病灶，直径约1.4 cm，中等大小，边界光整。超声提示：低回声病灶，中等大小，边界光整。"
    );
    assert_eq!(
        report(&Attributes::NO_LESION, Lang::En),
        "Findings: The organ has a homogeneous echotexture. No focal lesion is seen. Impression: No focal lesion."
    );
    assert_eq!(
        report(&Attributes::NO_LESION, Lang::Zh),
        "超声所见：脏器形态正常，实质回声均匀，未见明显占位。超声提示：未见明显占位。"
    );
    let mut an = lesion();
    if let Some(l) = an.lesion.as_mut() {
        l.echogenicity = Echogenicity::Anechoic;
        l.diameter_mm = 5;
    }
    let text = report(&an, Lang::En);
    assert!(text.contains("shows an anechoic lesion"), "{text}");
    assert!(text.contains("about 0.5 cm (medium)"), "{text}");
    assert!(text.contains("Impression: Anechoic lesion"), "{text}");
    if let Some(l) = an.lesion.as_mut() {
        l.margin = Margin::Irregular;
    }
    let text = report(&an, Lang::En);
    assert!(text.contains("with an irregular margin."), "{text}");
    assert_eq!(
        prompt(Lang::En),
        "Describe this ultrasound image and give the findings and the impression."
    );
    assert_eq!(
        prompt(Lang::Zh),
        "请描述这张超声图像，给出超声所见和超声提示。"
    );
}

#[test]
fn every_combination_round_trips_in_both_languages() {
    for a in Attributes::all_combinations() {
        for lang in Lang::ALL {
            let text = report(&a, *lang);
            let parsed = parse_report(&text, *lang);
            assert_eq!(parsed, ParsedAttributes::from(&a), "{text}");
            assert_eq!(parsed.to_attributes(), Some(a), "{text}");
            let s = score(&a, &parsed);
            assert!(s.lesion_present);
            for part in [s.echogenicity, s.position, s.size, s.margin] {
                assert_eq!(part, a.lesion.map(|_| true));
            }
        }
    }
    // and for drawn attributes with every diameter
    for seed in 0..300 {
        let a = Attributes::from_seed(seed);
        for lang in Lang::ALL {
            let parsed = parse_report(&report(&a, *lang), *lang);
            assert_eq!(parsed.to_attributes(), Some(a));
        }
    }
}

#[test]
fn garbage_empty_truncated_and_mixed_text_give_none() {
    let none = ParsedAttributes::default();
    for lang in Lang::ALL {
        for text in [
            "",
            "   \n\t",
            "asdf qwerty 12345 !!!",
            "\u{0}\u{feff}\u{202e}💥🔥 ...",
            "1.2.3.4 cm 9999999999999999999999999 cm .5cm",
            "1e400 cm",
        ] {
            let p = parse_report(text, *lang);
            assert_eq!(p.lesion, None, "{text:?}");
            assert_eq!(p.echogenicity, None);
            assert_eq!(p.vertical, None);
            assert_eq!(p.horizontal, None);
            assert_eq!(p.size, None);
            assert_eq!(p.margin, None);
        }
        // the other language's report: nothing it can read
        let other = if *lang == Lang::En {
            Lang::Zh
        } else {
            Lang::En
        };
        for a in Attributes::all_combinations() {
            let p = parse_report(&report(&a, other), *lang);
            assert_eq!(
                ParsedAttributes {
                    diameter_mm: None,
                    ..p
                },
                none,
                "{lang}: {}",
                report(&a, other)
            );
        }
    }
    // every prefix of every report (cut at each character) parses without panicking, and a
    // field it names is the right one
    for a in Attributes::all_combinations().into_iter().step_by(5) {
        for lang in Lang::ALL {
            let text = report(&a, *lang);
            let want = ParsedAttributes::from(&a);
            for (cut, _) in text.char_indices() {
                let p = parse_report(&text[..cut], *lang);
                for (got, right) in [
                    (
                        p.echogenicity.map(|v| v as u8),
                        want.echogenicity.map(|v| v as u8),
                    ),
                    (p.vertical.map(|v| v as u8), want.vertical.map(|v| v as u8)),
                    (
                        p.horizontal.map(|v| v as u8),
                        want.horizontal.map(|v| v as u8),
                    ),
                    (p.size.map(|v| v as u8), want.size.map(|v| v as u8)),
                    (p.margin.map(|v| v as u8), want.margin.map(|v| v as u8)),
                ] {
                    assert!(got.is_none() || got == right, "{:?}", &text[..cut]);
                }
            }
        }
    }
    // a truncated report keeps what it said and nothing more
    let p = parse_report(
        "Findings: The organ shows a hypoechoic lesion in the upper",
        Lang::En,
    );
    assert_eq!(p.lesion, Some(true));
    assert_eq!(p.echogenicity, Some(Echogenicity::Hypoechoic));
    assert_eq!(p.vertical, Some(Vertical::Upper));
    assert_eq!((p.horizontal, p.size, p.margin), (None, None, None));
    let p = parse_report("超声所见：脏器左上区见一低回", Lang::Zh);
    assert_eq!(p.echogenicity, None);
    assert_eq!(p.horizontal, Some(Horizontal::Left));
    // mixed languages: only the words of the language asked for count
    let mixed = "Findings: 脏器左上区见一低回声病灶 lesion, smooth margin, 边界不规则";
    let p = parse_report(mixed, Lang::En);
    assert_eq!(p.lesion, Some(true));
    assert_eq!(p.margin, Some(Margin::Smooth));
    assert_eq!(
        (p.echogenicity, p.vertical, p.horizontal),
        (None, None, None)
    );
    let p = parse_report(mixed, Lang::Zh);
    assert_eq!(p.margin, Some(Margin::Irregular));
    assert_eq!(p.echogenicity, Some(Echogenicity::Hypoechoic));
    // contradictions give None
    let p = parse_report(
        "A small lesion, large, with a smooth or irregular margin.",
        Lang::En,
    );
    assert_eq!((p.size, p.margin), (None, None));
    let p = parse_report("No focal lesion. A hypoechoic lesion.", Lang::En);
    assert_eq!(p.lesion, None);
}

/// Replaces every occurrence of `from` (and its capitalised form) with `to`.
fn swap(text: &str, from: &str, to: &str) -> String {
    let cap = |s: &str| {
        let mut c = s.chars();
        c.next()
            .map(|f| f.to_uppercase().chain(c).collect::<String>())
            .unwrap_or_default()
    };
    text.replace(from, to).replace(&cap(from), &cap(to))
}

#[test]
fn a_swapped_word_parses_to_the_swapped_value() {
    let a = lesion();
    let en = report(&a, Lang::En);
    let zh = report(&a, Lang::Zh);
    let base = ParsedAttributes::from(&a);

    let p = parse_report(&swap(&en, "hypoechoic", "hyperechoic"), Lang::En);
    assert_eq!(
        p,
        ParsedAttributes {
            echogenicity: Some(Echogenicity::Hyperechoic),
            ..base
        }
    );
    let p = parse_report(&swap(&en, "hypoechoic", "anechoic"), Lang::En);
    assert_eq!(p.echogenicity, Some(Echogenicity::Anechoic));
    let p = parse_report(&swap(&en, "upper", "lower"), Lang::En);
    assert_eq!(
        p,
        ParsedAttributes {
            vertical: Some(Vertical::Lower),
            ..base
        }
    );
    let p = parse_report(&swap(&en, "left", "right"), Lang::En);
    assert_eq!(
        p,
        ParsedAttributes {
            horizontal: Some(Horizontal::Right),
            ..base
        }
    );
    let p = parse_report(&swap(&en, "medium", "large"), Lang::En);
    assert_eq!(
        p,
        ParsedAttributes {
            size: Some(SizeClass::Large),
            ..base
        }
    );
    let p = parse_report(&swap(&en, "smooth", "irregular"), Lang::En);
    assert_eq!(
        p,
        ParsedAttributes {
            margin: Some(Margin::Irregular),
            ..base
        }
    );
    let p = parse_report(&swap(&en, "1.4 cm", "2.2 cm"), Lang::En);
    assert_eq!(
        p,
        ParsedAttributes {
            diameter_mm: Some(22),
            ..base
        }
    );

    let p = parse_report(&swap(&zh, "低回声", "高回声"), Lang::Zh);
    assert_eq!(
        p,
        ParsedAttributes {
            echogenicity: Some(Echogenicity::Hyperechoic),
            ..base
        }
    );
    let p = parse_report(&swap(&zh, "低回声", "无回声"), Lang::Zh);
    assert_eq!(
        p,
        ParsedAttributes {
            echogenicity: Some(Echogenicity::Anechoic),
            ..base
        }
    );
    let p = parse_report(&swap(&zh, "左上", "右下"), Lang::Zh);
    assert_eq!(
        p,
        ParsedAttributes {
            vertical: Some(Vertical::Lower),
            horizontal: Some(Horizontal::Right),
            ..base
        }
    );
    let p = parse_report(&swap(&zh, "中等大小", "体积较小"), Lang::Zh);
    assert_eq!(
        p,
        ParsedAttributes {
            size: Some(SizeClass::Small),
            ..base
        }
    );
    let p = parse_report(&swap(&zh, "边界光整", "边界不规则"), Lang::Zh);
    assert_eq!(
        p,
        ParsedAttributes {
            margin: Some(Margin::Irregular),
            ..base
        }
    );

    // a lesion report turned into a no-lesion one
    let p = parse_report(&report(&Attributes::NO_LESION, Lang::Zh), Lang::Zh);
    assert_eq!(p.lesion, Some(false));
}

#[test]
fn scores_count_each_attribute_and_skip_what_does_not_apply() {
    let a = lesion();
    let en = report(&a, Lang::En);
    let s = score(&a, &parse_report(&swap(&en, "left", "right"), Lang::En));
    assert_eq!(
        s,
        AttributeScores {
            lesion_present: true,
            echogenicity: Some(true),
            position: Some(false),
            size: Some(true),
            margin: Some(true),
        }
    );
    // a missing attribute is wrong
    let s = score(
        &a,
        &parse_report("Findings: a hypoechoic lesion.", Lang::En),
    );
    assert_eq!(s.echogenicity, Some(true));
    assert_eq!(
        (s.position, s.size, s.margin),
        (Some(false), Some(false), Some(false))
    );
    // no lesion: only presence is scored
    let s = score(&Attributes::NO_LESION, &parse_report(&en, Lang::En));
    assert_eq!(
        s,
        AttributeScores {
            lesion_present: false,
            echogenicity: None,
            position: None,
            size: None,
            margin: None,
        }
    );
    let none = report(&Attributes::NO_LESION, Lang::En);
    assert!(score(&Attributes::NO_LESION, &parse_report(&none, Lang::En)).lesion_present);
    assert!(!score(&a, &parse_report(&none, Lang::En)).lesion_present);
}

#[test]
fn random_text_built_from_report_pieces_never_panics() {
    use rand_chacha::ChaCha8Rng;
    use rand_chacha::rand_core::{RngCore, SeedableRng};

    let mut pieces: Vec<String> = Vec::new();
    for a in Attributes::all_combinations().into_iter().step_by(7) {
        for lang in Lang::ALL {
            let text = report(&a, *lang);
            // words and characters of real reports, cut anywhere
            pieces.extend(text.split_inclusive([' ', '，', '。']).map(str::to_string));
            pieces.extend(text.chars().map(String::from));
        }
    }
    pieces.extend(
        [
            "1.",
            ".5",
            "..",
            "cm",
            "mm",
            "厘米",
            "毫米",
            "未见",
            "无",
            "no",
            "not",
            "lesion",
            "\n",
            "\u{0}",
            "\u{10ffff}",
            "💥",
            "9999999999999999999999",
            "-",
            "e9",
        ]
        .map(str::to_string),
    );
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    for _ in 0..3000 {
        let n = 1 + rng.next_u32() % 40;
        let text: String = (0..n)
            .map(|_| pieces[rng.next_u32() as usize % pieces.len()].as_str())
            .collect();
        for lang in Lang::ALL {
            let p = parse_report(&text, *lang);
            // a no-lesion answer names no lesion attribute
            if p.lesion == Some(false) {
                assert_eq!(p.echogenicity, None, "{text}");
                assert_eq!(p.size, None, "{text}");
            }
            let _ = score(&Attributes::from_seed(rng.next_u64()), &p);
        }
    }
}
