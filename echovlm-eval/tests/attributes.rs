//! Per-attribute accuracy on phantom reports, from hand-made answers (no model needed).

use echovlm_eval::{AttributeAccuracy, AttributeCount, Attributes, attribute_accuracy};
use echovlm_phantom::{
    Echogenicity, Horizontal, Lang, Lesion, Margin, SizeClass, Vertical, report,
};

fn lesion() -> Attributes {
    Attributes {
        lesion: Some(Lesion {
            echogenicity: Echogenicity::Hyperechoic,
            vertical: Vertical::Lower,
            horizontal: Horizontal::Right,
            size: SizeClass::Large,
            margin: Margin::Irregular,
            diameter_mm: 22,
        }),
    }
}

fn count(correct: usize, total: usize) -> AttributeCount {
    AttributeCount { correct, total }
}

#[test]
fn perfect_answers_score_every_attribute_right() {
    let a = lesion();
    let none = Attributes::NO_LESION;
    let en = report(&a, Lang::En);
    let zh = report(&a, Lang::Zh);
    let en_none = report(&none, Lang::En);
    let acc = attribute_accuracy([
        (&a, en.as_str(), Lang::En),
        (&a, zh.as_str(), Lang::Zh),
        (&none, en_none.as_str(), Lang::En),
    ]);
    assert_eq!(acc.samples, 3);
    assert_eq!(acc.lesion_present, count(3, 3));
    // the no-lesion phantom is not counted for the lesion's attributes
    for c in [acc.echogenicity, acc.position, acc.size, acc.margin] {
        assert_eq!(c, count(2, 2));
        assert_eq!(c.fraction(), Some(1.0));
        assert_eq!(c.accuracy(), Some(100.0));
    }
}

#[test]
fn one_wrong_attribute_costs_only_that_attribute() {
    let a = lesion();
    let right = report(&a, Lang::En);
    // the same report with the quadrant wrong
    let wrong_side = right.replace("right", "left");
    // and one with the size wrong, in Chinese
    let zh = report(&a, Lang::Zh).replace("体积较大", "体积较小");
    let hyps = [right.as_str(), wrong_side.as_str(), zh.as_str()];
    let langs = [Lang::En, Lang::En, Lang::Zh];
    let acc = attribute_accuracy(hyps.iter().zip(langs).map(|(h, l)| (&a, *h, l)));
    assert_eq!(acc.samples, 3);
    assert_eq!(acc.lesion_present, count(3, 3));
    assert_eq!(acc.echogenicity, count(3, 3));
    assert_eq!(acc.position, count(2, 3));
    assert_eq!(acc.size, count(2, 3));
    assert_eq!(acc.margin, count(3, 3));
    assert!((acc.position.fraction().unwrap() - 2.0 / 3.0).abs() < 1e-12);

    // a missed lesion: presence wrong and every lesion attribute wrong
    let missed = report(&Attributes::NO_LESION, Lang::En);
    let acc = attribute_accuracy([(&a, missed.as_str(), Lang::En)]);
    assert_eq!(acc.lesion_present, count(0, 1));
    for c in [acc.echogenicity, acc.position, acc.size, acc.margin] {
        assert_eq!(c, count(0, 1));
    }
    // a lesion reported on an organ without one: presence wrong, nothing else counted
    let acc = attribute_accuracy([(&Attributes::NO_LESION, right.as_str(), Lang::En)]);
    assert_eq!(acc.lesion_present, count(0, 1));
    assert_eq!(acc.margin, count(0, 0));
    assert_eq!(acc.margin.fraction(), None);
    // garbage in the wrong language scores nothing right
    let acc = attribute_accuracy([(&a, "完全无关的文字", Lang::En)]);
    assert_eq!(acc.lesion_present, count(0, 1));
    assert_eq!(acc.size, count(0, 1));
}

#[test]
fn the_json_holds_counts_and_a_0_100_accuracy() {
    let mut acc = AttributeAccuracy::new();
    let a = lesion();
    let hyp = report(&a, Lang::En).replace("irregular", "smooth");
    acc.add(&echovlm_eval::score_attributes(&a, &hyp, Lang::En));
    acc.add(&echovlm_eval::score_attributes(
        &a,
        &report(&a, Lang::En),
        Lang::En,
    ));
    let v = serde_json::to_value(acc).unwrap();
    assert_eq!(v["samples"], 2);
    assert_eq!(v["margin"]["correct"], 1);
    assert_eq!(v["margin"]["total"], 2);
    assert_eq!(v["margin"]["accuracy"], 50.0);
    assert_eq!(v["size"]["accuracy"], 100.0);
    let empty = serde_json::to_value(AttributeAccuracy::new()).unwrap();
    assert!(empty["size"]["accuracy"].is_null());
}

#[cfg(feature = "runner")]
#[test]
fn the_runner_scores_phantom_samples_and_leaves_others_alone() {
    use echovlm_eval::runner::{Sample, score_sample, summarize};
    use echovlm_pipeline::Lang as PipelineLang;

    let a = lesion();
    let reference = report(&a, Lang::Zh);
    let phantom = Sample::new(vec![], "q", reference.clone(), PipelineLang::Zh).with_attributes(a);
    let plain = Sample::new(vec![], "q", "The liver is normal.", PipelineLang::En);
    let wrong = reference.replace("边界不规则", "边界光整");
    let scored = vec![
        score_sample(&phantom, &reference, 10),
        score_sample(&phantom, &wrong, 10),
        score_sample(&plain, "The liver is normal.", 5),
    ];
    assert!(scored[2].attributes.is_none());
    let json = serde_json::to_value(&scored[2]).unwrap();
    assert!(json.get("attributes").is_none(), "{json}");
    assert_eq!(scored[1].attributes.unwrap().margin, Some(false));
    let report = summarize(scored);
    let acc = report.attributes.unwrap();
    assert_eq!(acc.samples, 2);
    assert_eq!(acc.margin, count(1, 2));
    assert_eq!(acc.echogenicity, count(2, 2));
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["attributes"]["margin"]["accuracy"], 50.0);

    // without phantom samples the report has no attributes at all
    let only_plain = summarize(vec![score_sample(&plain, "The liver.", 2)]);
    assert!(only_plain.attributes.is_none());
    let json = serde_json::to_value(&only_plain).unwrap();
    assert!(json.get("attributes").is_none(), "{json}");
}
