//! EchoVLM's dynamic feed-forward: the dense Qwen2 MLP and a Qwen2-MoE sparse block run on the
//! same normalised input and are mixed per token by a learned softmax coefficient.
//!
//! ```text
//! h                    post-attention RMSNorm output, [tokens, hidden]
//! (m, router_logits) = moe(h)          router top-k of E experts + sigmoid-gated shared expert
//! c                  = softmax(coefficient(h))     Linear(hidden → 2) with bias
//! y                  = c[:, 0] · m + c[:, 1] · mlp(h)
//! ```
//!
//! Weight names mirror the HF checkpoint (`mlp.*`, `moe.gate`, `moe.experts.{e}.*`,
//! `moe.shared_expert.*`, `moe.shared_expert_gate`, `coefficient`), so each module loads from
//! its own prefix. On the CPU backend the routing is read to the host and the sparse block runs
//! every expert only on the tokens routed to it; on a GPU the routing stays on the device
//! ([`DeviceRouting`]) and every expert runs on every token, weighted by its routed weight (zero
//! where not chosen), so a decode step never waits for a read-back.
//!
//! Routing can be recorded ([`RoutingTrace`]) and fed to the Switch/Mixtral load-balancing loss
//! ([`load_balancing_loss`]).

#![warn(missing_docs)]

mod loss;
mod mlp;
mod sparse;
mod trace;

pub use loss::{load_balancing_loss, load_balancing_loss_host};
pub use mlp::Mlp;
pub use sparse::{
    DeviceRouting, DynamicFfn, FusedFfn, MixOutput, MoeConfig, Routing, SparseMoeBlock,
};
pub use trace::{LayerRouting, RoutingSummary, RoutingTrace};
