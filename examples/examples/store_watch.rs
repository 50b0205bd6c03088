//! Writes pods into the embedded store while a watcher follows them:
//! `cargo run -p berth-examples --example store_watch`.

use berth_api::objects::Pod;
use berth_api::store::{EventKind, MemoryStore, Typed};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt::init();
    let store = MemoryStore::new();
    let pods = Typed::<Pod>::new(&store);
    let mut watch = pods.watch(Some("default"), 0).await?;

    for name in ["web-1", "web-2"] {
        let mut pod = Pod::default();
        pod.metadata.name = name.into();
        pod.metadata.namespace = "default".into();
        pods.create(pod).await?;
    }
    pods.delete("default", "web-1").await?;

    for _ in 0..3 {
        match watch.next().await {
            Some(Ok(e)) if e.kind == EventKind::Put => {
                println!("PUT    {} @{}", e.kv.key, e.kv.mod_revision)
            }
            Some(Ok(e)) => println!("DELETE {} @{}", e.kv.key, e.kv.mod_revision),
            Some(Err(e)) => return Err(e.into()),
            None => break,
        }
    }
    Ok(())
}
