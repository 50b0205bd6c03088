//! `berth api serve`: the Kubernetes-compatible API server (berth-apiserver) on a socket, with a
//! kubeconfig that kubectl uses as is.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use berth_apiserver::ApiServer;

use crate::Global;

/// API server subcommands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum ApiCommand {
    /// Serve the Kubernetes API (plain HTTP, loopback only for now).
    Serve(ServeArgs),
}

/// Arguments of `berth api serve`.
#[derive(Debug, clap::Args)]
pub(crate) struct ServeArgs {
    /// Address to listen on (port 0: any free port; the kubeconfig names the real one).
    #[arg(long, default_value = "127.0.0.1:6443")]
    addr: SocketAddr,
    /// Require `Authorization: Bearer <TOKEN>` on every request but health checks.
    #[arg(long, env = "BERTH_API_TOKEN")]
    token: Option<String>,
    /// Where objects live: `embedded` (durable, under `<root>/api/store`) or
    /// `etcd://HOST:PORT[,HOST:PORT...]`.
    #[arg(long, default_value = "embedded", value_parser = parse_store)]
    store: StoreChoice,
    /// Write a kubeconfig for this server here (default: `<root>/api/kubeconfig`).
    #[arg(long, value_name = "FILE")]
    kubeconfig_out: Option<PathBuf>,
}

/// The backend named by `--store`.
#[derive(Debug, Clone)]
enum StoreChoice {
    Embedded,
    Etcd(Vec<String>),
}

fn parse_store(s: &str) -> Result<StoreChoice, String> {
    if s == "embedded" {
        return Ok(StoreChoice::Embedded);
    }
    let Some(rest) = s.strip_prefix("etcd://") else {
        return Err(format!(
            "{s:?} is neither `embedded` nor `etcd://HOST:PORT,...`"
        ));
    };
    let endpoints: Vec<String> = rest
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(|e| format!("http://{e}"))
        .collect();
    if endpoints.is_empty() {
        return Err("etcd:// names no endpoint".into());
    }
    Ok(StoreChoice::Etcd(endpoints))
}

/// Opens the store `--store` names.
async fn open_store(
    global: &Global,
    choice: &StoreChoice,
) -> anyhow::Result<std::sync::Arc<dyn berth_api::store::Store>> {
    Ok(match choice {
        StoreChoice::Embedded => {
            let dir = global.root.join("api/store");
            let store = tokio::task::spawn_blocking({
                let dir = dir.clone();
                move || berth_store::EmbeddedStore::open(&dir)
            })
            .await?
            .with_context(|| format!("opening the store in {}", dir.display()))?;
            std::sync::Arc::new(store)
        }
        StoreChoice::Etcd(endpoints) => {
            let store = berth_store::EtcdStore::connect(berth_store::EtcdOptions {
                prefix: "/berth".into(),
                timeout: Some(std::time::Duration::from_secs(10)),
                ..berth_store::EtcdOptions::new(endpoints.clone())
            })
            .await
            .with_context(|| format!("connecting to etcd at {}", endpoints.join(",")))?;
            std::sync::Arc::new(store)
        }
    })
}

pub(crate) fn run(global: &Global, cmd: ApiCommand) -> anyhow::Result<u8> {
    match cmd {
        ApiCommand::Serve(args) => serve(global, args),
    }
}

/// A kubeconfig (JSON is YAML) for `server`, with the token if any.
fn kubeconfig(server: &str, token: Option<&str>) -> serde_json::Value {
    let user = match token {
        Some(t) => serde_json::json!({"token": t}),
        None => serde_json::json!({}),
    };
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "berth", "cluster": {"server": server}}],
        "users": [{"name": "berth", "user": user}],
        "contexts": [{"name": "berth", "context": {"cluster": "berth", "user": "berth", "namespace": "default"}}],
        "current-context": "berth",
    })
}

/// Writes `contents` to `path` with mode 0600 (it may hold a token), atomically.
fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(contents)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn serve(global: &Global, args: ServeArgs) -> anyhow::Result<u8> {
    if !args.addr.ip().is_loopback() {
        bail!(
            "{} is not a loopback address: TLS is not implemented yet, and plain HTTP is only served on loopback",
            args.addr
        );
    }
    eprintln!(
        "berth: warning: serving the Kubernetes API over plain HTTP{} on {} (loopback only)",
        if args.token.is_none() {
            " without authentication"
        } else {
            ""
        },
        args.addr
    );
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let store = open_store(global, &args.store).await?;
        let mut server = ApiServer::new(store).await?;
        if let Some(token) = &args.token {
            server = server.with_token(token.clone());
        }
        let listener = tokio::net::TcpListener::bind(args.addr)
            .await
            .with_context(|| format!("binding {}", args.addr))?;
        let local = listener.local_addr()?;
        let out = args
            .kubeconfig_out
            .clone()
            .unwrap_or_else(|| global.root.join("api/kubeconfig"));
        let config = kubeconfig(&format!("http://{local}"), args.token.as_deref());
        write_private(&out, serde_json::to_string_pretty(&config)?.as_bytes())?;
        eprintln!(
            "berth: API server listening on http://{local}; kubeconfig: {}",
            out.display()
        );
        axum::serve(listener, server.router())
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
            .context("serving")?;
        anyhow::Ok(0)
    })
}
