//! `berth network create|ls|rm`: user-defined networks for `berth run --network NAME`, where
//! containers find each other by name (berth-engine's `network` module).

use anyhow::Context;
use berth_engine::Engine;
use clap::Subcommand;

use crate::Global;

/// `berth network ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum NetworkCommand {
    /// Create a network (a bridge and a subnet: given, or a free /24 of 10.89.0.0/16).
    Create {
        /// Its subnet (`10.90.0.0/24`).
        #[arg(long)]
        subnet: Option<String>,
        /// Its name.
        name: String,
    },
    /// List the networks.
    Ls,
    /// Remove networks (refused while a container is attached).
    Rm {
        /// Their names.
        #[arg(required = true)]
        names: Vec<String>,
    },
}

pub(crate) fn run(global: &Global, cmd: NetworkCommand) -> anyhow::Result<u8> {
    let engine =
        Engine::open(&global.root).with_context(|| format!("opening {}", global.root.display()))?;
    let networks = engine.networks();
    match cmd {
        NetworkCommand::Create { subnet, name } => {
            let subnet = subnet
                .map(|s| s.parse().with_context(|| format!("--subnet {s:?}")))
                .transpose()?;
            let info = networks.create(&name, subnet)?;
            println!("{}", info.name);
        }
        NetworkCommand::Ls => {
            println!("{:<24} {:<16} SUBNET", "NAME", "BRIDGE");
            for n in networks.list()? {
                println!("{:<24} {:<16} {}", n.name, n.bridge, n.subnet);
            }
        }
        NetworkCommand::Rm { names } => {
            for name in names {
                networks.remove(&name)?;
                println!("{name}");
            }
        }
    }
    Ok(0)
}
