//! Berth's shared vocabulary: content digests, the cluster object model and the state-store trait.
//!
//! Every other Berth crate depends on this one, so it stays light: serde, sha2 and a few
//! small crates. Start with [`Digest`] for content addressing.
//!
//! ```
//! use berth_api::Digest;
//!
//! let d = Digest::sha256(b"hello");
//! assert_eq!(d.to_string().parse::<Digest>().unwrap(), d);
//! ```

pub mod digest;

pub use digest::{Algorithm, Digest, DigestError, Hasher};
