//! The conformance suite every [`Store`] backend passes (feature `conformance`).
//!
//! Each case takes a fresh, empty store (or one where the case's keys are free: cases use only
//! keys under `/conformance/`) and panics on a violation. Revisions are compared relative to the
//! store's revision when the case starts, so a backend whose counter does not start at 0 (etcd)
//! passes too. Cases compact, so run them one at a time against a shared server.
//!
//! ```no_run
//! # async fn demo() {
//! use std::sync::Arc;
//! use berth_api::store::{MemoryStore, Store, conformance};
//! conformance::run_all(|| async { Arc::new(MemoryStore::new()) as Arc<dyn Store> }).await;
//! # }
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Compare, Error, EventKind, KeyValue, Range, Store, Txn, Watch, WatchEvent, WatchItem};

const P: &str = "/conformance/";

/// Every case, each on a store from `new_store`, in order; prints each case's name.
pub async fn run_all<F, Fut>(mut new_store: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Arc<dyn Store>>,
{
    macro_rules! case {
        ($name:ident) => {{
            eprintln!("conformance: {}", stringify!($name));
            $name(new_store().await).await;
        }};
    }
    case!(put_get_delete);
    case!(cas_conflicts);
    case!(range_at_old_revisions);
    case!(paging_is_consistent_at_one_revision);
    case!(watch_delivers_prev_values);
    case!(watch_from_revision_while_writers_race);
    case!(watch_progress_notifications);
    case!(compaction);
    case!(leases_expire_and_take_their_keys);
    case!(lease_keep_alive_and_revoke);
    case!(concurrent_writers_never_lose_an_update);
}

fn k(name: &str) -> String {
    format!("{P}{name}")
}

async fn next_event(watch: &mut Watch) -> WatchEvent {
    match tokio::time::timeout(Duration::from_secs(10), watch.next()).await {
        Ok(Some(Ok(event))) => event,
        Ok(other) => panic!("watch ended: {other:?}"),
        Err(_) => panic!("no watch event within 10 s"),
    }
}

/// Put, get, versions, delete; a delete of an absent key is `NotFound`; an empty key is invalid.
pub async fn put_get_delete(store: Arc<dyn Store>) {
    let base = store.revision().await.unwrap();
    assert_eq!(store.get(&k("a")).await.unwrap(), None);
    let r1 = store.put(&k("a"), b"1".to_vec(), None).await.unwrap();
    assert_eq!(r1, base + 1, "each write takes the next revision");
    assert_eq!(store.revision().await.unwrap(), r1);
    let kv = store.get(&k("a")).await.unwrap().unwrap();
    assert_eq!(
        (
            kv.value.as_slice(),
            kv.create_revision,
            kv.mod_revision,
            kv.version,
            kv.lease
        ),
        (&b"1"[..], r1, r1, 1, None)
    );
    let res = store
        .txn(Txn::put(k("a"), b"2".to_vec(), Compare::Always))
        .await
        .unwrap();
    assert_eq!(res.revision, r1 + 1);
    assert_eq!(
        res.prev.as_ref().map(|p| p.value.as_slice()),
        Some(&b"1"[..])
    );
    let kv = store.get(&k("a")).await.unwrap().unwrap();
    assert_eq!(
        (kv.create_revision, kv.mod_revision, kv.version),
        (r1, r1 + 1, 2)
    );

    let res = store
        .txn(Txn::delete(k("a"), Compare::Always))
        .await
        .unwrap();
    assert_eq!(res.revision, r1 + 2);
    assert_eq!(res.prev.unwrap().value, b"2");
    assert_eq!(store.get(&k("a")).await.unwrap(), None);
    assert!(matches!(
        store.delete(&k("a"), None).await,
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        store.put("", b"x".to_vec(), None).await,
        Err(Error::InvalidKey(_))
    ));
    assert_eq!(
        store.revision().await.unwrap(),
        r1 + 2,
        "failures use no revision"
    );

    // Re-created: a new create revision and version 1.
    let r4 = store.put(&k("a"), b"3".to_vec(), Some(0)).await.unwrap();
    let kv = store.get(&k("a")).await.unwrap().unwrap();
    assert_eq!((kv.create_revision, kv.version), (r4, 1));
    // Binary values round-trip.
    let bytes: Vec<u8> = (0..=255).collect();
    store.put(&k("bin"), bytes.clone(), None).await.unwrap();
    assert_eq!(store.get(&k("bin")).await.unwrap().unwrap().value, bytes);
}

/// Compare-and-swap: create of an existing key, update or delete at a stale revision conflict,
/// carry the current value, and change nothing.
pub async fn cas_conflicts(store: Arc<dyn Store>) {
    let r1 = store.put(&k("cas"), b"1".to_vec(), Some(0)).await.unwrap();
    match store.put(&k("cas"), b"x".to_vec(), Some(0)).await {
        Err(Error::Conflict { found, current, .. }) => {
            assert_eq!(found, r1);
            assert_eq!(current.unwrap().value, b"1");
        }
        other => panic!("create of an existing key: {other:?}"),
    }
    let r2 = store.put(&k("cas"), b"2".to_vec(), Some(r1)).await.unwrap();
    assert!(r2 > r1);
    assert!(matches!(
        store.put(&k("cas"), b"3".to_vec(), Some(r1)).await,
        Err(Error::Conflict { expected, found, .. }) if expected == r1 && found == r2
    ));
    assert!(matches!(
        store.delete(&k("cas"), Some(r1)).await,
        Err(Error::Conflict { .. })
    ));
    assert!(matches!(
        store.put(&k("absent"), b"3".to_vec(), Some(r2)).await,
        Err(Error::Conflict {
            found: 0,
            current: None,
            ..
        })
    ));
    assert_eq!(store.revision().await.unwrap(), r2);
    assert_eq!(store.get(&k("cas")).await.unwrap().unwrap().value, b"2");
    let r3 = store.delete(&k("cas"), Some(r2)).await.unwrap();
    assert_eq!(r3, r2 + 1);
    assert_eq!(store.get(&k("cas")).await.unwrap(), None);
}

/// Reads at an older revision see the old values; future revisions are refused.
pub async fn range_at_old_revisions(store: Arc<dyn Store>) {
    let r1 = store.put(&k("old/a"), b"1".to_vec(), None).await.unwrap();
    let r2 = store.put(&k("old/b"), b"1".to_vec(), None).await.unwrap();
    store.put(&k("old/a"), b"2".to_vec(), None).await.unwrap();
    let r4 = store.delete(&k("old/b"), None).await.unwrap();
    let values = |res: super::RangeResult| {
        res.kvs
            .into_iter()
            .map(|kv| (kv.key, kv.value))
            .collect::<Vec<_>>()
    };
    let at = |revision| Range {
        revision,
        ..Range::prefix(k("old/"))
    };
    assert_eq!(
        values(store.range(at(r1)).await.unwrap()),
        vec![(k("old/a"), b"1".to_vec())]
    );
    assert_eq!(
        values(store.range(at(r2)).await.unwrap()),
        vec![(k("old/a"), b"1".to_vec()), (k("old/b"), b"1".to_vec())]
    );
    let now = store.range(at(0)).await.unwrap();
    assert_eq!(now.revision, r4);
    assert_eq!(values(now), vec![(k("old/a"), b"2".to_vec())]);
    assert!(matches!(
        store.range(at(r4 + 100)).await,
        Err(Error::FutureRevision { .. })
    ));
    // A prefix does not match keys that only share a shorter prefix.
    store.put(&k("older"), b"x".to_vec(), None).await.unwrap();
    assert_eq!(store.range(at(0)).await.unwrap().kvs.len(), 1);
}

/// Paging with `limit` and `start_after` at the first page's revision gives one consistent
/// snapshot, even while writers change the keys between pages.
pub async fn paging_is_consistent_at_one_revision(store: Arc<dyn Store>) {
    for i in 0..25 {
        store
            .put(
                &k(&format!("page/{i:02}")),
                format!("v{i}").into_bytes(),
                None,
            )
            .await
            .unwrap();
    }
    let mut range = Range {
        limit: 7,
        ..Range::prefix(k("page/"))
    };
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let page = store.range(range.clone()).await.unwrap();
        assert!(page.kvs.len() <= 7);
        if range.revision == 0 {
            range.revision = page.revision;
        }
        assert_eq!(page.revision, range.revision);
        pages += 1;
        // Writers change everything between pages.
        store
            .put(&k(&format!("page/{pages:02}")), b"changed".to_vec(), None)
            .await
            .unwrap();
        store
            .put(&k(&format!("page/{pages:02}x")), b"new".to_vec(), None)
            .await
            .unwrap();
        store
            .delete(&k(&format!("page/{:02}", 24 - pages)), None)
            .await
            .ok();
        range.start_after = page.kvs.last().map(|kv| kv.key.clone());
        seen.extend(page.kvs);
        if !page.more {
            break;
        }
    }
    assert_eq!(pages, 4);
    let expected: Vec<(String, Vec<u8>)> = (0..25)
        .map(|i| (k(&format!("page/{i:02}")), format!("v{i}").into_bytes()))
        .collect();
    let got: Vec<(String, Vec<u8>)> = seen.into_iter().map(|kv| (kv.key, kv.value)).collect();
    assert_eq!(got, expected);
    // An exact page boundary: limit = count gives `more == false`.
    let all = store
        .range(Range {
            limit: 25,
            ..Range::prefix(k("page/"))
        })
        .await
        .unwrap();
    let count = store.list(&k("page/")).await.unwrap().0.len();
    assert_eq!(all.more, count > 25);
}

/// Watch events carry their kind, revision and the previous value; keys outside the prefix are
/// not delivered.
pub async fn watch_delivers_prev_values(store: Arc<dyn Store>) {
    let r0 = store.put(&k("w/a"), b"1".to_vec(), None).await.unwrap();
    let mut watch = store.watch(&k("w/"), r0).await.unwrap();
    store.put(&k("other"), b"x".to_vec(), None).await.unwrap();
    let r2 = store.put(&k("w/a"), b"2".to_vec(), None).await.unwrap();
    let r3 = store.delete(&k("w/a"), None).await.unwrap();
    let r4 = store.put(&k("w/b"), b"3".to_vec(), None).await.unwrap();

    let e = next_event(&mut watch).await;
    assert_eq!(
        (e.kind, e.kv.mod_revision, e.kv.value.as_slice()),
        (EventKind::Put, r2, &b"2"[..])
    );
    assert_eq!(
        e.prev.map(|p| (p.value, p.mod_revision)),
        Some((b"1".to_vec(), r0))
    );
    let e = next_event(&mut watch).await;
    assert_eq!(
        (e.kind, e.kv.mod_revision, e.kv.key.as_str()),
        (EventKind::Delete, r3, k("w/a").as_str())
    );
    assert_eq!(e.prev.map(|p| p.value), Some(b"2".to_vec()));
    let e = next_event(&mut watch).await;
    assert_eq!((e.kind, e.kv.mod_revision), (EventKind::Put, r4));
    assert_eq!(e.prev, None);

    // A watch from a revision not reached yet starts after it.
    let now = store.revision().await.unwrap();
    let mut future = store.watch(&k("w/"), now + 1).await.unwrap();
    assert_eq!(
        store
            .put(&k("w/c"), b"skipped".to_vec(), None)
            .await
            .unwrap(),
        now + 1
    );
    let r6 = store.put(&k("w/c"), b"seen".to_vec(), None).await.unwrap();
    let e = next_event(&mut future).await;
    assert_eq!(
        (e.kv.mod_revision, e.kv.value.as_slice()),
        (r6, &b"seen"[..])
    );

    // A watch from the past replays the same history.
    let mut replay = store.watch(&k("w/"), r0).await.unwrap();
    let revisions: Vec<u64> = [
        next_event(&mut replay).await,
        next_event(&mut replay).await,
        next_event(&mut replay).await,
    ]
    .iter()
    .map(WatchEvent::revision)
    .collect();
    assert_eq!(revisions, vec![r2, r3, r4]);
}

/// Two watchers (one from before the writes, one from a revision in the middle) see every change
/// after their revision exactly once, in order, while four writers race.
pub async fn watch_from_revision_while_writers_race(store: Arc<dyn Store>) {
    let start = store.revision().await.unwrap();
    let mut early = store.watch(&k("race/"), start).await.unwrap();
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut acked = Vec::new();
                for i in 0..40 {
                    let key = k(&format!("race/{}", (w * 7 + i) % 10));
                    let revision = if i % 5 == 4 {
                        match store.delete(&key, None).await {
                            Ok(r) => r,
                            Err(Error::NotFound { .. }) => continue,
                            Err(e) => panic!("{e}"),
                        }
                    } else {
                        store
                            .put(&key, format!("{w}/{i}").into_bytes(), None)
                            .await
                            .unwrap()
                    };
                    acked.push(revision);
                }
                acked
            })
        })
        .collect();
    // A second watcher joins while the writers run.
    tokio::task::yield_now().await;
    let middle = store.revision().await.unwrap();
    let mut late = store.watch(&k("race/"), middle).await.unwrap();
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await.unwrap());
    }
    acked.sort_unstable();
    let end = *acked.last().unwrap();
    let events = collect_after(&mut early, start, &acked).await;
    collect_after(&mut late, middle, &acked).await;
    assert_eq!(events.last().unwrap().revision(), end);
    // prev of each event is the previous event's value for that key.
    let mut last: HashMap<String, KeyValue> = HashMap::new();
    for e in events {
        let prev = last
            .get(&e.kv.key)
            .filter(|kv| !kv.value.is_empty() || kv.version > 0);
        assert_eq!(
            e.prev.as_ref().map(|p| (&p.value, p.mod_revision)),
            prev.map(|p| (&p.value, p.mod_revision)),
            "prev of {:?}",
            e.kv.key
        );
        if e.kind == EventKind::Delete {
            last.remove(&e.kv.key);
        } else {
            last.insert(e.kv.key.clone(), e.kv);
        }
    }
}

/// Progress notifications: after a request, the stream says up to which revision it is complete,
/// after the events up to there and never below them, also when the changes were under other
/// prefixes; [`Watch::next`] skips them.
pub async fn watch_progress_notifications(store: Arc<dyn Store>) {
    let r0 = store.revision().await.unwrap();
    let mut watch = store.watch(&k("prog/"), r0).await.unwrap();
    let r1 = store.put(&k("prog/a"), b"1".to_vec(), None).await.unwrap();
    let r2 = store
        .put(&k("elsewhere"), b"x".to_vec(), None)
        .await
        .unwrap();
    let mut event_seen = false;
    let deadline = Instant::now() + Duration::from_secs(20);
    // A backend may skip a request while its watcher catches up (etcd): ask until answered.
    'ask: loop {
        assert!(
            Instant::now() < deadline,
            "no progress notification within 20 s"
        );
        watch.request_progress();
        loop {
            let item =
                match tokio::time::timeout(Duration::from_millis(500), watch.next_item()).await {
                    Err(_) => continue 'ask,
                    Ok(Some(Ok(item))) => item,
                    Ok(other) => panic!("watch ended: {other:?}"),
                };
            match item {
                WatchItem::Event(e) => {
                    assert!(!event_seen, "one event only");
                    assert_eq!(e.revision(), r1);
                    event_seen = true;
                }
                WatchItem::Progress { revision } => {
                    assert!(revision >= r0);
                    if revision >= r1 {
                        assert!(event_seen, "progress {revision} before the event at {r1}");
                    }
                    if revision >= r2 {
                        break 'ask;
                    }
                }
            }
        }
    }
    // `next` skips progress notifications.
    watch.request_progress();
    let r3 = store.put(&k("prog/b"), b"2".to_vec(), None).await.unwrap();
    assert_eq!(next_event(&mut watch).await.revision(), r3);
}

async fn collect_after(watch: &mut Watch, from: u64, acked: &[u64]) -> Vec<WatchEvent> {
    let expected: Vec<u64> = acked.iter().copied().filter(|r| *r > from).collect();
    let mut events = Vec::new();
    while events.len() < expected.len() {
        events.push(next_event(watch).await);
    }
    let got: Vec<u64> = events.iter().map(WatchEvent::revision).collect();
    assert_eq!(
        got, expected,
        "every acknowledged write after {from}, once, in order"
    );
    events
}

/// After compaction, reads and watches from before the point answer `Compacted`; current values
/// stay; later history stays watchable.
pub async fn compaction(store: Arc<dyn Store>) {
    let r1 = store.put(&k("c/a"), b"1".to_vec(), None).await.unwrap();
    store.put(&k("c/a"), b"2".to_vec(), None).await.unwrap();
    store.put(&k("c/b"), b"1".to_vec(), None).await.unwrap();
    let r4 = store.put(&k("c/a"), b"3".to_vec(), None).await.unwrap();
    let r5 = store.delete(&k("c/b"), None).await.unwrap();
    store.compact(r4).await.unwrap();
    // The error names the compaction point, for both a watch and a read.
    match store.watch(&k("c/"), r1).await {
        Err(Error::Compacted {
            requested,
            compacted,
        }) => assert_eq!((requested, compacted), (r1, r4)),
        other => panic!("watch before the compaction point: {other:?}"),
    }
    assert!(
        store
            .watch(&k("c/"), r1)
            .await
            .unwrap_err()
            .requires_relist()
    );
    match store
        .range(Range {
            revision: r1,
            ..Range::prefix(k("c/"))
        })
        .await
    {
        Err(Error::Compacted {
            requested,
            compacted,
        }) => assert_eq!((requested, compacted), (r1, r4)),
        other => panic!("range before the compaction point: {other:?}"),
    }
    // The compaction point itself is still readable and watchable.
    let at = store
        .range(Range {
            revision: r4,
            ..Range::prefix(k("c/"))
        })
        .await
        .unwrap();
    assert_eq!(at.kvs.len(), 2);
    let mut watch = store.watch(&k("c/"), r4).await.unwrap();
    let e = next_event(&mut watch).await;
    assert_eq!((e.kind, e.kv.mod_revision), (EventKind::Delete, r5));
    assert_eq!(store.get(&k("c/a")).await.unwrap().unwrap().value, b"3");
    // Compacting again to an older point does nothing; the future is refused.
    store.compact(r1).await.ok();
    assert!(matches!(
        store.compact(r5 + 1000).await,
        Err(Error::FutureRevision { .. })
    ));
    let r6 = store.put(&k("c/a"), b"4".to_vec(), None).await.unwrap();
    assert_eq!(r6, r5 + 1);
    let kv = store.get(&k("c/a")).await.unwrap().unwrap();
    assert_eq!(kv.version, 4, "compaction keeps versions counting");
}

/// A lease that is not kept alive expires and deletes its keys (watchers see the deletes); its id
/// is then unknown. A put with an unknown lease fails.
pub async fn leases_expire_and_take_their_keys(store: Arc<dyn Store>) {
    assert!(matches!(
        store
            .txn(Txn::put(k("l/x"), b"x".to_vec(), Compare::Always).with_lease(0x7fff_0000_0001))
            .await,
        Err(Error::LeaseNotFound { .. })
    ));
    let granted = Instant::now();
    let lease = store.lease_grant(Duration::from_secs(1)).await.unwrap();
    assert!(lease.ttl >= Duration::from_secs(1));
    let r0 = store.revision().await.unwrap();
    let mut watch = store.watch(&k("l/"), r0).await.unwrap();
    store
        .txn(Txn::put(k("l/a"), b"a".to_vec(), Compare::Absent).with_lease(lease.id))
        .await
        .unwrap();
    store
        .txn(Txn::put(k("l/b"), b"b".to_vec(), Compare::Absent).with_lease(lease.id))
        .await
        .unwrap();
    store.put(&k("l/keep"), b"k".to_vec(), None).await.unwrap();
    assert_eq!(
        store.get(&k("l/a")).await.unwrap().unwrap().lease,
        Some(lease.id)
    );
    for _ in 0..3 {
        assert_eq!(next_event(&mut watch).await.kind, EventKind::Put);
    }
    let mut deleted = BTreeMap::new();
    while deleted.len() < 2 {
        let e = tokio::time::timeout(lease.ttl + Duration::from_secs(10), watch.next())
            .await
            .expect("lease expiry within TTL + 10 s")
            .unwrap()
            .unwrap();
        assert_eq!(e.kind, EventKind::Delete);
        deleted.insert(e.kv.key.clone(), e.kv.mod_revision);
    }
    assert!(
        granted.elapsed() >= lease.ttl - Duration::from_millis(100),
        "not before the TTL"
    );
    assert_eq!(
        deleted.keys().cloned().collect::<Vec<_>>(),
        vec![k("l/a"), k("l/b")]
    );
    let revs: HashSet<u64> = deleted.values().copied().collect();
    assert_eq!(revs.len(), 1, "one revision deletes all of a lease's keys");
    assert_eq!(store.get(&k("l/a")).await.unwrap(), None);
    assert!(store.get(&k("l/keep")).await.unwrap().is_some());
    let renewed = store.lease_keep_alive(lease.id).await;
    assert!(
        matches!(renewed, Err(Error::LeaseNotFound { .. })),
        "keep-alive of an expired lease: {renewed:?}"
    );
}

/// Keep-alive holds a lease past its TTL; revoke deletes its keys at once; a key rewritten
/// without the lease leaves it.
pub async fn lease_keep_alive_and_revoke(store: Arc<dyn Store>) {
    let lease = store.lease_grant(Duration::from_secs(1)).await.unwrap();
    store
        .txn(Txn::put(k("ka/a"), b"a".to_vec(), Compare::Always).with_lease(lease.id))
        .await
        .unwrap();
    store
        .txn(Txn::put(k("ka/b"), b"b".to_vec(), Compare::Always).with_lease(lease.id))
        .await
        .unwrap();
    // Rewritten without a lease: it no longer belongs to the lease.
    store.put(&k("ka/b"), b"b2".to_vec(), None).await.unwrap();
    let until = Instant::now() + lease.ttl * 2;
    while Instant::now() < until {
        let renewed = store.lease_keep_alive(lease.id).await.unwrap();
        assert_eq!(renewed.id, lease.id);
        tokio::time::sleep(lease.ttl / 4).await;
    }
    assert!(store.get(&k("ka/a")).await.unwrap().is_some(), "kept alive");
    let before = store.revision().await.unwrap();
    store.lease_revoke(lease.id).await.unwrap();
    assert_eq!(store.get(&k("ka/a")).await.unwrap(), None);
    assert_eq!(store.get(&k("ka/b")).await.unwrap().unwrap().value, b"b2");
    assert_eq!(store.revision().await.unwrap(), before + 1);
    assert!(matches!(
        store.lease_revoke(lease.id).await,
        Err(Error::LeaseNotFound { .. })
    ));
}

/// Eight writers increment one counter with read-compare-write retries: no update is lost, and
/// every acknowledged revision is distinct.
pub async fn concurrent_writers_never_lose_an_update(store: Arc<dyn Store>) {
    const WRITERS: u64 = 8;
    const EACH: u64 = 25;
    let key = k("counter");
    store.put(&key, b"0".to_vec(), Some(0)).await.unwrap();
    let tasks: Vec<_> = (0..WRITERS)
        .map(|_| {
            let store = store.clone();
            let key = key.clone();
            tokio::spawn(async move {
                let mut revisions = Vec::new();
                for _ in 0..EACH {
                    loop {
                        let kv = store.get(&key).await.unwrap().unwrap();
                        let n: u64 = std::str::from_utf8(&kv.value).unwrap().parse().unwrap();
                        match store
                            .put(
                                &key,
                                (n + 1).to_string().into_bytes(),
                                Some(kv.mod_revision),
                            )
                            .await
                        {
                            Ok(r) => {
                                revisions.push(r);
                                break;
                            }
                            Err(Error::Conflict { .. }) => continue,
                            Err(e) => panic!("{e}"),
                        }
                    }
                }
                revisions
            })
        })
        .collect();
    let mut all = HashSet::new();
    for t in tasks {
        for r in t.await.unwrap() {
            assert!(all.insert(r), "revision {r} acknowledged twice");
        }
    }
    let kv = store.get(&key).await.unwrap().unwrap();
    assert_eq!(kv.value, (WRITERS * EACH).to_string().into_bytes());
    assert_eq!(kv.version, WRITERS * EACH + 1);
}
