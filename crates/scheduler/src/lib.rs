//! Placing pods on nodes: kube-scheduler's plugin framework, queue and node cache, laid out for
//! speed.
//!
//! **The scheduler does no I/O: it decides, the caller binds.** Feed a [`Scheduler`] the
//! cluster's nodes and pods (k8s-openapi objects), run it, and it hands each decision to the
//! [`Binder`] you supply: bindings, preemption victims to evict, and the PodScheduled condition
//! (with kube-scheduler's explanation) for pods that fit nowhere.
//!
//! Where to start:
//! - [`Scheduler`]: the event methods (`add_node`, `add_pod`, `delete_pod`, `set_pdb`, ...),
//!   [`Scheduler::schedule_one`] / [`Scheduler::run`], and [`Scheduler::advance`] for time;
//! - [`framework`]: the extension points as traits (QueueSort, PreFilter, Filter, PostFilter,
//!   PreScore, Score, Reserve, Permit, PreBind, Bind) to write your own plugins;
//! - [`plugins`]: the default plugins, and the [`Registry`] that builds them by name;
//! - [`Config`]: profiles from a `KubeSchedulerConfiguration` file;
//! - [`cache`]: the incrementally updated node cache and its equivalence classes, which let
//!   the framework evaluate one node per class when the plugins allow it, with the same result
//!   as evaluating every node.
//!
//! ```
//! use berth_scheduler::k8s_openapi::api::core::v1::{Container, Node, NodeStatus, Pod, PodSpec};
//! use berth_scheduler::k8s_openapi::apimachinery::pkg::api::resource::Quantity;
//! use berth_scheduler::{Binder, Binding, BindError, Scheduler};
//!
//! #[derive(Default)]
//! struct Recorder(Vec<Binding>);
//! impl Binder for Recorder {
//!     fn bind(&mut self, b: &Binding) -> Result<(), BindError> {
//!         self.0.push(b.clone());
//!         Ok(())
//!     }
//! }
//!
//! let mut node = Node::default();
//! node.metadata.name = Some("node-1".into());
//! node.status = Some(NodeStatus {
//!     allocatable: Some([("cpu", "2"), ("memory", "4Gi"), ("pods", "110")]
//!         .into_iter().map(|(k, v)| (k.to_string(), Quantity(v.into()))).collect()),
//!     ..Default::default()
//! });
//! let mut pod = Pod::default();
//! pod.metadata.name = Some("web".into());
//! pod.spec = Some(PodSpec { containers: vec![Container::default()], ..Default::default() });
//!
//! let mut scheduler = Scheduler::default();
//! scheduler.add_node(node)?;
//! scheduler.add_pod(pod)?;
//! let mut binder = Recorder::default();
//! scheduler.run(&mut binder);
//! assert_eq!(binder.0[0].node, "node-1");
//! # Ok::<_, berth_scheduler::Error>(())
//! ```
//!
//! Running against an API server is a thin layer over this core, [`runner`] (feature `runner`,
//! on by default): kube-rs watchers call the event methods, a [`Binder`] posts `pods/binding`,
//! deletes victims and patches the condition, and a loop calls [`Scheduler::advance`] and
//! [`Scheduler::run`]. Without the feature the crate has no I/O dependency at all.

pub mod cache;
pub mod config;
mod error;
pub mod framework;
pub mod labels;
pub mod plugins;
pub mod pod;
pub mod queue;
#[cfg(feature = "runner")]
pub mod runner;
pub mod scheduler;

pub use k8s_openapi;
#[cfg(feature = "runner")]
pub use kube;

pub use cache::{Cache, NodeId};
pub use config::Config;
pub use error::{Error, Result};
pub use framework::{BindError, Binder, Binding, Diagnosis, Profile, TopScores};
pub use plugins::Registry;
pub use pod::PodInfo;
pub use scheduler::{Decision, Outcome, Pdb, Scheduler, Stats, unschedulable_condition};
