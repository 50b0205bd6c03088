#![doc = include_str!("../README.md")]

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
pub use content::{
    BlobInfo, BlobWriter, ContentStore, GcOptions, GcReport, ResumableWriter, UploadHash,
};
pub use error::{Error, Result};
pub use layout::{LayoutImage, REF_NAME_ANNOTATION};
pub use manifest::{Compression, Manifest, Platform};
pub use reference::Reference;
pub use store::{Image, ImageRecord, ImageStore, Layer, Lease, MAX_LAYERS};
pub use unpack::{UnpackOptions, Unpacked, chain_ids};

pub use oci_spec;
