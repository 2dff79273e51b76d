//! Operator subcommands over the platform's stores: pipelines, budgets, spend reports, API keys,
//! the response cache, prompt templates and the audit log.

pub mod audit;
pub mod cache;
pub mod keys;
pub mod pipeline;
pub mod prompt;
pub mod spend;
