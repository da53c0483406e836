//! The Qwen2 decoder of Qwen2-VL and EchoVLM: token embeddings, grouped-query attention with
//! q/k/v biases and multimodal rotary positions (M-RoPE), RMSNorm, a KV cache, and per layer
//! either the dense SwiGLU MLP (stock Qwen2-VL) or EchoVLM's dynamic mix of that MLP with a
//! sparse Mixture-of-Experts block; plus the Qwen2 tokenizer.
//!
//! Weights load strictly from HF checkpoints (see [`echovlm_core::load`]); field names mirror
//! the HF keys (`model.layers.{i}.self_attn.q_proj`, …).

#![warn(missing_docs)]

pub mod cache;
pub mod config;
pub mod error;
pub mod model;
pub mod positions;
pub mod rope;
pub mod tokenizer;

pub use cache::KvCache;
pub use config::{TextConfig, VisionTokenIds};
pub use error::PromptError;
pub use model::{
    Attention, DecoderInput, DecoderLayer, FeedForward, Logits, TextModel, TextOutput,
};
pub use positions::{VisionKind, rope_index};
pub use rope::{MRope, Positions};
pub use tokenizer::{Qwen2Tokenizer, SpecialTokens, TokenizerError};
