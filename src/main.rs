//! The `ragq` binary: everything lives in the library; this only parses and reports failure.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = ragq::cli::Cli::parse();
    match ragq::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ragq: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
