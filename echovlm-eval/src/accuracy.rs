//! Accuracy for choice and diagnosis questions.

use crate::MetricsError;
use crate::tokenize::{is_py_space, py_split};

/// Lowercases `text`, trims it and collapses every whitespace run to one
/// space: the comparison key of [`accuracy`].
pub fn normalize_answer(text: &str) -> String {
    let lower = text.to_lowercase();
    py_split(&lower).collect::<Vec<_>>().join(" ")
}

fn check_lengths(predictions: usize, references: usize) -> Result<(), MetricsError> {
    if predictions == references {
        Ok(())
    } else {
        Err(MetricsError::LengthMismatch {
            hypotheses: predictions,
            references,
        })
    }
}

fn percent(hits: usize, total: usize) -> f64 {
    if total == 0 {
        0.0
    } else {
        100.0 * hits as f64 / total as f64
    }
}

/// Exact-match accuracy, 0-100: the share of predictions equal to their
/// reference after [`normalize_answer`]. An empty set scores 0; slices of
/// different lengths are an error.
pub fn accuracy<P: AsRef<str>, R: AsRef<str>>(
    predictions: &[P],
    references: &[R],
) -> Result<f64, MetricsError> {
    check_lengths(predictions.len(), references.len())?;
    let hits = predictions
        .iter()
        .zip(references)
        .filter(|(p, r)| normalize_answer(p.as_ref()) == normalize_answer(r.as_ref()))
        .count();
    Ok(percent(hits, predictions.len()))
}

/// Multiple-choice accuracy, 0-100: the share of predictions whose
/// [`extract_option_letter`] is `Some` and equal to the reference's. An
/// empty set scores 0; slices of different lengths are an error.
pub fn choice_accuracy<P: AsRef<str>, R: AsRef<str>>(
    predictions: &[P],
    references: &[R],
) -> Result<f64, MetricsError> {
    check_lengths(predictions.len(), references.len())?;
    let hits = predictions
        .iter()
        .zip(references)
        .filter(|(p, r)| {
            let p = extract_option_letter(p.as_ref());
            p.is_some() && p == extract_option_letter(r.as_ref())
        })
        .count();
    Ok(percent(hits, predictions.len()))
}

/// Full-width Latin letters (`Ａ`..`Ｚ`, `ａ`..`ｚ`) as ASCII.
fn ascii_letter(c: char) -> char {
    match c {
        'Ａ'..='Ｚ' | 'ａ'..='ｚ' => char::from_u32(c as u32 - 0xFEE0).unwrap_or(c),
        _ => c,
    }
}

/// Characters that may open an answer before its letter: brackets, quotes,
/// markdown emphasis.
fn is_opener(c: char) -> bool {
    matches!(
        c,
        '(' | '（' | '[' | '【' | '<' | '《' | '"' | '\'' | '“' | '‘' | '*' | '_' | '`'
    )
}

/// Characters that may close a leading option letter, besides whitespace.
fn is_closer(c: char) -> bool {
    matches!(
        c,
        '.' | '．'
            | ')'
            | '）'
            | ']'
            | '】'
            | '>'
            | '》'
            | ':'
            | '：'
            | '、'
            | ','
            | '，'
            | ';'
            | '；'
            | '。'
            | '"'
            | '\''
            | '”'
            | '’'
            | '*'
            | '_'
            | '`'
            | '!'
            | '！'
    )
}

/// A letter at the start of `chars` (after openers) that reads as an option.
fn leading_letter(chars: &[char]) -> Option<char> {
    let start = chars.iter().position(|&c| !is_opener(c))?;
    let letter = chars[start];
    if !letter.is_ascii_alphabetic() {
        return None;
    }
    let rest = &chars[start + 1..];
    match rest.first() {
        None => Some(letter.to_ascii_uppercase()),
        Some(&next) if is_closer(next) => Some(letter.to_ascii_uppercase()),
        Some(&next) if is_py_space(next) && letter.is_ascii_uppercase() => {
            // "B benign" is an option; "A 1.2 cm nodule" or "I think" is prose.
            let following = rest.iter().copied().find(|&c| !is_py_space(c));
            let prose = matches!(letter, 'A' | 'I')
                && following.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
            (!prose).then_some(letter)
        }
        _ => None,
    }
}

/// Markers after which an option letter is expected, strongest first.
const STRONG_MARKERS: &[&str] = &["答案", "answer"];
const WEAK_MARKERS: &[&str] = &["选项", "选择", "选", "option", "choice"];
/// Words that may stand between a marker and its letter.
const FILLERS: &[&str] = &[
    "is",
    "应该是",
    "应为",
    "应选",
    "是",
    "为",
    "选项",
    "选",
    "option",
    "choice",
    ":",
    "：",
    "-",
];

/// Length in chars of a filler word at `pos`, if one stands there.
fn filler_at(chars: &[char], pos: usize) -> Option<usize> {
    for filler in FILLERS {
        let f: Vec<char> = filler.chars().collect();
        if !chars[pos..].starts_with(&f) {
            continue;
        }
        // An English word must end at a word boundary ("is" but not "isthmus").
        let word = f.iter().all(char::is_ascii_alphabetic);
        if word
            && chars
                .get(pos + f.len())
                .is_some_and(char::is_ascii_alphanumeric)
        {
            continue;
        }
        return Some(f.len());
    }
    None
}

/// The letter after a marker ending at `pos`, skipping spaces, brackets and
/// filler words; `None` if the letter starts a longer word.
fn letter_after(chars: &[char], mut pos: usize) -> Option<char> {
    loop {
        while pos < chars.len() && (is_py_space(chars[pos]) || is_opener(chars[pos])) {
            pos += 1;
        }
        match filler_at(chars, pos) {
            Some(len) => pos += len,
            None => break,
        }
    }
    let letter = *chars.get(pos)?;
    if !letter.is_ascii_alphabetic() {
        return None;
    }
    match chars.get(pos + 1) {
        Some(c) if c.is_ascii_alphanumeric() => None,
        _ => Some(letter.to_ascii_uppercase()),
    }
}

/// The option letter (`'A'`..=`'Z'`) an answer picks, if it names one:
/// `"B"`, `"b"`, `"B. Benign"`, `"(C) cyst"`, `"**D**"`, `"答案：B"`,
/// `"答案是 C"`, `"The answer is (d)."`, `"选B"`, full-width `"Ｂ．"`.
///
/// A letter that opens the answer counts when it stands alone or is followed
/// by punctuation (`.`, `)`, `:`, `、`, ...), or, for capitals, by a space
/// (except `A` and `I` followed by a lowercase word or a number, which read
/// as prose: `"A 1.2 cm nodule"`). Otherwise the first letter after
/// "答案"/"answer", then after "选项"/"选择"/"选"/"option"/"choice", is
/// taken, when it is not part of a longer word. Returns `None` when there is
/// no such letter.
pub fn extract_option_letter(answer: &str) -> Option<char> {
    let chars: Vec<char> = answer
        .trim_matches(is_py_space)
        .chars()
        .map(ascii_letter)
        .collect();
    if let Some(letter) = leading_letter(&chars) {
        return Some(letter);
    }
    let lower: Vec<char> = chars.iter().map(|c| c.to_ascii_lowercase()).collect();
    for markers in [STRONG_MARKERS, WEAK_MARKERS] {
        for start in 0..lower.len() {
            for marker in markers {
                let m: Vec<char> = marker.chars().collect();
                if lower[start..].starts_with(&m) {
                    // An English marker must start a word.
                    if marker.is_ascii() && start > 0 && lower[start - 1].is_ascii_alphanumeric() {
                        continue;
                    }
                    if let Some(letter) = letter_after(&lower, start + m.len()) {
                        return Some(letter);
                    }
                }
            }
        }
    }
    None
}
