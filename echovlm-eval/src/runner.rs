//! Generate for a JSONL of samples and score the outputs against their references.
//!
//! A sample line is `{"images": ["a.png", ...], "task": "report" | "prompt": "...",
//! "reference": "...", "lang": "zh" | "en", "options": ["...", ...]}`; image paths are
//! relative to the JSONL file. Samples with `options` (or task `diagnosis` / `choice`) are also
//! scored for accuracy: the option letter of the answer against that of the reference, or the
//! normalised answers when either has no letter. Samples of synthetic phantoms (written by
//! `echovlm_phantom::write_dataset`) also carry `"attributes": {"lesion": {...} | null}`; their
//! answers are read back and scored per attribute ([`EvalReport::attributes`]). Other keys are
//! ignored.
//!
//! ```no_run
//! use echovlm_eval::runner::{evaluate, read_samples};
//! use echovlm_pipeline::{EchoVlm, LoadOptions};
//!
//! let model = EchoVlm::load("EchoVLM", &LoadOptions::default())?;
//! let samples = read_samples("test.jsonl".as_ref())?;
//! let report = evaluate(&model, &samples, &model.default_generation(), |_| {})?;
//! println!("BLEU-4 {:.2}, ROUGE-L {:.2}", report.corpus.bleu4, report.corpus.rouge_l);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};

use echovlm_pipeline::{EchoError, EchoVlm, GenerationOptions, Lang, Request, Task};
use serde::{Deserialize, Serialize};

use crate::{
    AttributeAccuracy, AttributeScores, Attributes, BleuOptions, Language, ReportAccumulator,
    ReportOptions, ReportScores, Smoothing, extract_option_letter, normalize_answer, rouge_all,
    score_attributes, sentence_bleu,
};

/// Errors of the evaluation runner.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EvalError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A sample line is not a valid sample.
    #[error("{path} line {line}: {reason}")]
    Sample {
        /// The JSONL file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// Generation failed for a sample (a missing image, a context too long, ...).
    #[error("line {line}: {source}")]
    Generation {
        /// 1-based line number of the sample.
        line: usize,
        /// The pipeline's error.
        source: EchoError,
    },
}

/// One evaluation sample as read from a JSONL line.
#[derive(Debug, Clone, Deserialize)]
#[non_exhaustive]
pub struct Sample {
    /// 1-based line number in its file (0 for samples built in code).
    #[serde(skip)]
    pub line: usize,
    /// Images, absolute or relative to the JSONL file (resolved by [`read_samples`]).
    #[serde(default)]
    pub images: Vec<PathBuf>,
    /// A task preset (`report`, `findings`, `impression`, `diagnosis`, `choice`, ...), used
    /// when `prompt` is absent.
    pub task: Option<String>,
    /// The question; takes precedence over `task`.
    pub prompt: Option<String>,
    /// The reference answer or report.
    pub reference: String,
    /// `zh` (the default) or `en`.
    #[serde(default)]
    pub lang: Option<String>,
    /// Answer options of a choice / diagnosis sample.
    #[serde(default)]
    pub options: Vec<String>,
    /// The attributes of a synthetic phantom the sample shows: its answer is then also scored
    /// per attribute.
    #[serde(default)]
    pub attributes: Option<Attributes>,
}

impl Sample {
    /// A sample asking `prompt` about `images`, answered by `reference` in `lang`.
    pub fn new(
        images: Vec<PathBuf>,
        prompt: impl Into<String>,
        reference: impl Into<String>,
        lang: Lang,
    ) -> Self {
        Sample {
            line: 0,
            images,
            task: None,
            prompt: Some(prompt.into()),
            reference: reference.into(),
            lang: Some(lang_code(lang).to_string()),
            options: Vec::new(),
            attributes: None,
        }
    }

    /// This sample, showing a phantom with `attributes`.
    pub fn with_attributes(mut self, attributes: Attributes) -> Self {
        self.attributes = Some(attributes);
        self
    }

    fn langs(&self) -> (Lang, Language) {
        match self.lang.as_deref().and_then(Language::from_code) {
            Some(Language::English) => (Lang::En, Language::English),
            _ => (Lang::Zh, Language::Chinese),
        }
    }

    /// The request this sample sends.
    ///
    /// # Errors
    /// [`EvalError::Sample`] for an unknown task name.
    pub fn request(&self) -> Result<Request, EvalError> {
        let lang = self.langs().0;
        let mut request = match (&self.prompt, &self.task) {
            (Some(p), _) => Request::new(p.clone()),
            (None, Some(t)) if t == "diagnosis" || t == "choice" => Request::task(
                Task::Diagnosis {
                    options: self.options.clone(),
                },
                lang,
            ),
            (None, Some(t)) => Request::task(
                Task::from_name(t).ok_or_else(|| EvalError::Sample {
                    path: PathBuf::new(),
                    line: self.line,
                    reason: format!("unknown task {t:?}"),
                })?,
                lang,
            ),
            (None, None) => Request::task(Task::Report, lang),
        };
        for img in &self.images {
            request = request.image(img.as_path());
        }
        Ok(request)
    }
}

fn lang_code(lang: Lang) -> &'static str {
    match lang {
        Lang::En => "en",
        // Chinese, and any language added later until it has its own code here
        _ => "zh",
    }
}

/// Reads a JSONL file of samples (blank lines skipped), resolving image paths against the
/// file's directory.
///
/// # Errors
/// [`EvalError::Io`] if the file cannot be read, [`EvalError::Sample`] naming the line for a
/// line that is not a sample.
pub fn read_samples(path: &Path) -> Result<Vec<Sample>, EvalError> {
    let text = std::fs::read_to_string(path).map_err(|source| EvalError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let mut samples = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let mut s: Sample = serde_json::from_str(line).map_err(|e| EvalError::Sample {
            path: path.to_path_buf(),
            line: i + 1,
            reason: e.to_string(),
        })?;
        s.line = i + 1;
        for img in &mut s.images {
            *img = base.join(&*img);
        }
        samples.push(s);
    }
    Ok(samples)
}

/// The scores of one sample, every value on a 0-100 scale.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct SampleScores {
    /// 1-based line of the sample in its file.
    pub line: usize,
    /// `en` or `zh`.
    pub lang: &'static str,
    /// The reference.
    pub reference: String,
    /// The generated text, trimmed.
    pub hypothesis: String,
    /// Sentence BLEU-1 (sacrebleu's `sentence_bleu`).
    pub bleu1: f64,
    /// Sentence BLEU-4.
    pub bleu4: f64,
    /// ROUGE-1 F1.
    pub rouge1: f64,
    /// ROUGE-2 F1.
    pub rouge2: f64,
    /// ROUGE-L F1.
    #[serde(rename = "rougeL")]
    pub rouge_l: f64,
    /// For choice / diagnosis samples, whether the answer is right.
    pub correct: Option<bool>,
    /// For phantom samples, which attributes the answer gets right (absent otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attributes: Option<AttributeScores>,
    /// Tokens generated.
    pub generated_tokens: usize,
}

/// The result of an evaluation run.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct EvalReport {
    /// Corpus BLEU-1..4 and mean ROUGE over all samples.
    pub corpus: ReportScores,
    /// Accuracy over choice / diagnosis samples (0-100), `None` when there are none.
    pub accuracy: Option<f64>,
    /// Number of choice / diagnosis samples.
    pub choice_samples: usize,
    /// Per-attribute accuracy over the phantom samples, `None` (and absent from the JSON) when
    /// there are none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attributes: Option<AttributeAccuracy>,
    /// Per-sample scores, in input order.
    pub samples: Vec<SampleScores>,
}

/// Scores one hypothesis against its sample's reference (BLEU, ROUGE, for samples with
/// options accuracy, and for phantom samples the attributes it gets right).
pub fn score_sample(sample: &Sample, hypothesis: &str, generated_tokens: usize) -> SampleScores {
    let lang = sample.langs().1;
    let hyp = hypothesis.trim();
    let reference = sample.reference.as_str();
    let rouge = rouge_all(hyp, reference, lang);
    let is_choice = !sample.options.is_empty()
        || matches!(sample.task.as_deref(), Some("diagnosis" | "choice"));
    let correct =
        is_choice.then(
            || match (extract_option_letter(reference), extract_option_letter(hyp)) {
                (Some(w), Some(g)) => w == g,
                _ => normalize_answer(hyp) == normalize_answer(reference),
            },
        );
    SampleScores {
        line: sample.line,
        lang: lang.code(),
        reference: reference.to_string(),
        hypothesis: hyp.to_string(),
        bleu1: sentence_bleu(hyp, reference, &BleuOptions::sentence(lang, 1)).score,
        bleu4: sentence_bleu(hyp, reference, &BleuOptions::sentence(lang, 4)).score,
        rouge1: rouge.rouge1.f1,
        rouge2: rouge.rouge2.f1,
        rouge_l: rouge.rouge_l.f1,
        correct,
        attributes: sample.attributes.as_ref().map(|a| {
            let lang = match lang {
                Language::English => echovlm_phantom::Lang::En,
                Language::Chinese => echovlm_phantom::Lang::Zh,
            };
            score_attributes(a, hyp, lang)
        }),
        generated_tokens,
    }
}

/// Corpus scores of already scored samples (each sample's language picks its tokenizers).
pub fn summarize(samples: Vec<SampleScores>) -> EvalReport {
    let mut acc = ReportAccumulator::new(Smoothing::Exp);
    let (mut total, mut right) = (0usize, 0usize);
    let mut attributes = AttributeAccuracy::new();
    for s in &samples {
        let lang = Language::from_code(s.lang).unwrap_or(Language::Chinese);
        acc.add(
            &s.reference,
            &s.hypothesis,
            &ReportOptions::for_language(lang),
        );
        if let Some(c) = s.correct {
            total += 1;
            right += usize::from(c);
        }
        if let Some(a) = &s.attributes {
            attributes.add(a);
        }
    }
    EvalReport {
        corpus: acc.scores(),
        accuracy: (total > 0).then(|| 100.0 * right as f64 / total as f64),
        choice_samples: total,
        attributes: (attributes.samples > 0).then_some(attributes),
        samples,
    }
}

/// Generates an answer for every sample with `opts` and scores it; `progress` is called with
/// the number of samples done after each one.
///
/// # Errors
/// [`EvalError::Generation`] naming the sample's line when the model refuses a sample (a
/// missing or broken image, too long a context, ...); [`EvalError::Sample`] for an unknown task.
pub fn evaluate(
    model: &EchoVlm,
    samples: &[Sample],
    opts: &GenerationOptions,
    mut progress: impl FnMut(usize),
) -> Result<EvalReport, EvalError> {
    let mut scored = Vec::with_capacity(samples.len());
    for (i, sample) in samples.iter().enumerate() {
        let request = sample.request()?;
        let out = model
            .generate(&request, opts)
            .map_err(|source| EvalError::Generation {
                line: sample.line,
                source,
            })?;
        scored.push(score_sample(
            sample,
            &out.text,
            out.generated_token_ids.len(),
        ));
        progress(i + 1);
    }
    Ok(summarize(scored))
}

impl EvalReport {
    /// Writes one CSV row per sample (`line,lang,bleu1,bleu4,rouge1,rouge2,rougeL,correct,
    /// reference,hypothesis`), text fields quoted.
    ///
    /// # Errors
    /// The writer's error.
    pub fn write_csv(&self, mut w: impl Write) -> std::io::Result<()> {
        writeln!(
            w,
            "line,lang,bleu1,bleu4,rouge1,rouge2,rougeL,correct,reference,hypothesis"
        )?;
        let q = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
        for r in &self.samples {
            writeln!(
                w,
                "{},{},{:.4},{:.4},{:.4},{:.4},{:.4},{},{},{}",
                r.line,
                r.lang,
                r.bleu1,
                r.bleu4,
                r.rouge1,
                r.rouge2,
                r.rouge_l,
                r.correct.map_or(String::new(), |c| c.to_string()),
                q(&r.reference),
                q(&r.hypothesis),
            )?;
        }
        Ok(())
    }
}
