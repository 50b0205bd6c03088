//! [`EtcdStore`]: the [`Store`] on etcd v3 through the `etcd-client` crate, for clusters that
//! outgrow one machine. Several endpoints, TLS and user/password auth come from [`EtcdOptions`];
//! every key is stored under an optional prefix (kube-apiserver's `--etcd-prefix`), so several
//! stores can share one etcd.
//!
//! etcd's model is the trait's model: revisions, `mod_revision` comparisons in a `Txn`, watches
//! with `prev_kv` from a start revision, compaction and leases map one to one. etcd's minimum lease
//! TTL (about 2 s with default election timeouts) raises shorter requests; the granted TTL is in
//! the answer. A read or watch before the compaction point answers `Compacted` with etcd's
//! compaction revision (a range error does not carry it: a watch from revision 1 is canceled
//! with it). Watches ask etcd for progress notifications (`progress_notify`, and a
//! `WatchProgressRequest` per [`Watch::request_progress`](berth_api::store::Watch::request_progress)).

use std::time::Duration;

use async_trait::async_trait;
use berth_api::store::{
    self as api, Compare, EventKind, KeyValue, Lease, LeaseId, Range, RangeResult, Store, Txn,
    TxnOp, TxnResult, Watch, WatchEvent,
};
pub use etcd_client;
use etcd_client::{
    Client, CompareOp, ConnectOptions, DeleteOptions, GetOptions, PutOptions, TxnOpResponse,
    WatchOptions,
};

use crate::error::{Error, Result};

/// How to reach etcd.
#[derive(Debug, Clone, Default)]
pub struct EtcdOptions {
    /// `http(s)://host:port` of each member.
    pub endpoints: Vec<String>,
    /// Prefix of every key this store writes (e.g. `/berth`); empty for none.
    pub prefix: String,
    /// User name and password (etcd auth).
    pub user: Option<(String, String)>,
    /// TLS (CA, client certificate) for `https` endpoints.
    pub tls: Option<etcd_client::TlsOptions>,
    /// Per-request timeout (none by default).
    pub timeout: Option<Duration>,
}

impl EtcdOptions {
    /// Options for `endpoints` with no prefix, auth or TLS.
    pub fn new<S: Into<String>>(endpoints: impl IntoIterator<Item = S>) -> Self {
        EtcdOptions {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            ..Self::default()
        }
    }
}

/// The etcd backend; cheap to clone (one gRPC channel).
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    prefix: String,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// The smallest key after every key starting with `prefix` (etcd's `range_end`); `\0` (to the end
/// of the keyspace) when there is none.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Whether a watch response is a progress notification: no events, not a create or cancel
/// answer; its header has the revision the watcher is complete up to.
fn is_progress(resp: &etcd_client::WatchResponse) -> bool {
    resp.events().is_empty() && !resp.created() && !resp.canceled()
}

fn rev(r: i64) -> u64 {
    u64::try_from(r).unwrap_or(0)
}

/// Maps etcd's errors onto the trait's.
fn map_err(e: etcd_client::Error, requested: u64) -> api::Error {
    if let etcd_client::Error::LeaseKeepAliveError(msg) = &e
        && msg.contains("lease not found")
    {
        return api::Error::LeaseNotFound { id: 0 };
    }
    if let etcd_client::Error::GRpcStatus(status) = &e {
        let msg = status.message();
        if msg.contains("required revision has been compacted") {
            return api::Error::Compacted {
                requested,
                compacted: 0,
            };
        }
        if msg.contains("future revision") {
            return api::Error::FutureRevision {
                requested,
                current: 0,
            };
        }
        if msg.contains("lease not found") {
            return api::Error::LeaseNotFound { id: 0 };
        }
        if msg.contains("key is not provided") {
            return api::Error::InvalidKey(String::new());
        }
    }
    Error::Etcd(Box::new(e)).into()
}

impl EtcdStore {
    /// Connects to etcd.
    pub async fn connect(options: EtcdOptions) -> Result<Self> {
        let mut connect = ConnectOptions::new();
        if let Some((user, password)) = &options.user {
            connect = connect.with_user(user.clone(), password.clone());
        }
        if let Some(tls) = options.tls.clone() {
            connect = connect.with_tls(tls);
        }
        if let Some(timeout) = options.timeout {
            connect = connect.with_timeout(timeout);
        }
        let client = Client::connect(&options.endpoints, Some(connect))
            .await
            .map_err(|e| Error::Etcd(Box::new(e)))?;
        Ok(EtcdStore {
            client,
            prefix: options.prefix,
        })
    }

    fn key(&self, key: &str) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.prefix.len() + key.len());
        k.extend_from_slice(self.prefix.as_bytes());
        k.extend_from_slice(key.as_bytes());
        k
    }

    fn kv(&self, kv: &etcd_client::KeyValue) -> KeyValue {
        let key = kv.key();
        let key = key.strip_prefix(self.prefix.as_bytes()).unwrap_or(key);
        KeyValue {
            key: String::from_utf8_lossy(key).into_owned(),
            value: kv.value().to_vec(),
            create_revision: rev(kv.create_revision()),
            mod_revision: rev(kv.mod_revision()),
            version: rev(kv.version()),
            lease: (kv.lease() != 0).then_some(kv.lease()),
        }
    }

    fn event(&self, event: &etcd_client::Event) -> Option<WatchEvent> {
        let kv = self.kv(event.kv()?);
        let kind = match event.event_type() {
            etcd_client::EventType::Put => EventKind::Put,
            etcd_client::EventType::Delete => EventKind::Delete,
        };
        Some(WatchEvent {
            kind,
            kv,
            prev: event.prev_kv().map(|p| self.kv(p)),
        })
    }

    /// etcd's compaction point, learnt the only way etcd tells it: a watch from revision 1 is
    /// canceled with `compact_revision`. 0 when etcd did not say within 2 s.
    async fn compaction_point(&self) -> u64 {
        let key = if self.prefix.is_empty() {
            vec![0]
        } else {
            self.key("")
        };
        let options = WatchOptions::new().with_start_revision(1);
        let Ok((mut watcher, mut stream)) =
            self.client.watch_client().watch(key, Some(options)).await
        else {
            return 0;
        };
        let answer = tokio::time::timeout(Duration::from_secs(2), async {
            loop {
                match stream.message().await {
                    Ok(Some(resp)) if resp.canceled() || resp.compact_revision() > 0 => {
                        return rev(resp.compact_revision());
                    }
                    Ok(Some(_)) => {}
                    _ => return 0,
                }
            }
        })
        .await
        .unwrap_or(0);
        watcher.cancel().await.ok();
        answer
    }

    /// Fills in the compaction point of a `Compacted` error.
    async fn with_compaction_point(&self, e: api::Error) -> api::Error {
        match e {
            api::Error::Compacted {
                requested,
                compacted: 0,
            } => api::Error::Compacted {
                requested,
                compacted: self.compaction_point().await,
            },
            other => other,
        }
    }

    async fn current_revision(&self) -> api::Result<u64> {
        // Any read answers with the store's revision in its header; count one key only.
        let key = if self.prefix.is_empty() {
            vec![0]
        } else {
            self.key("")
        };
        let resp = self
            .client
            .kv_client()
            .get(key, Some(GetOptions::new().with_count_only()))
            .await
            .map_err(|e| map_err(e, 0))?;
        Ok(resp.header().map_or(0, |h| rev(h.revision())))
    }
}

#[async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> api::Result<Option<KeyValue>> {
        if key.is_empty() {
            return Ok(None);
        }
        let resp = self
            .client
            .kv_client()
            .get(self.key(key), None)
            .await
            .map_err(|e| map_err(e, 0))?;
        Ok(resp.kvs().first().map(|kv| self.kv(kv)))
    }

    async fn range(&self, range: Range) -> api::Result<RangeResult> {
        let full_prefix = self.key(&range.prefix);
        let end = prefix_end(&full_prefix);
        let start = match &range.start_after {
            Some(after) if after.as_str() >= range.prefix.as_str() => {
                let mut k = self.key(after);
                k.push(0);
                k
            }
            _ => full_prefix,
        };
        let mut options = GetOptions::new().with_range(end);
        if range.limit > 0 {
            options = options.with_limit(range.limit as i64);
        }
        if range.revision > 0 {
            options = options.with_revision(range.revision as i64);
        }
        let resp = match self.client.kv_client().get(start, Some(options)).await {
            Ok(resp) => resp,
            Err(e) => {
                return Err(self.with_compaction_point(map_err(e, range.revision)).await);
            }
        };
        let revision = if range.revision > 0 {
            range.revision
        } else {
            resp.header().map_or(0, |h| rev(h.revision()))
        };
        Ok(RangeResult {
            kvs: resp.kvs().iter().map(|kv| self.kv(kv)).collect(),
            revision,
            more: resp.more(),
        })
    }

    async fn txn(&self, txn: Txn) -> api::Result<TxnResult> {
        if txn.key.is_empty() {
            return Err(api::Error::InvalidKey(txn.key));
        }
        let key = self.key(&txn.key);
        let mut compares = match txn.compare {
            Compare::Always => vec![],
            Compare::Absent => vec![etcd_client::Compare::version(
                key.clone(),
                CompareOp::Equal,
                0,
            )],
            Compare::ModRevision(r) => vec![etcd_client::Compare::mod_revision(
                key.clone(),
                CompareOp::Equal,
                r as i64,
            )],
        };
        let op = match &txn.op {
            TxnOp::Put { value, lease } => {
                let mut options = PutOptions::new().with_prev_key();
                if let Some(lease) = lease {
                    options = options.with_lease(*lease);
                }
                etcd_client::TxnOp::put(key.clone(), value.clone(), Some(options))
            }
            TxnOp::Delete => {
                // A delete needs the key to exist; the else branch then tells which failed.
                compares.push(etcd_client::Compare::version(
                    key.clone(),
                    CompareOp::Greater,
                    0,
                ));
                etcd_client::TxnOp::delete(key.clone(), Some(DeleteOptions::new().with_prev_key()))
            }
        };
        let request = etcd_client::Txn::new()
            .when(compares)
            .and_then(vec![op])
            .or_else(vec![etcd_client::TxnOp::get(key, None)]);
        let resp = self
            .client
            .kv_client()
            .txn(request)
            .await
            .map_err(|e| match map_err(e, 0) {
                api::Error::LeaseNotFound { .. } => api::Error::LeaseNotFound {
                    id: match &txn.op {
                        TxnOp::Put { lease, .. } => lease.unwrap_or(0),
                        TxnOp::Delete => 0,
                    },
                },
                other => other,
            })?;
        let revision = resp.header().map_or(0, |h| rev(h.revision()));
        let responses = resp.op_responses();
        if !resp.succeeded() {
            let current = responses.iter().find_map(|r| match r {
                TxnOpResponse::Get(get) => get.kvs().first().map(|kv| self.kv(kv)),
                _ => None,
            });
            let found = current.as_ref().map_or(0, |kv| kv.mod_revision);
            if txn.op == TxnOp::Delete && current.is_none() && txn.compare.passes(0) {
                return Err(api::Error::NotFound { key: txn.key });
            }
            if txn.op == TxnOp::Delete && current.is_none() {
                return Err(api::Error::Conflict {
                    key: txn.key,
                    expected: txn.compare.expected(),
                    found: 0,
                    current: None,
                });
            }
            return Err(api::Error::Conflict {
                key: txn.key,
                expected: txn.compare.expected(),
                found,
                current: current.map(Box::new),
            });
        }
        let prev = responses.iter().find_map(|r| match r {
            TxnOpResponse::Put(put) => put.prev_key().map(|kv| self.kv(kv)),
            TxnOpResponse::Delete(del) => del.prev_kvs().first().map(|kv| self.kv(kv)),
            _ => None,
        });
        Ok(TxnResult { revision, prev })
    }

    async fn watch(&self, prefix: &str, after_revision: u64) -> api::Result<Watch> {
        // etcd reports a compacted start only on the stream; ask first, so the caller gets
        // `Compacted` from this call as with every backend.
        let current = self.current_revision().await?;
        if after_revision > 0 && after_revision <= current {
            let probe = GetOptions::new()
                .with_count_only()
                .with_revision(after_revision as i64);
            if let Err(e) = self
                .client
                .kv_client()
                .get(self.key(prefix), Some(probe))
                .await
            {
                return Err(self.with_compaction_point(map_err(e, after_revision)).await);
            }
        }
        let full_prefix = self.key(prefix);
        let options = WatchOptions::new()
            .with_range(prefix_end(&full_prefix))
            .with_start_revision(after_revision as i64 + 1)
            .with_prev_key()
            .with_progress_notify();
        let (mut watcher, mut stream) = self
            .client
            .watch_client()
            .watch(full_prefix, Some(options))
            .await
            .map_err(|e| map_err(e, after_revision))?;
        let (tx, rx) = Watch::channel(64 * 1024);
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    m = tokio::time::timeout(Duration::from_secs(1), stream.message()) => m,
                    () = tx.progress_requested() => {
                        if let Err(e) = watcher.request_progress().await {
                            tx.fail(Error::Etcd(Box::new(e)).into());
                            return;
                        }
                        continue;
                    }
                };
                let message = match message {
                    Err(_) if tx.is_closed() => break,
                    Err(_) => continue,
                    Ok(m) => m,
                };
                match message {
                    Ok(Some(resp)) if is_progress(&resp) => {
                        let revision = resp.header().map_or(0, |h| rev(h.revision()));
                        if !tx.send_progress(revision) {
                            break;
                        }
                    }
                    Ok(Some(resp)) => {
                        if resp.canceled() {
                            let error = if resp.compact_revision() > 0 {
                                api::Error::Compacted {
                                    requested: after_revision,
                                    compacted: rev(resp.compact_revision()),
                                }
                            } else {
                                Error::Failed(format!(
                                    "etcd canceled the watch: {}",
                                    resp.cancel_reason()
                                ))
                                .into()
                            };
                            tx.fail(error);
                            return;
                        }
                        let events = resp.events().iter().filter_map(|e| this.event(e));
                        if !tx.send(events) {
                            break;
                        }
                    }
                    Ok(None) => {
                        tx.fail(api::Error::Closed);
                        return;
                    }
                    Err(e) => {
                        tx.fail(Error::Etcd(Box::new(e)).into());
                        return;
                    }
                }
            }
            watcher.cancel().await.ok();
        });
        Ok(rx)
    }

    async fn compact(&self, revision: u64) -> api::Result<()> {
        match self.client.kv_client().compact(revision as i64, None).await {
            Ok(_) => Ok(()),
            // Compacting to a point at or before the current one does nothing, as in the trait.
            Err(e) => match map_err(e, revision) {
                api::Error::Compacted { .. } => Ok(()),
                api::Error::FutureRevision { .. } => Err(api::Error::FutureRevision {
                    requested: revision,
                    current: self.current_revision().await?,
                }),
                other => Err(other),
            },
        }
    }

    async fn revision(&self) -> api::Result<u64> {
        self.current_revision().await
    }

    async fn lease_grant(&self, ttl: Duration) -> api::Result<Lease> {
        let resp = self
            .client
            .lease_client()
            .grant(api::ttl_seconds(ttl) as i64, None)
            .await
            .map_err(|e| map_err(e, 0))?;
        Ok(Lease {
            id: resp.id(),
            ttl: Duration::from_secs(rev(resp.ttl())),
        })
    }

    async fn lease_keep_alive(&self, id: LeaseId) -> api::Result<Lease> {
        let not_found = |e| match map_err(e, 0) {
            api::Error::LeaseNotFound { .. } => api::Error::LeaseNotFound { id },
            other => other,
        };
        let (mut keeper, mut stream) = self
            .client
            .lease_client()
            .keep_alive(id)
            .await
            .map_err(not_found)?;
        keeper.keep_alive().await.map_err(not_found)?;
        match stream.message().await.map_err(not_found)? {
            Some(resp) if resp.ttl() > 0 => Ok(Lease {
                id,
                ttl: Duration::from_secs(rev(resp.ttl())),
            }),
            _ => Err(api::Error::LeaseNotFound { id }),
        }
    }

    async fn lease_revoke(&self, id: LeaseId) -> api::Result<()> {
        match self.client.lease_client().revoke(id).await {
            Ok(_) => Ok(()),
            Err(e) => Err(match map_err(e, 0) {
                api::Error::LeaseNotFound { .. } => api::Error::LeaseNotFound { id },
                other => other,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"/a/"), b"/a0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b""), b"\0");
        assert_eq!(prefix_end(b"\xff\xff"), b"\0");
    }
}
