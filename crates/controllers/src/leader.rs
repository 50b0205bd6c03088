//! Leader election on a coordination.k8s.io/v1 Lease, as client-go's `leaderelection` does it:
//! several controller managers may run, exactly one acts.
//!
//! A candidate takes the Lease when nobody holds it or its holder stopped renewing for
//! `lease_duration` (measured on the candidate's own clock from when it last saw the Lease
//! change, so clock skew between machines does not matter). The leader renews every
//! `retry_period`; if it cannot renew for `renew_deadline` (shorter than `lease_duration`) it
//! stops acting, so it has stopped before anyone else can take over. On shutdown it releases the
//! Lease (empty holder), and the next candidate takes over at once.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result, is_conflict, is_not_found};

/// Which Lease to hold, as whom, and the timings.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// Namespace of the Lease (`kube-system`).
    pub namespace: String,
    /// Name of the Lease (`kube-controller-manager`).
    pub name: String,
    /// This candidate's identity (host name plus a unique suffix).
    pub identity: String,
    /// How long a holder that stopped renewing keeps the Lease.
    pub lease_duration: Duration,
    /// How long the leader keeps acting while renewals fail.
    pub renew_deadline: Duration,
    /// How often candidates retry and the leader renews.
    pub retry_period: Duration,
}

impl LeaseConfig {
    /// kube-controller-manager's defaults (15 s, 10 s, 2 s) for Lease `namespace/name`.
    pub fn new(namespace: &str, name: &str, identity: &str) -> Self {
        LeaseConfig {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            identity: identity.to_owned(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }

    /// Same Lease and identity with other timings.
    pub fn timings(mut self, lease: Duration, renew: Duration, retry: Duration) -> Self {
        self.lease_duration = lease;
        self.renew_deadline = renew;
        self.retry_period = retry;
        self
    }
}

#[derive(Debug)]
struct Observed {
    /// (holder, renewTime) last seen, and when this candidate saw it change.
    record: Option<(String, Option<MicroTime>)>,
    at: Instant,
}

/// One candidate for one Lease.
#[derive(Debug)]
pub struct LeaderElector {
    api: Api<Lease>,
    cfg: LeaseConfig,
    observed: Mutex<Observed>,
}

impl LeaderElector {
    /// A candidate using `client`.
    pub fn new(client: Client, cfg: LeaseConfig) -> Self {
        LeaderElector {
            api: Api::namespaced(client, &cfg.namespace),
            cfg,
            observed: Mutex::new(Observed {
                record: None,
                at: Instant::now(),
            }),
        }
    }

    /// The Lease's `namespace/name`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.cfg.namespace, self.cfg.name)
    }

    /// Waits until this candidate holds the Lease.
    pub async fn acquire(&self) -> Result<()> {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    tracing::info!(lease = %self.name(), identity = %self.cfg.identity, "became leader");
                    return Ok(());
                }
                Ok(false) => {}
                Err(e) => tracing::debug!(error = %e, "lease acquire attempt failed"),
            }
            tokio::time::sleep(self.cfg.retry_period).await;
        }
    }

    /// Renews every `retry_period` until `stop` (returns `false`) or until renewals failed for
    /// `renew_deadline` (returns `true`: leadership lost).
    pub async fn keep_renewing(&self, stop: CancellationToken) -> bool {
        let mut last_ok = Instant::now();
        loop {
            tokio::select! {
                () = tokio::time::sleep(self.cfg.retry_period) => {}
                () = stop.cancelled() => return false,
            }
            let left = self.cfg.renew_deadline.saturating_sub(last_ok.elapsed());
            let attempt = tokio::time::timeout(left, self.try_acquire_or_renew()).await;
            match attempt {
                Ok(Ok(true)) => last_ok = Instant::now(),
                Ok(Ok(false)) => {
                    tracing::warn!(lease = %self.name(), "another candidate holds the lease");
                    return true;
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "lease renewal failed"),
                Err(_) => {}
            }
            if last_ok.elapsed() >= self.cfg.renew_deadline {
                tracing::warn!(lease = %self.name(), "could not renew within the deadline");
                return true;
            }
        }
    }

    /// Gives the Lease up (if still held) so another candidate takes over at once.
    pub async fn release(&self) {
        let Ok(mut lease) = self.api.get(&self.cfg.name).await else {
            return;
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(&self.cfg.identity) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        if let Err(e) = self
            .api
            .replace(&self.cfg.name, &PostParams::default(), &lease)
            .await
        {
            tracing::warn!(error = %e, "cannot release the lease");
        }
    }

    /// One attempt: take the Lease if free or expired, renew it if ours. `Ok(true)` if held.
    pub async fn try_acquire_or_renew(&self) -> Result<bool> {
        let now = MicroTime(Timestamp::now());
        let secs = i32::try_from(self.cfg.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX);
        let existing = match self.api.get(&self.cfg.name).await {
            Ok(l) => l,
            Err(e) if is_not_found(&e) => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.cfg.name.clone()),
                        namespace: Some(self.cfg.namespace.clone()),
                        ..Default::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(self.cfg.identity.clone()),
                        lease_duration_seconds: Some(secs),
                        acquire_time: Some(now.clone()),
                        renew_time: Some(now.clone()),
                        lease_transitions: Some(0),
                        ..Default::default()
                    }),
                };
                return match self.api.create(&PostParams::default(), &lease).await {
                    Ok(_) => {
                        self.observe(&self.cfg.identity, Some(now));
                        Ok(true)
                    }
                    Err(e) if is_conflict(&e) => Ok(false),
                    Err(e) => Err(Error::api("create lease")(e)),
                };
            }
            Err(e) => return Err(Error::api("get lease")(e)),
        };
        let spec = existing.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        self.observe(&holder, spec.renew_time.clone());
        let ours = holder == self.cfg.identity;
        if !ours && !holder.is_empty() {
            let observed_at = self.observed.lock().at;
            let held_for = Duration::from_secs(
                u64::try_from(spec.lease_duration_seconds.unwrap_or(secs).max(1)).unwrap_or(1),
            );
            if observed_at.elapsed() < held_for {
                return Ok(false);
            }
        }
        let mut lease = existing;
        let new = lease.spec.get_or_insert_with(LeaseSpec::default);
        if !ours {
            new.acquire_time = Some(now.clone());
            new.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        new.holder_identity = Some(self.cfg.identity.clone());
        new.lease_duration_seconds = Some(secs);
        new.renew_time = Some(now.clone());
        match self
            .api
            .replace(&self.cfg.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => {
                self.observe(&self.cfg.identity, Some(now));
                Ok(true)
            }
            // Someone else wrote it first: they hold it now.
            Err(e) if is_conflict(&e) => Ok(false),
            Err(e) => Err(Error::api("update lease")(e)),
        }
    }

    fn observe(&self, holder: &str, renew: Option<MicroTime>) {
        let mut o = self.observed.lock();
        let record = Some((holder.to_owned(), renew));
        if o.record != record {
            o.record = record;
            o.at = Instant::now();
        }
    }
}
