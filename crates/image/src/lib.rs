//! OCI images for Berth: content-addressed blob store, manifests, image store, OCI layout, build.
//!
//! Start with [`ImageStore::open`]: it owns a [`ContentStore`] of blobs (verified, atomic,
//! garbage-collected) and the names (`busybox:latest`, normalised like Docker's, see
//! [`Reference`]) that point at manifests in it.
//!
//! - [`content`]: the blob store. `begin_write()` → [`BlobWriter`] → `commit(&digest)`;
//!   `ingest_file`, `adopt_verified`, `open_blob`, `stat`, `contains`, `delete`, `list`, `gc(roots)`.
//! - [`manifest`]: the OCI model via `oci-spec` (re-exported as [`oci_spec`]), Docker schema2
//!   media types, layer compression, platform selection from an index.
//! - [`store`]: names → manifests: `resolve`, `load` (→ [`Image`]: manifest, config, layers),
//!   `tag`, `remove`, `gc`, and `add_layer` + `commit_image` to make new images. Images deeper
//!   than [`MAX_LAYERS`] (125, Docker's limit) are refused wherever they come in.
//! - [`unpack`]: an image → one committed `berth_unionfs` snapshot per layer, keyed by chain id;
//!   `prune_snapshots` removes the layer snapshots no named image needs.
//! - [`layout`] and [`archive`]: OCI image layouts (skopeo, umoci) and `docker save` archives.
//! - [`base`]: a base image from host files (a static busybox and its applet links).
//! - [`build`]: images from a Dockerfile.
//!
//! ```
//! use berth_image::{Compression, ImageStore, Reference};
//! use berth_image::oci_spec::image::ImageConfiguration;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let store = ImageStore::open(dir.path())?;
//!
//! // A one-layer image: a tar with one file, gzip-compressed.
//! let mut tar = tar::Builder::new(Vec::new());
//! let mut header = tar::Header::new_gnu();
//! header.set_size(6);
//! header.set_mode(0o644);
//! header.set_cksum();
//! tar.append_data(&mut header, "hello.txt", &b"hello\n"[..])?;
//! let layer = store.add_layer(&tar.into_inner()?[..], Compression::Gzip)?;
//! let manifest = store.commit_image(ImageConfiguration::default(), &[layer])?;
//!
//! let name = Reference::parse("hello")?;
//! assert_eq!(name.to_string(), "docker.io/library/hello:latest");
//! store.tag(&name, &manifest)?;
//! let image = store.image(&name)?;
//! assert_eq!(image.layers().len(), 1);
//! # Ok(())
//! # }
//! ```

mod error;

pub mod archive;
pub mod base;
pub mod content;
pub mod layout;
pub mod manifest;
pub mod reference;
pub mod store;
pub mod unpack;

pub use archive::ArchiveImage;
pub use base::BaseImage;
pub use content::{BlobInfo, BlobWriter, ContentStore, GcOptions, GcReport};
pub use error::{Error, Result};
pub use layout::{LayoutImage, REF_NAME_ANNOTATION};
pub use manifest::{Compression, Manifest, Platform};
pub use reference::Reference;
pub use store::{Image, ImageRecord, ImageStore, Layer, Lease, MAX_LAYERS};
pub use unpack::{UnpackOptions, Unpacked, chain_ids};

pub use oci_spec;

pub mod build;
