//! Berth's shared vocabulary: content digests, resource quantities, the cluster object model and
//! the state-store trait.
//!
//! Every other Berth crate depends on this one, so it stays light (serde, sha2, tokio's sync
//! `sync` primitives). Where to start:
//! - [`Digest`] and [`Hasher`] for content addressing (images, registry);
//! - [`objects`] for the cluster's kinds ([`Pod`], [`Node`], [`Deployment`], …);
//! - [`store::Store`] for the revisioned key/value store (etcd's model: MVCC revisions,
//!   compare-and-swap transactions, watch, compaction, leases), [`store::MemoryStore`] for tests,
//!   `store::conformance` (feature `conformance`) for backends, and [`store::Typed`] to read and
//!   write object kinds in it. The durable backends live in `berth-store`.
//!
//! ```
//! use berth_api::Digest;
//! use berth_api::objects::Pod;
//! use berth_api::store::{MemoryStore, Typed};
//!
//! let d = Digest::sha256(b"hello");
//! assert_eq!(d.to_string().parse::<Digest>().unwrap(), d);
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let store = MemoryStore::new();
//! let pods = Typed::<Pod>::new(&store);
//! let mut pod = Pod::default();
//! pod.metadata.name = "web".into();
//! pod.metadata.namespace = "default".into();
//! let stored = pods.create(pod).await?;
//! assert!(stored.metadata.resource_version > 0);
//! # Ok::<_, berth_api::store::Error>(())
//! # }).unwrap();
//! ```

pub mod digest;
pub mod error_chain;
pub mod meta;
pub mod objects;
pub mod quantity;
pub mod store;

pub use digest::{Algorithm, Digest, DigestError, Hasher};
pub use error_chain::{ErrorChain, error_chain};
pub use meta::{LabelSelector, Object, ObjectMeta};
pub use objects::{DaemonSet, Deployment, Job, Node, Pod, ReplicaSet};
pub use quantity::{Bytes, Cpu};
