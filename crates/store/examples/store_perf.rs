//! Drives a state-store backend through the `Store` trait: durable puts per second with N
//! concurrent clients, or watch delivery latency to many watchers of one prefix.
//!
//! ```text
//! cargo run --release -p berth-store --example store_perf -- \
//!     --backend embedded|etcd://127.0.0.1:2379[,...]|fdatasync [--dir DIR] \
//!     --clients N --ops M --value-bytes 256 [--watchers W]
//! ```
//!
//! `fdatasync` is the physical limit, not a store: one client writing `value-bytes` at a time
//! into a preallocated (zero-filled) file, each write followed by `fdatasync`.
//! The last line printed is the durable puts per second (with `--watchers`: the p99 delivery
//! latency in microseconds).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use berth_api::store::Store;
use berth_store::{EmbeddedStore, EtcdOptions, EtcdStore};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "Durable puts per second (or watch latency) of a Berth store backend")]
struct Args {
    /// `embedded`, `etcd://HOST:PORT[,HOST:PORT...]`, or `fdatasync` (the bare sync loop).
    #[arg(long, default_value = "embedded")]
    backend: String,
    /// The embedded store's (or the fdatasync loop's) directory; a temporary one by default.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Concurrent clients, each putting one key at a time.
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// Puts in total.
    #[arg(long, default_value_t = 2000)]
    ops: u64,
    /// Bytes per value.
    #[arg(long, default_value_t = 256)]
    value_bytes: usize,
    /// Watchers of the written prefix: measure the delivery latency of every put to each.
    #[arg(long, default_value_t = 0)]
    watchers: usize,
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

/// The physical limit: `ops` writes of `value_bytes`, each followed by fdatasync, into a file
/// preallocated with zeros.
fn fdatasync_loop(dir: &std::path::Path, ops: u64, value_bytes: usize) -> anyhow::Result<f64> {
    let path = dir.join("fdatasync.bench");
    let file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)?;
    let size = ops as usize * value_bytes;
    let zeros = vec![0u8; 1 << 20];
    let mut off = 0;
    while off < size {
        let n = zeros.len().min(size - off);
        file.write_all_at(&zeros[..n], off as u64)?;
        off += n;
    }
    file.sync_all()?;
    let value = vec![0x5a; value_bytes];
    let start = Instant::now();
    for i in 0..ops {
        file.write_all_at(&value, i * value_bytes as u64)?;
        file.sync_data()?;
    }
    let rate = ops as f64 / start.elapsed().as_secs_f64();
    std::fs::remove_file(&path)?;
    Ok(rate)
}

async fn open(args: &Args, dir: &std::path::Path) -> anyhow::Result<Arc<dyn Store>> {
    if args.backend == "embedded" {
        let dir = dir.to_owned();
        let store = tokio::task::spawn_blocking(move || EmbeddedStore::open(dir)).await??;
        return Ok(Arc::new(store));
    }
    if let Some(endpoints) = args.backend.strip_prefix("etcd://") {
        let endpoints: Vec<String> = endpoints
            .split(',')
            .map(|e| format!("http://{e}"))
            .collect();
        let mut options = EtcdOptions::new(endpoints);
        options.prefix = format!("/store_perf/{}", std::process::id());
        return Ok(Arc::new(EtcdStore::connect(options).await?));
    }
    bail!("unknown backend {:?}", args.backend)
}

async fn puts(store: Arc<dyn Store>, args: &Args) -> anyhow::Result<f64> {
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let base = Instant::now();
    let tasks: Vec<_> = (0..args.clients)
        .map(|c| {
            let store = store.clone();
            let next = next.clone();
            let (ops, value_bytes) = (args.ops, args.value_bytes);
            tokio::spawn(async move {
                let mut value = vec![0x5a; value_bytes.max(8)];
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= ops {
                        return anyhow::Ok(());
                    }
                    // The send time, for watchers' latency.
                    let t = base.elapsed().as_nanos() as u64;
                    value[..8].copy_from_slice(&t.to_le_bytes());
                    store
                        .put(&format!("/bench/{c}/{}", i % 1000), value.clone(), None)
                        .await?;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    Ok(args.ops as f64 / start.elapsed().as_secs_f64())
}

async fn watch_latency(store: Arc<dyn Store>, args: &Args) -> anyhow::Result<Vec<u64>> {
    let revision = store.revision().await?;
    let base = Instant::now();
    let mut watchers = Vec::new();
    for _ in 0..args.watchers {
        let mut watch = store.watch("/bench/", revision).await?;
        let ops = args.ops;
        watchers.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(ops as usize);
            while (latencies.len() as u64) < ops {
                let event = tokio::time::timeout(Duration::from_secs(30), watch.next())
                    .await
                    .context("no event for 30 s")?
                    .context("watch ended")??;
                let now = base.elapsed().as_nanos() as u64;
                let sent = u64::from_le_bytes(event.kv.value[..8].try_into()?);
                latencies.push(now.saturating_sub(sent) / 1000);
            }
            anyhow::Ok(latencies)
        }));
    }
    // Writers share `base` through the value: re-base their clock on ours.
    let next = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..args.clients)
        .map(|c| {
            let store = store.clone();
            let next = next.clone();
            let (ops, value_bytes) = (args.ops, args.value_bytes);
            tokio::spawn(async move {
                let mut value = vec![0x5a; value_bytes.max(8)];
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= ops {
                        return anyhow::Ok(());
                    }
                    let t = base.elapsed().as_nanos() as u64;
                    value[..8].copy_from_slice(&t.to_le_bytes());
                    store
                        .put(&format!("/bench/{c}/{}", i % 1000), value.clone(), None)
                        .await?;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    let mut all = Vec::new();
    for w in watchers {
        all.extend(w.await??);
    }
    all.sort_unstable();
    Ok(all)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let temp = tempfile::Builder::new()
        .prefix("berth-store-perf")
        .tempdir_in(std::env::var_os("TMPDIR").unwrap_or_else(|| "/var/tmp".into()))?;
    let dir = args.dir.clone().unwrap_or_else(|| temp.path().to_owned());
    std::fs::create_dir_all(&dir)?;
    if args.backend == "fdatasync" {
        let rate = fdatasync_loop(&dir, args.ops, args.value_bytes)?;
        println!(
            "backend=fdatasync clients=1 ops={} value_bytes={}",
            args.ops, args.value_bytes
        );
        println!("{rate:.0}");
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let store = open(&args, &dir).await?;
        if args.watchers > 0 {
            let lat = watch_latency(store, &args).await?;
            println!(
                "backend={} watchers={} clients={} ops={} events={} latency_us p50={} p90={} p99={} max={}",
                args.backend,
                args.watchers,
                args.clients,
                args.ops,
                lat.len(),
                percentile(&lat, 0.5),
                percentile(&lat, 0.9),
                percentile(&lat, 0.99),
                lat.last().copied().unwrap_or(0)
            );
            println!("{}", percentile(&lat, 0.99));
        } else {
            let rate = puts(store, &args).await?;
            println!(
                "backend={} clients={} ops={} value_bytes={} durable_puts_per_sec={rate:.0}",
                args.backend, args.clients, args.ops, args.value_bytes
            );
            println!("{rate:.0}");
        }
        anyhow::Ok(())
    })
}
