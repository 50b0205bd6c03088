//! `berth registry serve` and `berth image push|pull`: the OCI registry server, and transfers
//! between the local image store (`<root>/image`) and a registry named in the reference's host
//! (`127.0.0.1:5000/demo/app:1`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use berth_image::oci_spec::image::MediaType;
use berth_image::{ImageStore, Reference};
use berth_registry::auth::{Htpasswd, TokenIssuer};
use berth_registry::client::{Client, ClientOptions};
use berth_registry::manifest::Descriptor;
use berth_registry::server::{self, AuthConfig, ServerConfig};
use berth_registry::storage::GcOptions;
use berth_registry::{FsStorage, ManifestRef, RepositoryName};

use crate::Global;

/// Registry subcommands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum RegistryCommand {
    /// Serve an OCI Distribution registry from `<root>/registry` (or `--storage`).
    Serve(ServeArgs),
    /// Collect unreferenced blobs and stale uploads of a registry's storage.
    Gc(GcArgs),
}

/// Arguments of `berth registry serve`.
#[derive(Debug, clap::Args)]
pub(crate) struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:5000")]
    addr: SocketAddr,
    /// Registry storage directory (default: `<root>/registry`).
    #[arg(long, value_name = "DIR")]
    storage: Option<PathBuf>,
    /// Require users from this htpasswd file (bcrypt entries, `htpasswd -B`).
    #[arg(long, value_name = "FILE")]
    htpasswd: Option<PathBuf>,
    /// With --htpasswd: issue bearer tokens from `/token` (the Docker token flow, GET or OAuth2
    /// POST) instead of asking for Basic credentials on every request. The signing key is kept
    /// in `<storage>/token.key` (mode 0600), so tokens stay valid across restarts.
    #[arg(long, requires = "htpasswd")]
    token_auth: bool,
    /// With --htpasswd: let unauthenticated clients pull.
    #[arg(long, requires = "htpasswd")]
    anonymous_pull: bool,
    /// TLS certificate chain (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Seconds between online garbage collections (0: never).
    #[arg(long, default_value_t = 3600)]
    gc_interval: u64,
    /// Seconds a connection may go without a request head (silent and slow clients are cut).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    header_timeout: u64,
    /// Seconds a keep-alive connection may sit idle between requests.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    idle_timeout: u64,
    /// Seconds a request body or a response write may make no progress.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    body_timeout: u64,
    /// Connections served at once (default: a third of the descriptor limit); more wait.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    max_connections: Option<u64>,
}

/// Arguments of `berth registry gc`.
#[derive(Debug, clap::Args)]
pub(crate) struct GcArgs {
    /// Registry storage directory (default: `<root>/registry`).
    #[arg(long, value_name = "DIR")]
    storage: Option<PathBuf>,
    /// Keep unreferenced blobs younger than this many seconds (pushes in progress).
    #[arg(long, default_value_t = 3600)]
    grace: u64,
}

/// Options shared by push and pull.
#[derive(Debug, clap::Args)]
pub(crate) struct TransferArgs {
    /// Talk plain HTTP to the registry (loopback or trusted networks only).
    #[arg(long)]
    insecure: bool,
    /// Accept a TLS certificate that does not verify.
    #[arg(long)]
    tls_no_verify: bool,
    /// User name for the registry.
    #[arg(long, env = "BERTH_REGISTRY_USER")]
    username: Option<String>,
    /// Password for the registry.
    #[arg(long, env = "BERTH_REGISTRY_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// Blobs transferred at once.
    #[arg(long, default_value_t = 4)]
    jobs: usize,
}

/// Arguments of `berth image push`.
#[derive(Debug, clap::Args)]
pub(crate) struct PushArgs {
    /// The image reference: REGISTRY/NAME[:TAG] (tag the local image with it first).
    reference: String,
    /// Mount blobs from this repository of the same registry instead of uploading them.
    #[arg(long, value_name = "REPOSITORY")]
    mount_from: Option<String>,
    #[command(flatten)]
    transfer: TransferArgs,
}

/// Arguments of `berth image pull`.
#[derive(Debug, clap::Args)]
pub(crate) struct PullArgs {
    /// The image reference: REGISTRY/NAME[:TAG|@DIGEST].
    reference: String,
    #[command(flatten)]
    transfer: TransferArgs,
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")
}

fn storage_dir(global: &Global, storage: Option<PathBuf>) -> PathBuf {
    storage.unwrap_or_else(|| global.root.join("registry"))
}

pub(crate) fn run(global: &Global, cmd: RegistryCommand) -> anyhow::Result<u8> {
    match cmd {
        RegistryCommand::Serve(args) => serve(global, args),
        RegistryCommand::Gc(args) => {
            let dir = storage_dir(global, args.storage);
            let storage = FsStorage::open(&dir)
                .with_context(|| format!("open registry storage {}", dir.display()))?;
            let options = GcOptions {
                blob_grace: Duration::from_secs(args.grace),
                ..GcOptions::default()
            };
            let report = runtime()?.block_on(async {
                berth_registry::Storage::collect_garbage(&storage, options).await
            })?;
            println!(
                "removed {} blobs ({} bytes) and {} stale uploads",
                report.blobs_removed, report.bytes_freed, report.uploads_removed
            );
            Ok(0)
        }
    }
}

fn serve(global: &Global, args: ServeArgs) -> anyhow::Result<u8> {
    let dir = storage_dir(global, args.storage);
    let storage: Arc<dyn berth_registry::Storage> = Arc::new(
        FsStorage::open(&dir)
            .with_context(|| format!("open registry storage {}", dir.display()))?,
    );
    let auth = match &args.htpasswd {
        Some(path) => Some(AuthConfig {
            htpasswd: Htpasswd::load(path)?,
            // The signing key lives with the storage, so tokens survive a restart.
            tokens: args
                .token_auth
                .then(|| TokenIssuer::persistent(&dir.join("token.key"), Duration::from_secs(300)))
                .transpose()?,
            anonymous_pull: args.anonymous_pull,
        }),
        None => None,
    };
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(server::load_tls(cert, key)?),
        _ => None,
    };
    let config = ServerConfig {
        auth,
        tls: tls.is_some(),
        ..ServerConfig::default()
    };
    let router = server::router(storage.clone(), config);
    let defaults = server::ConnectionLimits::default();
    let limits = server::ConnectionLimits {
        header_read_timeout: Duration::from_secs(args.header_timeout),
        idle_timeout: Duration::from_secs(args.idle_timeout),
        body_read_timeout: Duration::from_secs(args.body_timeout),
        send_timeout: Duration::from_secs(args.body_timeout),
        max_connections: args
            .max_connections
            .map_or(defaults.max_connections, |n| n as usize),
        ..defaults
    };
    let listener = std::net::TcpListener::bind(args.addr)
        .with_context(|| format!("listen on {}", args.addr))?;
    eprintln!(
        "berth registry: serving {} on {}://{}",
        dir.display(),
        if tls.is_some() { "https" } else { "http" },
        listener.local_addr()?
    );
    runtime()?.block_on(async move {
        if args.gc_interval > 0 {
            tokio::spawn(server::collect_garbage_every(
                storage,
                Duration::from_secs(args.gc_interval),
                GcOptions::default(),
            ));
        }
        let shutdown = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("install SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        };
        server::serve_with(listener, router, tls, limits, shutdown).await
    })?;
    Ok(0)
}

fn client_for(reference: &Reference, args: &TransferArgs) -> anyhow::Result<Client> {
    let credentials = match (&args.username, &args.password) {
        (Some(u), Some(p)) => Some((u.clone(), p.clone())),
        (Some(_), None) | (None, Some(_)) => bail!("give both --username and --password"),
        (None, None) => None,
    };
    let options = ClientOptions {
        insecure: args.insecure,
        accept_invalid_certs: args.tls_no_verify,
        credentials,
        concurrency: args.jobs.max(1),
        progress: Arc::new(crate::progress::Bars::new()),
        ..ClientOptions::default()
    };
    Ok(Client::new(reference.domain(), options)?)
}

pub(crate) fn push(global: &Global, args: PushArgs) -> anyhow::Result<u8> {
    let store = crate::image::open_store(global)?;
    let reference = Reference::parse(&args.reference)?;
    let target = store
        .resolve(&reference)
        .with_context(|| format!("no local image {}", args.reference))?;
    let repo = RepositoryName::new(reference.path())?;
    let mount_from = args
        .mount_from
        .as_deref()
        .map(RepositoryName::new)
        .transpose()?;
    let root = Descriptor {
        media_type: target.media_type().to_string(),
        digest: berth_image::manifest::descriptor_digest(&target)?,
        size: target.size(),
        artifact_type: None,
        annotations: None,
        urls: None,
        platform: None,
    };
    let tag = reference.tag().unwrap_or("latest").to_owned();
    let client = client_for(&reference, &args.transfer)?;
    let report = runtime()?.block_on(async {
        let local = store.content();
        client
            .push_image(&repo, &tag, &root, local, mount_from.as_ref())
            .await
    })?;
    println!(
        "{}: pushed {} blobs ({} bytes), {} already present, {} mounted; digest {}",
        args.reference, report.uploaded, report.bytes, report.skipped, report.mounted, root.digest
    );
    Ok(0)
}

pub(crate) fn pull(global: &Global, args: PullArgs) -> anyhow::Result<u8> {
    let store: ImageStore = crate::image::open_store(global)?;
    let reference = Reference::parse(&args.reference)?;
    let repo = RepositoryName::new(reference.path())?;
    let wanted = match (reference.digest(), reference.tag()) {
        (Some(d), _) => ManifestRef::Digest(d.clone()),
        (None, Some(t)) => ManifestRef::Tag(t.to_owned()),
        (None, None) => ManifestRef::Tag("latest".to_owned()),
    };
    let client = client_for(&reference, &args.transfer)?;
    // The lease keeps the image store's GC away from blobs no name points at yet.
    let _lease = store.lease()?;
    let pulled = runtime()?.block_on(async {
        let local = store.content();
        client.pull_image(&repo, &wanted, local).await
    })?;
    let target = berth_image::manifest::descriptor(
        MediaType::from(pulled.descriptor.media_type.as_str()),
        &pulled.descriptor.digest,
        pulled.descriptor.size,
    );
    store.tag(&reference, &target)?;
    println!(
        "{}: pulled {} blobs ({} bytes); digest {}",
        args.reference, pulled.downloaded, pulled.bytes, pulled.descriptor.digest
    );
    Ok(0)
}
