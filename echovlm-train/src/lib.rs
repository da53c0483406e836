//! Fine-tuning EchoVLM on Burn's autodiff.
