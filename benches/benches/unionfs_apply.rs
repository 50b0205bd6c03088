//! Layer apply throughput, side by side with umoci on the same OCI image layout:
//! `benches/scripts/unionfs_apply.sh` (or `cargo bench -p berth-benches --bench unionfs_apply`).
//!
//! Generates one uncompressed layer (many small files, a few large ones, some links), writes an
//! OCI image layout around it by hand, then alternates `umoci unpack`, `umoci raw unpack` and
//! `berth_unionfs::layer::apply` (reading the blob through a SHA-256 check, as an image unpack
//! does), with `sync` and a page-cache drop before every run. Prints MB/s and the ratios. Needs
//! root (umoci unpack, drop_caches) and `umoci` on PATH. Sizes: `UNIONFS_BENCH_SMALL` (files,
//! default 8000), `UNIONFS_BENCH_LARGE_MIB` (each of 3 large files, default 24), rounds:
//! `UNIONFS_BENCH_ROUNDS` (default 3).

use std::fs;
use std::io::Read;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use berth_api::{Algorithm, Digest};
use berth_unionfs::layer::{self, ApplyOptions, DiffOptions, DiffSource};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Builds the tree the layer is made from: `small` files of 1–8 KiB in 100 dirs, 3 large
/// files, symlinks and hard links.
fn make_tree(dir: &Path, small: usize, large_mib: usize) -> Result<()> {
    let pool = berth_benches::fixture_bytes(42, 1 << 20);
    for i in 0..small {
        let d = dir.join(format!("usr/share/d{:03}", i % 100));
        if i < 100 {
            fs::create_dir_all(&d)?;
        }
        let len = 1024 + (i * 7919) % (7 * 1024);
        let start = (i * 4099) % (pool.len() - len);
        fs::write(d.join(format!("f{i:06}")), &pool[start..start + len])?;
        if i % 500 == 0 {
            std::os::unix::fs::symlink(format!("f{i:06}"), d.join(format!("link{i}")))?;
            fs::hard_link(d.join(format!("f{i:06}")), d.join(format!("hard{i}")))?;
        }
    }
    fs::create_dir_all(dir.join("opt/big"))?;
    for i in 0..3 {
        let data = berth_benches::fixture_bytes(100 + i as u64, large_mib << 20);
        fs::write(dir.join(format!("opt/big/blob{i}")), data)?;
    }
    Ok(())
}

/// Writes an OCI image layout with one uncompressed layer; returns the layer blob's path.
fn make_layout(layout: &Path, layer_tar: &[u8]) -> Result<std::path::PathBuf> {
    let blobs = layout.join("blobs/sha256");
    fs::create_dir_all(&blobs)?;
    let put = |data: &[u8]| -> Result<(Digest, usize)> {
        let digest = Digest::sha256(data);
        fs::write(blobs.join(digest.hex()), data)?;
        Ok((digest, data.len()))
    };
    let (layer_digest, layer_size) = put(layer_tar)?;
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{}},"rootfs":{{"type":"layers","diff_ids":["{layer_digest}"]}}}}"#
    );
    let (config_digest, config_size) = put(config.as_bytes())?;
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":{config_size}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{layer_digest}","size":{layer_size}}}]}}"#
    );
    let (manifest_digest, manifest_size) = put(manifest.as_bytes())?;
    let index = format!(
        r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{manifest_digest}","size":{manifest_size},"annotations":{{"org.opencontainers.image.ref.name":"bench"}}}}]}}"#
    );
    fs::write(layout.join("index.json"), index)?;
    fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    Ok(blobs.join(layer_digest.hex()))
}

/// Reads through a SHA-256 hasher and checks the digest at the end, as an image unpack does.
struct Verified<R> {
    inner: R,
    hasher: Option<berth_api::Hasher>,
}

impl<R: Read> Read for Verified<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(h) = &mut self.hasher {
            h.update(&buf[..n]);
        }
        Ok(n)
    }
}

fn drop_caches() -> Result<()> {
    Command::new("sync").status()?;
    fs::write("/proc/sys/vm/drop_caches", "3").context("drop caches (needs root)")
}

fn run(cmd: &mut Command) -> Result<Duration> {
    let start = Instant::now();
    let out = cmd.output()?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(start.elapsed())
}

fn main() -> Result<()> {
    if !nix_is_root() || berth_testutil::find_command("umoci").is_none() {
        eprintln!("unionfs_apply: skipped (needs root and umoci on PATH)");
        return Ok(());
    }
    let small = env_or("UNIONFS_BENCH_SMALL", 8000);
    let large_mib = env_or("UNIONFS_BENCH_LARGE_MIB", 24);
    let rounds = env_or("UNIONFS_BENCH_ROUNDS", 3);
    let work = tempfile::Builder::new()
        .prefix("unionfs-apply-bench")
        .tempdir_in("/var/tmp")?;
    let tree = work.path().join("tree");
    make_tree(&tree, small, large_mib)?;
    let mut layer_tar = Vec::new();
    layer::diff(
        DiffSource::Trees {
            lower: None,
            upper: &tree,
        },
        &mut layer_tar,
        &DiffOptions::new(),
    )?;
    fs::remove_dir_all(&tree)?;
    let layout = work.path().join("layout");
    let blob = make_layout(&layout, &layer_tar)?;
    let expected = Digest::sha256(&layer_tar);
    let mb = layer_tar.len() as f64 / 1e6;
    println!(
        "layer: {small} small files + 3 x {large_mib} MiB, {:.1} MB uncompressed tar; {rounds} rounds",
        mb
    );
    drop(layer_tar);

    let mut times: [Vec<f64>; 3] = Default::default();
    let names = ["umoci unpack", "umoci raw unpack", "berth layer::apply"];
    let image = format!("{}:bench", layout.display());
    for _ in 0..rounds {
        for (i, _) in names.iter().enumerate() {
            let dest = work.path().join("out");
            let _ = fs::remove_dir_all(&dest);
            drop_caches()?;
            let elapsed = match i {
                0 => run(Command::new("umoci")
                    .args(["unpack", "--image", &image])
                    .arg(&dest))?,
                1 => run(Command::new("umoci")
                    .args(["raw", "unpack", "--image", &image])
                    .arg(&dest))?,
                _ => {
                    let start = Instant::now();
                    fs::create_dir(&dest)?;
                    let mut reader = Verified {
                        inner: std::io::BufReader::with_capacity(1 << 20, fs::File::open(&blob)?),
                        hasher: Some(Algorithm::Sha256.hasher()),
                    };
                    layer::apply(&mut reader, &dest, &ApplyOptions::default())?;
                    std::io::copy(&mut reader, &mut std::io::sink())?;
                    let digest = reader.hasher.take().expect("hasher").finish();
                    if digest != expected {
                        bail!("digest mismatch");
                    }
                    start.elapsed()
                }
            };
            times[i].push(elapsed.as_secs_f64());
        }
    }
    let _ = fs::remove_dir_all(work.path().join("out"));
    let median = |v: &Vec<f64>| {
        let mut v = v.clone();
        v.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
        v[v.len() / 2]
    };
    let berth = median(&times[2]);
    for (name, t) in names.iter().zip(&times) {
        let m = median(t);
        println!(
            "{name:<20} median {m:>7.3} s  {:>7.1} MB/s  (runs: {})  berth is {:.2}x faster",
            mb / m,
            t.iter()
                .map(|x| format!("{x:.3}"))
                .collect::<Vec<_>>()
                .join(" "),
            m / berth
        );
    }
    Ok(())
}

fn nix_is_root() -> bool {
    // The effective uid from /proc/self/status (benches does not depend on nix).
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}
