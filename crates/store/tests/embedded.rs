//! The embedded store: the conformance suite, durability across SIGKILL (a child process writing
//! with acknowledgements on a pipe), torn tails and corruption, and a model-based proptest across
//! restarts.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use berth_api::store::{Compare, Error, Range, Store, Txn, conformance};
use berth_store::{EmbeddedStore, Options};

fn small() -> Options {
    // Leaders on (the default) explicitly: `conformance_without_leaders` covers the other path.
    Options {
        segment_size: 64 << 10,
        leader: true,
        ..Options::default()
    }
}

fn open(dir: &Path) -> EmbeddedStore {
    EmbeddedStore::open_with(dir, small()).unwrap().0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance() {
    let root = tempfile::tempdir().unwrap();
    let mut n = 0;
    conformance::run_all(|| {
        n += 1;
        let dir = root.path().join(n.to_string());
        async move { Arc::new(EmbeddedStore::open(dir).unwrap()) as Arc<dyn Store> }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_on_small_segments() {
    // Many segment rolls under the same suite.
    let root = tempfile::tempdir().unwrap();
    let mut n = 0;
    conformance::run_all(|| {
        n += 1;
        let dir = root.path().join(n.to_string());
        async move { Arc::new(open(&dir)) as Arc<dyn Store> }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_without_leaders() {
    // Every group through the log thread (`leader: false`).
    let root = tempfile::tempdir().unwrap();
    let mut n = 0;
    conformance::run_all(|| {
        n += 1;
        let dir = root.path().join(n.to_string());
        let options = Options {
            leader: false,
            ..small()
        };
        async move { Arc::new(EmbeddedStore::open_with(dir, options).unwrap().0) as Arc<dyn Store> }
    })
    .await;
}

#[tokio::test]
async fn leaders_on_a_current_thread_runtime() {
    // A leader on a current-thread runtime syncs in place (no worker to hand off).
    let root = tempfile::tempdir().unwrap();
    let mut n = 0;
    conformance::run_all(|| {
        n += 1;
        let dir = root.path().join(n.to_string());
        async move { Arc::new(open(&dir)) as Arc<dyn Store> }
    })
    .await;
}

#[tokio::test]
async fn survives_restart_with_history_leases_and_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let (r1, r3, lease) = {
        let store = open(dir.path());
        let r1 = store.put("/a", b"1".to_vec(), None).await.unwrap();
        store.put("/a", b"2".to_vec(), None).await.unwrap();
        let r3 = store.put("/b", vec![9; 10_000], None).await.unwrap();
        let lease = store
            .lease_grant(std::time::Duration::from_secs(30))
            .await
            .unwrap();
        store
            .txn(Txn::put("/leased", b"x".to_vec(), Compare::Absent).with_lease(lease.id))
            .await
            .unwrap();
        (r1, r3, lease)
    };
    let store = open(dir.path());
    assert_eq!(store.revision().await.unwrap(), r3 + 1);
    assert_eq!(store.get("/a").await.unwrap().unwrap().version, 2);
    assert_eq!(
        store.get("/b").await.unwrap().unwrap().value,
        vec![9; 10_000]
    );
    let old = store
        .range(Range {
            revision: r1,
            ..Range::prefix("/a")
        })
        .await
        .unwrap();
    assert_eq!(old.kvs[0].value, b"1");
    // The lease came back; revoking it takes its key.
    assert_eq!(
        store.get("/leased").await.unwrap().unwrap().lease,
        Some(lease.id)
    );
    store.compact(r3).await.unwrap();
    store.lease_revoke(lease.id).await.unwrap();
    drop(store);
    let store = open(dir.path());
    assert!(store.get("/leased").await.unwrap().is_none());
    assert!(matches!(
        store.watch("/", r1).await,
        Err(Error::Compacted { .. })
    ));
    assert!(matches!(
        store.lease_keep_alive(lease.id).await,
        Err(Error::LeaseNotFound { .. })
    ));
    // New leases never reuse an id.
    let next = store
        .lease_grant(std::time::Duration::from_secs(5))
        .await
        .unwrap();
    assert!(next.id > lease.id);
}

#[tokio::test]
async fn second_opener_is_refused_and_bad_options_too() {
    let dir = tempfile::tempdir().unwrap();
    let _store = open(dir.path());
    assert!(matches!(
        EmbeddedStore::open_with(dir.path(), small()),
        Err(berth_store::Error::Locked(_))
    ));
    let other = tempfile::tempdir().unwrap();
    assert!(matches!(
        EmbeddedStore::open_with(
            other.path(),
            Options {
                segment_size: 10,
                ..Options::default()
            }
        ),
        Err(berth_store::Error::InvalidOption(_))
    ));
    assert_eq!(
        std::fs::read_dir(other.path()).unwrap().count(),
        0,
        "no partial state"
    );
}

#[tokio::test]
async fn too_large_values_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    assert!(matches!(
        store.put("/big", vec![0; 64 << 10], None).await,
        Err(Error::TooLarge { .. })
    ));
    assert_eq!(store.revision().await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_is_reclaimed_after_compaction_and_checkpoints_recover() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let lease = store
        .lease_grant(std::time::Duration::from_secs(60))
        .await
        .unwrap();
    store
        .txn(Txn::put("/leased", b"l".to_vec(), Compare::Absent).with_lease(lease.id))
        .await
        .unwrap();
    // ~600 KiB of writes over 20 keys: about ten 64 KiB segments, most of it superseded.
    for i in 0..600u32 {
        let key = format!("/d/{:02}", i % 20);
        let value = format!("{i:06}").repeat(170).into_bytes();
        store.put(&key, value, None).await.unwrap();
    }
    store.delete("/d/19", None).await.unwrap();
    let before = store.disk_usage().unwrap();
    let keep_from = store.revision().await.unwrap() - 30;
    let history = store
        .range(Range {
            revision: keep_from,
            ..Range::prefix("/d/")
        })
        .await
        .unwrap();
    let current = store.list("/").await.unwrap();
    // Compaction starts a checkpoint on its own (the log is well over two segments).
    store.compact(keep_from).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let after = loop {
        let usage = store.disk_usage().unwrap();
        if usage < before / 3 {
            break usage;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "disk usage {usage} not reclaimed from {before} within 20 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    eprintln!("disk usage: {before} bytes before compaction, {after} after the checkpoint");
    // Everything reads the same from the checkpoint, before and after a restart; history from
    // the compaction point on too.
    let check = |store: EmbeddedStore| {
        let (history, current) = (history.clone(), current.clone());
        async move {
            assert!(
                store.list("/").await.unwrap().0 == current.0,
                "current values differ"
            );
            let at = store
                .range(Range {
                    revision: keep_from,
                    ..Range::prefix("/d/")
                })
                .await
                .unwrap();
            assert!(
                at.kvs == history.kvs,
                "values at the compaction point differ"
            );
            assert!(matches!(
                store.watch("/d/", keep_from - 1).await,
                Err(Error::Compacted { .. })
            ));
            let mut watch = store.watch("/d/", keep_from).await.unwrap();
            let events = watch.try_drain();
            assert_eq!(
                events.len(),
                30,
                "history after the compaction point is watchable"
            );
            assert_eq!(events[0].revision(), keep_from + 1);
            store
        }
    };
    let store = check(store).await;
    store.put("/after", b"a".to_vec(), None).await.unwrap();
    let revision = store.revision().await.unwrap();
    drop(store);
    let (store, recovery) = EmbeddedStore::open_with(dir.path(), small()).unwrap();
    assert!(recovery.checkpoint.is_some(), "{recovery:?}");
    assert_eq!(recovery.revision, revision);
    assert_eq!(
        store.get("/after").await.unwrap().unwrap().mod_revision,
        revision
    );
    store.delete("/after", None).await.unwrap();
    let store = check(store).await;
    // The lease came back with its key; a new lease gets a new id.
    assert_eq!(
        store.get("/leased").await.unwrap().unwrap().lease,
        Some(lease.id)
    );
    store.lease_revoke(lease.id).await.unwrap();
    assert!(store.get("/leased").await.unwrap().is_none());
    let next = store
        .lease_grant(std::time::Duration::from_secs(5))
        .await
        .unwrap();
    assert!(next.id > lease.id);
    // A second checkpoint replaces the first.
    assert!(store.checkpoint().unwrap());
    let revision = store.revision().await.unwrap();
    drop(store);
    let (store, recovery) = EmbeddedStore::open_with(dir.path(), small()).unwrap();
    assert_eq!(recovery.checkpoint, Some(revision));
    let ckpts = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name();
            name.to_str().unwrap().contains(".ckpt")
        })
        .count();
    assert_eq!(ckpts, 1, "older checkpoints are deleted");
    assert!(store.get("/leased").await.unwrap().is_none());
    assert_eq!(store.list("/d/").await.unwrap().0.len(), 19);
}

#[tokio::test]
async fn a_damaged_checkpoint_is_refused_and_leftovers_are_cleaned() {
    let dir = tempfile::tempdir().unwrap();
    write_numbered(dir.path(), 40).await;
    {
        let store = open(dir.path());
        assert!(store.checkpoint().unwrap());
        store.put("/k/after", b"x".to_vec(), None).await.unwrap();
    }
    let ckpt = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "ckpt"))
        .unwrap();
    // An unfinished checkpoint (a crash while writing it) is ignored and removed.
    let tmp = dir.path().join("00000000000000000009.ckpt.tmp");
    std::fs::write(&tmp, b"half a checkpoint").unwrap();
    {
        let (store, recovery) = EmbeddedStore::open_with(dir.path(), small()).unwrap();
        assert!(recovery.checkpoint.is_some());
        assert_eq!(store.list("/k/").await.unwrap().0.len(), 41);
    }
    assert!(!tmp.exists());
    let mut data = std::fs::read(&ckpt).unwrap();
    let middle = data.len() / 2;
    data[middle] ^= 0x01;
    std::fs::write(&ckpt, &data).unwrap();
    assert!(matches!(
        EmbeddedStore::open_with(dir.path(), small()),
        Err(berth_store::Error::Corrupt { .. })
    ));
}

/// The single segment's bytes up to the last non-zero one.
fn log_file(dir: &Path) -> PathBuf {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    files.sort();
    files.pop().unwrap()
}

fn data_end(path: &Path) -> usize {
    let data = std::fs::read(path).unwrap();
    data.iter().rposition(|b| *b != 0).unwrap() + 1
}

async fn write_numbered(dir: &Path, n: usize) {
    let store = open(dir);
    for i in 0..n {
        store
            .put(
                &format!("/k/{i:03}"),
                format!("value-{i}").into_bytes(),
                None,
            )
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_corrupt_byte_in_the_middle_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    write_numbered(dir.path(), 40).await;
    let path = log_file(dir.path());
    let mut data = std::fs::read(&path).unwrap();
    let middle = data_end(&path) / 2;
    data[middle] ^= 0x40;
    std::fs::write(&path, &data).unwrap();
    match EmbeddedStore::open_with(dir.path(), small()) {
        Err(berth_store::Error::Corrupt { offset, .. }) => {
            assert!(offset as usize <= middle)
        }
        other => panic!("opened a corrupt log: {other:?}"),
    }
    // Refusing changed nothing: the same error again.
    assert!(matches!(
        EmbeddedStore::open_with(dir.path(), small()),
        Err(berth_store::Error::Corrupt { .. })
    ));
}

#[tokio::test]
async fn a_torn_tail_is_truncated() {
    for tear in ["zero-end", "cut-file", "garbage-after"] {
        let dir = tempfile::tempdir().unwrap();
        write_numbered(dir.path(), 20).await;
        let path = log_file(dir.path());
        let end = data_end(&path);
        match tear {
            // The last frame's final bytes never reached the disk.
            "zero-end" => {
                let mut data = std::fs::read(&path).unwrap();
                data[end - 5..end].fill(0);
                std::fs::write(&path, &data).unwrap();
            }
            // The file ends inside the last frame.
            "cut-file" => {
                let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
                f.set_len((end - 3) as u64).unwrap();
            }
            // A header and half a payload of a frame that was never acknowledged.
            _ => {
                let mut data = std::fs::read(&path).unwrap();
                let junk = [0x57, 0x48, 0x54, 0x42, 200, 0, 0, 0, 1, 2, 3, 4, 5, 6];
                data[end..end + junk.len()].copy_from_slice(&junk);
                std::fs::write(&path, &data).unwrap();
            }
        }
        let (store, recovery) = EmbeddedStore::open_with(dir.path(), small()).unwrap();
        assert!(recovery.torn_bytes > 0, "{tear}");
        let expect = if tear == "garbage-after" { 20 } else { 19 };
        assert_eq!(recovery.revision, expect as u64, "{tear}");
        let (kvs, _) = store.list("/k/").await.unwrap();
        assert_eq!(kvs.len(), expect, "{tear}");
        for (i, kv) in kvs.iter().enumerate() {
            assert_eq!(kv.value, format!("value-{i}").into_bytes());
        }
        // The log goes on from the repaired end.
        let r = store.put("/after", b"x".to_vec(), None).await.unwrap();
        assert_eq!(r, expect as u64 + 1);
        drop(store);
        let (store, recovery) = EmbeddedStore::open_with(dir.path(), small()).unwrap();
        assert_eq!(recovery.torn_bytes, 0);
        assert_eq!(store.get("/after").await.unwrap().unwrap().mod_revision, r);
    }
}

// ---- crash test: SIGKILL a writer child at random moments ----

const CHILD_ENV: &str = "BERTH_STORE_CRASH_CHILD";
const WRITERS: usize = 4;

/// The child side of `acknowledged_writes_survive_sigkill`: does nothing in a normal run.
#[test]
fn crash_child() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let round: u64 = std::env::var("BERTH_STORE_CRASH_ROUND")
        .unwrap()
        .parse()
        .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let store = Arc::new(open(Path::new(&dir)));
        let out = Arc::new(std::sync::Mutex::new(std::io::stdout()));
        let revision = store.revision().await.unwrap();
        {
            let mut out = out.lock().unwrap();
            writeln!(out, "READY {revision}").unwrap();
            out.flush().unwrap();
        }
        // Compaction and checkpoints all the time, so kills land in the middle of them too.
        {
            let store = store.clone();
            tokio::spawn(async move {
                loop {
                    let revision = store.revision().await.unwrap();
                    store.compact(revision.saturating_sub(40)).await.unwrap();
                    let s = store.clone();
                    tokio::task::spawn_blocking(move || s.checkpoint().unwrap())
                        .await
                        .unwrap();
                    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                }
            });
        }
        let tasks: Vec<_> = (0..WRITERS)
            .map(|w| {
                let store = store.clone();
                let out = out.clone();
                tokio::spawn(async move {
                    for i in 0u64.. {
                        let key = format!("/crash/{w}/{}", i % 8);
                        let line = if i % 7 == 6 {
                            match store.delete(&key, None).await {
                                Ok(r) => format!("ACK DEL {key} {r}"),
                                Err(Error::NotFound { .. }) => continue,
                                Err(e) => panic!("{e}"),
                            }
                        } else {
                            // Values of varying size, some spanning several pages.
                            let pad = "x".repeat(((i * 37) % 5000) as usize);
                            let value = format!("{round}:{i}:{pad}");
                            let r = store.put(&key, value.into_bytes(), None).await.unwrap();
                            format!("ACK PUT {key} {r} {round}:{i}")
                        };
                        let mut out = out.lock().unwrap();
                        writeln!(out, "{line}").unwrap();
                        out.flush().unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
}

#[derive(Debug, Clone)]
enum Acked {
    Put { revision: u64, at: (u64, u64) },
    Del { revision: u64 },
}

fn order(value: &[u8]) -> (u64, u64) {
    let s = std::str::from_utf8(value).expect("a value is never half-written");
    let mut parts = s.splitn(3, ':');
    let round = parts.next().unwrap().parse().unwrap();
    let i = parts.next().unwrap().parse().unwrap();
    let pad = parts.next().unwrap();
    assert_eq!(pad.len() as u64, (i * 37) % 5000, "value intact");
    assert!(pad.bytes().all(|b| b == b'x'));
    (round, i)
}

/// The revision of the last change to `key` after `revision` if it is a delete (the history is
/// read from the compaction point when `revision` is older).
async fn last_delete_after(store: &EmbeddedStore, key: &str, revision: u64) -> Option<u64> {
    let mut watch = match store.watch(key, revision).await {
        Err(Error::Compacted { compacted, .. }) => store.watch(key, compacted).await.unwrap(),
        other => other.unwrap(),
    };
    let last = watch.try_drain().into_iter().rfind(|e| e.kv.key == key)?;
    (last.kind == berth_api::store::EventKind::Delete).then_some(last.revision())
}

#[test]
fn acknowledged_writes_survive_sigkill() {
    use rand::Rng;
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut rng = rand::rng();
    let mut acked: BTreeMap<String, Acked> = BTreeMap::new();
    let mut max_acked = 0u64;
    let mut total = 0usize;
    let (mut killed_in_checkpoint, mut from_checkpoint) = (0, 0);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for round in 0..120u64 {
        let mut child = Command::new(&exe)
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, dir.path())
            .env("BERTH_STORE_CRASH_ROUND", round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let kill_after = rng.random_range(0..40);
        let mut seen = 0;
        let mut ready = None;
        for line in lines.by_ref() {
            let line = line.unwrap();
            // libtest prints "test crash_child ... " before the child's first line.
            let line = match line.find("READY ") {
                Some(at) => &line[at..],
                None => &line[..],
            };
            let parts: Vec<&str> = line.split(' ').collect();
            match parts[0] {
                "READY" => {
                    let r: u64 = parts[1].parse().unwrap();
                    assert!(r >= max_acked, "round {round}: revision went back to {r}");
                    ready = Some(r);
                    if kill_after == 0 {
                        break;
                    }
                }
                "ACK" => {
                    let key = parts[2].to_owned();
                    let revision: u64 = parts[3].parse().unwrap();
                    assert!(revision > ready.unwrap(), "revisions keep increasing");
                    max_acked = max_acked.max(revision);
                    let entry = if parts[1] == "PUT" {
                        let (r, i) = parts[4].split_once(':').unwrap();
                        Acked::Put {
                            revision,
                            at: (r.parse().unwrap(), i.parse().unwrap()),
                        }
                    } else {
                        Acked::Del { revision }
                    };
                    acked.insert(key, entry);
                    seen += 1;
                    total += 1;
                    if seen >= kill_after {
                        break;
                    }
                }
                _ => {}
            }
        }
        assert!(ready.is_some(), "round {round}: the child never started");
        child.kill().unwrap();
        child.wait().unwrap();
        drop(lines);

        // Every acknowledged write is there (or a later, unacknowledged one of the same writer).
        if std::fs::read_dir(dir.path()).unwrap().any(|e| {
            e.unwrap()
                .file_name()
                .to_str()
                .unwrap()
                .ends_with(".ckpt.tmp")
        }) {
            killed_in_checkpoint += 1;
        }
        let (store, recovery) = EmbeddedStore::open_with(dir.path(), small()).unwrap();
        from_checkpoint += usize::from(recovery.checkpoint.is_some());
        rt.block_on(async {
            assert!(store.revision().await.unwrap() >= max_acked);
            let (kvs, _) = store.list("/crash/").await.unwrap();
            let present: BTreeMap<_, _> = kvs.into_iter().map(|kv| (kv.key.clone(), kv)).collect();
            for kv in present.values() {
                order(&kv.value);
            }
            for (key, ack) in &acked {
                match (ack, present.get(key)) {
                    (Acked::Put { revision, at }, Some(kv)) => {
                        assert!(
                            kv.mod_revision >= *revision,
                            "{key}: lost its acknowledged put"
                        );
                        let found = order(&kv.value);
                        if kv.mod_revision == *revision {
                            assert_eq!(found, *at, "{key}");
                        } else {
                            assert!(found > *at, "{key}: older value came back");
                        }
                    }
                    (Acked::Put { revision, .. }, None) => {
                        // Only an unacknowledged delete of the same writer (its last operation,
                        // so among the newest revisions, which the child's compactions keep)
                        // may have removed it: the history must show that delete.
                        let deleted = last_delete_after(&store, key, *revision).await;
                        assert!(
                            deleted.is_some(),
                            "{key}: acknowledged put at {revision} lost"
                        );
                    }
                    (Acked::Del { revision }, Some(kv)) => {
                        assert!(kv.mod_revision > *revision, "{key}: deleted key came back");
                    }
                    (Acked::Del { .. }, None) => {}
                }
            }
        });
        drop(store);
        // Later rounds build on what is really stored: forget writes overtaken by unacknowledged
        // ones, re-reading them next round.
        let store = open(dir.path());
        rt.block_on(async {
            for (key, ack) in acked.iter_mut() {
                let kv = store.get(key).await.unwrap();
                *ack = match kv {
                    Some(kv) => Acked::Put {
                        revision: kv.mod_revision,
                        at: order(&kv.value),
                    },
                    None => Acked::Del {
                        revision: store.revision().await.unwrap(),
                    },
                };
            }
            max_acked = max_acked.max(store.revision().await.unwrap());
        });
    }
    eprintln!(
        "{total} acknowledged writes; {from_checkpoint} recoveries from a checkpoint, \
         {killed_in_checkpoint} kills while one was being written"
    );
    assert!(
        total > 500,
        "only {total} acknowledged writes in all rounds"
    );
    assert!(from_checkpoint > 0, "no round recovered from a checkpoint");
}
