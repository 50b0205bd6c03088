//! A Kubernetes-compatible API server over Berth's [`Store`], as a library.
//!
//! [`ApiServer`] is an axum [`Router`](axum::Router) (a tower `Service`): serve it on a socket
//! for `kubectl`, or hand it to `kube::Client::new` and drive it in-process with no socket at
//! all — an apiserver for tests that fails like the real one (409 Conflict, 410 Gone, 422
//! Invalid), in the spirit of envtest without a binary to start.
//!
//! Where to start: [`ApiServer::in_memory`] (or [`ApiServer::new`] over any `Store`), then
//! [`ApiServer::router`]. Inside, every kind goes through one generic path (`registry`) and
//! differs only by its [`Kind`] strategy (`kinds`): defaults, validation, status and scale
//! subresources, table columns, selectable fields, schema.
//!
//! ```
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! // A kube-rs client talking to an in-memory server, no socket involved.
//! let server = berth_apiserver::ApiServer::in_memory().await?;
//! let client = kube::Client::new(server.router(), "default");
//! # let _ = client; Ok(()) }
//! ```
//!
//! A runnable kube-rs reconciler against it: `examples/configmap_reconcile.rs`
//! (`cargo run -p berth-apiserver --example configmap_reconcile`).
//!
//! Served: discovery (`/api`, `/apis`, aggregated v2), `/openapi/v2` and `/openapi/v3`,
//! `/version`, health checks, and for each built-in kind (core/v1 Namespace, Node, Pod,
//! Service, Endpoints, ConfigMap, Secret, ServiceAccount, Event; apps/v1 Deployment,
//! ReplicaSet, DaemonSet, StatefulSet, ControllerRevision; batch/v1 Job, CronJob; Lease,
//! EndpointSlice, Ingress, PodDisruptionBudget, CustomResourceDefinition) and for the kinds of
//! every CRD: get, list (label and field selectors, limit/continue, resourceVersionMatch),
//! watch (bookmarks, initial events), create, update, patch (JSON, merge, strategic merge, and
//! server-side apply with managedFields and conflicts), delete, deletecollection, `status`,
//! `scale`, `pods/binding`, `pods/eviction`, `pods/log|exec|attach|portforward` and
//! `nodes/proxy` (to the node's endpoint), and Table output. Bodies are JSON, YAML or
//! Kubernetes protobuf.
//!
//! Security, for a server on a socket: [`tls::Pki`] makes the cluster CA and certificates and
//! [`tls::serve`] serves over rustls; [`ApiServer::with_authenticator`] turns on
//! authentication ([`auth`]: tokens, token files, client certificates), after which the
//! built-in authorizers ([`authz`]: cluster-admin, read-only, node identities) decide and the
//! access reviews (`kubectl auth can-i`, `kubectl auth whoami`) answer from them;
//! [`ApiServer::with_limits`] bounds the requests in flight ([`limits`]).

use std::sync::Arc;

use berth_api::store::{MemoryStore, Store};

pub mod auth;
pub mod authz;
mod crd;
mod discovery;
mod error;
mod eviction;
mod fanout;
pub mod kinds;
pub mod limits;
mod managed;
mod openapi;
pub mod patch;
mod protobuf;
mod proxy;
mod registry;
mod reviews;
mod security;
pub mod selector;
mod server;
mod storage;
pub mod tls;
pub mod validation;

pub use discovery::KUBERNETES_VERSION;
pub use error::{Cause, Error, Result};
pub use kinds::Kind;
pub use registry::MAX_OBJECT;
pub use server::MAX_BODY;

/// The API server: a [`Store`], the kinds it serves, and its security: authentication
/// ([`auth`]), authorization ([`authz`]) and in-flight limits ([`limits`]). Without an
/// authenticator every request acts as a cluster administrator (the in-process default).
#[derive(Clone)]
pub struct ApiServer {
    shared: Arc<server::Shared>,
    security: Arc<security::Security>,
}

impl std::fmt::Debug for ApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServer")
            .field("kinds", &self.shared.registry.kinds().len())
            .field("authenticated", &self.security.authenticator.is_some())
            .field("limits", &self.security.limits)
            .finish()
    }
}

impl ApiServer {
    /// A server over `store`, serving the built-in kinds; creates the system namespaces
    /// (`default`, `kube-system`, `kube-public`, `kube-node-lease`) if missing.
    pub async fn new(store: Arc<dyn Store>) -> Result<Self> {
        let registry = registry::Registry::new(storage::Storage::new(store), kinds::builtin());
        registry.bootstrap().await?;
        let registry = Arc::new(registry);
        let security =
            security::Security::new(&registry, None, Vec::new(), limits::Limits::unlimited());
        Ok(ApiServer {
            shared: Arc::new(server::Shared {
                registry,
                openapi: std::sync::Mutex::new(None),
            }),
            security: Arc::new(security),
        })
    }

    /// A durable server: Berth's embedded store in `dir` (created if missing, replayed if
    /// not), so objects survive a restart. Fails when another process has `dir` open.
    pub async fn open(dir: impl AsRef<std::path::Path>) -> Result<Self> {
        let dir = dir.as_ref().to_owned();
        let store = tokio::task::spawn_blocking(move || berth_store::EmbeddedStore::open(&dir))
            .await
            .map_err(|e| Error::Internal(format!("opening the store: {e}")))?
            .map_err(Error::Open)?;
        Self::new(Arc::new(store)).await
    }

    /// A server over a fresh [`MemoryStore`]: the one-line constructor for tests.
    pub async fn in_memory() -> Result<Self> {
        Self::new(Arc::new(MemoryStore::new())).await
    }

    /// Requires `Authorization: Bearer <token>` (the administrator) on every request but
    /// health checks and `/version`; shorthand for [`ApiServer::with_authenticator`] with
    /// [`auth::StaticTokens::admin`].
    pub fn with_token(self, token: impl Into<String>) -> Self {
        self.with_authenticator(auth::StaticTokens::admin(token))
    }

    /// Authenticates every request with `authenticator` (combine several with
    /// [`auth::Union`]): requests it knows no user for get 401, except health checks and
    /// `/version`. Then the built-in authorizers decide ([`authz`]).
    pub fn with_authenticator(mut self, authenticator: impl auth::Authenticator) -> Self {
        let authenticator: Arc<dyn auth::Authenticator> =
            Arc::new(auth::Union::new().with(authenticator));
        let s = &self.security;
        self.security = Arc::new(security::Security::new(
            &self.shared.registry,
            Some(authenticator),
            s.extra.clone(),
            s.limits,
        ));
        self
    }

    /// Adds an authorizer consulted after the built-in ones (cluster-admin, node, read-only,
    /// basic) for requests they have no opinion on.
    pub fn with_authorizer(mut self, authorizer: impl authz::Authorizer) -> Self {
        let mut extra = self.security.extra.clone();
        extra.push(Arc::new(authorizer));
        let s = &self.security;
        self.security = Arc::new(security::Security::new(
            &self.shared.registry,
            s.authenticator.clone(),
            extra,
            s.limits,
        ));
        self
    }

    /// Limits the requests served at once (429 beyond; watches exempt).
    pub fn with_limits(mut self, limits: limits::Limits) -> Self {
        let s = &self.security;
        self.security = Arc::new(security::Security::new(
            &self.shared.registry,
            s.authenticator.clone(),
            s.extra.clone(),
            limits,
        ));
        self
    }

    /// The server's authorizer: what `kubectl auth can-i` and the access reviews consult.
    pub fn authorizer(&self) -> &dyn authz::Authorizer {
        self.security.authorizer()
    }

    /// The kinds served now: the built-in ones and those of the CustomResourceDefinitions.
    pub fn kinds(&self) -> Vec<Kind> {
        self.shared.registry.kinds().as_ref().clone()
    }

    /// The HTTP application: serve it with `axum::serve`, or use it as a tower `Service`
    /// (`kube::Client::new(server.router(), "default")`).
    pub fn router(&self) -> axum::Router {
        axum::Router::new()
            .fallback(server::handle)
            .with_state(self.shared.clone())
            .layer(axum::middleware::from_fn_with_state(
                self.security.clone(),
                security::filter,
            ))
    }
}
