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
    /// Write a kubeconfig for this server here (default: `<root>/api/kubeconfig`).
    #[arg(long, value_name = "FILE")]
    kubeconfig_out: Option<PathBuf>,
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
        // The embedded durable store arrives with the store crate; until then state lives in
        // memory for the life of the process.
        let mut server = ApiServer::in_memory().await?;
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
