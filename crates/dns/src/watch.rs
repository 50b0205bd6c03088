//! Keeping the records current: kube-rs reflectors over Services and EndpointSlices, and a
//! new [`ClusterRecords`] snapshot swapped in after each burst of changes.
//!
//! Events that arrive together are coalesced into one rebuild; until both initial lists have
//! arrived the snapshot stays as it was (empty at start), so a restarting server never
//! answers NXDOMAIN from a half-listed cluster.

use std::sync::Arc;

use arc_swap::ArcSwap;
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};

use crate::Result;
use crate::records::ClusterRecords;

/// Watch Services and EndpointSlices through `client` and keep `records` current for
/// `domain`. Runs until the watch streams end (they retry with backoff on errors).
pub async fn watch(
    client: Client,
    domain: String,
    ttl: u32,
    records: Arc<ArcSwap<ClusterRecords>>,
) -> Result<()> {
    let (services, svc_writer) = reflector::store::<Service>();
    let (slices, slice_writer) = reflector::store::<EndpointSlice>();
    let svc_events = reflector::reflector(
        svc_writer,
        watcher(
            Api::<Service>::all(client.clone()),
            watcher::Config::default(),
        ),
    )
    .default_backoff()
    .map(|e| e.map(|_| ()).map_err(|err| ("Service", err)))
    .boxed();
    let slice_events = reflector::reflector(
        slice_writer,
        watcher(
            Api::<EndpointSlice>::all(client),
            watcher::Config::default(),
        ),
    )
    .default_backoff()
    .map(|e| e.map(|_| ()).map_err(|err| ("EndpointSlice", err)))
    .boxed();
    let mut events = futures::stream::select(svc_events, slice_events);
    loop {
        let Some(first) = events.next().await else {
            return Ok(());
        };
        log(first);
        // Coalesce whatever else is already waiting into this rebuild.
        while let Some(Some(next)) = events.next().now_or_never() {
            log(next);
        }
        if services.wait_until_ready().now_or_never().is_none()
            || slices.wait_until_ready().now_or_never().is_none()
        {
            continue;
        }
        rebuild(&domain, ttl, &services, &slices, &records)?;
    }
}

fn log(event: Result<(), (&'static str, kube::runtime::watcher::Error)>) {
    if let Err((kind, err)) = event {
        tracing::warn!(kind, %err, "cluster DNS watch error (retrying)");
    }
}

fn rebuild(
    domain: &str,
    ttl: u32,
    services: &Store<Service>,
    slices: &Store<EndpointSlice>,
    records: &ArcSwap<ClusterRecords>,
) -> Result<()> {
    let svcs = services.state();
    let eps = slices.state();
    let snapshot =
        ClusterRecords::build(domain, svcs.iter().map(|s| &**s), eps.iter().map(|s| &**s))?
            .with_ttl(ttl);
    tracing::debug!(
        services = snapshot.service_count(),
        "cluster DNS records rebuilt"
    );
    records.store(Arc::new(snapshot));
    Ok(())
}
