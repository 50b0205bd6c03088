//! Drives a state-store backend through the `Store` trait: durable puts per second with N
//! concurrent clients, or watch delivery latency to many watchers of one prefix.
//!
//! ```text
//! cargo run --release -p berth-store --example store_perf -- \
//!     --backend embedded|etcd://127.0.0.1:2379[,...]|fdatasync [--dir DIR] \
//!     --clients N --ops M --value-bytes 256 [--watchers W] [--interleave-fdatasync CHUNK]
//! ```
//!
//! `fdatasync` is the physical limit, not a store: one client writing `value-bytes` at a time
//! into a preallocated (zero-filled) file, each write followed by `fdatasync`.
//! The last line printed is the durable puts per second (with `--watchers`: the p99 delivery
//! latency in microseconds; with `--interleave-fdatasync`: the store / fdatasync-loop ratio).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use berth_api::store::Store;
use berth_store::{EmbeddedStore, EtcdOptions, EtcdStore, Options};
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
    /// With one client: alternate chunks of this many puts with as many bare fdatasync writes
    /// (same moment, same disk weather) and print both rates and their ratio.
    #[arg(long, default_value_t = 0)]
    interleave_fdatasync: u64,
    /// Embedded store: sync as soon as any write waits (no group-commit wait).
    #[arg(long)]
    no_group_wait: bool,
    /// Embedded store: every group goes through the log thread (no writer leads its own sync;
    /// the behaviour before leader-based group commit).
    #[arg(long)]
    no_leader: bool,
}

/// A preallocated (zero-filled, synced) file for the bare loop.
struct SyncFile {
    file: File,
    path: PathBuf,
    value: Vec<u8>,
    next: u64,
}

impl SyncFile {
    fn create(dir: &std::path::Path, ops: u64, value_bytes: usize) -> anyhow::Result<Self> {
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
        Ok(SyncFile {
            file,
            path,
            value: vec![0x5a; value_bytes],
            next: 0,
        })
    }

    /// One 256-byte (value-bytes) write and its fdatasync.
    fn write(&mut self) -> anyhow::Result<()> {
        let off = self.next * self.value.len() as u64;
        self.file.write_all_at(&self.value, off)?;
        self.file.sync_data()?;
        self.next += 1;
        Ok(())
    }
}

impl Drop for SyncFile {
    fn drop(&mut self) {
        std::fs::remove_file(&self.path).ok();
    }
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
    let mut file = SyncFile::create(dir, ops, value_bytes)?;
    let start = Instant::now();
    for _ in 0..ops {
        file.write()?;
    }
    Ok(ops as f64 / start.elapsed().as_secs_f64())
}

/// One client, alternating `chunk` store puts with `chunk` bare fdatasync writes: (store rate,
/// fdatasync rate).
async fn interleaved(
    store: Arc<dyn Store>,
    dir: &std::path::Path,
    args: &Args,
) -> anyhow::Result<(f64, f64)> {
    let mut file = SyncFile::create(dir, args.ops, args.value_bytes)?;
    let value = vec![0x5a; args.value_bytes];
    let (mut store_time, mut sync_time) = (Duration::ZERO, Duration::ZERO);
    let mut done = 0;
    while done < args.ops {
        let n = args.interleave_fdatasync.min(args.ops - done);
        let start = Instant::now();
        for i in 0..n {
            store
                .put(
                    &format!("/bench/0/{}", (done + i) % 1000),
                    value.clone(),
                    None,
                )
                .await?;
        }
        store_time += start.elapsed();
        let start = Instant::now();
        for _ in 0..n {
            file.write()?;
        }
        sync_time += start.elapsed();
        done += n;
    }
    let ops = args.ops as f64;
    Ok((
        ops / store_time.as_secs_f64(),
        ops / sync_time.as_secs_f64(),
    ))
}

async fn open(args: &Args, dir: &std::path::Path) -> anyhow::Result<Arc<dyn Store>> {
    if args.backend == "embedded" {
        let dir = dir.to_owned();
        let options = Options {
            group_wait: !args.no_group_wait,
            leader: !args.no_leader,
            ..Options::default()
        };
        let (store, _) =
            tokio::task::spawn_blocking(move || EmbeddedStore::open_with(dir, options)).await??;
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

/// Delivery latency to every watcher: from the put's acknowledgement to the event's arrival
/// (0 when the event arrived first, as it does on the embedded store, which publishes before it
/// acknowledges).
/// Also returns the latency from the put's start (which includes the write's own sync).
async fn watch_latency(store: Arc<dyn Store>, args: &Args) -> anyhow::Result<(Vec<u64>, Vec<u64>)> {
    let revision = store.revision().await?;
    let base = Instant::now();
    let acked: Arc<Vec<AtomicU64>> = Arc::new((0..args.ops).map(|_| AtomicU64::new(0)).collect());
    let started: Arc<Vec<AtomicU64>> = Arc::new((0..args.ops).map(|_| AtomicU64::new(0)).collect());
    let mut watchers = Vec::new();
    for _ in 0..args.watchers {
        let mut watch = store.watch("/bench/", revision).await?;
        let ops = args.ops;
        watchers.push(tokio::spawn(async move {
            let mut arrivals = Vec::with_capacity(ops as usize);
            while (arrivals.len() as u64) < ops {
                let event = tokio::time::timeout(Duration::from_secs(30), watch.next())
                    .await
                    .context("no event for 30 s")?
                    .context("watch ended")??;
                let now = base.elapsed().as_nanos() as u64;
                let op = u64::from_le_bytes(event.kv.value[..8].try_into()?);
                arrivals.push((op, now));
            }
            anyhow::Ok(arrivals)
        }));
    }
    let next = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..args.clients)
        .map(|c| {
            let store = store.clone();
            let next = next.clone();
            let acked = acked.clone();
            let started = started.clone();
            let (ops, value_bytes) = (args.ops, args.value_bytes);
            tokio::spawn(async move {
                let mut value = vec![0x5a; value_bytes.max(8)];
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= ops {
                        return anyhow::Ok(());
                    }
                    value[..8].copy_from_slice(&i.to_le_bytes());
                    started[i as usize].store(base.elapsed().as_nanos() as u64, Ordering::Relaxed);
                    store
                        .put(&format!("/bench/{c}/{}", i % 1000), value.clone(), None)
                        .await?;
                    acked[i as usize].store(base.elapsed().as_nanos() as u64, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    let (mut from_ack, mut from_start) = (Vec::new(), Vec::new());
    for w in watchers {
        for (op, arrived) in w.await?? {
            let ack = acked[op as usize].load(Ordering::Relaxed);
            from_ack.push(arrived.saturating_sub(ack) / 1000);
            let start = started[op as usize].load(Ordering::Relaxed);
            from_start.push(arrived.saturating_sub(start) / 1000);
        }
    }
    from_ack.sort_unstable();
    from_start.sort_unstable();
    Ok((from_ack, from_start))
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
        if args.interleave_fdatasync > 0 {
            let (rate, sync) = interleaved(store, &dir, &args).await?;
            println!(
                "backend={} clients=1 ops={} value_bytes={} interleaved in chunks of {}: \
                 store {rate:.0}/s, bare fdatasync loop {sync:.0}/s, ratio {:.2}",
                args.backend,
                args.ops,
                args.value_bytes,
                args.interleave_fdatasync,
                rate / sync
            );
            println!("{:.2}", rate / sync);
        } else if args.watchers > 0 {
            let (lat, from_start) = watch_latency(store, &args).await?;
            println!(
                "backend={} watchers={} clients={} ops={} events={} latency_us after ack: \
                 p50={} p90={} p99={} max={}; after put start (incl. its sync): p50={} p99={}",
                args.backend,
                args.watchers,
                args.clients,
                args.ops,
                lat.len(),
                percentile(&lat, 0.5),
                percentile(&lat, 0.9),
                percentile(&lat, 0.99),
                lat.last().copied().unwrap_or(0),
                percentile(&from_start, 0.5),
                percentile(&from_start, 0.99),
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
