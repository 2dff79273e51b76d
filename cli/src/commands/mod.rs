//! Operator subcommands over the platform's stores: pipelines, budgets and spend reports.

pub mod pipeline;
pub mod spend;
