//! The report-generation score table (BLEU-1..4, ROUGE-1/2/L) and JSONL scoring.

use serde::Serialize;
use serde_json::Value;

use crate::bleu::{BleuStats, BleuTokenizer, Smoothing};
use crate::rouge::{RougeTokenizer, rouge_l_tokens, rouge_n_tokens};
use crate::{Language, MetricsError};

/// Corpus scores of generated reports, every value on a 0-100 scale.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct ReportScores {
    /// Corpus BLEU-1 (sacrebleu, `max_ngram_order=1`).
    pub bleu1: f64,
    /// Corpus BLEU-2.
    pub bleu2: f64,
    /// Corpus BLEU-3.
    pub bleu3: f64,
    /// Corpus BLEU-4.
    pub bleu4: f64,
    /// Mean ROUGE-1 F1 over the pairs.
    pub rouge1: f64,
    /// Mean ROUGE-2 F1 over the pairs.
    pub rouge2: f64,
    /// Mean ROUGE-L F1 over the pairs.
    #[serde(rename = "rougeL")]
    pub rouge_l: f64,
    /// Number of pairs scored.
    pub samples: usize,
}

/// How [`score_corpus_with`] tokenizes and smooths.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReportOptions {
    /// Tokenizer of BLEU.
    pub bleu_tokenizer: BleuTokenizer,
    /// Smoothing of BLEU (corpus level, no effective order).
    pub smoothing: Smoothing,
    /// Lowercase before BLEU tokenization (ROUGE's own tokenizer decides for ROUGE).
    pub lowercase: bool,
    /// Tokenizer of ROUGE.
    pub rouge_tokenizer: RougeTokenizer,
}

impl ReportOptions {
    /// The literature defaults for `lang`: BLEU with sacrebleu's `13a`
    /// (English) or `zh` (Chinese) tokenizer and `exp` smoothing; ROUGE with
    /// rouge-score's tokenizer (English) or one token per character (Chinese).
    pub fn for_language(lang: Language) -> Self {
        ReportOptions {
            bleu_tokenizer: lang.bleu_tokenizer(),
            smoothing: Smoothing::Exp,
            lowercase: false,
            rouge_tokenizer: lang.rouge_tokenizer(),
        }
    }

    /// Chinese scored on jieba words for both BLEU and ROUGE.
    #[cfg(feature = "jieba")]
    pub fn chinese_words() -> Self {
        ReportOptions {
            bleu_tokenizer: BleuTokenizer::Jieba,
            smoothing: Smoothing::Exp,
            lowercase: false,
            rouge_tokenizer: RougeTokenizer::Jieba,
        }
    }
}

impl From<Language> for ReportOptions {
    fn from(lang: Language) -> Self {
        ReportOptions::for_language(lang)
    }
}

/// Collects pairs one at a time, each with its own options, into
/// [`ReportScores`]: BLEU statistics are summed (corpus BLEU), ROUGE F1 is
/// averaged.
#[derive(Debug, Clone)]
pub struct ReportAccumulator {
    bleu: BleuStats,
    smoothing: Smoothing,
    rouge_sums: [f64; 3],
    samples: usize,
}

impl Default for ReportAccumulator {
    fn default() -> Self {
        ReportAccumulator::new(Smoothing::Exp)
    }
}

impl ReportAccumulator {
    /// An empty accumulator whose BLEU uses `smoothing`.
    pub fn new(smoothing: Smoothing) -> Self {
        ReportAccumulator {
            bleu: BleuStats::new(4),
            smoothing,
            rouge_sums: [0.0; 3],
            samples: 0,
        }
    }

    /// Adds one pair, tokenized as `opts` says (its smoothing is ignored:
    /// that of [`ReportAccumulator::new`] applies to the whole corpus).
    pub fn add(&mut self, reference: &str, hypothesis: &str, opts: &ReportOptions) {
        let hyp = opts.bleu_tokenizer.tokens(hypothesis, opts.lowercase);
        let reference_tokens = opts.bleu_tokenizer.tokens(reference, opts.lowercase);
        self.bleu.add(&BleuStats::segment(
            &hyp,
            std::slice::from_ref(&reference_tokens),
            4,
        ));
        let hyp = opts.rouge_tokenizer.tokenize(hypothesis);
        let reference = opts.rouge_tokenizer.tokenize(reference);
        // Sums of rouge-score's 0-1 values, scaled once at the end.
        self.rouge_sums[0] += rouge_n_tokens(&hyp, &reference, 1).f1 / 100.0;
        self.rouge_sums[1] += rouge_n_tokens(&hyp, &reference, 2).f1 / 100.0;
        self.rouge_sums[2] += rouge_l_tokens(&hyp, &reference).f1 / 100.0;
        self.samples += 1;
    }

    /// Number of pairs added.
    pub fn samples(&self) -> usize {
        self.samples
    }

    /// The scores of the pairs added so far (all 0 when there are none).
    pub fn scores(&self) -> ReportScores {
        let bleu = |n: usize| self.bleu.truncated(n).score(self.smoothing, false).score;
        let mean = |sum: f64| {
            if self.samples == 0 {
                0.0
            } else {
                100.0 * (sum / self.samples as f64)
            }
        };
        ReportScores {
            bleu1: bleu(1),
            bleu2: bleu(2),
            bleu3: bleu(3),
            bleu4: bleu(4),
            rouge1: mean(self.rouge_sums[0]),
            rouge2: mean(self.rouge_sums[1]),
            rouge_l: mean(self.rouge_sums[2]),
            samples: self.samples,
        }
    }
}

/// BLEU-1..4 and ROUGE-1/2/L of `(reference, hypothesis)` pairs in `lang`,
/// with the literature defaults of [`ReportOptions::for_language`]. An
/// empty corpus scores 0 everywhere.
pub fn score_corpus<R: AsRef<str>, H: AsRef<str>>(
    pairs: &[(R, H)],
    lang: Language,
) -> ReportScores {
    score_corpus_with(pairs, &ReportOptions::for_language(lang))
}

/// [`score_corpus`] with explicit options.
pub fn score_corpus_with<R: AsRef<str>, H: AsRef<str>>(
    pairs: &[(R, H)],
    opts: &ReportOptions,
) -> ReportScores {
    let mut acc = ReportAccumulator::new(opts.smoothing);
    for (reference, hypothesis) in pairs {
        acc.add(reference.as_ref(), hypothesis.as_ref(), opts);
    }
    acc.scores()
}

/// Scores of a JSONL file: overall and per language.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScoreReport {
    /// All pairs together; BLEU tokenizes each pair with its own language's
    /// tokenizer and sums the statistics into one corpus BLEU.
    pub overall: ReportScores,
    /// The English pairs, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub english: Option<ReportScores>,
    /// The Chinese pairs, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chinese: Option<ReportScores>,
}

fn string_field<'a>(
    object: &'a serde_json::Map<String, Value>,
    line: usize,
    field: &'static str,
) -> Result<&'a str, MetricsError> {
    match object.get(field) {
        None => Err(MetricsError::MissingField { line, field }),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(MetricsError::FieldNotString { line, field }),
    }
}

/// Scores JSONL text, one object per line:
/// `{"reference": str, "hypothesis": str, "lang": "en" | "zh"}` (other keys
/// are ignored, blank lines and a leading byte-order mark skipped), with the
/// defaults of [`ReportOptions::for_language`]. Errors name the 1-based line
/// number.
pub fn score_jsonl(text: &str) -> Result<ScoreReport, MetricsError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut overall = ReportAccumulator::default();
    let mut english = ReportAccumulator::default();
    let mut chinese = ReportAccumulator::default();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let value: Value =
            serde_json::from_str(raw).map_err(|source| MetricsError::Json { line, source })?;
        let Value::Object(object) = value else {
            return Err(MetricsError::NotAnObject { line });
        };
        let reference = string_field(&object, line, "reference")?;
        let hypothesis = string_field(&object, line, "hypothesis")?;
        let code = string_field(&object, line, "lang")?;
        let lang = Language::from_code(code).ok_or_else(|| MetricsError::UnknownLanguage {
            line,
            lang: code.to_owned(),
        })?;
        let opts = ReportOptions::for_language(lang);
        overall.add(reference, hypothesis, &opts);
        match lang {
            Language::English => english.add(reference, hypothesis, &opts),
            Language::Chinese => chinese.add(reference, hypothesis, &opts),
        }
    }
    let part = |acc: &ReportAccumulator| (acc.samples() > 0).then(|| acc.scores());
    Ok(ScoreReport {
        overall: overall.scores(),
        english: part(&english),
        chinese: part(&chinese),
    })
}
