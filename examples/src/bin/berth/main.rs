//! `berth`: the reference binary wiring every Berth crate together.
//!
//! Docker-like verbs on one local state root (`--root`, default `/var/lib/berth`):
//! `berth image build|ls|inspect|rm|tag|import|export|push|pull`, `berth run|ps|logs|exec|stop|rm`,
//! `berth registry serve` and `berth api serve`.

// Doc comments here are clap help text (`NAME[:TAG]`), not rustdoc links.
#![allow(rustdoc::broken_intra_doc_links)]

mod api;
mod build;
mod container;
mod image;
mod registry;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Options every subcommand sees.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Global {
    /// The local state root (images, snapshots, containers).
    #[arg(
        long,
        global = true,
        env = "BERTH_ROOT",
        default_value = "/var/lib/berth"
    )]
    pub(crate) root: PathBuf,
}

#[derive(Debug, Parser)]
#[command(
    name = "berth",
    version,
    about = "Berth: containers and orchestration from the kernel up"
)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build, list, inspect, tag, remove, import, export, push and pull images.
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// Containers: run, ps, logs, exec, stop, rm.
    #[command(flatten)]
    Container(container::ContainerCommand),
    /// Serve an OCI Distribution registry.
    #[command(subcommand)]
    Registry(registry::RegistryCommand),
    /// Serve the Kubernetes-compatible API.
    #[command(subcommand)]
    Api(api::ApiCommand),
}

fn main() -> ExitCode {
    // When started as a container's init (berth-namespaces re-executes this binary), this runs
    // the container setup, single-threaded, and never returns.
    berth_namespaces::init::main_if_init();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Image(cmd) => image::run(&cli.global, cmd),
        Command::Container(cmd) => container::run(&cli.global, cmd),
        Command::Registry(cmd) => registry::run(&cli.global, cmd),
        Command::Api(cmd) => api::run(&cli.global, cmd),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("berth: {err:#}");
            ExitCode::from(125)
        }
    }
}
