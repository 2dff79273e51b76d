//! Prompt templates: product code names a prompt, and ragq renders its text from the job's
//! variables. So far this holds rendering ([`render`]); versions, labels and the job path come next
//! (issue 19).

pub mod render;
