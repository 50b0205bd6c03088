//! What kube-runtime leaves to each operator and every Berth controller shares: one cache per
//! kind for the process ([`informers`]), expectations ([`expectations`]), rate-limited requeue
//! ([`ratelimit`]), Events ([`events`]), an injectable clock ([`clock`]), and [`drive`], which
//! runs a kube-runtime [`Controller`] with all of them and graceful shutdown.

pub mod clock;
pub mod events;
pub mod expectations;
pub mod informers;
pub mod ratelimit;

use std::collections::HashMap;
use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::future::BoxFuture;
use kube::Client;
use kube::runtime::Controller;
use kube::runtime::controller::{self, Action};
use kube::runtime::reflector::ObjectRef;
use tokio_util::sync::CancellationToken;

use crate::error::Error;
pub use clock::{Clock, FakeClock, SystemClock};
pub use events::{EventType, Recorder};
pub use expectations::{Expectations, Seen};
pub use informers::{Cached, Index, Informers};
pub use ratelimit::{RateLimiter, RateLimits};

/// Tunables shared by the controllers of one manager.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Reconciles running at once per controller (kube-controller-manager's `--concurrent-*-syncs`).
    pub concurrency: u16,
    /// Most pods a ReplicaSet/Job creates or deletes in one sync (Kubernetes' `BurstReplicas`).
    pub burst_replicas: usize,
    /// Whether controllers record Events.
    pub events: bool,
    /// Requeue limits after a failed reconcile.
    pub rate_limits: RateLimits,
    /// First delay before a Job replaces a failed pod (doubles per failure; Kubernetes: 10 s).
    pub job_backoff: Duration,
    /// Longest such delay (Kubernetes: 6 min).
    pub job_backoff_max: Duration,
    /// Least time between two reconciles of the same object: triggers arriving meanwhile are
    /// merged into one later reconcile (never dropped). A ReplicaSet with 10,000 pods is woken
    /// by every one of their changes; this bounds how often it recounts them.
    pub coalesce: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            concurrency: 5,
            burst_replicas: 500,
            events: true,
            rate_limits: RateLimits::default(),
            job_backoff: Duration::from_secs(10),
            job_backoff_max: Duration::from_secs(360),
            coalesce: Duration::from_millis(20),
        }
    }
}

/// Everything a controller gets from its manager.
#[derive(Clone)]
pub struct Context {
    /// The API client.
    pub client: Client,
    /// The process-wide caches.
    pub informers: Informers,
    /// Creates/deletes in flight, per owner (shared by all controllers).
    pub expectations: Expectations,
    /// Time.
    pub clock: Arc<dyn Clock>,
    /// Cancelled when the manager stops.
    pub shutdown: CancellationToken,
    /// Tunables.
    pub settings: Settings,
}

impl Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("informers", &self.informers)
            .field("clock", &self.clock)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Context {
    /// A context for `client` with fresh caches and the system clock.
    pub fn new(client: Client) -> Self {
        Context {
            informers: Informers::new(client.clone()),
            client,
            expectations: Expectations::new(),
            clock: Arc::new(SystemClock),
            shutdown: CancellationToken::new(),
            settings: Settings::default(),
        }
    }

    /// An Events recorder for `component` (disabled when the settings say so).
    pub fn recorder(&self, component: &str) -> Recorder {
        if self.settings.events {
            Recorder::new(self.client.clone(), component)
        } else {
            Recorder::disabled()
        }
    }
}

/// Runs `controller` with `reconcile` until the context shuts down: failures are retried after
/// the rate limiter's delay (reset on success), and shutdown lets running reconciles finish.
pub fn drive<K, C, F, Fut>(
    name: &'static str,
    controller: Controller<K>,
    ctx: &Context,
    state: Arc<C>,
    reconcile: F,
) -> BoxFuture<'static, ()>
where
    K: Cached,
    C: Send + Sync + 'static,
    F: Fn(Arc<K>, Arc<C>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Action, Error>> + Send + 'static,
{
    let limiter: RateLimiter<ObjectRef<K>> = RateLimiter::new(ctx.settings.rate_limits);
    let forget = limiter.clone();
    let reconcile = Arc::new(reconcile);
    let coalesce = ctx.settings.coalesce;
    let last_start: Arc<parking_lot::Mutex<HashMap<ObjectRef<K>, Instant>>> = Arc::default();
    let cache = controller.store();
    let wrapped = move |mut obj: Arc<K>, state: Arc<C>| {
        let key = ObjectRef::from_obj(&*obj);
        let reconcile = reconcile.clone();
        let cache = cache.clone();
        let forget = forget.clone();
        let last_start = last_start.clone();
        async move {
            if !coalesce.is_zero() {
                // While this waits, kube-runtime holds the object as running: new triggers for
                // it merge into one pending reconcile, which then sees the latest cache.
                let wait = {
                    let mut last = last_start.lock();
                    let now = Instant::now();
                    if last.len() > 4096 {
                        last.retain(|_, t| now.duration_since(*t) < coalesce);
                    }
                    let wait = last.get(&key).map_or(Duration::ZERO, |t| {
                        coalesce.saturating_sub(now.duration_since(*t))
                    });
                    last.insert(key.clone(), now + wait);
                    wait
                };
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                    // Reconcile what the cache holds now.
                    match cache.get(&key) {
                        Some(fresh) => obj = fresh,
                        None => return Ok(Action::await_change()),
                    }
                }
            }
            let r = reconcile(obj, state).await;
            if r.is_ok() {
                forget.forget(&key);
            }
            r
        }
    };
    let policy = move |obj: Arc<K>, err: &Error, _: Arc<C>| {
        let key = ObjectRef::from_obj(&*obj);
        let delay = limiter.when(&key);
        if err.is_conflict() {
            tracing::debug!(controller = name, %key, "conflict (stale cache), retry in {delay:?}");
        } else {
            tracing::warn!(controller = name, %key, error = %err, "reconcile failed, retry in {delay:?}");
        }
        Action::requeue(delay)
    };
    let config = controller::Config::default().concurrency(ctx.settings.concurrency);
    let run = controller
        .with_config(config)
        .graceful_shutdown_on(ctx.shutdown.clone().cancelled_owned())
        .run(wrapped, policy, state)
        .for_each(move |res| async move {
            if let Err(e) = res {
                tracing::trace!(controller = name, error = %e, "controller event");
            }
        });
    Box::pin(run)
}

/// Requeue after `d`, capped by the clock's polling interval (fake clocks jump).
pub fn requeue_at(clock: &dyn Clock, d: Duration) -> Action {
    Action::requeue(clock::sleep_for(clock, d).max(Duration::from_millis(10)))
}
