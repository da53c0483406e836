//! BLEU as sacrebleu 2.6.0 computes it (`sacrebleu.metrics.BLEU`).

use std::collections::HashMap;

use serde::Serialize;

use crate::tokenize::{py_rstrip, py_split, tokenize_13a, tokenize_zh};
use crate::{Language, MetricsError};

/// The largest n-gram order accepted; larger requests are clamped to it.
pub const MAX_BLEU_ORDER: usize = 16;

/// How n-gram precisions without any match are smoothed (sacrebleu's
/// `smooth_method` / `smooth_value`).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Smoothing {
    /// `'none'`: no smoothing; a zero precision makes the score 0.
    None,
    /// `'floor'` (Chen & Cherry method 1): a zero match count becomes this
    /// value (sacrebleu's default is 0.1, [`Smoothing::DEFAULT_FLOOR`]).
    Floor(f64),
    /// `'add-k'` (method 2): add this value to the match and total counts of
    /// every order above 1 (sacrebleu's default is 1, [`Smoothing::DEFAULT_ADD_K`]).
    AddK(f64),
    /// `'exp'` (method 3, NIST / mteval-v13a): the k-th order without a match
    /// gets precision `1 / (2^k * total)`. sacrebleu's default.
    #[default]
    Exp,
}

impl Smoothing {
    /// sacrebleu's default value for `'floor'`.
    pub const DEFAULT_FLOOR: f64 = 0.1;
    /// sacrebleu's default value for `'add-k'`.
    pub const DEFAULT_ADD_K: f64 = 1.0;

    /// sacrebleu's name of the method (`none`, `floor`, `add-k`, `exp`).
    pub fn name(&self) -> &'static str {
        match self {
            Smoothing::None => "none",
            Smoothing::Floor(_) => "floor",
            Smoothing::AddK(_) => "add-k",
            Smoothing::Exp => "exp",
        }
    }

    /// Parses sacrebleu's method name, with `value` for `floor` and `add-k`
    /// (`None` takes sacrebleu's default). Returns `None` for an unknown name.
    pub fn from_name(name: &str, value: Option<f64>) -> Option<Smoothing> {
        match name {
            "none" => Some(Smoothing::None),
            "exp" => Some(Smoothing::Exp),
            "floor" => Some(Smoothing::Floor(value.unwrap_or(Self::DEFAULT_FLOOR))),
            "add-k" => Some(Smoothing::AddK(value.unwrap_or(Self::DEFAULT_ADD_K))),
            _ => None,
        }
    }
}

/// How BLEU splits a segment into tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BleuTokenizer {
    /// sacrebleu's `13a` (mteval-v13a), the default for English; see
    /// [`tokenize_13a`].
    Tok13a,
    /// sacrebleu's `zh`: every CJK character is a token, the rest is split
    /// as `13a` does; the default for Chinese. See [`tokenize_zh`].
    Zh,
    /// sacrebleu's `none`: the text is already tokenized, split on whitespace.
    Whitespace,
    /// jieba word segmentation (default dictionary, HMM on), the words then
    /// split on whitespace as with `none`.
    #[cfg(feature = "jieba")]
    Jieba,
}

impl BleuTokenizer {
    /// sacrebleu's name for the tokenizer (`13a`, `zh`, `none`; `jieba`).
    pub fn name(&self) -> &'static str {
        match self {
            BleuTokenizer::Tok13a => "13a",
            BleuTokenizer::Zh => "zh",
            BleuTokenizer::Whitespace => "none",
            #[cfg(feature = "jieba")]
            BleuTokenizer::Jieba => "jieba",
        }
    }

    /// The tokenizer's output for one line, tokens joined by single spaces
    /// (sacrebleu's `tokenizer(line)`; the line is used as is).
    pub fn apply(&self, line: &str) -> String {
        match self {
            BleuTokenizer::Tok13a => tokenize_13a(line),
            BleuTokenizer::Zh => tokenize_zh(line),
            BleuTokenizer::Whitespace => line.to_owned(),
            #[cfg(feature = "jieba")]
            BleuTokenizer::Jieba => crate::tokenize::tokenize_jieba(line).join(" "),
        }
    }

    /// The tokens BLEU counts for a segment, as sacrebleu's
    /// `BLEU._preprocess_segment` followed by `str.split()`: optional
    /// lowercasing, trailing whitespace stripped, tokenized, split on
    /// whitespace.
    pub fn tokens(&self, text: &str, lowercase: bool) -> Vec<String> {
        let lowered;
        let text = if lowercase {
            lowered = text.to_lowercase();
            lowered.as_str()
        } else {
            text
        };
        let line = self.apply(py_rstrip(text));
        py_split(&line).map(str::to_owned).collect()
    }
}

/// Settings of a BLEU computation (sacrebleu's `BLEU(...)` arguments).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BleuOptions {
    /// Largest n-gram order `n` of BLEU-n (sacrebleu's `max_ngram_order`);
    /// 0 gives a score of 0, values above [`MAX_BLEU_ORDER`] are clamped.
    pub max_order: usize,
    /// Smoothing of zero precisions.
    pub smoothing: Smoothing,
    /// Tokenizer for hypotheses and references.
    pub tokenizer: BleuTokenizer,
    /// Lowercase both sides before tokenizing (sacrebleu's `lowercase`).
    pub lowercase: bool,
    /// Average only up to the highest order that has any hypothesis n-gram
    /// (sacrebleu's `effective_order`; on for sentence BLEU, off for corpus BLEU).
    pub effective_order: bool,
}

impl Default for BleuOptions {
    /// Corpus BLEU-4 for English: `13a`, `exp` smoothing, case-sensitive.
    fn default() -> Self {
        BleuOptions::corpus(Language::English, 4)
    }
}

impl BleuOptions {
    /// Corpus BLEU-`max_order` with sacrebleu's defaults for `lang`:
    /// tokenizer `13a` (English) or `zh` (Chinese), `exp` smoothing,
    /// case-sensitive, no effective order.
    pub fn corpus(lang: Language, max_order: usize) -> Self {
        BleuOptions {
            max_order,
            smoothing: Smoothing::Exp,
            tokenizer: lang.bleu_tokenizer(),
            lowercase: false,
            effective_order: false,
        }
    }

    /// Sentence BLEU-`max_order` as `sacrebleu.sentence_bleu`: like
    /// [`BleuOptions::corpus`] with the effective order on.
    pub fn sentence(lang: Language, max_order: usize) -> Self {
        BleuOptions {
            effective_order: true,
            ..BleuOptions::corpus(lang, max_order)
        }
    }

    /// The same options with another smoothing.
    pub fn with_smoothing(self, smoothing: Smoothing) -> Self {
        BleuOptions { smoothing, ..self }
    }

    /// The same options with another tokenizer.
    pub fn with_tokenizer(self, tokenizer: BleuTokenizer) -> Self {
        BleuOptions { tokenizer, ..self }
    }

    fn order(&self) -> usize {
        self.max_order.min(MAX_BLEU_ORDER)
    }
}

/// A BLEU result, on sacrebleu's 0-100 scale.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BleuScore {
    /// BLEU, 0-100.
    pub score: f64,
    /// Matched (clipped) n-gram counts for orders 1..=n, before smoothing.
    pub counts: Vec<usize>,
    /// Hypothesis n-gram counts for orders 1..=n, before smoothing.
    pub totals: Vec<usize>,
    /// Smoothed n-gram precisions for orders 1..=n, 0-100 (0 where sacrebleu
    /// stopped early).
    pub precisions: Vec<f64>,
    /// Brevity penalty, 0-1.
    pub bp: f64,
    /// Total hypothesis length in tokens.
    pub sys_len: usize,
    /// Total (closest) reference length in tokens.
    pub ref_len: usize,
}

impl BleuScore {
    /// `sys_len / ref_len`, 0 when the reference is empty (as sacrebleu).
    pub fn ratio(&self) -> f64 {
        if self.ref_len == 0 {
            0.0
        } else {
            self.sys_len as f64 / self.ref_len as f64
        }
    }
}

/// BLEU's sufficient statistics; segment statistics add up to corpus ones.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct BleuStats {
    /// Hypothesis length in tokens.
    pub sys_len: usize,
    /// Closest reference length in tokens.
    pub ref_len: usize,
    /// Clipped matched n-grams per order (index 0 is unigrams).
    pub correct: Vec<usize>,
    /// Hypothesis n-grams per order.
    pub total: Vec<usize>,
}

fn count_ngrams(tokens: &[String], max_order: usize) -> HashMap<&[String], usize> {
    let mut counts = HashMap::new();
    for n in 1..=max_order.min(tokens.len()) {
        for gram in tokens.windows(n) {
            *counts.entry(gram).or_insert(0) += 1;
        }
    }
    counts
}

/// sacrebleu's `_get_closest_ref_len`: the reference length closest to the
/// hypothesis length, the shorter one on ties; 0 without references.
fn closest_ref_len(hyp_len: usize, ref_lens: &[usize]) -> usize {
    let mut best: Option<(usize, usize)> = None;
    for &len in ref_lens {
        let diff = hyp_len.abs_diff(len);
        best = match best {
            Some((d, l)) if diff > d || (diff == d && len >= l) => Some((d, l)),
            _ => Some((diff, len)),
        };
    }
    best.map_or(0, |(_, len)| len)
}

impl BleuStats {
    /// All-zero statistics for orders 1..=`max_order`.
    pub fn new(max_order: usize) -> Self {
        let order = max_order.min(MAX_BLEU_ORDER);
        BleuStats {
            sys_len: 0,
            ref_len: 0,
            correct: vec![0; order],
            total: vec![0; order],
        }
    }

    /// Statistics of one tokenized segment against its tokenized references
    /// (sacrebleu's `_compute_segment_statistics`: reference n-gram counts are
    /// the maximum over references, the reference length is the closest one).
    pub fn segment(hypothesis: &[String], references: &[Vec<String>], max_order: usize) -> Self {
        let mut stats = BleuStats::new(max_order);
        let order = stats.correct.len();
        let mut ref_counts: HashMap<&[String], usize> = HashMap::new();
        for reference in references {
            for (gram, count) in count_ngrams(reference, order) {
                let entry = ref_counts.entry(gram).or_insert(0);
                *entry = (*entry).max(count);
            }
        }
        let ref_lens: Vec<usize> = references.iter().map(Vec::len).collect();
        stats.sys_len = hypothesis.len();
        stats.ref_len = closest_ref_len(hypothesis.len(), &ref_lens);
        for (gram, count) in count_ngrams(hypothesis, order) {
            let n = gram.len() - 1;
            stats.total[n] += count;
            if let Some(&r) = ref_counts.get(gram) {
                stats.correct[n] += count.min(r);
            }
        }
        stats
    }

    /// Adds another segment's statistics (orders missing on either side count
    /// as zero).
    pub fn add(&mut self, other: &BleuStats) {
        self.sys_len += other.sys_len;
        self.ref_len += other.ref_len;
        let order = self.correct.len().max(other.correct.len());
        self.correct.resize(order, 0);
        self.total.resize(order, 0);
        for (i, (&c, &t)) in other.correct.iter().zip(&other.total).enumerate() {
            self.correct[i] += c;
            self.total[i] += t;
        }
    }

    /// The statistics restricted to orders 1..=`max_order`.
    pub fn truncated(&self, max_order: usize) -> BleuStats {
        let order = max_order.min(self.correct.len());
        BleuStats {
            sys_len: self.sys_len,
            ref_len: self.ref_len,
            correct: self.correct[..order].to_vec(),
            total: self.total[..order].to_vec(),
        }
    }

    /// BLEU from these statistics (sacrebleu's `BLEU.compute_bleu`), with the
    /// order given by the length of the statistics.
    pub fn score(&self, smoothing: Smoothing, effective_order: bool) -> BleuScore {
        compute_bleu(self, smoothing, effective_order)
    }
}

/// sacrebleu's `my_log`: `ln`, with log(0) floored to -9999999999.
fn my_log(x: f64) -> f64 {
    if x == 0.0 { -9_999_999_999.0 } else { x.ln() }
}

fn compute_bleu(stats: &BleuStats, smoothing: Smoothing, effective_order: bool) -> BleuScore {
    let max_order = stats.correct.len().min(stats.total.len());
    let (sys_len, ref_len) = (stats.sys_len, stats.ref_len);
    let mut bp = 1.0;
    if sys_len < ref_len {
        bp = if sys_len > 0 {
            (1.0 - ref_len as f64 / sys_len as f64).exp()
        } else {
            0.0
        };
    }
    let mut precisions = vec![0.0; max_order];
    let mut result = BleuScore {
        score: 0.0,
        counts: stats.correct[..max_order].to_vec(),
        totals: stats.total[..max_order].to_vec(),
        precisions: Vec::new(),
        bp,
        sys_len,
        ref_len,
    };
    // Early stop if there are no matches (sacrebleu #141).
    if stats.correct[..max_order].iter().all(|&c| c == 0) {
        result.precisions = precisions;
        return result;
    }
    let mut smooth_mteval = 1.0;
    let mut eff_order = max_order;
    for n in 1..=max_order {
        let mut correct = stats.correct[n - 1] as f64;
        let mut total = stats.total[n - 1] as f64;
        if let Smoothing::AddK(k) = smoothing
            && n > 1
        {
            correct += k;
            total += k;
        }
        if total == 0.0 {
            break;
        }
        if effective_order {
            eff_order = n;
        }
        if correct == 0.0 {
            match smoothing {
                Smoothing::Exp => {
                    smooth_mteval *= 2.0;
                    precisions[n - 1] = 100.0 / (smooth_mteval * total);
                }
                Smoothing::Floor(value) => precisions[n - 1] = 100.0 * value / total,
                Smoothing::None | Smoothing::AddK(_) => {}
            }
        } else {
            precisions[n - 1] = 100.0 * correct / total;
        }
    }
    let log_sum: f64 = precisions[..eff_order].iter().map(|&p| my_log(p)).sum();
    result.score = bp * (log_sum / eff_order as f64).exp();
    result.precisions = precisions;
    result
}

/// Corpus BLEU of `hypotheses` against one reference each, as sacrebleu's
/// `BLEU(**opts).corpus_score(hypotheses, [references])`.
///
/// An empty corpus scores 0 (sacrebleu raises). Fails only when the two
/// slices differ in length.
pub fn corpus_bleu<H: AsRef<str>, R: AsRef<str>>(
    hypotheses: &[H],
    references: &[R],
    opts: &BleuOptions,
) -> Result<BleuScore, MetricsError> {
    if hypotheses.len() != references.len() {
        return Err(MetricsError::LengthMismatch {
            hypotheses: hypotheses.len(),
            references: references.len(),
        });
    }
    let mut stats = BleuStats::new(opts.order());
    for (hyp, reference) in hypotheses.iter().zip(references) {
        stats.add(&segment_stats(
            hyp.as_ref(),
            std::slice::from_ref(&reference.as_ref()),
            opts,
        ));
    }
    Ok(stats.score(opts.smoothing, opts.effective_order))
}

/// Corpus BLEU with any number of references per hypothesis
/// (`references[i]` belongs to `hypotheses[i]`). A hypothesis without
/// references has reference length 0 and no matches.
pub fn corpus_bleu_multi<H, R, RS>(
    hypotheses: &[H],
    references: &[RS],
    opts: &BleuOptions,
) -> Result<BleuScore, MetricsError>
where
    H: AsRef<str>,
    R: AsRef<str>,
    RS: AsRef<[R]>,
{
    if hypotheses.len() != references.len() {
        return Err(MetricsError::LengthMismatch {
            hypotheses: hypotheses.len(),
            references: references.len(),
        });
    }
    let mut stats = BleuStats::new(opts.order());
    for (hyp, refs) in hypotheses.iter().zip(references) {
        let refs: Vec<&str> = refs.as_ref().iter().map(AsRef::as_ref).collect();
        stats.add(&segment_stats(hyp.as_ref(), &refs, opts));
    }
    Ok(stats.score(opts.smoothing, opts.effective_order))
}

/// Sentence BLEU of one hypothesis against one reference, as
/// `BLEU(**opts).sentence_score(hypothesis, [reference])`. Use
/// [`BleuOptions::sentence`] for `sacrebleu.sentence_bleu`'s defaults
/// (effective order on).
pub fn sentence_bleu(hypothesis: &str, reference: &str, opts: &BleuOptions) -> BleuScore {
    segment_stats(hypothesis, &[reference], opts).score(opts.smoothing, opts.effective_order)
}

/// Sentence BLEU against several references.
pub fn sentence_bleu_multi<R: AsRef<str>>(
    hypothesis: &str,
    references: &[R],
    opts: &BleuOptions,
) -> BleuScore {
    let refs: Vec<&str> = references.iter().map(AsRef::as_ref).collect();
    segment_stats(hypothesis, &refs, opts).score(opts.smoothing, opts.effective_order)
}

/// Tokenizes one segment and its references with `opts` and counts its
/// statistics up to `opts.max_order`.
pub fn segment_stats(hypothesis: &str, references: &[&str], opts: &BleuOptions) -> BleuStats {
    let hyp = opts.tokenizer.tokens(hypothesis, opts.lowercase);
    let refs: Vec<Vec<String>> = references
        .iter()
        .map(|r| opts.tokenizer.tokens(r, opts.lowercase))
        .collect();
    BleuStats::segment(&hyp, &refs, opts.order())
}
