//! [`ControllerManager`]: runs a chosen set of controllers against one API server, sharing one
//! cache per kind, optionally only while it holds a leader [`Lease`](crate::leader).
//!
//! Each controller is a [`ControllerSpec`]: a name and a function that, given the shared
//! [`Context`], subscribes to the caches it needs and returns the future that runs it. The manager
//! builds every chosen controller, starts the watches, waits for the caches to sync, then runs
//! them until shutdown.

use std::sync::Arc;

use futures::future::BoxFuture;
use kube::Client;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::leader::{LeaderElector, LeaseConfig};
use crate::runtime::{Clock, Context, Settings};

/// A controller the manager can run.
#[derive(Clone, Copy)]
pub struct ControllerSpec {
    /// Its name on the command line (`replicaset`, `deployment`, ...).
    pub name: &'static str,
    /// Builds it: subscribe to caches now, run when the returned future is polled.
    pub start: fn(&Context) -> BoxFuture<'static, ()>,
}

impl std::fmt::Debug for ControllerSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

/// Every controller of this crate, in kube-controller-manager's naming.
pub fn builtin() -> Vec<ControllerSpec> {
    vec![
        ControllerSpec {
            name: "replicaset",
            start: crate::replicaset::start,
        },
        ControllerSpec {
            name: "deployment",
            start: crate::deployment::start,
        },
        ControllerSpec {
            name: "daemonset",
            start: crate::daemonset::start,
        },
        ControllerSpec {
            name: "statefulset",
            start: crate::statefulset::start,
        },
        ControllerSpec {
            name: "job",
            start: crate::job::start,
        },
        ControllerSpec {
            name: "cronjob",
            start: crate::cronjob::start,
        },
        ControllerSpec {
            name: "serviceaccount",
            start: crate::serviceaccount::start,
        },
        ControllerSpec {
            name: "garbagecollector",
            start: crate::gc::start,
        },
        crate::node_ipam::NODE_IPAM_SPEC,
    ]
}

/// Runs controllers on a [`kube::Client`].
///
/// ```no_run
/// # async fn demo(client: kube::Client) -> berth_controllers::Result<()> {
/// use berth_controllers::ControllerManager;
/// let handle = ControllerManager::new(client)
///     .controllers(["replicaset", "deployment"])?
///     .spawn();
/// // ... later
/// handle.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct ControllerManager {
    ctx: Context,
    specs: Vec<ControllerSpec>,
    chosen: Option<Vec<String>>,
    lease: Option<LeaseConfig>,
}

impl ControllerManager {
    /// A manager running every built-in controller on `client`.
    pub fn new(client: Client) -> Self {
        ControllerManager {
            ctx: Context::new(client),
            specs: builtin(),
            chosen: None,
            lease: None,
        }
    }

    /// Runs only the named controllers (`*` means all).
    pub fn controllers<I, S>(mut self, names: I) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let names: Vec<String> = names.into_iter().map(|s| s.as_ref().to_owned()).collect();
        if names.iter().any(|n| n == "*") {
            self.chosen = None;
            return Ok(self);
        }
        for n in &names {
            if !self.specs.iter().any(|s| s.name == n) {
                return Err(Error::UnknownController(n.clone()));
            }
        }
        self.chosen = Some(names);
        Ok(self)
    }

    /// Adds a controller defined elsewhere (a test cluster's node lifecycle, a user's own).
    pub fn register(mut self, spec: ControllerSpec) -> Self {
        self.specs.retain(|s| s.name != spec.name);
        self.specs.push(spec);
        self
    }

    /// Uses `clock` instead of the system clock.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.ctx.clock = clock;
        self
    }

    /// Replaces the tunables.
    pub fn settings(mut self, settings: Settings) -> Self {
        self.ctx.settings = settings;
        self
    }

    /// Acts only while holding the Lease described by `config`.
    pub fn leader_election(mut self, config: LeaseConfig) -> Self {
        self.lease = Some(config);
        self
    }

    /// The names of the controllers this manager would run.
    pub fn names(&self) -> Vec<&'static str> {
        self.specs
            .iter()
            .filter(|s| {
                self.chosen
                    .as_ref()
                    .is_none_or(|c| c.iter().any(|n| n == s.name))
            })
            .map(|s| s.name)
            .collect()
    }

    /// Runs until `shutdown` is cancelled (then lets running reconciles finish), or until the
    /// leader lease is lost (then returns [`Error::LeaseLost`] as soon as every controller
    /// stopped: a manager that is not the leader must not act).
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let elector = self
            .lease
            .clone()
            .map(|cfg| LeaderElector::new(self.ctx.client.clone(), cfg));
        if let Some(e) = &elector {
            tokio::select! {
                r = e.acquire() => r?,
                () = shutdown.cancelled() => return Ok(()),
            }
        }
        let names = self.names();
        let mut ctx = self.ctx;
        let stop = shutdown.child_token();
        ctx.shutdown = stop.clone();
        let runs: Vec<BoxFuture<'static, ()>> = self
            .specs
            .iter()
            .filter(|s| names.contains(&s.name))
            .map(|s| (s.start)(&ctx))
            .collect();
        ctx.informers.start(stop.clone());
        tracing::info!(controllers = ?names, "controller manager started");
        let all = async move {
            tokio::select! {
                () = ctx.informers.wait_synced() => {}
                () = ctx.shutdown.cancelled() => return,
            }
            futures::future::join_all(runs).await;
        };
        let lost = match &elector {
            Some(e) => {
                let renew = e.keep_renewing(stop.clone());
                tokio::pin!(renew);
                tokio::pin!(all);
                let lost = tokio::select! {
                    () = &mut all => false,
                    lost = &mut renew => lost,
                };
                stop.cancel();
                if lost {
                    // Stop acting before the lease can expire: the renew deadline leaves time.
                    all.await;
                } else {
                    e.release().await;
                }
                lost
            }
            None => {
                all.await;
                false
            }
        };
        stop.cancel();
        if lost {
            Err(Error::LeaseLost(
                elector.map(|e| e.name().to_owned()).unwrap_or_default(),
            ))
        } else {
            Ok(())
        }
    }

    /// Runs in a task; the handle stops it.
    pub fn spawn(self) -> ManagerHandle {
        let token = CancellationToken::new();
        let task = tokio::spawn(self.run(token.clone()));
        ManagerHandle { token, task }
    }
}

/// A running [`ControllerManager`].
#[derive(Debug)]
pub struct ManagerHandle {
    token: CancellationToken,
    task: JoinHandle<Result<()>>,
}

impl ManagerHandle {
    /// Graceful shutdown: running reconciles finish, the lease (if any) is released.
    pub async fn shutdown(self) -> Result<()> {
        self.token.cancel();
        self.task.await.unwrap_or(Ok(()))
    }

    /// Kills the manager at once, as `kill -9` would: nothing finishes, nothing is released.
    pub fn abort(self) {
        self.task.abort();
        // The run future is gone; this only stops the watches it started.
        self.token.cancel();
    }

    /// Whether it stopped (shut down, or lost its lease).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}
