//! The ServiceAccount controller: every namespace has a ServiceAccount called `default`
//! (Kubernetes' `serviceaccount-controller`), so a pod that names none still runs as one.
//!
//! A [`Controller`] over Namespaces that also watches ServiceAccounts (a deleted `default` is
//! made again). A namespace being deleted gets none. Deleting a namespace's contents is the API
//! server's part (it removes every namespaced object before the namespace goes).

use std::sync::Arc;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::PostParams;
use kube::runtime::Controller;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, ResourceExt};

use crate::error::{Error, Result, is_conflict, is_not_found};
use crate::runtime::{self, Context};

/// The ServiceAccount every namespace gets.
pub const DEFAULT: &str = "default";

struct State {
    ctx: Context,
    accounts: Store<ServiceAccount>,
}

/// Builds the ServiceAccount controller on `ctx` (see [`crate::manager::ControllerSpec`]).
pub fn start(ctx: &Context) -> BoxFuture<'static, ()> {
    let namespaces = ctx.informers.subscribe::<Namespace>();
    let reader = ctx.informers.reader::<Namespace>();
    let controller = Controller::for_shared_stream(namespaces, reader).watches_shared_stream(
        ctx.informers.subscribe::<ServiceAccount>(),
        |sa| {
            (sa.name_any() == DEFAULT).then(|| ObjectRef::new(&sa.namespace().unwrap_or_default()))
        },
    );
    let state = Arc::new(State {
        accounts: ctx.informers.reader::<ServiceAccount>(),
        ctx: ctx.clone(),
    });
    runtime::drive("serviceaccount", controller, ctx, state, reconcile)
}

async fn reconcile(ns: Arc<Namespace>, st: Arc<State>) -> Result<Action> {
    let name = ns.name_any();
    let terminating = ns.metadata.deletion_timestamp.is_some()
        || ns.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating");
    if terminating
        || st
            .accounts
            .get(&ObjectRef::new(DEFAULT).within(&name))
            .is_some()
    {
        return Ok(Action::await_change());
    }
    let api: Api<ServiceAccount> = Api::namespaced(st.ctx.client.clone(), &name);
    let sa = ServiceAccount {
        metadata: ObjectMeta {
            name: Some(DEFAULT.into()),
            namespace: Some(name.clone()),
            ..Default::default()
        },
        ..Default::default()
    };
    match api.create(&PostParams::default(), &sa).await {
        Ok(_) => Ok(Action::await_change()),
        // Exists already (the cache lags), or the namespace went meanwhile.
        Err(e) if is_conflict(&e) || is_not_found(&e) => Ok(Action::await_change()),
        Err(e) => Err(Error::api(format!(
            "create ServiceAccount default in namespace {name}"
        ))(e)),
    }
}
