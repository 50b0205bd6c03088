//! An OCI Distribution Spec v1.1 registry for Berth: a server, its storage, and a client.
//!
//! - [`server::router`] serves every `/v2/` endpoint (blobs with ranges, monolithic and chunked
//!   uploads, cross-repository mounts, manifests by tag and digest, tags, catalog, referrers)
//!   over any [`Storage`]; [`server::serve`] runs it over plain HTTP or rustls.
//! - [`FsStorage`] keeps blobs in a `berth_image::ContentStore` (the store images use),
//!   repository links and resumable uploads beside it, and collects garbage online.
//! - [`auth`] has htpasswd (bcrypt) users and scoped bearer tokens, issued by `GET /token`
//!   (the Docker token protocol) or `POST /token` (OAuth2 password and refresh-token grants) and
//!   signed with a key that can be kept on disk, so tokens survive a restart.
//! - [`client::Client`] pulls and pushes images between a registry and any
//!   [`client::LocalContent`], concurrently, resuming dropped transfers.
//!
//! Blobs stream end to end: neither side holds a whole blob in memory.
//!
//! ```no_run
//! use std::sync::Arc;
//! use berth_registry::{FsStorage, server};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let storage = Arc::new(FsStorage::open("/var/lib/berth/registry")?);
//! let router = server::router(storage, server::ServerConfig::default());
//! let listener = std::net::TcpListener::bind("127.0.0.1:5000")?;
//! server::serve(listener, router, None, std::future::pending()).await?;
//! # Ok(())
//! # }
//! ```

mod error;

pub mod auth;
pub mod client;
pub mod manifest;
pub mod name;
pub mod server;
pub mod storage;

pub use error::{Error, Result};
pub use name::{ManifestRef, RepositoryName};
pub use storage::{FsStorage, Storage};
