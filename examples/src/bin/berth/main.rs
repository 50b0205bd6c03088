//! `berth`: the reference binary wiring every Berth crate together.
//!
//! Docker-like verbs on one local state root (`--root`, default `/var/lib/berth`):
//! `berth image build|ls|inspect|rm|tag|import|export|push|pull`, `berth run|ps|logs|exec|stop|rm`,
//! `berth registry serve` and `berth api serve`; and a whole cluster on one host:
//! `berth cluster up|down`, `berth node join`.

// Doc comments here are clap help text (`NAME[:TAG]`), not rustdoc links.
#![allow(rustdoc::broken_intra_doc_links)]

mod api;
mod build;
mod cluster;
mod container;
mod controller_manager;
mod dns;
mod image;
mod ingress;
mod network;
mod node;
mod progress;
mod proxy;
mod registry;
mod scheduler;

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
    /// Schedule pods against an API server (berth-scheduler).
    Scheduler(scheduler::SchedulerArgs),
    /// Run a node agent, or join one to a cluster.
    #[command(subcommand)]
    Node(node::NodeCommand),
    /// Bring a whole cluster up on this host, or down.
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
    /// Networks for containers: create, ls, rm.
    #[command(subcommand)]
    Network(network::NetworkCommand),
    /// Run the controllers (ReplicaSet, Deployment, Job, CronJob, GC) against an API server.
    ControllerManager(controller_manager::ControllerManagerArgs),
    /// Serve cluster DNS (Service and pod names) from an API server.
    Dns(dns::DnsArgs),
    /// Serve Ingresses: an HTTP(S) reverse proxy driven by an API server.
    Ingress(ingress::IngressArgs),
    /// Program Services (and NetworkPolicies) into nftables from an API server (berth-proxy).
    Proxy(proxy::ProxyArgs),
}

fn main() -> ExitCode {
    // When started as a container's init (berth-namespaces re-executes this binary), this runs
    // the container setup, single-threaded, and never returns.
    berth_namespaces::init::main_if_init();
    berth_node::shim::main_if_shim();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if prints_only(&cli.command) {
        die_quietly_on_sigpipe();
    }
    let result = match cli.command {
        Command::Image(cmd) => image::run(&cli.global, cmd),
        Command::Container(cmd) => container::run(&cli.global, cmd),
        Command::Registry(cmd) => registry::run(&cli.global, cmd),
        Command::Api(cmd) => api::run(&cli.global, cmd),
        Command::Scheduler(args) => scheduler::run(args),
        Command::Node(cmd) => node::run(&cli.global, cmd),
        Command::Cluster(cmd) => cluster::run(&cli.global, cmd),
        Command::ControllerManager(args) => controller_manager::run(&cli.global, args),
        Command::Dns(args) => dns::run(args),
        Command::Ingress(args) => ingress::run(args),
        Command::Proxy(args) => proxy::run(args),
        Command::Network(cmd) => network::run(&cli.global, cmd),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("berth: {err:#}");
            ExitCode::from(125)
        }
    }
}

/// Whether `command` only prints (lists, inspects, removes): such a command ends quietly when
/// its reader goes away (`berth image ls | head -1`), as other CLIs do. The others run
/// containers, builds, transfers or a server: dying of SIGPIPE there would orphan what they
/// manage, so they keep Rust's default (SIGPIPE ignored, writes fail with EPIPE).
fn prints_only(command: &Command) -> bool {
    use container::ContainerCommand as C;
    use image::ImageCommand as I;
    match command {
        Command::Image(cmd) => matches!(
            cmd,
            I::Ls(_) | I::Inspect(_) | I::Rm(_) | I::Tag(_) | I::Import(_) | I::Export(_)
        ),
        Command::Container(cmd) => matches!(
            cmd,
            C::Ps { .. } | C::Logs { .. } | C::Stop { .. } | C::Rm { .. }
        ),
        Command::Registry(cmd) => matches!(cmd, registry::RegistryCommand::Gc(_)),
        Command::Api(_)
        | Command::Scheduler(_)
        | Command::Node(_)
        | Command::Cluster(_)
        | Command::ControllerManager(_)
        | Command::Dns(_)
        | Command::Ingress(_)
        | Command::Proxy(_)
        | Command::Network(_) => false,
    }
}

/// Restores SIGPIPE's default action: a write to a closed pipe ends the process silently
/// (status 141 in a shell), instead of an EPIPE error or a "failed printing to stdout" panic.
#[allow(unsafe_code)]
fn die_quietly_on_sigpipe() {
    // SAFETY: setting a signal's disposition to SIG_DFL installs no handler code; it runs
    // before this process starts any thread that could be writing.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
