//! `ragq demo`: the whole system on this machine, printing what happened.

use tokio_util::sync::CancellationToken;

#[derive(Debug, clap::Args)]
pub struct DemoArgs {}

pub async fn run(_args: DemoArgs, _cancel: CancellationToken) -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}
