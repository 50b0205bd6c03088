//! Berth's state-store backends behind [`berth_api::store::Store`]:
//!
//! - [`EmbeddedStore`] (feature `embedded`, default): durable, no external service. A write-ahead
//!   log with group commit and an in-memory MVCC index; see [`embedded`].
//! - [`EtcdStore`] (feature `etcd`, default): etcd v3 through the `etcd-client` crate, for clusters that
//!   outgrow one machine.
//!
//! Crates that only use a store depend on `berth-api` (the trait); the binary that picks the
//! backend depends on this crate (`default-features = false, features = ["embedded"]` leaves
//! etcd's gRPC stack out). `examples/store_perf.rs` measures any backend through the trait. Both backends pass `berth_api::store::conformance`.
//!
//! ```no_run
//! use berth_api::store::Store;
//! use berth_store::EmbeddedStore;
//!
//! # async fn demo() -> anyhow::Result<()> {
//! let store = EmbeddedStore::open("/var/lib/berth/store")?;
//! let revision = store.put("/registry/Pod/default/web", b"{}".to_vec(), Some(0)).await?;
//! let mut watch = store.watch("/registry/Pod/", revision).await?;
//! # let _ = watch.next().await;
//! # Ok(())
//! # }
//! ```

#[cfg(feature = "embedded")]
pub mod embedded;
mod error;
#[cfg(feature = "etcd")]
pub mod etcd;

#[cfg(feature = "embedded")]
pub use embedded::{EmbeddedStore, Options, Recovery};
pub use error::{Error, Result};
#[cfg(feature = "etcd")]
pub use etcd::{EtcdOptions, EtcdStore};
