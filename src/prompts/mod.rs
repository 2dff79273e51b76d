//! Prompt templates: product code names a prompt, and ragq renders its text from the job's
//! variables. So far this holds rendering ([`render`]) and the saved versions and labels
//! ([`store`]); the job path comes next (issue 19).

pub mod render;
pub mod store;
