//! Snapshot latency and disk use: `cargo bench -p berth-benches --bench unionfs_snapshot`.
//!
//! - `snapshot_lifecycle/<backend>/<layers>`: prepare a writable snapshot on an image of 1 or 20
//!   layers, mount it, unmount it, remove it (one container start/stop's worth of snapshot work).
//! - Before the benchmarks, prints the disk use of 100 snapshots prepared on one image
//!   (overlay: should be near zero beyond the image itself).
//!
//! Needs root and overlayfs; otherwise prints why it skips.
// `criterion_group!` generates an undocumented `pub fn`.
#![allow(missing_docs)]

use std::path::Path;

use berth_unionfs::layer::{self, DiffOptions, DiffSource};
use berth_unionfs::{ApplyOptions, CopySnapshotter, MountGuard, OverlaySnapshotter, Snapshotter};
use criterion::{Criterion, criterion_group, criterion_main};

/// One layer tar: `files` files of 4 KiB under `prefix/`.
fn layer_tar(prefix: &str, files: usize) -> Vec<u8> {
    let tree = tempfile::tempdir().expect("tempdir");
    let dir = tree.path().join(prefix);
    std::fs::create_dir_all(&dir).expect("mkdir");
    let data = berth_benches::fixture_bytes(9, 4096);
    for i in 0..files {
        std::fs::write(dir.join(format!("f{i}")), &data).expect("write");
    }
    let mut out = Vec::new();
    layer::diff(
        DiffSource::Trees {
            lower: None,
            upper: tree.path(),
        },
        &mut out,
        &DiffOptions::new(),
    )
    .expect("diff");
    out
}

/// Unpacks an image of `layers` layers (the first with 2000 files) and returns its top key.
fn unpack_image(s: &dyn Snapshotter, layers: usize) -> String {
    let mut parent: Option<String> = None;
    for i in 0..layers {
        let name = format!("image-{layers}-layer-{i}");
        let tar = layer_tar(&format!("l{i}"), if i == 0 { 2000 } else { 20 });
        s.unpack_layer(
            &name,
            parent.as_deref(),
            &mut &tar[..],
            &ApplyOptions::default(),
        )
        .expect("unpack");
        parent = Some(name);
    }
    parent.expect("at least one layer")
}

fn du_bytes(path: &Path) -> u64 {
    let out = std::process::Command::new("du")
        .args(["-s", "-B1"])
        .arg(path)
        .output()
        .expect("du");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn disk_use_of_100_snapshots() {
    for backend in ["overlay", "copy"] {
        let tmp = tempfile::Builder::new()
            .prefix("unionfs-snap-du")
            .tempdir_in("/var/tmp")
            .expect("tempdir");
        let s: Box<dyn Snapshotter> = match backend {
            "overlay" => Box::new(OverlaySnapshotter::new(tmp.path()).expect("open")),
            _ => Box::new(CopySnapshotter::new(tmp.path()).expect("open")),
        };
        let top = unpack_image(s.as_ref(), 1);
        let image = du_bytes(tmp.path());
        let mut own = 0;
        for i in 0..100 {
            s.prepare(&format!("c{i}"), Some(&top)).expect("prepare");
            own += s.usage(&format!("c{i}")).expect("usage").size;
        }
        let total = du_bytes(tmp.path());
        println!(
            "disk use, {backend}: image {:.1} MiB; root with 100 snapshots {:.1} MiB (+{:.1} KiB per snapshot; usage() sum {:.1} MiB)",
            image as f64 / 1048576.0,
            total as f64 / 1048576.0,
            (total - image) as f64 / 100.0 / 1024.0,
            own as f64 / 1048576.0
        );
    }
}

fn lifecycle(c: &mut Criterion) {
    if !berth_testutil::require_root("snapshot benchmark mounts")
        || !berth_testutil::require_filesystem("snapshot benchmark", "overlay")
    {
        return;
    }
    disk_use_of_100_snapshots();
    let mut group = c.benchmark_group("snapshot_lifecycle");
    group.sample_size(10);
    for backend in ["overlay", "copy"] {
        let tmp = tempfile::Builder::new()
            .prefix("unionfs-snap-bench")
            .tempdir_in("/var/tmp")
            .expect("tempdir");
        let s: Box<dyn Snapshotter> = match backend {
            "overlay" => Box::new(OverlaySnapshotter::new(tmp.path()).expect("open")),
            _ => Box::new(CopySnapshotter::new(tmp.path()).expect("open")),
        };
        let target = tmp.path().join("mnt");
        std::fs::create_dir(&target).expect("mkdir");
        for layers in [1, 20] {
            let top = unpack_image(s.as_ref(), layers);
            let mut n = 0u64;
            group.bench_function(
                format!("{backend}/{layers}-layers/prepare+mount+unmount+remove"),
                |b| {
                    b.iter(|| {
                        n += 1;
                        let key = format!("bench-{n}");
                        let mounts = s.prepare(&key, Some(&top)).expect("prepare");
                        let guard = MountGuard::mount(&mounts, &target).expect("mount");
                        guard.unmount().expect("unmount");
                        s.remove(&key).expect("remove");
                    })
                },
            );
        }
    }
    group.finish();
}

criterion_group!(benches, lifecycle);
criterion_main!(benches);
