//! Examples, benchmarks and end-to-end tests of EchoVLM-rs.
