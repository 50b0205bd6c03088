//! Placing Berth pods on nodes: a filter/score plugin framework in the shape of kube-scheduler's.
//!
//! **The scheduler does no I/O: it decides, the caller binds.** Build a [`Framework`] (the
//! default plugins, or your own [`FilterPlugin`]s and [`ScorePlugin`]s), describe the nodes as
//! [`NodeInfo`] (the node plus what is already placed on it), and ask for a [`Decision`].
//!
//! ```
//! use berth_api::objects::{Node, Pod};
//! use berth_api::{Bytes, Cpu};
//! use berth_scheduler::{Framework, NodeInfo};
//!
//! let mut node = Node::default();
//! node.metadata.name = "node-1".into();
//! node.status.allocatable.cpu = Cpu(2000);
//! node.status.allocatable.memory = Bytes(4 << 30);
//!
//! let pod = Pod::default();
//! let decision = Framework::with_default_plugins().schedule(&pod, &[NodeInfo::new(node)])?;
//! assert_eq!(decision.node, "node-1");
//! # Ok::<_, berth_scheduler::Error>(())
//! ```

mod error;
pub mod framework;
pub mod plugins;

pub use error::{Error, Result};
pub use framework::{Decision, FilterPlugin, Framework, NodeInfo, ScorePlugin};
