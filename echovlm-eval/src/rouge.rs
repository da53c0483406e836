//! ROUGE-N and ROUGE-L as rouge-score 0.1.2 computes them
//! (`rouge_scorer.RougeScorer(['rouge1', 'rouge2', 'rougeL'])`).

use std::collections::HashMap;
use std::hash::Hash;

use serde::Serialize;

use crate::Language;
use crate::tokenize::{tokenize_chars, tokenize_rouge_default};

/// How ROUGE splits a text into tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RougeTokenizer {
    /// rouge-score's default tokenizer (no stemming): lowercase, keep runs of
    /// ASCII `[a-z0-9]`. The English default; it drops all Chinese text.
    Default,
    /// One token per non-whitespace character, nothing dropped or lowercased.
    /// The Chinese default.
    Chars,
    /// jieba words (default dictionary, HMM on), whitespace-only words dropped.
    #[cfg(feature = "jieba")]
    Jieba,
}

impl RougeTokenizer {
    /// The tokens of `text`.
    pub fn tokenize(&self, text: &str) -> Vec<String> {
        match self {
            RougeTokenizer::Default => tokenize_rouge_default(text),
            RougeTokenizer::Chars => tokenize_chars(text),
            #[cfg(feature = "jieba")]
            RougeTokenizer::Jieba => crate::tokenize::tokenize_jieba(text),
        }
    }
}

impl From<Language> for RougeTokenizer {
    fn from(lang: Language) -> Self {
        lang.rouge_tokenizer()
    }
}

/// ROUGE precision, recall and F1, each on a 0-100 scale (rouge-score's
/// values times 100).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct RougeScore {
    /// Matched units over hypothesis units, 0-100.
    pub precision: f64,
    /// Matched units over reference units, 0-100.
    pub recall: f64,
    /// Harmonic mean of precision and recall, 0-100.
    pub f1: f64,
}

impl RougeScore {
    /// From rouge-score's 0-1 precision and recall (F1 as `scoring.fmeasure`).
    fn from_unit(precision: f64, recall: f64) -> Self {
        let f1 = if precision + recall > 0.0 {
            2.0 * precision * recall / (precision + recall)
        } else {
            0.0
        };
        RougeScore {
            precision: 100.0 * precision,
            recall: 100.0 * recall,
            f1: 100.0 * f1,
        }
    }
}

fn ngram_counts<T: Eq + Hash>(tokens: &[T], n: usize) -> HashMap<&[T], usize> {
    let mut counts = HashMap::new();
    if n > 0 {
        for gram in tokens.windows(n) {
            *counts.entry(gram).or_insert(0) += 1;
        }
    }
    counts
}

/// ROUGE-N of token sequences (rouge-score's `_score_ngrams`): clipped
/// n-gram overlap over hypothesis n-grams (precision) and over reference
/// n-grams (recall). `n == 0` and sequences shorter than `n` score 0.
pub fn rouge_n_tokens<T: Eq + Hash>(hypothesis: &[T], reference: &[T], n: usize) -> RougeScore {
    if n == 0 {
        return RougeScore::default();
    }
    let target = ngram_counts(reference, n);
    let prediction = ngram_counts(hypothesis, n);
    let overlap: usize = target
        .iter()
        .map(|(gram, &c)| c.min(prediction.get(gram).copied().unwrap_or(0)))
        .sum();
    let target_count = reference.len().saturating_sub(n - 1);
    let prediction_count = hypothesis.len().saturating_sub(n - 1);
    RougeScore::from_unit(
        overlap as f64 / prediction_count.max(1) as f64,
        overlap as f64 / target_count.max(1) as f64,
    )
}

/// Length of the longest common subsequence (two-row dynamic programme).
pub fn lcs_len<T: Eq>(a: &[T], b: &[T]) -> usize {
    if a.is_empty() || b.is_empty() {
        return 0;
    }
    let mut prev = vec![0usize; b.len() + 1];
    let mut cur = vec![0usize; b.len() + 1];
    for x in a {
        for (j, y) in b.iter().enumerate() {
            cur[j + 1] = if x == y {
                prev[j] + 1
            } else {
                prev[j + 1].max(cur[j])
            };
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// ROUGE-L of token sequences (rouge-score's `rougeL`, `_score_lcs`): the
/// longest common subsequence over the hypothesis length (precision) and
/// the reference length (recall); 0 if either side is empty.
pub fn rouge_l_tokens<T: Eq>(hypothesis: &[T], reference: &[T]) -> RougeScore {
    if hypothesis.is_empty() || reference.is_empty() {
        return RougeScore::default();
    }
    let lcs = lcs_len(reference, hypothesis) as f64;
    RougeScore::from_unit(lcs / hypothesis.len() as f64, lcs / reference.len() as f64)
}

/// ROUGE-N of a hypothesis against a reference. `tokenizer` is a
/// [`RougeTokenizer`] or a [`Language`] (its default tokenizer).
pub fn rouge_n(
    hypothesis: &str,
    reference: &str,
    n: usize,
    tokenizer: impl Into<RougeTokenizer>,
) -> RougeScore {
    let tokenizer = tokenizer.into();
    rouge_n_tokens(
        &tokenizer.tokenize(hypothesis),
        &tokenizer.tokenize(reference),
        n,
    )
}

/// ROUGE-L (sentence-level LCS, rouge-score's `rougeL`, not `rougeLsum`) of
/// a hypothesis against a reference.
pub fn rouge_l(
    hypothesis: &str,
    reference: &str,
    tokenizer: impl Into<RougeTokenizer>,
) -> RougeScore {
    let tokenizer = tokenizer.into();
    rouge_l_tokens(
        &tokenizer.tokenize(hypothesis),
        &tokenizer.tokenize(reference),
    )
}

/// ROUGE-1, ROUGE-2 and ROUGE-L of one pair.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct RougeScores {
    /// ROUGE-1.
    pub rouge1: RougeScore,
    /// ROUGE-2.
    pub rouge2: RougeScore,
    /// ROUGE-L.
    #[serde(rename = "rougeL")]
    pub rouge_l: RougeScore,
}

/// ROUGE-1, ROUGE-2 and ROUGE-L of one pair, tokenizing each side once.
pub fn rouge_all(
    hypothesis: &str,
    reference: &str,
    tokenizer: impl Into<RougeTokenizer>,
) -> RougeScores {
    let tokenizer = tokenizer.into();
    let hyp = tokenizer.tokenize(hypothesis);
    let reference = tokenizer.tokenize(reference);
    RougeScores {
        rouge1: rouge_n_tokens(&hyp, &reference, 1),
        rouge2: rouge_n_tokens(&hyp, &reference, 2),
        rouge_l: rouge_l_tokens(&hyp, &reference),
    }
}
