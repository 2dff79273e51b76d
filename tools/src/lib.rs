//! Tooling around ragq that no worker links: the simulated provider (`ragq sim-provider`), a
//! webhook receiver that verifies every signature, and the local stack (a fresh database and vhost,
//! ragq processes started as an operator would) used by the demo, the benchmarks and the tests.

pub mod audit;
pub mod browser;
pub mod config_file;
pub mod otlp;
pub mod receiver;
pub mod scrape;
pub mod sim;
pub mod stack;
