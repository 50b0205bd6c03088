//! Model-based test: random operations against the embedded store and against a `BTreeMap` with
//! revisions give the same answers, across restarts (the store is closed and reopened from its
//! log in the middle of a sequence) and checkpoints (the log before the current segment replaced
//! by one file).

use std::collections::BTreeMap;

use berth_api::store::{Error, Range, Store};
use berth_store::{EmbeddedStore, Options};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Put(u8, u8),
    Create(u8, u8),
    CasFresh(u8, u8),
    CasStale(u8, u8),
    Delete(u8),
    Compact(u8),
    Get(u8),
    RangeAt(u8),
    Restart,
    Checkpoint,
}

fn op() -> impl Strategy<Value = Op> {
    let key = 0u8..6;
    prop_oneof![
        4 => (key.clone(), any::<u8>()).prop_map(|(k, v)| Op::Put(k, v)),
        1 => (key.clone(), any::<u8>()).prop_map(|(k, v)| Op::Create(k, v)),
        1 => (key.clone(), any::<u8>()).prop_map(|(k, v)| Op::CasFresh(k, v)),
        1 => (key.clone(), any::<u8>()).prop_map(|(k, v)| Op::CasStale(k, v)),
        2 => key.clone().prop_map(Op::Delete),
        1 => any::<u8>().prop_map(Op::Compact),
        2 => key.prop_map(Op::Get),
        2 => any::<u8>().prop_map(Op::RangeAt),
        1 => Just(Op::Restart),
        1 => Just(Op::Checkpoint),
    ]
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Kv {
    value: Vec<u8>,
    create: u64,
    modified: u64,
    version: u64,
}

#[derive(Default)]
struct Model {
    compacted: u64,
    /// `history[r]`: the keys after revision `r`.
    history: Vec<BTreeMap<String, Kv>>,
}

impl Model {
    fn revision(&self) -> u64 {
        self.history.len() as u64 - 1
    }
    fn now(&self) -> &BTreeMap<String, Kv> {
        self.history.last().unwrap()
    }
    fn put(&mut self, key: &str, value: Vec<u8>) -> u64 {
        let rev = self.revision() + 1;
        let mut next = self.now().clone();
        let old = next.get(key).cloned();
        next.insert(
            key.to_owned(),
            Kv {
                value,
                create: old.as_ref().map_or(rev, |o| o.create),
                modified: rev,
                version: old.map_or(1, |o| o.version + 1),
            },
        );
        self.history.push(next);
        rev
    }
    fn delete(&mut self, key: &str) -> Option<u64> {
        let mut next = self.now().clone();
        next.remove(key)?;
        self.history.push(next);
        Some(self.revision())
    }
}

fn value(v: u8) -> Vec<u8> {
    vec![v; v as usize * 20]
}

fn open(dir: &std::path::Path) -> EmbeddedStore {
    EmbeddedStore::open_with(
        dir,
        Options {
            segment_size: 64 << 10,
            ..Options::default()
        },
    )
    .unwrap()
    .0
}

fn as_model(kv: &berth_api::store::KeyValue) -> (String, Kv) {
    (
        kv.key.clone(),
        Kv {
            value: kv.value.clone(),
            create: kv.create_revision,
            modified: kv.mod_revision,
            version: kv.version,
        },
    )
}

async fn run(ops: Vec<Op>) {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    let mut model = Model {
        compacted: 0,
        history: vec![BTreeMap::new()],
    };
    for op in ops {
        match op {
            Op::Put(k, v) => {
                let key = format!("/m/{k}");
                let r = store.put(&key, value(v), None).await.unwrap();
                assert_eq!(r, model.put(&key, value(v)));
            }
            Op::Create(k, v) => {
                let key = format!("/m/{k}");
                let result = store.put(&key, value(v), Some(0)).await;
                if model.now().contains_key(&key) {
                    assert!(matches!(result, Err(Error::Conflict { .. })), "{result:?}");
                } else {
                    assert_eq!(result.unwrap(), model.put(&key, value(v)));
                }
            }
            Op::CasFresh(k, v) => {
                let key = format!("/m/{k}");
                let expected = model.now().get(&key).map_or(0, |kv| kv.modified);
                let r = store.put(&key, value(v), Some(expected)).await.unwrap();
                assert_eq!(r, model.put(&key, value(v)));
            }
            Op::CasStale(k, v) => {
                let key = format!("/m/{k}");
                let stale = model.now().get(&key).map_or(1, |kv| kv.modified + 1);
                assert!(matches!(
                    store.put(&key, value(v), Some(stale)).await,
                    Err(Error::Conflict { .. })
                ));
            }
            Op::Delete(k) => {
                let key = format!("/m/{k}");
                match (store.delete(&key, None).await, model.delete(&key)) {
                    (Ok(r), Some(m)) => assert_eq!(r, m),
                    (Err(Error::NotFound { .. }), None) => {}
                    (got, want) => panic!("delete {key}: {got:?}, model {want:?}"),
                }
            }
            Op::Compact(f) => {
                let span = model.revision() - model.compacted;
                let target = model.compacted + span * u64::from(f) / 255;
                store.compact(target).await.unwrap();
                model.compacted = model.compacted.max(target);
            }
            Op::Get(k) => {
                let key = format!("/m/{k}");
                let got = store.get(&key).await.unwrap().map(|kv| as_model(&kv).1);
                assert_eq!(got.as_ref(), model.now().get(&key));
            }
            Op::RangeAt(f) => {
                let span = model.revision() - model.compacted;
                let at = model.compacted + span * u64::from(f) / 255;
                let res = store
                    .range(Range {
                        revision: at,
                        ..Range::prefix("/m/")
                    })
                    .await
                    .unwrap();
                let want = if at == 0 {
                    model.now()
                } else {
                    &model.history[at as usize]
                };
                let got: BTreeMap<String, Kv> = res.kvs.iter().map(as_model).collect();
                assert_eq!(&got, want, "range at {at}");
                if model.compacted > 1 {
                    assert!(matches!(
                        store
                            .range(Range {
                                revision: model.compacted - 1,
                                ..Range::prefix("/m/")
                            })
                            .await,
                        Err(Error::Compacted { .. })
                    ));
                }
            }
            Op::Restart => {
                drop(store);
                store = open(dir.path());
            }
            Op::Checkpoint => {
                // `false`: one that compaction started is running; it does the same.
                store.checkpoint().unwrap();
            }
        }
        assert_eq!(store.revision().await.unwrap(), model.revision());
    }
    drop(store);
    let store = open(dir.path());
    let (kvs, rev) = store.list("/m/").await.unwrap();
    assert_eq!(rev, model.revision());
    let got: BTreeMap<String, Kv> = kvs.iter().map(as_model).collect();
    assert_eq!(&got, model.now());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn embedded_store_matches_a_model_across_restarts(ops in proptest::collection::vec(op(), 1..40)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(run(ops));
    }
}
