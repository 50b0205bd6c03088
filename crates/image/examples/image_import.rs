//! Imports an image from an OCI layout and unpacks it into a snapshotter, timing both steps.
//!
//! ```text
//! cargo run --release -p berth-image --example image_import -- ROOT LAYOUT[:REF]
//! ```
//! `ROOT` gets `image/` (the image store) and `snapshots/` (the snapshotter, overlay when this
//! process may mount overlays, plain copies otherwise). `--inline` decompresses on the applying
//! thread instead of a second one. Used by `benches/scripts/image_import.sh`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use berth_image::{ImageStore, Reference, UnpackOptions};

fn main() -> anyhow::Result<()> {
    let inline = std::env::args().any(|a| a == "--inline");
    let mut args = std::env::args().skip(1).filter(|a| a != "--inline");
    let (Some(root), Some(layout)) = (args.next(), args.next()) else {
        bail!("usage: image_import [--inline] ROOT LAYOUT[:REF]");
    };
    let root = PathBuf::from(root);
    let (dir, ref_name) = match layout.rsplit_once(':') {
        Some((dir, r)) if !r.contains('/') => (PathBuf::from(dir), Some(r.to_owned())),
        _ => (PathBuf::from(&layout), None),
    };
    let store = ImageStore::open(root.join("image"))?;
    let snapshotter = berth_unionfs::open(root.join("snapshots"))?;
    let name = Reference::parse("bench/import:latest")?;

    let start = Instant::now();
    let descriptor = store
        .import_oci(&dir, ref_name.as_deref(), &name)
        .with_context(|| format!("import {layout}"))?;
    let imported = start.elapsed();
    let image = store.load(&descriptor)?;
    let options = UnpackOptions {
        decompress_in_thread: !inline,
        ..UnpackOptions::default()
    };
    let unpacked = store.unpack_with(&image, snapshotter.as_ref(), &options)?;
    let total = start.elapsed();
    println!(
        "import {:.3}s unpack {:.3}s total {:.3}s layers {} backend {} top {}",
        imported.as_secs_f64(),
        (total - imported).as_secs_f64(),
        total.as_secs_f64(),
        unpacked.layers.len(),
        snapshotter.backend(),
        unpacked.top().unwrap_or("-"),
    );
    Ok(())
}
