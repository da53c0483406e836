//! The teacher-forced forward pass over whole sequences: logits at every position and the
//! router logits of every MoE layer, for training and scoring. The same model code as
//! generation runs; nothing is cached between calls.

use burn::tensor::{Int, Tensor, TensorData};
use echovlm_text::{DecoderInput, Logits};

use super::{EchoVlm, PreparedPrompt};
use crate::error::EchoError;

/// What [`EchoVlm::forward_sequences`] returns.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SequenceOutput {
    /// `[batch, seq, vocab]`: the logits of the token after each position.
    pub logits: Tensor<3>,
    /// `[batch·seq, experts]` per MoE layer, in layer order (padding rows included); empty for
    /// checkpoints without MoE layers.
    pub router_logits: Vec<Tensor<2>>,
    /// `[batch][seq]` token ids, right-padded with the pad token.
    pub ids: Vec<Vec<u32>>,
    /// `[batch][seq]`: `false` on right padding (the attention mask).
    pub valid: Vec<Vec<bool>>,
}

impl EchoVlm {
    /// Runs whole sequences (prompt and answer alike, as [`PreparedPrompt`]s) in one causal
    /// pass: right-padded to the longest, visual features injected at their placeholders,
    /// M-RoPE positions as for generation. Returns the logits at every position and, for
    /// checkpoints with the dynamic MoE, each layer's router logits, with gradients reaching
    /// the routers when the weights are on an autodiff device.
    pub fn forward_sequences(
        &self,
        sequences: &[PreparedPrompt],
    ) -> Result<SequenceOutput, EchoError> {
        self.run_sequences(sequences, None)
    }

    /// [`forward_sequences`](Self::forward_sequences) with logits at the chosen positions only:
    /// `positions[r]` lists positions of sequence `r` (each below its length; as many rows as
    /// sequences). The returned [`SequenceOutput::logits`] is `[1, n, vocab]`, the `n` chosen
    /// positions in order, row by row. The LM head and whatever follows it (a loss over the
    /// answer tokens) then cost nothing for positions that are not scored; the logits are those
    /// `forward_sequences` gives at the same positions.
    pub fn forward_sequences_at(
        &self,
        sequences: &[PreparedPrompt],
        positions: &[Vec<usize>],
    ) -> Result<SequenceOutput, EchoError> {
        if positions.len() != sequences.len() {
            return Err(EchoError::InvalidRequest(format!(
                "logit positions given for {} sequences, but {} sequences to run",
                positions.len(),
                sequences.len()
            )));
        }
        for (r, (p, at)) in sequences.iter().zip(positions).enumerate() {
            if let Some(&t) = at.iter().find(|&&t| t >= p.ids.len()) {
                return Err(EchoError::InvalidRequest(format!(
                    "logit position {t} of sequence {r} is past its {} tokens",
                    p.ids.len()
                )));
            }
        }
        self.run_sequences(sequences, Some(positions))
    }

    fn run_sequences(
        &self,
        sequences: &[PreparedPrompt],
        at: Option<&[Vec<usize>]>,
    ) -> Result<SequenceOutput, EchoError> {
        if sequences.is_empty() {
            return Err(EchoError::InvalidRequest("no sequences to run".into()));
        }
        for p in sequences {
            self.check_prepared(p)?;
        }
        let max_len = sequences.iter().map(|p| p.ids.len()).max().unwrap_or(0);
        let ids: Vec<Vec<u32>> = sequences
            .iter()
            .map(|p| {
                let mut row = p.ids.clone();
                row.resize(max_len, self.pad_id);
                row
            })
            .collect();
        let valid: Vec<Vec<bool>> = sequences
            .iter()
            .map(|p| {
                let mut row = vec![true; p.ids.len()];
                row.resize(max_len, false);
                row
            })
            .collect();
        let any_padding = sequences.iter().any(|p| p.ids.len() != max_len);
        let mask = any_padding.then_some(valid.as_slice());
        let (embeds, image_grids, video_grids) = self.embed_prompts(sequences, &ids)?;
        let (positions, _) = self.positions(sequences, &ids, mask, &image_grids, &video_grids)?;
        let input = DecoderInput::new(embeds, &positions)
            .valid(mask)
            .router_logits(true);
        let input = match at {
            None => input.logits(Logits::All),
            // the last hidden state (after the final norm) is the LM head's input
            Some(_) => input.logits(Logits::None).hidden_states(true),
        };
        let out = self
            .text
            .forward(input, &mut self.text.new_cache().tensor_storage(), None)?;
        let logits = match at {
            None => out.logits,
            Some(at) => out.hidden_states.last().map(|normed| {
                let [b, s, h] = normed.dims();
                let rows: Vec<i64> = at
                    .iter()
                    .enumerate()
                    .flat_map(|(r, ts)| ts.iter().map(move |&t| (r * s + t) as i64))
                    .collect();
                let n = rows.len();
                let device = normed.device();
                let idx = Tensor::<1, Int>::from_data(TensorData::new(rows, [n]), &device);
                let picked = normed.clone().reshape([b * s, h]).select(0, idx);
                self.text.lm_head.forward(picked.unsqueeze_dim::<3>(0))
            }),
        };
        let logits = logits
            .ok_or_else(|| EchoError::InvalidRequest("the decoder returned no logits".into()))?;
        Ok(SequenceOutput {
            logits,
            router_logits: out.router_logits,
            ids,
            valid,
        })
    }

    /// The decoder, mutably: for fine-tuning (replacing weights, attaching adapters). Its fused
    /// layers ([`LoadOptions::fuse`](super::LoadOptions::fuse)) are dropped first, so that what
    /// is changed is what runs; call [`TextModel::fuse`](echovlm_text::TextModel::fuse) again
    /// once done.
    pub fn text_model_mut(&mut self) -> &mut echovlm_text::TextModel {
        self.text.unfuse();
        &mut self.text
    }

    /// The vision tower, mutably, if the checkpoint has one: for fine-tuning.
    pub fn vision_model_mut(&mut self) -> Option<&mut echovlm_vision::VisionModel> {
        self.vision.as_mut()
    }

    /// The decoder and the vision tower together, mutably: for fine-tuning code that walks
    /// both. The decoder's fused layers are dropped first, as by
    /// [`text_model_mut`](Self::text_model_mut).
    pub fn parts_mut(
        &mut self,
    ) -> (
        &mut echovlm_text::TextModel,
        Option<&mut echovlm_vision::VisionModel>,
    ) {
        self.text.unfuse();
        (&mut self.text, self.vision.as_mut())
    }

    /// The id right padding uses.
    pub fn pad_token_id(&self) -> u32 {
        self.pad_id
    }
}
