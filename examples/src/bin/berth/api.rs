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
    /// Serve the Kubernetes API over TLS (a CA and certificates are made under the root).
    Serve(ServeArgs),
}

/// Arguments of `berth api serve`.
#[derive(Debug, clap::Args)]
pub(crate) struct ServeArgs {
    /// Address to listen on (port 0: any free port; the kubeconfig names the real one).
    #[arg(long, default_value = "127.0.0.1:6443")]
    addr: SocketAddr,
    /// Accept `Authorization: Bearer <TOKEN>` as the administrator.
    #[arg(long, env = "BERTH_API_TOKEN")]
    token: Option<String>,
    /// Kubernetes' static token file: `token,user,uid,"group1,group2"` per line.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Serve plain HTTP instead of TLS (loopback addresses only; no authentication unless
    /// --token or --token-file).
    #[arg(long)]
    insecure_http: bool,
    /// Read-only requests served at once (429 beyond; watches exempt; 0: unlimited).
    #[arg(long, default_value_t = 400)]
    max_requests_inflight: usize,
    /// Mutating requests served at once (429 beyond; 0: unlimited).
    #[arg(long, default_value_t = 200)]
    max_mutating_requests_inflight: usize,
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
pub(crate) enum StoreChoice {
    Embedded,
    Etcd(Vec<String>),
}

pub(crate) fn parse_store(s: &str) -> Result<StoreChoice, String> {
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
pub(crate) async fn open_store(
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

/// Writes `contents` to `path` with mode 0600 (it may hold a token), atomically.
pub(crate) fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
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
    use berth_apiserver::{auth, limits::Limits, tls};
    if args.insecure_http && !args.addr.ip().is_loopback() {
        bail!(
            "{} is not a loopback address: plain HTTP (--insecure-http) is only served on loopback",
            args.addr
        );
    }
    let mut tokens = auth::StaticTokens::new();
    if let Some(t) = &args.token {
        tokens = tokens.merge(auth::StaticTokens::admin(t.clone()));
    }
    if let Some(f) = &args.token_file {
        tokens = tokens.merge(auth::StaticTokens::from_csv_file(f)?);
    }
    let pki = if args.insecure_http {
        eprintln!(
            "berth: warning: serving the Kubernetes API over plain HTTP{} on {} (loopback only)",
            if tokens.is_empty() {
                " without authentication"
            } else {
                ""
            },
            args.addr
        );
        None
    } else {
        let dir = global.root.join("api/pki");
        Some(
            tls::Pki::load_or_create(&dir, &tls::default_hosts(args.addr))
                .with_context(|| format!("setting up the certificates in {}", dir.display()))?,
        )
    };
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let store = open_store(global, &args.store).await?;
        let mut server = ApiServer::new(store).await?.with_limits(Limits {
            max_read_only: args.max_requests_inflight,
            max_mutating: args.max_mutating_requests_inflight,
        });
        if pki.is_some() {
            server = server.with_authenticator(
                auth::Union::new()
                    .with(auth::ClientCertificates)
                    .with(tokens),
            );
        } else if !tokens.is_empty() {
            server = server.with_authenticator(tokens);
        }
        let listener = tokio::net::TcpListener::bind(args.addr)
            .await
            .with_context(|| format!("binding {}", args.addr))?;
        let mut local = listener.local_addr()?;
        if local.ip().is_unspecified() {
            local.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        let out = args
            .kubeconfig_out
            .clone()
            .unwrap_or_else(|| global.root.join("api/kubeconfig"));
        let shutdown = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        match &pki {
            None => {
                let credential = match &args.token {
                    Some(t) => tls::Credential::Token(t.clone()),
                    None => tls::Credential::None,
                };
                let config = tls::kubeconfig(&format!("http://{local}"), None, credential);
                write_private(&out, serde_json::to_string_pretty(&config)?.as_bytes())?;
                eprintln!(
                    "berth: API server listening on http://{local}; kubeconfig: {}",
                    out.display()
                );
                axum::serve(listener, server.router())
                    .with_graceful_shutdown(shutdown)
                    .await
                    .context("serving")?;
            }
            Some(pki) => {
                let config = pki.admin_kubeconfig(&format!("https://{local}"))?;
                write_private(&out, serde_json::to_string_pretty(&config)?.as_bytes())?;
                eprintln!(
                    "berth: API server listening on https://{local}; kubeconfig: {}",
                    out.display()
                );
                tls::serve(listener, server.router(), pki.server_config()?, shutdown)
                    .await
                    .context("serving")?;
            }
        }
        anyhow::Ok(0)
    })
}
