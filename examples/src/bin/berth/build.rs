//! `berth image build`: a Dockerfile build into the local image store, with per-step progress
//! and the layer cache. SIGINT and SIGTERM cancel the build: the running RUN step's container
//! is stopped and removed with its mount, cgroups and state, and `berth` exits with 128+signal.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, Ordering};

use anyhow::Context;
use berth_builder::{BuildOptions, Cancel, Error as BuildError};
use berth_image::Reference;

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
    /// Build this stage (by name) of a multi-stage Dockerfile; stages it does not need are
    /// skipped.
    #[arg(long)]
    target: Option<String>,
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
            _ => return Err(berth_builder::Error::BuildArg(arg.clone()).into()),
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
    let cancel = Cancel::new();
    let signal = watch_signals(cancel.clone())?;
    let options = BuildOptions {
        context: args.context,
        dockerfile: args.file,
        tags,
        build_args,
        no_cache: args.no_cache,
        timestamp,
        cancel,
        target: args.target,
    };
    let result = if args.quiet {
        builder.build(&options, &mut std::io::sink())
    } else {
        builder.build(&options, &mut std::io::stdout().lock())
    };
    let output = match result {
        Err(e @ BuildError::Cancelled { .. }) => {
            eprintln!("berth: {e}");
            let signal = signal.load(Ordering::SeqCst);
            return Ok(u8::try_from(128 + signal).unwrap_or(130));
        }
        other => other?,
    };
    if args.quiet {
        println!("{}", output.digest);
    }
    Ok(0)
}

/// The signal that cancelled the build (0 while none has).
static SIGNALLED: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(signal: libc::c_int) {
    // Async-signal-safe: one atomic store.
    SIGNALLED.store(signal, Ordering::SeqCst);
}

/// Installs SIGINT/SIGTERM handlers and a watcher thread that sets `cancel` when one arrives.
/// Returns the signal number holder (for the exit code).
#[allow(unsafe_code)]
fn watch_signals(cancel: Cancel) -> anyhow::Result<&'static AtomicI32> {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { sigaction(signal, &action) }.with_context(|| format!("handle {signal}"))?;
    }
    std::thread::spawn(move || {
        while SIGNALLED.load(Ordering::SeqCst) == 0 {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        cancel.cancel();
    });
    Ok(&SIGNALLED)
}
