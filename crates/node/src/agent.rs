//! The [`Agent`]: registers the node, keeps its Lease and status fresh, watches the pods bound
//! to it (field selector `spec.nodeName`) and runs one [`pod`](crate::pod) worker per pod.
//! After its first list it removes from the host every pod the API no longer has; pods it
//! does have are adopted by their workers from what is on disk.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::{Future, IntoFuture};
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::NodeConfig;
use crate::error::Result;
use crate::host::{Host, PodRecord};
use crate::node::{self, HostInfo};
use crate::pod::{NodeFacts, Worker};

/// A node agent.
pub struct Agent {
    host: Arc<Host>,
    client: kube::Client,
    info: HostInfo,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

struct Running {
    tx: watch::Sender<Option<Arc<Pod>>>,
    task: JoinHandle<()>,
}

fn record(pod: &Pod) -> Option<PodRecord> {
    Some(PodRecord {
        namespace: pod.metadata.namespace.clone()?,
        name: pod.metadata.name.clone()?,
        uid: pod.metadata.uid.clone()?,
    })
}

impl Agent {
    /// An agent for `config` talking to the API through `client`. Opens (creating) the state
    /// root.
    pub fn new(client: kube::Client, config: NodeConfig) -> Result<Agent> {
        let info = HostInfo::detect(&config);
        let host = Arc::new(Host::open(config)?);
        Ok(Agent { host, client, info })
    }

    /// The node's local state (images, pods).
    pub fn host(&self) -> &Arc<Host> {
        &self.host
    }

    /// Runs until `shutdown` completes. Containers keep running when the agent stops; the
    /// next agent on the same root adopts them.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<()> {
        let mut config = self.host.config.clone();
        let listener = tokio::net::TcpListener::bind((self.info.address.as_str(), config.port))
            .await
            .map_err(crate::Error::io(
                "listen on",
                format!("{}:{}", self.info.address, config.port),
            ))?;
        config.port = listener
            .local_addr()
            .map_err(crate::Error::io("listen on", self.info.address.clone()))?
            .port();
        let server = tokio::spawn(
            axum::serve(
                listener,
                crate::server::router(self.host.clone(), self.info.memory),
            )
            .into_future(),
        );
        let mut transitions = BTreeMap::new();
        let node_uid = node::register(&self.client, &config, &self.info, &mut transitions).await?;
        node::renew_lease(&self.client, &config, &node_uid).await?;
        tracing::info!(node = %config.name, "registered");
        let heartbeat = {
            let (client, config, info) = (self.client.clone(), config.clone(), self.info.clone());
            tokio::spawn(async move {
                let mut lease = tokio::time::interval(config.lease_renew);
                let mut status = tokio::time::interval(config.status_update);
                loop {
                    tokio::select! {
                        _ = lease.tick() => {
                            if let Err(e) = node::renew_lease(&client, &config, &node_uid).await {
                                tracing::warn!(error = %e, "lease renewal failed");
                            }
                        }
                        _ = status.tick() => {
                            if let Err(e) = node::post_status(&client, &config, &info, &mut transitions).await {
                                tracing::warn!(error = %e, "node status update failed");
                            }
                        }
                    }
                }
            })
        };
        let facts = Arc::new(NodeFacts {
            host_ip: self.info.address.clone(),
            cpu_millis: self.info.cpus * 1000,
            memory: self.info.memory,
        });
        let housekeeping = {
            let host = self.host.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(host.config.housekeeping_interval);
                loop {
                    tick.tick().await;
                    let h = host.clone();
                    let _ = tokio::task::spawn_blocking(move || crate::eviction::housekeeping(&h))
                        .await;
                }
            })
        };
        let network = tokio::spawn(crate::network::run(self.client.clone(), self.host.clone()));
        let result = self.watch_pods(facts, shutdown).await;
        network.abort();
        housekeeping.abort();
        heartbeat.abort();
        server.abort();
        result
    }

    async fn watch_pods(
        &self,
        facts: Arc<NodeFacts>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<()> {
        let name = self.host.config.name.clone();
        let pods: Api<Pod> = Api::all(self.client.clone());
        let selector = format!("spec.nodeName={name}");
        let stream =
            watcher::watcher(pods, watcher::Config::default().fields(&selector)).default_backoff();
        let mut stream = std::pin::pin!(stream);
        let mut shutdown = std::pin::pin!(shutdown);
        let mut workers: HashMap<String, Running> = HashMap::new();
        let mut done: HashSet<String> = HashSet::new();
        let mut listed: Option<HashSet<String>> = None;
        let mut reap = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            let event = tokio::select! {
                () = &mut shutdown => break,
                _ = reap.tick() => {
                    workers.retain(|uid, w| {
                        if w.task.is_finished() {
                            done.insert(uid.clone());
                            false
                        } else {
                            true
                        }
                    });
                    continue;
                }
                e = stream.next() => e,
            };
            let event = match event {
                None => break,
                Some(Ok(e)) => e,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "pod watch failed; retrying");
                    continue;
                }
            };
            match event {
                Event::Init => listed = Some(HashSet::new()),
                Event::InitApply(pod) | Event::Apply(pod) => {
                    let Some(rec) = record(&pod) else { continue };
                    if let Some(l) = listed.as_mut() {
                        l.insert(rec.uid.clone());
                    }
                    if done.contains(&rec.uid) {
                        continue;
                    }
                    let pod = Arc::new(pod);
                    match workers.get(&rec.uid) {
                        Some(w) if !w.task.is_finished() => {
                            let _ = w.tx.send(Some(pod));
                        }
                        // The worker finished (the pod was deleted): a late event for it must
                        // not start the pod again.
                        Some(_) => {
                            done.insert(rec.uid.clone());
                        }
                        None => {
                            let (tx, rx) = watch::channel(Some(pod));
                            let worker = Worker::new(
                                self.host.clone(),
                                self.client.clone(),
                                rec.clone(),
                                facts.clone(),
                            );
                            let task = tokio::spawn(worker.run(rx));
                            workers.insert(rec.uid, Running { tx, task });
                        }
                    }
                }
                Event::Delete(pod) => {
                    if let Some(uid) = pod.metadata.uid.as_deref()
                        && let Some(w) = workers.get(uid)
                    {
                        let _ = w.tx.send(None);
                    }
                }
                Event::InitDone => {
                    let Some(seen) = listed.take() else { continue };
                    // Workers of pods that vanished while the watch was down.
                    for (uid, w) in &workers {
                        if !seen.contains(uid) {
                            let _ = w.tx.send(None);
                        }
                    }
                    // Pods left on disk by an earlier agent that the API no longer has.
                    let host = self.host.clone();
                    let orphans: Vec<PodRecord> = host
                        .pods_on_disk()
                        .into_iter()
                        .filter(|p| !seen.contains(&p.uid) && !workers.contains_key(&p.uid))
                        .collect();
                    if !orphans.is_empty() {
                        tokio::task::spawn_blocking(move || {
                            for p in orphans {
                                tracing::info!(pod = %p.name, uid = %p.uid, "removing a pod the API no longer has");
                                host.remove_pod(&p.uid, None);
                                host.remove_logs(&p);
                            }
                        });
                    }
                }
            }
        }
        // Stop the workers (their containers keep running).
        for (_, w) in workers {
            drop(w.tx);
            let _ = w.task.await;
        }
        Ok(())
    }
}
