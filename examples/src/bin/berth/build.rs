//! `berth image build`: a Dockerfile build into the local image store, with per-step progress
//! and the layer cache.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use berth_image::Reference;
use berth_image::build::BuildOptions;

use crate::Global;

/// Arguments of `berth image build`.
#[derive(Debug, clap::Args)]
pub(crate) struct BuildArgs {
    /// Name and optionally a tag (`name:tag`); may be repeated.
    #[arg(short = 't', long = "tag")]
    tags: Vec<String>,
    /// The Dockerfile (default: CONTEXT/Dockerfile).
    #[arg(short = 'f', long = "file")]
    file: Option<PathBuf>,
    /// A build argument `KEY=VALUE` (or `KEY`, taken from the environment); may be repeated.
    #[arg(long = "build-arg")]
    build_args: Vec<String>,
    /// Do not use the layer cache.
    #[arg(long)]
    no_cache: bool,
    /// Print only the image digest.
    #[arg(short = 'q', long)]
    quiet: bool,
    /// The build context directory.
    context: PathBuf,
}

pub(crate) fn run(global: &Global, args: BuildArgs) -> anyhow::Result<u8> {
    let engine = crate::container::engine(global)?;
    let builder = engine.builder()?;
    let mut build_args = BTreeMap::new();
    for arg in &args.build_args {
        match arg.split_once('=') {
            Some((k, v)) if !k.is_empty() => {
                build_args.insert(k.to_owned(), v.to_owned());
            }
            None if !arg.is_empty() => {
                if let Ok(v) = std::env::var(arg) {
                    build_args.insert(arg.clone(), v);
                }
            }
            _ => return Err(berth_image::build::Error::BuildArg(arg.clone()).into()),
        }
    }
    let tags = args
        .tags
        .iter()
        .map(|t| Reference::parse(t).with_context(|| format!("tag {t:?}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let timestamp = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => v
            .parse()
            .with_context(|| format!("SOURCE_DATE_EPOCH={v:?} is not a number"))?,
        Err(_) => 0,
    };
    let options = BuildOptions {
        context: args.context,
        dockerfile: args.file,
        tags,
        build_args,
        no_cache: args.no_cache,
        timestamp,
    };
    let output = if args.quiet {
        builder.build(&options, &mut std::io::sink())?
    } else {
        builder.build(&options, &mut std::io::stdout().lock())?
    };
    if args.quiet {
        println!("{}", output.digest);
    }
    Ok(0)
}
