//! The `ragq` binary: every process and tool of ragq behind one command. This crate parses
//! arguments, wires the platform (`ragq`), the worker runtime (`ragq-workers`) and the tooling
//! (`ragq-tools`) together, and reports failure; the demo and `ragq bench` live here too.

mod bench;
mod cli;
mod commands;
mod demo;
mod demo_cache;
mod demo_dashboard;
mod demo_prompts;
mod submit;

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    match cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ragq: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
