//! The Qwen2 decoder of Qwen2-VL and EchoVLM: token embeddings, grouped-query attention with
//! q/k/v biases and multimodal rotary positions (M-RoPE), RMSNorm, a KV cache, and per layer
//! either the dense SwiGLU MLP (stock Qwen2-VL) or EchoVLM's dynamic mix of that MLP with a
//! sparse Mixture-of-Experts block; plus the Qwen2 tokenizer. A decode step can also keep every
//! input on the device ([`DeviceDecode`]), so that a GPU backend can record it once as a graph
//! and replay it.
//!
//! Weights load strictly from HF checkpoints (see [`echovlm_core::load`]); field names mirror
//! the HF keys (`model.layers.{i}.self_attn.q_proj`, …).
//!
//! Every public item has one path: the crate root.

#![warn(missing_docs)]

mod cache;
mod config;
mod error;
mod model;
mod positions;
mod rope;
mod tokenizer;

pub use cache::KvCache;
pub use config::{TextConfig, VisionTokenIds, read_json};
pub use error::{ForwardError, PromptError};
pub use model::{
    Attention, DecoderInput, DecoderLayer, DeviceDecode, FeedForward, Logits, TextModel, TextOutput,
};
pub use positions::{VideoTime, VisionKind, rope_index, rope_index_timed};
pub use rope::{MRope, Positions};
pub use tokenizer::{Qwen2Tokenizer, SpecialTokens, TokenizerError};
