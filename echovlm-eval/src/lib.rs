//! Evaluation of EchoVLM outputs: report metrics (BLEU-1..4, ROUGE-1/2/L, answer accuracy)
//! and, with the `runner` feature (on by default), a runner that generates for a JSONL of
//! samples and scores the outputs ([`runner`]). A program that only embeds inference depends on
//! `echovlm-pipeline` alone and compiles none of this.
//!
//! ```
//! use echovlm_eval::{BleuOptions, Language, corpus_bleu, rouge_all};
//! let hyp = ["the liver is normal in size"];
//! let refs = ["the liver is normal in size and echotexture"];
//! let bleu = corpus_bleu(&hyp, &refs, &BleuOptions::corpus(Language::English, 4)).unwrap();
//! assert!(bleu.score > 0.0 && bleu.score < 100.0);
//! let rouge = rouge_all(hyp[0], refs[0], Language::English);
//! // precision 6/6, recall 6/8: F1 6/7, on the 0-100 scale
//! assert!((rouge.rouge1.f1 - 85.714285714).abs() < 1e-6);
//! ```
//!
//! ## Metrics
//!
//! The numbers are those of the Python tools the literature uses, ported
//! and checked against them (`tools/make_metric_fixtures.py`,
//! `fixtures/metrics/`, `tests/metrics.rs`):
//!
//! * **BLEU** is sacrebleu 2.6.0's `BLEU`: BLEU-n is
//!   `BLEU(max_ngram_order=n)` at corpus level ([`corpus_bleu`]), tokenizer
//!   `13a` for English and `zh` for Chinese, smoothing `exp`, sacrebleu's
//!   brevity penalty. Sentence BLEU ([`sentence_bleu`] with
//!   [`BleuOptions::sentence`]) is `sacrebleu.sentence_bleu`, i.e. with the
//!   effective order. Smoothing `none`, `floor` and `add-k` are options
//!   ([`Smoothing`]).
//! * **ROUGE** is rouge-score 0.1.2's F1 (also precision and recall):
//!   `rouge1`, `rouge2` and `rougeL` (sentence-level LCS, not `rougeLsum`);
//!   English uses rouge-score's default tokenizer without stemming, Chinese
//!   one token per non-space character. A corpus value is the mean over
//!   pairs.
//! * **Scale**: every score this module returns is on a 0-100 scale, like
//!   sacrebleu: BLEU and its precisions, ROUGE precision/recall/F1 (rouge-score's
//!   0-1 values times 100) and accuracy. Only the brevity penalty is 0-1.
//! * **Attribute accuracy** on synthetic phantoms (`echovlm-phantom`): a sample that carries
//!   the phantom's `attributes` has its answer read back with `echovlm_phantom::parse_report`,
//!   and each attribute (lesion present, echogenicity, position, size, margin) is counted right
//!   or wrong ([`attribute_accuracy`], [`AttributeAccuracy`]).
//!
//! Behaviour of the reference tools kept on purpose, so that the numbers stay
//! comparable:
//!
//! * rouge-score's default tokenizer keeps only ASCII `[a-z0-9]` runs, so it
//!   turns Chinese text into nothing (or into its Latin letters and digits:
//!   `"TI-RADS 4a类"` gives `ti rads 4a`); Chinese therefore defaults to
//!   [`RougeTokenizer::Chars`].
//! * sacrebleu's `zh` tokenizer treats U+2001..=U+2A6D (dashes, curly quotes,
//!   `…`, `℃`, `≤`, arrows, `①`, dingbats) as Chinese characters and CJK
//!   Extension B as not, because its range table is written with five-digit
//!   `\u` escapes that Python reads as two characters
//!   ([`ZH_CHINESE_RANGES`]). It does not unescape HTML entities or drop
//!   `<skipped>` as `13a` does, and a period right after a digit at the end of
//!   a line stays attached (`"约5."` gives `约 5.`).
//! * `13a` splits only ASCII punctuation; periods and commas next to a digit
//!   stay (`1.2`, `1,200`), a dash after a digit is split (`3 - 4`), other
//!   dashes are not (`well-defined`).
//! * BLEU is case-sensitive by default; rouge-score's tokenizer lowercases.
//!
//! Optional: the `jieba` feature adds Chinese word segmentation
//! (`BleuTokenizer::Jieba`, `RougeTokenizer::Jieba`,
//! `ReportOptions::chinese_words`), matching Python jieba 0.42.1's
//! `jieba.cut` (HMM on). jieba-rs alone keeps Latin runs such as `TI-RADS`
//! whole where Python's jieba yields `TI`, `-`, `RADS`; the port splits them
//! the Python way.

mod accuracy;
mod attributes;
mod bleu;
mod report;
mod rouge;
mod tokenize;

#[cfg(feature = "runner")]
pub mod runner;

pub use accuracy::{accuracy, choice_accuracy, extract_option_letter, normalize_answer};
pub use attributes::{AttributeAccuracy, AttributeCount, attribute_accuracy, score_attributes};
pub use bleu::{
    BleuOptions, BleuScore, BleuStats, BleuTokenizer, MAX_BLEU_ORDER, Smoothing, corpus_bleu,
    corpus_bleu_multi, segment_stats, sentence_bleu, sentence_bleu_multi,
};
/// The phantom attributes and scores the per-attribute accuracy is built from.
pub use echovlm_phantom::{AttributeScores, Attributes};
pub use report::{
    ReportAccumulator, ReportOptions, ReportScores, ScoreReport, score_corpus, score_corpus_with,
    score_jsonl,
};
pub use rouge::{
    RougeScore, RougeScores, RougeTokenizer, lcs_len, rouge_all, rouge_l, rouge_l_tokens, rouge_n,
    rouge_n_tokens,
};
#[cfg(feature = "jieba")]
pub use tokenize::tokenize_jieba;
pub use tokenize::{
    ZH_CHINESE_RANGES, is_py_space, is_zh_chinese_char, py_split, tokenize_13a, tokenize_chars,
    tokenize_rouge_default, tokenize_zh,
};

use serde::Serialize;

/// The language of a report, which picks the default tokenizers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Language {
    /// English: BLEU tokenizer `13a`, rouge-score's tokenizer.
    #[serde(rename = "en")]
    English,
    /// Chinese: BLEU tokenizer `zh`, one ROUGE token per character.
    #[serde(rename = "zh")]
    Chinese,
}

impl Language {
    /// The language of a code: `en`/`english` or `zh`/`chinese`, any case,
    /// with an optional region (`zh-CN`, `en_US`). `None` otherwise.
    pub fn from_code(code: &str) -> Option<Language> {
        let code = code.trim().to_ascii_lowercase();
        let base = code.split(['-', '_']).next().unwrap_or("");
        match base {
            "en" | "english" => Some(Language::English),
            "zh" | "chinese" => Some(Language::Chinese),
            _ => None,
        }
    }

    /// The ISO 639-1 code, `en` or `zh`.
    pub fn code(&self) -> &'static str {
        match self {
            Language::English => "en",
            Language::Chinese => "zh",
        }
    }

    /// sacrebleu's tokenizer for the language: `13a` or `zh`.
    pub fn bleu_tokenizer(&self) -> BleuTokenizer {
        match self {
            Language::English => BleuTokenizer::Tok13a,
            Language::Chinese => BleuTokenizer::Zh,
        }
    }

    /// The default ROUGE tokenizer: rouge-score's, or one token per character.
    pub fn rouge_tokenizer(&self) -> RougeTokenizer {
        match self {
            Language::English => RougeTokenizer::Default,
            Language::Chinese => RougeTokenizer::Chars,
        }
    }
}

/// Errors of the metric functions.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetricsError {
    /// Hypotheses (or predictions) and references differ in number.
    #[error("{hypotheses} hypotheses but {references} references")]
    LengthMismatch {
        /// Number of hypotheses or predictions.
        hypotheses: usize,
        /// Number of references.
        references: usize,
    },
    /// A JSONL line is not valid JSON.
    #[error("line {line}: invalid JSON: {source}")]
    Json {
        /// 1-based line number.
        line: usize,
        /// The parser's error.
        source: serde_json::Error,
    },
    /// A JSONL line is JSON but not an object.
    #[error("line {line}: expected a JSON object")]
    NotAnObject {
        /// 1-based line number.
        line: usize,
    },
    /// A JSONL object lacks a required field.
    #[error("line {line}: missing field `{field}`")]
    MissingField {
        /// 1-based line number.
        line: usize,
        /// The field's name.
        field: &'static str,
    },
    /// A JSONL field is not a string.
    #[error("line {line}: field `{field}` is not a string")]
    FieldNotString {
        /// 1-based line number.
        line: usize,
        /// The field's name.
        field: &'static str,
    },
    /// A JSONL `lang` is neither English nor Chinese.
    #[error("line {line}: unknown language {lang:?} (expected \"en\" or \"zh\")")]
    UnknownLanguage {
        /// 1-based line number.
        line: usize,
        /// The value found.
        lang: String,
    },
}
