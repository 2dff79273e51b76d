//! ragq: queue-driven batch and RAG workers for SaaS backends.
//!
//! The library holds the platform (queue, database, providers, routing, spend, webhooks, api); the
//! `workers` folder holds the job handlers and the worker runtime that ties them to the queue. The
//! `ragq` binary is a thin CLI over both.

pub mod api;
pub mod bench;
pub mod cli;
pub mod config;
pub mod db;
pub mod demo;
pub mod jobs;
pub mod providers;
pub mod queue;
pub mod retrieval;
pub mod routing;
pub mod scheduler;
pub mod secret;
pub mod sim;
pub mod spend;
pub mod stack;
pub mod submit;
pub mod telemetry;
pub mod tenants;
pub mod tokens;
pub mod webhooks;

#[path = "../workers/mod.rs"]
pub mod workers;
