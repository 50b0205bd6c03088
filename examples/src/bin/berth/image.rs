//! `berth image …`: the image store's verbs. (Owned by the image work; being built.)

use crate::Global;

/// Image subcommands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum ImageCommand {
    /// Build an image from a Dockerfile.
    Build(crate::build::BuildArgs),
    /// Push an image to a registry.
    Push(crate::registry::PushArgs),
    /// Pull an image from a registry.
    Pull(crate::registry::PullArgs),
}

pub(crate) fn run(global: &Global, cmd: ImageCommand) -> anyhow::Result<u8> {
    match cmd {
        ImageCommand::Build(args) => crate::build::run(global, args),
        ImageCommand::Push(args) => crate::registry::push(global, args),
        ImageCommand::Pull(args) => crate::registry::pull(global, args),
    }
}
