//! The etcd backend against a real etcd: the one `BERTH_ETCD_ENDPOINTS` names (`.ci/run` starts
//! it), or one this test starts on free ports with a temporary data directory.

#[cfg(not(feature = "etcd"))]
#[test]
fn etcd_backend() {
    berth_testutil::skip(
        "etcd backend",
        "berth-store was built without the `etcd` feature",
    );
}

#[cfg(feature = "etcd")]
mod with_etcd {
    use std::net::TcpListener;
    use std::process::{Child, Command, Stdio};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use berth_api::store::{Store, conformance};
    use berth_store::{EtcdOptions, EtcdStore};

    /// The endpoint env variable `.ci/run` exports.
    const ENDPOINTS_ENV: &str = "BERTH_ETCD_ENDPOINTS";

    struct Etcd {
        endpoints: Vec<String>,
        child: Option<Child>,
        _dir: Option<tempfile::TempDir>,
    }

    impl Drop for Etcd {
        fn drop(&mut self) {
            if let Some(child) = &mut self.child {
                child.kill().ok();
                child.wait().ok();
            }
        }
    }

    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    async fn etcd() -> Option<Etcd> {
        if let Ok(endpoints) = std::env::var(ENDPOINTS_ENV) {
            return Some(Etcd {
                endpoints: endpoints.split(',').map(str::to_owned).collect(),
                child: None,
                _dir: None,
            });
        }
        if !berth_testutil::require_command("etcd backend", "etcd") {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let (client, peer) = (free_port(), free_port());
        let client_url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let log = std::fs::File::create(dir.path().join("etcd.log")).unwrap();
        let child = Command::new("etcd")
            .arg("--name=berth-test")
            .arg(format!("--data-dir={}", dir.path().join("data").display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=berth-test={peer_url}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let etcd = Etcd {
            endpoints: vec![client_url],
            child: Some(child),
            _dir: Some(dir),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match EtcdStore::connect(EtcdOptions::new(etcd.endpoints.clone())).await {
                Ok(store) => match store.revision().await {
                    Ok(_) => return Some(etcd),
                    Err(e) => eprintln!("etcd not ready: {e:?}"),
                },
                Err(e) => eprintln!("etcd not ready: {e:?}"),
            }
            assert!(Instant::now() < deadline, "etcd did not start in 20 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn store(etcd: &Etcd, prefix: String) -> EtcdStore {
        let mut options = EtcdOptions::new(etcd.endpoints.clone());
        options.prefix = prefix;
        options.timeout = Some(Duration::from_secs(30));
        EtcdStore::connect(options).await.unwrap()
    }

    /// All cases in one test: they compact, which is global in etcd.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conformance_against_real_etcd() {
        let Some(etcd) = etcd().await else { return };
        let base = berth_testutil::unique_name("store");
        let mut n = 0;
        let etcd = &etcd;
        conformance::run_all(|| {
            n += 1;
            let prefix = format!("/{base}/{n}");
            async move { Arc::new(store(etcd, prefix).await) as Arc<dyn Store> }
        })
        .await;
    }

    #[tokio::test]
    async fn prefixes_isolate_stores_and_unreachable_endpoints_fail() {
        let Some(etcd) = etcd().await else { return };
        let base = berth_testutil::unique_name("iso");
        let a = store(&etcd, format!("/{base}/a")).await;
        let b = store(&etcd, format!("/{base}/b")).await;
        a.put("/k", b"a".to_vec(), None).await.unwrap();
        assert!(b.get("/k").await.unwrap().is_none());
        assert_eq!(b.list("/").await.unwrap().0.len(), 0);
        assert_eq!(a.list("/").await.unwrap().0[0].key, "/k");

        let mut options = EtcdOptions::new([format!("http://127.0.0.1:{}", free_port())]);
        options.timeout = Some(Duration::from_secs(2));
        let result = async {
            let s = EtcdStore::connect(options).await?;
            s.revision().await.map_err(|e| anyhow::anyhow!(e))?;
            anyhow::Ok(())
        };
        assert!(
            tokio::time::timeout(Duration::from_secs(20), result)
                .await
                .is_ok_and(|r| r.is_err()),
            "a dead endpoint gives an error, not a hang"
        );
    }
}
