//! Ultrasound task presets, worded like the instruction pools EchoVLM was trained on
//! (`question_json/*.json` of the EchoVLM repository), in Chinese and English.

use std::fmt;
use std::str::FromStr;

/// Prompt language.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Lang {
    /// Chinese, the language of most EchoVLM training data.
    #[default]
    Zh,
    /// English.
    En,
}

impl FromStr for Lang {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "zh" | "cn" | "chinese" => Ok(Lang::Zh),
            "en" | "english" => Ok(Lang::En),
            other => Err(format!("unknown language {other:?} (use zh or en)")),
        }
    }
}

/// What the model is asked to do with the images.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Task {
    /// A full report: findings and impression.
    Report,
    /// The findings section only (what is seen, no diagnosis).
    Findings,
    /// The impression (diagnostic conclusion) only.
    Impression,
    /// A diagnosis, free or chosen from the given options.
    Diagnosis {
        /// Candidate diagnoses; empty for a free answer.
        options: Vec<String>,
    },
    /// A single-choice question; the answer is the letter of the option.
    SingleChoice {
        /// The question.
        question: String,
        /// The options, lettered A, B, C… in order.
        options: Vec<String>,
    },
    /// A free question about the images.
    Vqa {
        /// The question.
        question: String,
    },
    /// A short description of one image.
    Caption,
}

/// Names accepted by [`Task::from_name`] (the tasks that need no further text).
pub const TASK_NAMES: &[&str] = &["report", "findings", "impression", "diagnosis", "caption"];

impl Task {
    /// The task of a name in [`TASK_NAMES`].
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "report" => Task::Report,
            "findings" => Task::Findings,
            "impression" => Task::Impression,
            "diagnosis" => Task::Diagnosis {
                options: Vec::new(),
            },
            "caption" => Task::Caption,
            _ => return None,
        })
    }

    /// The instruction for `images` images (or cine loops) in `lang`.
    pub fn prompt(&self, lang: Lang, images: usize) -> String {
        let several = images > 1;
        match (self, lang) {
            (Task::Report, Lang::Zh) => {
                "请根据这些超声图像给出超声报告，包括超声所见和超声提示。".to_string()
            }
            (Task::Report, Lang::En) => format!(
                "Based on {}, write the ultrasound report in the format \"Ultrasound findings: ...; Ultrasound impression: ...\".",
                if several {
                    "these ultrasound images"
                } else {
                    "this ultrasound image"
                }
            ),
            (Task::Findings, Lang::Zh) => {
                "请描述这些超声图像的超声所见，不要给出诊断。".to_string()
            }
            (Task::Findings, Lang::En) => format!(
                "Describe the ultrasound findings of {} without giving a diagnosis.",
                if several {
                    "these images"
                } else {
                    "this image"
                }
            ),
            (Task::Impression, Lang::Zh) => {
                "请根据这些超声图像给出简洁的超声诊断结论。".to_string()
            }
            (Task::Impression, Lang::En) => {
                "Give a concise ultrasound impression (diagnostic conclusion) for these images."
                    .to_string()
            }
            (Task::Diagnosis { options }, lang) => diagnosis(options, lang),
            (Task::SingleChoice { question, options }, Lang::Zh) => format!(
                "{question}\n{}\n请只回答正确选项的字母。",
                lettered(options)
            ),
            (Task::SingleChoice { question, options }, Lang::En) => format!(
                "{question}\n{}\nAnswer with the letter of the correct option only.",
                lettered(options)
            ),
            (Task::Vqa { question }, _) => question.clone(),
            (Task::Caption, Lang::Zh) => "请把这张超声图像所见转成文字。".to_string(),
            (Task::Caption, Lang::En) => "Describe what this ultrasound image shows.".to_string(),
        }
    }
}

fn diagnosis(options: &[String], lang: Lang) -> String {
    match (options.is_empty(), lang) {
        (true, Lang::Zh) => "请根据超声图像给出最可能的诊断。".to_string(),
        (true, Lang::En) => {
            "What is the most likely diagnosis based on the ultrasound images?".to_string()
        }
        (false, Lang::Zh) => format!(
            "请根据超声图像从以下选项中选择最可能的诊断：\n{}\n请回答选项字母并复述该选项。",
            lettered(options)
        ),
        (false, Lang::En) => format!(
            "Choose the most likely diagnosis from the options below based on the ultrasound images:\n{}\nAnswer with the option letter and restate the option.",
            lettered(options)
        ),
    }
}

/// `A. first\nB. second…`.
pub(crate) fn lettered(options: &[String]) -> String {
    options
        .iter()
        .enumerate()
        .map(|(i, o)| format!("{}. {o}", option_letter(i)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `A` for 0, `B` for 1, … (`Z` and beyond fall back to the index).
pub(crate) fn option_letter(i: usize) -> String {
    if i < 26 {
        ((b'A' + i as u8) as char).to_string()
    } else {
        format!("{}", i + 1)
    }
}

impl fmt::Display for Lang {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Lang::Zh => "zh",
            Lang::En => "en",
        })
    }
}
