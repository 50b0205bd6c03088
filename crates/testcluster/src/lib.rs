//! An in-process Kubernetes-compatible cluster for tests: the Rust answer to envtest and kwok.
//!
//! [`TestCluster`] runs Berth's API server (`berth-apiserver`) on an in-memory or durable
//! embedded store, in the test's own process, with simulated nodes in the manner of kwok's fake
//! nodes: they register, heartbeat a Lease, turn pods bound to them Running and Ready with a
//! pod IP, delete pods marked for deletion, and can be told to fail a pod, go silent, come back
//! or leave. [`TestCluster::client`] is a `kube::Client` to drive it, in-process (no socket) or
//! over loopback HTTP. Components such as a scheduler, controllers, or the controller under
//! test run beside it through [`Builder::component`] / [`TestCluster::spawn`], and stop with
//! the cluster.
//!
//! Where to start: [`TestCluster::builder`]. The simulated nodes are in [`nodes`].
//!
//! ```
//! use berth_testcluster::{StoreConfig, TestCluster};
//! use k8s_openapi::api::core::v1::Node;
//! use kube::api::{Api, ListParams};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let cluster = TestCluster::builder()
//!     .nodes(3)
//!     .store(StoreConfig::InMemory)
//!     .start()
//!     .await?;
//! let nodes: Api<Node> = Api::all(cluster.client());
//! assert_eq!(nodes.list(&ListParams::default()).await?.items.len(), 3);
//! cluster.node("node-1").go_silent()?;
//! cluster.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! A user's own kube-rs controller tested on the cluster: `examples/controller_test.rs`
//! (`cargo run -p berth-testcluster --example controller_test`).

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use berth_api::store::{MemoryStore, Store};
use berth_apiserver::ApiServer;
use berth_controllers::ControllerManager;
pub use berth_controllers::node_lifecycle::NodeLifecycleConfig;
use berth_controllers::node_lifecycle::NodeLifecycleController;
pub use berth_controllers::runtime::Settings;
use berth_scheduler::runner::{RunnerOptions, SchedulerRunner};
use kube::Client;
use parking_lot::Mutex;
use tokio::task::JoinHandle;

mod error;
pub mod nodes;

pub use error::{Error, Result};
pub use nodes::NodeConfig;

use nodes::Fleet;

/// Where the cluster keeps its objects.
#[derive(Clone, Default)]
pub enum StoreConfig {
    /// `berth_api::store::MemoryStore`: fastest, gone with the cluster.
    #[default]
    InMemory,
    /// The durable embedded store (`berth_store::EmbeddedStore`) in this directory, which
    /// survives the cluster (start another on it to test a restart).
    Embedded(PathBuf),
    /// The durable embedded store in a temporary directory removed at shutdown.
    EmbeddedTemp,
    /// Any store.
    Custom(Arc<dyn Store>),
}

impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreConfig::InMemory => f.write_str("InMemory"),
            StoreConfig::Embedded(p) => f.debug_tuple("Embedded").field(p).finish(),
            StoreConfig::EmbeddedTemp => f.write_str("EmbeddedTemp"),
            StoreConfig::Custom(_) => f.write_str("Custom"),
        }
    }
}

type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send>>;
type ComponentFn = Box<dyn FnOnce(Client) -> BoxFuture + Send>;

/// Configures and starts a [`TestCluster`].
pub struct Builder {
    nodes: usize,
    store: StoreConfig,
    http: bool,
    node_config: NodeConfig,
    components: Vec<(String, ComponentFn)>,
    scheduler: bool,
    controllers: Option<Settings>,
    node_lifecycle: Option<NodeLifecycleConfig>,
}

impl std::fmt::Debug for Builder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder")
            .field("nodes", &self.nodes)
            .field("store", &self.store)
            .field("http", &self.http)
            .field("node_config", &self.node_config)
            .field(
                "components",
                &self.components.iter().map(|c| &c.0).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Builder {
    /// How many simulated nodes to register at start (default 0).
    pub fn nodes(mut self, n: usize) -> Self {
        self.nodes = n;
        self
    }

    /// The store (default in-memory).
    pub fn store(mut self, store: StoreConfig) -> Self {
        self.store = store;
        self
    }

    /// Serve the API on a loopback port and make [`TestCluster::client`] use HTTP (default
    /// false: requests go straight into the server's router, no socket).
    pub fn http(mut self, http: bool) -> Self {
        self.http = http;
        self
    }

    /// What the simulated nodes look like and how often they heartbeat.
    pub fn node_config(mut self, config: NodeConfig) -> Self {
        self.node_config = config;
        self
    }

    /// Runs Berth's scheduler (`berth_scheduler::runner::SchedulerRunner`, default profile) in
    /// the cluster, so pods without a `nodeName` get one.
    pub fn scheduler(mut self, on: bool) -> Self {
        self.scheduler = on;
        self
    }

    /// Runs Berth's controller manager in the cluster with these settings: every built-in
    /// controller of `berth-controllers` plus the Endpoints and EndpointSlice controllers
    /// (the node lifecycle controller is [`Builder::node_lifecycle`], for its timings).
    pub fn controllers(mut self, settings: Settings) -> Self {
        self.controllers = Some(settings);
        self
    }

    /// Runs the node lifecycle controller with these timings.
    pub fn node_lifecycle(mut self, config: NodeLifecycleConfig) -> Self {
        self.node_lifecycle = Some(config);
        self
    }

    /// Runs `component` beside the cluster (a scheduler, controllers, the controller under
    /// test) with the cluster's client, started after the nodes registered and stopped at
    /// shutdown.
    pub fn component<F, Fut>(mut self, name: impl Into<String>, component: F) -> Self
    where
        F: FnOnce(Client) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.components
            .push((name.into(), Box::new(move |c| Box::pin(component(c)))));
        self
    }

    /// Starts the cluster: opens the store, starts the API server (and its socket with
    /// [`Builder::http`]), registers the nodes, then starts the components.
    pub async fn start(self) -> Result<TestCluster> {
        let mut tempdir = None;
        let reopenable = matches!(self.store, StoreConfig::Embedded(_));
        let store: Arc<dyn Store> = match self.store {
            StoreConfig::InMemory => Arc::new(MemoryStore::new()),
            StoreConfig::Custom(s) => s,
            StoreConfig::Embedded(dir) => open_embedded(dir).await?,
            StoreConfig::EmbeddedTemp => {
                let dir = tempfile::Builder::new()
                    .prefix("berth-testcluster-")
                    .tempdir()
                    .map_err(|source| Error::Io {
                        what: "creating a temporary store directory".into(),
                        source,
                    })?;
                let store = open_embedded(dir.path().join("store")).await?;
                tempdir = Some(dir);
                store
            }
        };
        let server = ApiServer::new(store.clone())
            .await
            .map_err(Error::ApiServer)?;
        let local = Client::new(server.router(), "default");
        let tasks = Vec::new();
        let mut http_addr = None;
        let mut http_task = None;
        let http_stop = Arc::new(tokio::sync::Notify::new());
        let client = if self.http {
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
                .await
                .map_err(|source| Error::Io {
                    what: "binding a loopback port".into(),
                    source,
                })?;
            let addr = listener.local_addr().map_err(|source| Error::Io {
                what: "reading the loopback address".into(),
                source,
            })?;
            let router = server.router();
            let stop = http_stop.clone();
            http_task = Some(tokio::spawn(async move {
                let serve = axum::serve(listener, router)
                    .with_graceful_shutdown(async move { stop.notified().await });
                if let Err(e) = serve.await {
                    tracing::warn!(error = %e, "test cluster HTTP server stopped");
                }
            }));
            http_addr = Some(addr);
            let uri: http::Uri = format!("http://{addr}")
                .parse()
                .map_err(|e| Error::Invalid(format!("loopback URL: {e}")))?;
            let mut config = kube::Config::new(uri);
            config.default_namespace = "default".into();
            Client::try_from(config)?
        } else {
            local.clone()
        };
        let fleet = Fleet::new(client.clone(), self.node_config);
        let cluster = TestCluster {
            parts: Some(Parts {
                client,
                local,
                server,
                fleet: fleet.clone(),
            }),
            store,
            reopenable,
            http_addr,
            http_task,
            http_stop,
            tasks: Mutex::new(tasks),
            _tempdir: tempdir,
        };
        cluster.spawn_task(fleet.clone().pod_loop());
        cluster.spawn_task(fleet.clone().node_loop());
        fleet.add_nodes(self.nodes).await?;
        cluster.spawn_task(fleet.clone().heartbeat_loop());
        if self.scheduler {
            cluster.spawn_task(run_scheduler(cluster.client()));
        }
        if let Some(settings) = self.controllers {
            cluster.spawn_task(run_controllers(cluster.client(), settings));
        }
        if let Some(config) = self.node_lifecycle {
            cluster.spawn_task(NodeLifecycleController::new(cluster.client(), config).run());
        }
        for (_, component) in self.components {
            let fut = component(cluster.client());
            cluster.spawn_task(fut);
        }
        Ok(cluster)
    }
}

/// The scheduler with its default profile, until aborted.
pub async fn run_scheduler(client: Client) {
    let runner = match SchedulerRunner::new(client, &berth_scheduler::Config::default()) {
        Ok(r) => r.options(RunnerOptions {
            events: false,
            ..RunnerOptions::default()
        }),
        Err(e) => {
            tracing::error!(error = %e, "the scheduler could not start");
            return;
        }
    };
    if let Err(e) = runner.run(std::future::pending()).await {
        tracing::error!(error = %e, "the scheduler stopped");
    }
}

/// Berth's controller manager (every built-in controller plus Endpoints and EndpointSlice),
/// until aborted.
pub async fn run_controllers(client: Client, settings: Settings) {
    let manager = ControllerManager::new(client)
        .register(berth_controllers::endpoints::ENDPOINTS_SPEC)
        .register(berth_controllers::endpoints::ENDPOINTSLICE_SPEC)
        .settings(settings);
    if let Err(e) = manager.run(Default::default()).await {
        tracing::error!(error = %e, "the controller manager stopped");
    }
}

async fn open_embedded(dir: PathBuf) -> Result<Arc<dyn Store>> {
    let store = tokio::task::spawn_blocking(move || berth_store::EmbeddedStore::open(dir))
        .await
        .map_err(|e| Error::Invalid(format!("opening the store: {e}")))?
        .map_err(Error::Store)?;
    Ok(Arc::new(store))
}

/// What holds the API server (and through it the store) alive.
struct Parts {
    client: Client,
    local: Client,
    server: ApiServer,
    fleet: Arc<Fleet>,
}

/// A running test cluster; everything it started stops on [`TestCluster::shutdown`] or drop.
///
/// Drop aborts every task at once; [`TestCluster::shutdown`] also waits (up to 5 s) until a
/// [`StoreConfig::Embedded`] store is released, which reopening its directory needs. An in-process
/// client handed out by [`TestCluster::client`] holds the server, so drop those first.
pub struct TestCluster {
    parts: Option<Parts>,
    store: Arc<dyn Store>,
    /// A store directory someone may open again after us: wait for its release.
    reopenable: bool,
    http_addr: Option<SocketAddr>,
    http_task: Option<JoinHandle<()>>,
    http_stop: Arc<tokio::sync::Notify>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    _tempdir: Option<tempfile::TempDir>,
}

impl std::fmt::Debug for TestCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCluster")
            .field("http_addr", &self.http_addr)
            .field("fleet", &self.parts().fleet)
            .finish_non_exhaustive()
    }
}

impl TestCluster {
    /// A builder with no nodes, the in-memory store, no socket.
    pub fn builder() -> Builder {
        Builder {
            nodes: 0,
            store: StoreConfig::InMemory,
            http: false,
            node_config: NodeConfig::default(),
            components: Vec::new(),
            scheduler: false,
            controllers: None,
            node_lifecycle: None,
        }
    }

    fn parts(&self) -> &Parts {
        self.parts
            .as_ref()
            .expect("the parts are only taken by shutdown, which consumes the cluster")
    }

    /// A kube client for the cluster (over HTTP when the cluster serves HTTP).
    pub fn client(&self) -> Client {
        self.parts().client.clone()
    }

    /// A kube client that calls the API server's router directly, even when HTTP is served.
    pub fn in_process_client(&self) -> Client {
        self.parts().local.clone()
    }

    /// The loopback address the API is served on, with [`Builder::http`].
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// The API server.
    pub fn api_server(&self) -> &ApiServer {
        &self.parts().server
    }

    /// The store under the API server.
    pub fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    /// The simulated nodes' names, in registration order.
    pub fn node_names(&self) -> Vec<String> {
        self.parts().fleet.node_names()
    }

    /// Controls for one simulated node (whether it exists is checked by each call).
    pub fn node(&self, name: &str) -> NodeHandle<'_> {
        NodeHandle {
            cluster: self,
            name: name.to_owned(),
        }
    }

    /// Registers one more simulated node; returns its name.
    pub async fn add_node(&self) -> Result<String> {
        self.parts().fleet.add_node().await
    }

    /// Makes pod `ns/name`'s containers exit with `exit_code`, as its kubelet would report
    /// it: with `restartPolicy: Never` (or `OnFailure` and code 0) the pod ends `Failed` (or
    /// `Succeeded` for 0); otherwise the containers restart (restartCount + 1, lastState
    /// terminated) and the pod stays Running.
    pub async fn fail_pod(&self, ns: &str, name: &str, exit_code: i32) -> Result<()> {
        self.parts().fleet.fail_pod(ns, name, exit_code).await
    }

    /// Sets pod `ns/name`'s Ready (and ContainersReady) condition, as a readiness probe would;
    /// the simulated node keeps it so until told otherwise.
    pub async fn set_ready(&self, ns: &str, name: &str, ready: bool) -> Result<()> {
        self.parts().fleet.set_ready(ns, name, ready).await
    }

    /// Runs `fut` until it ends or the cluster shuts down; abort it earlier with the returned
    /// handle (to kill a controller-manager mid-work, say).
    pub fn spawn<Fut>(&self, fut: Fut) -> tokio::task::AbortHandle
    where
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.spawn_task(fut)
    }

    fn spawn_task<Fut>(&self, fut: Fut) -> tokio::task::AbortHandle
    where
        Fut: Future<Output = ()> + Send + 'static,
    {
        let handle = tokio::spawn(fut);
        let abort = handle.abort_handle();
        let mut tasks = self.tasks.lock();
        tasks.retain(|t| !t.is_finished());
        tasks.push(handle);
        abort
    }

    /// Stops the nodes, the components and the HTTP server and waits for them to end; the
    /// store closes when the last reference to it goes (a temporary store directory is
    /// removed).
    pub async fn shutdown(mut self) {
        let tasks = std::mem::take(&mut *self.tasks.lock());
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            let _ = t.await;
        }
        self.parts = None;
        // Open connections finish their requests (watches end as their clients went away).
        self.http_stop.notify_one();
        if let Some(t) = self.http_task.take() {
            let abort = t.abort_handle();
            if tokio::time::timeout(std::time::Duration::from_secs(5), t)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        // The server's watch tasks notice their closed streams and drop the store.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while self.reopenable
            && Arc::strong_count(&self.store) > 1
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for t in self.tasks.lock().drain(..) {
            t.abort();
        }
        self.http_stop.notify_one();
        if let Some(t) = self.http_task.take() {
            t.abort();
        }
    }
}

/// Polls `check` every 20 ms until it returns true; false if `timeout` passed first. The
/// usual shape of an assertion on an eventually-consistent cluster.
pub async fn eventually<F, Fut>(timeout: std::time::Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Controls for one simulated node, from [`TestCluster::node`].
#[derive(Debug)]
pub struct NodeHandle<'a> {
    cluster: &'a TestCluster,
    name: String,
}

impl NodeHandle<'_> {
    /// The node stops heartbeating and handling its pods, as if cut off from the cluster.
    pub fn go_silent(&self) -> Result<()> {
        self.cluster.parts().fleet.set_silent(&self.name, true)
    }

    /// A silent node comes back: it renews its Lease, reports Ready and catches up with its
    /// pods (starts new ones, removes deleted ones, reports readiness again).
    pub async fn come_back(&self) -> Result<()> {
        self.cluster.parts().fleet.come_back(&self.name).await
    }

    /// The node leaves: it stops and its Node and Lease are deleted.
    pub async fn remove(&self) -> Result<()> {
        self.cluster.parts().fleet.remove(&self.name).await
    }

    /// Whether the node is (still) one of the cluster's simulated nodes.
    pub fn exists(&self) -> bool {
        self.cluster.parts().fleet.has_node(&self.name)
    }
}
