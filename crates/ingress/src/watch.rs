//! Keeping the routing table current: kube-rs reflectors over Ingresses, IngressClasses
//! (when the API serves them), Services, EndpointSlices and Secrets; a new table built and
//! swapped in after each burst of changes; `status.loadBalancer` of the served Ingresses set
//! to the published addresses.

use std::sync::Arc;

use arc_swap::ArcSwap;
use futures::{FutureExt, Stream, StreamExt};
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use serde_json::json;

use crate::table::{ClassConfig, Objects, RoutingTable};

/// What the watch needs besides the client.
#[derive(Debug, Clone, Default)]
pub struct WatchConfig {
    /// Which Ingresses to serve.
    pub class: ClassConfig,
    /// Addresses written to `status.loadBalancer.ingress` (IPs or host names); none: leave
    /// the status alone.
    pub publish: Vec<String>,
}

type Event = Result<(), (&'static str, watcher::Error)>;

fn watch_kind<K>(
    client: &Client,
    kind: &'static str,
) -> (Store<K>, impl Stream<Item = Event> + Send + use<K>)
where
    K: Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + Send
        + Sync
        + serde::de::DeserializeOwned
        + 'static,
{
    let (store, writer) = reflector::store::<K>();
    let events = reflector::reflector(
        writer,
        watcher(Api::<K>::all(client.clone()), watcher::Config::default()),
    )
    .default_backoff()
    .map(move |e| e.map(|_| ()).map_err(|err| (kind, err)));
    (store, events)
}

/// Watch the cluster through `client` and keep `table` current; runs until the streams end.
pub async fn watch(
    client: Client,
    config: WatchConfig,
    table: Arc<ArcSwap<RoutingTable>>,
) -> crate::Result<()> {
    // IngressClass is optional: a server without the kind gets the configured class name.
    let classes_served = Api::<IngressClass>::all(client.clone())
        .list(&ListParams::default().limit(1))
        .await
        .is_ok();
    let (ingresses, ing_events) = watch_kind::<Ingress>(&client, "Ingress");
    let (services, svc_events) = watch_kind::<Service>(&client, "Service");
    let (slices, slice_events) = watch_kind::<EndpointSlice>(&client, "EndpointSlice");
    let (secrets, secret_events) = watch_kind::<Secret>(&client, "Secret");
    let mut streams: Vec<futures::stream::BoxStream<'static, Event>> = vec![
        ing_events.boxed(),
        svc_events.boxed(),
        slice_events.boxed(),
        secret_events.boxed(),
    ];
    let classes = if classes_served {
        let (classes, class_events) = watch_kind::<IngressClass>(&client, "IngressClass");
        streams.push(class_events.boxed());
        Some(classes)
    } else {
        tracing::info!(
            "the API serves no IngressClass; serving class {:?}",
            config.class.class_name
        );
        None
    };
    let mut events = futures::stream::select_all(streams);
    loop {
        let Some(first) = events.next().await else {
            return Ok(());
        };
        log(first);
        while let Some(Some(next)) = events.next().now_or_never() {
            log(next);
        }
        let ready = |ready: Option<Result<(), reflector::store::WriterDropped>>| {
            matches!(ready, Some(Ok(())))
        };
        if !ready(ingresses.wait_until_ready().now_or_never())
            || !ready(services.wait_until_ready().now_or_never())
            || !ready(slices.wait_until_ready().now_or_never())
            || !ready(secrets.wait_until_ready().now_or_never())
            || classes
                .as_ref()
                .is_some_and(|c| !ready(c.wait_until_ready().now_or_never()))
        {
            continue;
        }
        let all_ingresses = ingresses.state();
        let class_state = classes.as_ref().map(Store::state);
        let class_refs: Option<Vec<&IngressClass>> = class_state
            .as_ref()
            .map(|c| c.iter().map(|c| &**c).collect());
        let served = config
            .class
            .select(all_ingresses.iter().map(|i| &**i), class_refs.as_deref());
        let svcs = services.state();
        let svc_refs: Vec<&Service> = svcs.iter().map(|s| &**s).collect();
        let sls = slices.state();
        let sl_refs: Vec<&EndpointSlice> = sls.iter().map(|s| &**s).collect();
        let secs = secrets.state();
        let sec_refs: Vec<&Secret> = secs.iter().map(|s| &**s).collect();
        let new = RoutingTable::build(Objects {
            ingresses: &served,
            services: &svc_refs,
            slices: &sl_refs,
            secrets: &sec_refs,
        });
        for w in &new.warnings {
            tracing::warn!("ingress: {w}");
        }
        table.store(Arc::new(new));
        if !config.publish.is_empty() {
            publish_status(&client, &served, &config.publish).await;
        }
    }
}

fn log(event: Event) {
    if let Err((kind, err)) = event {
        tracing::warn!(kind, %err, "ingress watch error (retrying)");
    }
}

/// Set `status.loadBalancer.ingress` of each served Ingress that does not show `publish` yet.
async fn publish_status(client: &Client, served: &[&Ingress], publish: &[String]) {
    let wanted: Vec<serde_json::Value> = publish
        .iter()
        .map(|a| {
            if a.parse::<std::net::IpAddr>().is_ok() {
                json!({"ip": a})
            } else {
                json!({"hostname": a})
            }
        })
        .collect();
    for ing in served {
        let (Some(ns), Some(name)) = (
            ing.metadata.namespace.as_deref(),
            ing.metadata.name.as_deref(),
        ) else {
            continue;
        };
        let current = ing
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .map(|list| serde_json::to_value(list).unwrap_or_default());
        if current.as_ref() == Some(&serde_json::Value::Array(wanted.clone())) {
            continue;
        }
        let api: Api<Ingress> = Api::namespaced(client.clone(), ns);
        let patch = json!({"status": {"loadBalancer": {"ingress": wanted}}});
        match api
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {}
            Err(err) => tracing::warn!(ns, name, %err, "setting the Ingress status"),
        }
    }
}
