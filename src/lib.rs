//! ragq: queue-driven batch and RAG workers for SaaS backends.
//!
//! This crate is the platform every ragq process links: the job contract, queue, database,
//! providers, routing, retrieval, spend, webhooks, scheduler, api, dashboard and config. The worker runtime
//! and the job handlers are the `ragq-workers` crate (`workers/`); the `ragq` binary, the demo and
//! the benchmarks are `ragq-cli` (`cli/`); the simulated provider and test tooling `ragq-tools`.

pub mod api;
pub mod audit;
pub mod cache;
pub mod config;
pub mod dashboard;
pub mod db;
pub mod jobs;
pub mod keyring;
pub mod money;
pub mod prompts;
pub mod providers;
pub mod queue;
pub mod redaction;
pub mod retrieval;
pub mod routing;
pub mod scheduler;
pub mod secret;
pub mod spend;
pub mod telemetry;
pub mod tenants;
pub mod tokens;
pub mod webhooks;
