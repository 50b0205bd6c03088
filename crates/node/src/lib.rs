//! Berth's node agent: the kubelet's job on one host. It registers a Node (capacity from the
//! host or from flags, labels, taints), renews its Lease in `kube-node-lease`, watches the pods
//! bound to it, and runs them as real, isolated containers through berth-engine's image store
//! and snapshots and berth-namespaces' runtime: a pause process holding each pod's network, IPC
//! and UTS namespaces, a pod cgroup by QoS class with a cgroup per container under it, init
//! containers in order, restart policies with CrashLoopBackOff, probes and hooks, graceful
//! termination, CRI-format logs, and status back to the API.
//!
//! Start with [`Agent::new`] and [`Agent::run`]; [`NodeConfig`] holds the knobs. Containers
//! run under a **shim** process each (this same executable, see [`shim`]), so they survive an
//! agent restart and the next agent adopts them. **A binary that runs an agent calls
//! `berth_namespaces::init::main_if_init()` and then [`shim::main_if_shim`] first in `main`.**
//!
//! ```no_run
//! use berth_node::{Agent, NodeConfig};
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     berth_engine::namespaces::init::main_if_init();
//!     berth_node::shim::main_if_shim();
//!     let runtime = tokio::runtime::Runtime::new()?;
//!     runtime.block_on(async {
//!         let client = kube::Client::try_default().await?;
//!         let agent = Agent::new(client, NodeConfig::new("node-1", "/var/lib/berth-node"))?;
//!         agent.run(async { let _ = tokio::signal::ctrl_c().await; }).await?;
//!         Ok(())
//!     })
//! }
//! ```

mod agent;
pub mod config;
pub mod env;
mod error;
pub mod eviction;
pub mod host;
pub mod images;
pub mod logs;
pub mod network;
pub mod node;
mod pod;
mod probe;
pub mod resources;
pub mod server;
pub mod shim;
pub mod spdy;
pub mod spec;
pub mod stats;
mod sys;
pub mod volumes;

pub use agent::Agent;
pub use config::NodeConfig;
pub use error::{Error, Result};
pub use probe::ProbeKind;

pub use k8s_openapi;
pub use kube;
