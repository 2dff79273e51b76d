//! Prompt templates: product code names a prompt, and ragq renders its text from the job's
//! variables: rendering ([`render`]), the saved versions and labels ([`store`]), and pinning a
//! job to the version it resolved when it was accepted ([`pin`]).

pub mod pin;
pub mod render;
pub mod store;
