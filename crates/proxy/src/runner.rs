//! The proxy against an API server (feature `runner`): kube-rs watchers keep caches of
//! Services and EndpointSlices (and, with policies on, Pods, Namespaces and NetworkPolicies);
//! after every burst of changes the pure functions rebuild the tables and one netlink batch
//! installs them. With an address pool it also hands LoadBalancer Services their addresses.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use berth_proxy::runner::{ProxyRunner, RunnerOptions};
//! use berth_proxy::service::ProxyConfig;
//!
//! let client = berth_proxy::kube::Client::try_default().await?;
//! let cfg = ProxyConfig { table: "berth-proxy".into(), node_name: "n1".into(), cluster_cidr: None };
//! ProxyRunner::new(client, cfg, RunnerOptions::default())
//!     .run(async { tokio::signal::ctrl_c().await.ok(); })
//!     .await?;
//! # Ok(())
//! # }
//! ```

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use futures::stream::{BoxStream, SelectAll};
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Client, Resource};
use serde_json::json;

use crate::error::{Error, Result};
use crate::lb::{LbPool, allocate};
use crate::nft::{Nft, Table};
use crate::policy::{PolicyConfig, policy_table};
use crate::service::{ProxyConfig, service_table};

/// Options besides the Service config.
#[derive(Debug, Clone, Default)]
pub struct RunnerOptions {
    /// Hand LoadBalancer Services addresses from this pool (run it on one proxy of a cluster).
    pub lb_pool: Option<LbPool>,
    /// Also enforce NetworkPolicies, in this table.
    pub policy: Option<PolicyConfig>,
    /// Delete the tables when the runner stops (kube-proxy leaves them; tests don't).
    pub cleanup_on_exit: bool,
}

/// What one reprogramming did.
#[derive(Debug, Clone, Copy)]
pub struct Programmed {
    /// Services, Slices seen.
    pub objects: usize,
    /// Rules installed.
    pub rules: usize,
    /// Time to build the tables and apply the batch.
    pub elapsed: Duration,
}

/// Watches the API and keeps the node's tables in step.
pub struct ProxyRunner {
    client: Client,
    cfg: ProxyConfig,
    opts: RunnerOptions,
    nft: Option<Nft>,
}

/// A watch cache keyed by namespace/name, with kube-rs's relist (`Init` … `InitDone`) semantics.
struct Cache<K> {
    items: BTreeMap<(String, String), K>,
    pending: Option<BTreeMap<(String, String), K>>,
    synced: bool,
}

impl<K: Resource + Clone> Cache<K> {
    fn new() -> Self {
        Cache {
            items: BTreeMap::new(),
            pending: None,
            synced: false,
        }
    }

    fn key(k: &K) -> (String, String) {
        let m = k.meta();
        (
            m.namespace.clone().unwrap_or_default(),
            m.name.clone().unwrap_or_default(),
        )
    }

    /// Applies an event; true when the visible content changed.
    fn apply(&mut self, e: Event<K>) -> bool {
        match e {
            Event::Apply(k) => {
                self.items.insert(Self::key(&k), k);
                self.synced
            }
            Event::Delete(k) => {
                self.items.remove(&Self::key(&k));
                self.synced
            }
            Event::Init => {
                self.pending = Some(BTreeMap::new());
                false
            }
            Event::InitApply(k) => {
                if let Some(p) = &mut self.pending {
                    p.insert(Self::key(&k), k);
                }
                false
            }
            Event::InitDone => {
                if let Some(p) = self.pending.take() {
                    self.items = p;
                }
                self.synced = true;
                true
            }
        }
    }

    fn values(&self) -> Vec<K> {
        self.items.values().cloned().collect()
    }
}

enum Input {
    Service(Event<Service>),
    Slice(Event<EndpointSlice>),
    Pod(Event<Pod>),
    Namespace(Event<Namespace>),
    Policy(Event<NetworkPolicy>),
}

fn watch<K>(api: Api<K>, wrap: fn(Event<K>) -> Input) -> BoxStream<'static, Input>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default,
{
    watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .filter_map(move |r| {
            futures::future::ready(match r {
                Ok(e) => Some(wrap(e)),
                Err(e) => {
                    tracing::warn!(kind = %K::kind(&Default::default()), error = %e, "watch failed; retrying");
                    None
                }
            })
        })
        .boxed()
}

impl ProxyRunner {
    /// A runner for this node.
    pub fn new(client: Client, cfg: ProxyConfig, opts: RunnerOptions) -> Self {
        ProxyRunner {
            client,
            cfg,
            opts,
            nft: None,
        }
    }

    /// Programs through this socket (opened in the network namespace to program, e.g. a test's)
    /// instead of one opened in the namespace of the thread that starts [`ProxyRunner::run`].
    pub fn with_nft(mut self, nft: Nft) -> Self {
        self.nft = Some(nft);
        self
    }

    /// Runs until `shutdown` completes (or a netlink error that is not transient). Each
    /// reprogramming is logged with its duration.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<()> {
        self.run_with(shutdown, |_| {}).await
    }

    /// As [`ProxyRunner::run`], calling `on_programmed` after each reprogramming.
    pub async fn run_with(
        mut self,
        shutdown: impl Future<Output = ()>,
        mut on_programmed: impl FnMut(Programmed),
    ) -> Result<()> {
        let nft = match self.nft.take() {
            Some(n) => n,
            None => Nft::open()?,
        };
        let mut streams: SelectAll<BoxStream<'static, Input>> = SelectAll::new();
        streams.push(watch(
            Api::<Service>::all(self.client.clone()),
            Input::Service,
        ));
        streams.push(watch(
            Api::<EndpointSlice>::all(self.client.clone()),
            Input::Slice,
        ));
        let policy = self.opts.policy.clone();
        if policy.is_some() {
            streams.push(watch(Api::<Pod>::all(self.client.clone()), Input::Pod));
            streams.push(watch(
                Api::<Namespace>::all(self.client.clone()),
                Input::Namespace,
            ));
            streams.push(watch(
                Api::<NetworkPolicy>::all(self.client.clone()),
                Input::Policy,
            ));
        }
        let mut services = Cache::<Service>::new();
        let mut slices = Cache::<EndpointSlice>::new();
        let mut pods = Cache::<Pod>::new();
        let mut namespaces = Cache::<Namespace>::new();
        let mut policies = Cache::<NetworkPolicy>::new();
        let mut shutdown = std::pin::pin!(shutdown);
        let (mut svc_dirty, mut pol_dirty) = (false, false);
        let (mut last_svc, mut last_pol): (Option<Table>, Option<Table>) = (None, None);
        let result = loop {
            let first = tokio::select! {
                _ = &mut shutdown => break Ok(()),
                i = streams.next() => i,
            };
            let Some(first) = first else {
                break Ok(());
            };
            // Take the whole burst that is ready, then program once.
            let mut batch = vec![first];
            while let Some(Some(i)) = streams.next().now_or_never() {
                batch.push(i);
            }
            for i in batch {
                match i {
                    Input::Service(e) => {
                        svc_dirty |= services.apply(e);
                    }
                    Input::Slice(e) => svc_dirty |= slices.apply(e),
                    Input::Pod(e) => pol_dirty |= pods.apply(e),
                    Input::Namespace(e) => pol_dirty |= namespaces.apply(e),
                    Input::Policy(e) => pol_dirty |= policies.apply(e),
                }
            }
            if svc_dirty && services.synced && slices.synced {
                svc_dirty = false;
                let svcs = services.values();
                if let Some(pool) = &self.opts.lb_pool {
                    self.assign_addresses(pool, &svcs).await;
                }
                let started = Instant::now();
                let table = service_table(&self.cfg, &svcs, &slices.values());
                let rules = table.rule_count();
                if let Err(e) = nft.update(last_svc.as_ref(), &table) {
                    tracing::error!(error = %e, "programming services failed");
                    break Err(e);
                }
                let p = Programmed {
                    objects: services.items.len() + slices.items.len(),
                    rules,
                    elapsed: started.elapsed(),
                };
                tracing::info!(objects = p.objects, rules = p.rules, elapsed = ?p.elapsed, "services programmed");
                last_svc = Some(table);
                on_programmed(p);
            }
            if let Some(pc) = &policy
                && pol_dirty
                && pods.synced
                && namespaces.synced
                && policies.synced
            {
                pol_dirty = false;
                let started = Instant::now();
                let table: Table =
                    policy_table(pc, &pods.values(), &namespaces.values(), &policies.values());
                if let Err(e) = nft.update(last_pol.as_ref(), &table) {
                    tracing::error!(error = %e, "programming policies failed");
                    break Err(e);
                }
                tracing::info!(rules = table.rule_count(), elapsed = ?started.elapsed(), "policies programmed");
                last_pol = Some(table);
            }
        };
        if self.opts.cleanup_on_exit {
            nft.delete_table(&self.cfg.table)?;
            if let Some(pc) = &policy {
                nft.delete_table(&pc.table)?;
            }
        }
        result
    }

    /// Sets `status.loadBalancer.ingress` of LoadBalancer Services from the pool.
    async fn assign_addresses(&self, pool: &LbPool, services: &[Service]) {
        for ((ns, name), ip) in allocate(pool, services) {
            let api = Api::<Service>::namespaced(self.client.clone(), &ns);
            let ingress = match ip {
                Some(ip) => json!([{ "ip": ip.to_string(), "ipMode": "VIP" }]),
                None => json!([]),
            };
            let patch = json!({ "status": { "loadBalancer": { "ingress": ingress } } });
            if let Err(e) = api
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                tracing::warn!(service = %format!("{ns}/{name}"), error = %Error::from(e), "setting the load-balancer address failed");
            }
        }
    }
}
