//! `berth registry serve` and `berth image push|pull`. (Owned by the registry work; being built.)

use crate::Global;

/// Registry subcommands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum RegistryCommand {
    /// Serve an OCI Distribution registry.
    Serve,
}

/// Arguments of `berth image push`.
#[derive(Debug, clap::Args)]
pub(crate) struct PushArgs {
    /// The image reference.
    reference: String,
}

/// Arguments of `berth image pull`.
#[derive(Debug, clap::Args)]
pub(crate) struct PullArgs {
    /// The image reference.
    reference: String,
}

pub(crate) fn run(_global: &Global, cmd: RegistryCommand) -> anyhow::Result<u8> {
    anyhow::bail!("{cmd:?} is not available yet")
}

pub(crate) fn push(_global: &Global, args: PushArgs) -> anyhow::Result<u8> {
    anyhow::bail!("push of {} is not available yet", args.reference)
}

pub(crate) fn pull(_global: &Global, args: PullArgs) -> anyhow::Result<u8> {
    anyhow::bail!("pull of {} is not available yet", args.reference)
}
