//! The Qwen2 byte-level BPE tokenizer, with Qwen2-VL's special tokens found by name.

use std::path::{Path, PathBuf};

/// Failure to load or run the tokenizer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenizerError {
    /// `tokenizer.json` could not be read or parsed.
    #[error("cannot load tokenizer {path}: {reason}")]
    Load {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A special token the model needs is not in the tokenizer.
    #[error("the tokenizer has no {0} token")]
    MissingSpecial(&'static str),
    /// Encoding or decoding failed.
    #[error("tokenizer: {0}")]
    Run(String),
}

/// Ids of Qwen2-VL's special tokens, looked up by their text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecialTokens {
    /// `<|endoftext|>` (padding, and an end of sequence).
    pub endoftext: u32,
    /// `<|im_start|>`.
    pub im_start: u32,
    /// `<|im_end|>` (end of a turn).
    pub im_end: u32,
    /// `<|vision_start|>`.
    pub vision_start: u32,
    /// `<|vision_end|>`.
    pub vision_end: u32,
    /// `<|image_pad|>`.
    pub image_pad: u32,
    /// `<|video_pad|>`.
    pub video_pad: u32,
}

/// Qwen2 tokenizer (`tokenizer.json`).
#[derive(Debug, Clone)]
pub struct Qwen2Tokenizer {
    inner: tokenizers::Tokenizer,
    special: SpecialTokens,
}

impl Qwen2Tokenizer {
    /// Loads `tokenizer.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, TokenizerError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| TokenizerError::Load {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Self::from_bytes(&bytes).map_err(|e| match e {
            TokenizerError::Load { reason, .. } => TokenizerError::Load {
                path: path.to_path_buf(),
                reason,
            },
            other => other,
        })
    }

    /// Parses the contents of a `tokenizer.json`.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, TokenizerError> {
        let inner = tokenizers::Tokenizer::from_bytes(bytes).map_err(|e| TokenizerError::Load {
            path: PathBuf::from("tokenizer.json"),
            reason: e.to_string(),
        })?;
        let id = |name: &'static str| {
            inner
                .token_to_id(name)
                .ok_or(TokenizerError::MissingSpecial(name))
        };
        let special = SpecialTokens {
            endoftext: id("<|endoftext|>")?,
            im_start: id("<|im_start|>")?,
            im_end: id("<|im_end|>")?,
            vision_start: id("<|vision_start|>")?,
            vision_end: id("<|vision_end|>")?,
            image_pad: id("<|image_pad|>")?,
            video_pad: id("<|video_pad|>")?,
        };
        Ok(Self { inner, special })
    }

    /// The special token ids.
    pub fn special(&self) -> &SpecialTokens {
        &self.special
    }

    /// The id of a token given by its text (`"<|im_end|>"`, say).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The text of a token id.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Whether `id` is one of the tokenizer's special (added) tokens.
    pub fn is_special(&self, id: u32) -> bool {
        self.inner
            .get_added_tokens_decoder()
            .get(&id)
            .is_some_and(|t| t.special)
    }

    /// Number of ids the tokenizer knows (BPE vocabulary plus added tokens).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Encodes text; special-token text such as `<|im_start|>` becomes its id. Nothing is
    /// added (Qwen2 has no BOS).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        self.inner
            .encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| TokenizerError::Run(e.to_string()))
    }

    /// Decodes ids to text (bytes that do not form complete UTF-8 become U+FFFD).
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, TokenizerError> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| TokenizerError::Run(e.to_string()))
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}
