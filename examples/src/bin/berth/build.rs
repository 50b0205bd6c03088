//! `berth image build`. (Owned by the build work; being built.)

use crate::Global;

/// Arguments of `berth image build`.
#[derive(Debug, clap::Args)]
pub(crate) struct BuildArgs {
    /// The build context directory.
    context: std::path::PathBuf,
}

pub(crate) fn run(_global: &Global, args: BuildArgs) -> anyhow::Result<u8> {
    anyhow::bail!("build of {} is not available yet", args.context.display())
}
