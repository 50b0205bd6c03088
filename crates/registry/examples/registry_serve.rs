//! A bare registry server over a directory, for benchmarks and quick experiments (the full CLI is
//! `berth registry serve`).
//!
//! ```text
//! cargo run --release -p berth-registry --example registry_serve -- 127.0.0.1:5000 /tmp/registry
//! ```

use std::sync::Arc;

use berth_registry::FsStorage;
use berth_registry::server::{self, ServerConfig};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(addr), Some(dir)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: registry_serve ADDR DIR");
    };
    let storage = Arc::new(FsStorage::open(&dir)?);
    let router = server::router(storage, ServerConfig::default());
    let listener = std::net::TcpListener::bind(&addr)?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(server::serve(listener, router, None, async {
            let _ = tokio::signal::ctrl_c().await;
        }))?;
    Ok(())
}
