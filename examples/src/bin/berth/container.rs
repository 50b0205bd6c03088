//! `berth run|ps|logs|exec|stop|rm`. (Owned by the engine work; being built.)

use crate::Global;

/// Container subcommands (top-level verbs).
#[derive(Debug, clap::Subcommand)]
pub(crate) enum ContainerCommand {
    /// List containers.
    Ps,
}

pub(crate) fn run(_global: &Global, cmd: ContainerCommand) -> anyhow::Result<u8> {
    anyhow::bail!("{cmd:?} is not available yet")
}
