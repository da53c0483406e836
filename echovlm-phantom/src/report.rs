//! The fixed report templates, the prompt, reading attributes back from a report, and scoring
//! them against the phantom's.

use serde::{Deserialize, Serialize};

use crate::attributes::{
    Attributes, Echogenicity, Horizontal, Lang, Lesion, Margin, Question, SizeClass, Vertical,
};

/// The question a phantom sample asks, in `lang`.
pub fn prompt(lang: Lang) -> &'static str {
    match lang {
        Lang::En => "Describe this ultrasound image and give the findings and the impression.",
        Lang::Zh => "请描述这张超声图像，给出超声所见和超声提示。",
    }
}

impl Question {
    /// The question, in `lang`.
    pub fn prompt(&self, lang: Lang) -> &'static str {
        match (self, lang) {
            (Question::Echogenicity, Lang::En) => "What is the echogenicity of the lesion?",
            (Question::Echogenicity, Lang::Zh) => "病灶是什么回声？",
        }
    }

    /// The answer for `lesion`, in `lang`: the attribute's word as the reports write it, as a
    /// sentence (`Anechoic.`, `无回声。`).
    pub fn answer(&self, lesion: &Lesion, lang: Lang) -> String {
        match (self, lang) {
            (Question::Echogenicity, Lang::En) => {
                let word = en_echo(lesion.echogenicity);
                format!("{}{}.", word[..1].to_ascii_uppercase(), &word[1..])
            }
            (Question::Echogenicity, Lang::Zh) => format!("{}。", zh_echo(lesion.echogenicity)),
        }
    }
}

/// The diameter as centimetres with one decimal (`14` mm gives `1.4`).
fn cm(diameter_mm: u32) -> String {
    format!("{}.{}", diameter_mm / 10, diameter_mm % 10)
}

fn en_echo(e: Echogenicity) -> &'static str {
    match e {
        Echogenicity::Anechoic => "anechoic",
        Echogenicity::Hypoechoic => "hypoechoic",
        Echogenicity::Hyperechoic => "hyperechoic",
    }
}

fn zh_echo(e: Echogenicity) -> &'static str {
    match e {
        Echogenicity::Anechoic => "无回声",
        Echogenicity::Hypoechoic => "低回声",
        Echogenicity::Hyperechoic => "高回声",
    }
}

fn zh_size(s: SizeClass) -> &'static str {
    match s {
        SizeClass::Small => "体积较小",
        SizeClass::Medium => "中等大小",
        SizeClass::Large => "体积较大",
    }
}

fn zh_margin(m: Margin) -> &'static str {
    match m {
        Margin::Smooth => "边界光整",
        Margin::Irregular => "边界不规则",
    }
}

fn zh_position(v: Vertical, h: Horizontal) -> &'static str {
    match (h, v) {
        (Horizontal::Left, Vertical::Upper) => "左上",
        (Horizontal::Left, Vertical::Lower) => "左下",
        (Horizontal::Right, Vertical::Upper) => "右上",
        (Horizontal::Right, Vertical::Lower) => "右下",
    }
}

/// The English report without a lesion.
const EN_NO_LESION: &str = "Findings: The organ has a homogeneous echotexture. No focal lesion is seen. Impression: No focal lesion.";
/// The Chinese report without a lesion.
const ZH_NO_LESION: &str =
    "超声所见：脏器形态正常，实质回声均匀，未见明显占位。超声提示：未见明显占位。";

/// The canonical report of `attrs` in `lang`: one fixed template per language, naming every
/// attribute of the lesion (echogenicity, position, diameter in cm with one decimal, size
/// class, margin) in fixed words. English:
///
/// `Findings: The organ shows a hypoechoic lesion in the upper left region, about 1.4 cm
/// (medium), with a smooth margin. Impression: Hypoechoic lesion, medium, smooth margin.`
///
/// Chinese:
///
/// `超声所见：脏器左上区见一低回声病灶，直径约1.4 cm，中等大小，边界光整。超声提示：低回声病灶，中等大小，边界光整。`
pub fn report(attrs: &Attributes, lang: Lang) -> String {
    match (attrs.lesion, lang) {
        (None, Lang::En) => EN_NO_LESION.to_string(),
        (None, Lang::Zh) => ZH_NO_LESION.to_string(),
        (Some(l), Lang::En) => {
            let echo = en_echo(l.echogenicity);
            let article = if l.echogenicity == Echogenicity::Anechoic {
                "an"
            } else {
                "a"
            };
            let mut capital = echo.to_string();
            capital[..1].make_ascii_uppercase();
            let margin_article = if l.margin == Margin::Irregular {
                "an"
            } else {
                "a"
            };
            format!(
                "Findings: The organ shows {article} {echo} lesion in the {} {} region, about {} cm ({}), with {margin_article} {} margin. Impression: {capital} lesion, {}, {} margin.",
                l.vertical,
                l.horizontal,
                cm(l.diameter_mm),
                l.size,
                l.margin,
                l.size,
                l.margin,
            )
        }
        (Some(l), Lang::Zh) => {
            let echo = zh_echo(l.echogenicity);
            let size = zh_size(l.size);
            let margin = zh_margin(l.margin);
            format!(
                "超声所见：脏器{}区见一{echo}病灶，直径约{} cm，{size}，{margin}。超声提示：{echo}病灶，{size}，{margin}。",
                zh_position(l.vertical, l.horizontal),
                cm(l.diameter_mm),
            )
        }
    }
}

/// What a report says about each attribute; a field is `None` when the report does not say, or
/// says more than one value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct ParsedAttributes {
    /// `Some(true)` for a report of a lesion, `Some(false)` for one of no focal lesion.
    pub lesion: Option<bool>,
    /// The lesion's echogenicity.
    pub echogenicity: Option<Echogenicity>,
    /// Upper or lower.
    pub vertical: Option<Vertical>,
    /// Left or right.
    pub horizontal: Option<Horizontal>,
    /// The size class (from its word, not from the number).
    pub size: Option<SizeClass>,
    /// Smooth or irregular.
    pub margin: Option<Margin>,
    /// The diameter in millimetres, from the one length the report gives.
    pub diameter_mm: Option<u32>,
}

impl From<&Attributes> for ParsedAttributes {
    /// What the canonical report of `attrs` parses to.
    fn from(attrs: &Attributes) -> Self {
        match attrs.lesion {
            None => ParsedAttributes {
                lesion: Some(false),
                ..ParsedAttributes::default()
            },
            Some(l) => ParsedAttributes {
                lesion: Some(true),
                echogenicity: Some(l.echogenicity),
                vertical: Some(l.vertical),
                horizontal: Some(l.horizontal),
                size: Some(l.size),
                margin: Some(l.margin),
                diameter_mm: Some(l.diameter_mm),
            },
        }
    }
}

impl ParsedAttributes {
    /// The attributes, when the report names all of them (a lesion report without a length
    /// takes the middle of its size class's range).
    pub fn to_attributes(&self) -> Option<Attributes> {
        match self.lesion? {
            false => Some(Attributes::NO_LESION),
            true => {
                let size = self.size?;
                let (lo, hi) = size.diameter_range_mm();
                Some(Attributes {
                    lesion: Some(Lesion {
                        echogenicity: self.echogenicity?,
                        vertical: self.vertical?,
                        horizontal: self.horizontal?,
                        size,
                        margin: self.margin?,
                        diameter_mm: self.diameter_mm.unwrap_or((lo + hi) / 2),
                    }),
                })
            }
        }
    }
}

/// Collects the values an attribute is given; one value is the answer, none or several is `None`.
#[derive(Debug)]
struct Votes<T>(Vec<T>);

impl<T: PartialEq + Copy> Votes<T> {
    fn new() -> Self {
        Votes(Vec::new())
    }

    fn add(&mut self, v: T) {
        if !self.0.contains(&v) {
            self.0.push(v);
        }
    }

    fn only(&self) -> Option<T> {
        match self.0.as_slice() {
            [v] => Some(*v),
            _ => None,
        }
    }
}

/// Reads the attributes back from a report in `lang` (the canonical templates of [`report`] and
/// close paraphrases using the same words). Each field is `None` when the report does not name
/// it or names several values; a report of no focal lesion gives `lesion: Some(false)` and
/// nothing else. Any text is accepted; text in the other language gives `None` fields.
pub fn parse_report(text: &str, lang: Lang) -> ParsedAttributes {
    match lang {
        Lang::En => parse_en(text),
        Lang::Zh => parse_zh(text),
    }
}

fn parse_en(text: &str) -> ParsedAttributes {
    let lower = text.to_lowercase();
    let words: Vec<&str> = lower
        .split(|c: char| !c.is_ascii_alphabetic())
        .filter(|w| !w.is_empty())
        .collect();
    let mut echo = Votes::new();
    let mut vertical = Votes::new();
    let mut horizontal = Votes::new();
    let mut size = Votes::new();
    let mut margin = Votes::new();
    let (mut positive, mut negative) = (false, false);
    for (i, w) in words.iter().enumerate() {
        match *w {
            "anechoic" => echo.add(Echogenicity::Anechoic),
            "hypoechoic" => echo.add(Echogenicity::Hypoechoic),
            "hyperechoic" => echo.add(Echogenicity::Hyperechoic),
            "upper" => vertical.add(Vertical::Upper),
            "lower" => vertical.add(Vertical::Lower),
            "left" => horizontal.add(Horizontal::Left),
            "right" => horizontal.add(Horizontal::Right),
            "small" => size.add(SizeClass::Small),
            "medium" => size.add(SizeClass::Medium),
            "large" => size.add(SizeClass::Large),
            "smooth" => margin.add(Margin::Smooth),
            "irregular" => margin.add(Margin::Irregular),
            "lesion" | "lesions" => {
                let negated = words[i.saturating_sub(3)..i]
                    .iter()
                    .any(|p| matches!(*p, "no" | "without" | "not"));
                if negated {
                    negative = true;
                } else {
                    positive = true;
                }
            }
            _ => {}
        }
    }
    let named_any = !(echo.0.is_empty()
        && vertical.0.is_empty()
        && horizontal.0.is_empty()
        && size.0.is_empty()
        && margin.0.is_empty());
    finish(
        positive || named_any,
        negative,
        echo.only(),
        vertical.only(),
        horizontal.only(),
        size.only(),
        margin.only(),
        diameter(text),
    )
}

fn parse_zh(text: &str) -> ParsedAttributes {
    let count = |pat: &str| text.matches(pat).count();
    let mut echo = Votes::new();
    for (w, v) in [
        ("无回声", Echogenicity::Anechoic),
        ("低回声", Echogenicity::Hypoechoic),
        ("高回声", Echogenicity::Hyperechoic),
    ] {
        if count(w) > 0 {
            echo.add(v);
        }
    }
    let mut vertical = Votes::new();
    let mut horizontal = Votes::new();
    for (w, h, v) in [
        ("左上", Horizontal::Left, Vertical::Upper),
        ("左下", Horizontal::Left, Vertical::Lower),
        ("右上", Horizontal::Right, Vertical::Upper),
        ("右下", Horizontal::Right, Vertical::Lower),
    ] {
        if count(w) > 0 {
            horizontal.add(h);
            vertical.add(v);
        }
    }
    let mut size = Votes::new();
    for (w, v) in [
        ("较小", SizeClass::Small),
        ("中等", SizeClass::Medium),
        ("较大", SizeClass::Large),
    ] {
        if count(w) > 0 {
            size.add(v);
        }
    }
    let mut margin = Votes::new();
    for (w, v) in [("光整", Margin::Smooth), ("不规则", Margin::Irregular)] {
        if count(w) > 0 {
            margin.add(v);
        }
    }
    // "未见" (not seen) shortly before 占位 / 病灶 negates it
    let (mut positive, mut negative) = (false, false);
    for pat in ["占位", "病灶"] {
        for (at, _) in text.match_indices(pat) {
            let before: String = text[..at]
                .chars()
                .rev()
                .take(6)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            if before.contains("未见") || (before.contains("无") && !before.contains("无回声"))
            {
                negative = true;
            } else {
                positive = true;
            }
        }
    }
    let named_any = !(echo.0.is_empty()
        && vertical.0.is_empty()
        && horizontal.0.is_empty()
        && size.0.is_empty()
        && margin.0.is_empty());
    finish(
        positive || named_any,
        negative,
        echo.only(),
        vertical.only(),
        horizontal.only(),
        size.only(),
        margin.only(),
        diameter(text),
    )
}

#[allow(clippy::too_many_arguments)]
fn finish(
    positive: bool,
    negative: bool,
    echogenicity: Option<Echogenicity>,
    vertical: Option<Vertical>,
    horizontal: Option<Horizontal>,
    size: Option<SizeClass>,
    margin: Option<Margin>,
    diameter_mm: Option<u32>,
) -> ParsedAttributes {
    let lesion = match (positive, negative) {
        (true, false) => Some(true),
        (false, true) => Some(false),
        _ => None,
    };
    if lesion == Some(false) {
        return ParsedAttributes {
            lesion,
            ..ParsedAttributes::default()
        };
    }
    ParsedAttributes {
        lesion,
        echogenicity,
        vertical,
        horizontal,
        size,
        margin,
        diameter_mm,
    }
}

/// The one length the text gives (`1.4 cm`, `1.4cm`, `14 mm`, `1.4厘米`, `14毫米`) in
/// millimetres; `None` when there is none or several different ones.
fn diameter(text: &str) -> Option<u32> {
    let mut found = Votes::new();
    let mut chars = text.char_indices().peekable();
    while let Some((start, c)) = chars.next() {
        if !c.is_ascii_digit() {
            continue;
        }
        // a number starts here unless a digit or a period came just before
        if text[..start]
            .chars()
            .next_back()
            .is_some_and(|p| p.is_ascii_digit() || p == '.')
        {
            continue;
        }
        let mut end = start + c.len_utf8();
        while let Some(&(i, d)) = chars.peek() {
            if d.is_ascii_digit() || d == '.' {
                end = i + d.len_utf8();
                chars.next();
            } else {
                break;
            }
        }
        let number = text[start..end].trim_end_matches('.');
        let Ok(value) = number.parse::<f64>() else {
            continue;
        };
        let unit = text[end..].trim_start();
        let mm = if unit.starts_with("cm") || unit.starts_with("厘米") {
            value * 10.0
        } else if unit.starts_with("mm") || unit.starts_with("毫米") {
            value
        } else {
            continue;
        };
        if mm.is_finite() && (0.0..100_000.0).contains(&mm) {
            found.add(mm.round() as u32);
        }
    }
    found.only()
}

/// Per-attribute correctness of a parsed report against the phantom's attributes. An attribute
/// that does not apply (the lesion's, for a phantom without one) is `None`: skipped, not counted.
/// A parsed field that is `None` counts as wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AttributeScores {
    /// Whether the report is right about there being a lesion.
    pub lesion_present: bool,
    /// Echogenicity right.
    pub echogenicity: Option<bool>,
    /// Both the vertical and the horizontal half right.
    pub position: Option<bool>,
    /// Size class right.
    pub size: Option<bool>,
    /// Margin right.
    pub margin: Option<bool>,
}

impl AttributeScores {
    /// Whether every attribute that applies is right.
    pub fn all_correct(&self) -> bool {
        self.lesion_present
            && [self.echogenicity, self.position, self.size, self.margin]
                .iter()
                .all(|a| a.unwrap_or(true))
    }
}

/// Scores `parsed` against the `expected` attributes.
pub fn score(expected: &Attributes, parsed: &ParsedAttributes) -> AttributeScores {
    match expected.lesion {
        None => AttributeScores {
            lesion_present: parsed.lesion == Some(false),
            echogenicity: None,
            position: None,
            size: None,
            margin: None,
        },
        Some(l) => AttributeScores {
            lesion_present: parsed.lesion == Some(true),
            echogenicity: Some(parsed.echogenicity == Some(l.echogenicity)),
            position: Some(
                parsed.vertical == Some(l.vertical) && parsed.horizontal == Some(l.horizontal),
            ),
            size: Some(parsed.size == Some(l.size)),
            margin: Some(parsed.margin == Some(l.margin)),
        },
    }
}
