//! Berth's controllers: the reconcile loops that keep a cluster at its desired state, written
//! on kube-runtime the way Rust operators are, so each one reads as a worked example.
//!
//! Where to start: [`ControllerManager`] runs a chosen set of controllers against any
//! [`kube::Client`] (a real cluster, `berth api serve`, or the in-process
//! `berth_apiserver::ApiServer`). Each controller module ([`replicaset`], [`deployment`],
//! [`daemonset`], [`statefulset`], [`job`], [`cronjob`], [`gc`]) is a `kube::runtime::Controller` plus one
//! `reconcile` function; [`ControllerManager::register`] adds controllers written elsewhere. The [`runtime`] module holds what
//! kube-runtime leaves to each operator and Kubernetes' own controllers rely on: one shared cache
//! per kind, expectations, rate-limited requeue, Events, an injectable clock; [`leader`] adds
//! leader election on a Lease.
//!
//! ```
//! # async fn demo() -> anyhow::Result<()> {
//! use berth_controllers::ControllerManager;
//! use k8s_openapi::api::apps::v1::ReplicaSet;
//! use kube::api::{Api, PostParams};
//!
//! // An API server in memory, driven in-process by a kube client.
//! let server = berth_apiserver::ApiServer::in_memory().await?;
//! let client = kube::Client::new(server.router(), "default");
//! let manager = ControllerManager::new(client.clone())
//!     .controllers(["replicaset"])?
//!     .spawn();
//!
//! let rs: ReplicaSet = serde_json::from_value(serde_json::json!({
//!     "metadata": {"name": "web"},
//!     "spec": {
//!         "replicas": 3,
//!         "selector": {"matchLabels": {"app": "web"}},
//!         "template": {
//!             "metadata": {"labels": {"app": "web"}},
//!             "spec": {"containers": [{"name": "nginx", "image": "nginx:1.27"}]}
//!         }
//!     }
//! }))?;
//! Api::<ReplicaSet>::default_namespaced(client.clone())
//!     .create(&PostParams::default(), &rs)
//!     .await?;
//! // ... three pods named web-xxxxx appear, owned by the ReplicaSet.
//! manager.shutdown().await?;
//! # Ok(()) }
//! # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
//! ```

pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod endpoints;
mod error;
pub mod gc;
pub mod job;
pub mod leader;
pub mod manager;
pub mod node_ipam;
pub mod node_lifecycle;
pub mod pods;
pub mod replicaset;
pub mod revision;
pub mod runtime;
pub mod schedule;
pub mod serviceaccount;
pub mod statefulset;

pub use error::{Error, Result, is_conflict, is_not_found};
pub use manager::{ControllerManager, ControllerSpec, ManagerHandle};
