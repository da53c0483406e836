//! Per-attribute accuracy of reports on synthetic phantoms: each generated report is read back
//! with [`echovlm_phantom::parse_report`] and compared with the attributes the phantom was drawn
//! with ([`echovlm_phantom::score`]).

use echovlm_phantom::{AttributeScores, Attributes, Lang, parse_report, score};
use serde::ser::{Serialize, SerializeStruct, Serializer};

/// How many samples got one attribute right, out of those it applies to. Serialised as
/// `{"correct": n, "total": n, "accuracy": 0-100 | null}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AttributeCount {
    /// Samples with the attribute right.
    pub correct: usize,
    /// Samples the attribute applies to.
    pub total: usize,
}

impl AttributeCount {
    /// Counts one sample: `None` when the attribute does not apply to it.
    pub fn add(&mut self, right: Option<bool>) {
        if let Some(r) = right {
            self.total += 1;
            self.correct += usize::from(r);
        }
    }

    /// `correct / total` in 0..=1, `None` when no sample counted.
    pub fn fraction(&self) -> Option<f64> {
        (self.total > 0).then(|| self.correct as f64 / self.total as f64)
    }

    /// The fraction on the 0-100 scale of the other scores.
    pub fn accuracy(&self) -> Option<f64> {
        self.fraction().map(|f| 100.0 * f)
    }
}

impl Serialize for AttributeCount {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("AttributeCount", 3)?;
        s.serialize_field("correct", &self.correct)?;
        s.serialize_field("total", &self.total)?;
        s.serialize_field("accuracy", &self.accuracy())?;
        s.end()
    }
}

/// Per-attribute accuracy over the samples that carry phantom attributes. Lesion attributes
/// count only for phantoms with a lesion; presence counts for every sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct AttributeAccuracy {
    /// Samples counted.
    pub samples: usize,
    /// Whether the report is right about there being a lesion.
    pub lesion_present: AttributeCount,
    /// Echogenicity (anechoic / hypoechoic / hyperechoic).
    pub echogenicity: AttributeCount,
    /// Quadrant: both the vertical and the horizontal half.
    pub position: AttributeCount,
    /// Size class.
    pub size: AttributeCount,
    /// Margin (smooth / irregular).
    pub margin: AttributeCount,
}

impl AttributeAccuracy {
    /// No samples yet.
    pub fn new() -> Self {
        AttributeAccuracy::default()
    }

    /// Counts the scores of one sample.
    pub fn add(&mut self, scores: &AttributeScores) {
        self.samples += 1;
        self.lesion_present.add(Some(scores.lesion_present));
        self.echogenicity.add(scores.echogenicity);
        self.position.add(scores.position);
        self.size.add(scores.size);
        self.margin.add(scores.margin);
    }
}

/// Scores one generated report against the phantom's attributes (`lang`: the report's language).
pub fn score_attributes(expected: &Attributes, hypothesis: &str, lang: Lang) -> AttributeScores {
    score(expected, &parse_report(hypothesis, lang))
}

/// Per-attribute accuracy of `(attributes, generated report, language)` triples.
pub fn attribute_accuracy<'a>(
    samples: impl IntoIterator<Item = (&'a Attributes, &'a str, Lang)>,
) -> AttributeAccuracy {
    let mut acc = AttributeAccuracy::new();
    for (expected, hypothesis, lang) in samples {
        acc.add(&score_attributes(expected, hypothesis, lang));
    }
    acc
}
