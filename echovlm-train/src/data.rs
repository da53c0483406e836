//! Training samples: a request (images and question) and the answer the model should write,
//! tokenised with the chat template and labelled on the answer only.

use echovlm_pipeline::{EchoVlm, PreparedPrompt, Request};
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};

use crate::error::TrainError;
use crate::loss::IGNORE;

/// The end of an assistant turn in the Qwen2 chat format; it is part of what the model learns
/// to write.
pub const TURN_END: &str = "<|im_end|>\n";

/// A sample ready to train on: the whole sequence and its labels.
#[derive(Debug, Clone)]
pub struct TrainSample {
    /// The prompt followed by the answer and [`TURN_END`] (placeholders expanded, pixels
    /// preprocessed).
    pub sequence: PreparedPrompt,
    /// One label per token: [`IGNORE`] on the prompt, the next-token ids on the answer.
    pub labels: Vec<i64>,
}

impl TrainSample {
    /// Tokens the loss is computed on.
    pub fn answer_tokens(&self) -> usize {
        self.labels.iter().filter(|&&l| l != IGNORE).count()
    }

    /// Positions the causal-LM loss scores: labelled tokens after the first (position `t`
    /// predicts `labels[t + 1]`).
    pub fn scored_tokens(&self) -> usize {
        self.labels
            .iter()
            .skip(1)
            .filter(|&&l| l != IGNORE && l >= 0)
            .count()
    }

    /// All tokens (prompt, image placeholders and answer).
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the sample has no tokens at all.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// Renders `request` with the chat template (generation prompt included), appends `answer`
/// and [`TURN_END`], and labels the appended tokens: transformers' assistant-span labelling.
/// `index` names the sample in errors.
pub fn encode_sample(
    model: &EchoVlm,
    request: &Request,
    answer: &str,
    index: usize,
) -> Result<TrainSample, TrainError> {
    if answer.trim().is_empty() {
        return Err(TrainError::Sample {
            index,
            reason: "the answer is empty".into(),
        });
    }
    let mut sequence = model.prepare(request)?;
    let answer_ids = model
        .tokenizer()
        .encode(&format!("{answer}{TURN_END}"))
        .map_err(|e| TrainError::Sample {
            index,
            reason: format!("the answer cannot be tokenised: {e}"),
        })?;
    let mut labels = vec![IGNORE; sequence.ids.len()];
    labels.extend(answer_ids.iter().map(|&t| t as i64));
    sequence.ids.extend(answer_ids);
    let max = model.text_model().config.max_position_embeddings;
    if sequence.ids.len() > max {
        return Err(TrainError::Sample {
            index,
            reason: format!(
                "{} tokens with the answer, more than the model's {max} positions",
                sequence.ids.len()
            ),
        });
    }
    Ok(TrainSample { sequence, labels })
}

/// The order samples are visited in during epoch `epoch`: a Fisher–Yates shuffle of
/// `0..n` seeded by `(seed, epoch)`, the same on every machine.
pub fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut rng =
        ChaCha8Rng::seed_from_u64(seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order
}
