//! Root tests of `berth run`'s networking against the real kernel: a published port serves a
//! container's port on the host, two containers on a user-defined network reach each other by
//! name, and removing the containers and networks leaves no bridge, veth or NAT table.
//!
//! A custom harness (`harness = false`): containers are started by re-executing this binary as
//! their init; it is also the monitor of detached containers (`<exe> __monitor ROOT ID`).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use berth_engine::network::{NetworkMode, PortMapping};
use berth_engine::{Engine, MonitorCommand, RunConfig};
use berth_image::{BaseImage, Reference};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn main() {
    berth_namespaces::init::main_if_init();
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("__monitor") {
        let engine = Engine::open(&args[2]).expect("open engine");
        let code = engine.monitor(&args[3], |report| println!("{report}"));
        std::process::exit(code.unwrap_or(125));
    }
    let tests: &[berth_testutil::HarnessTest] = &[
        (
            "publish_serves_a_container_port",
            publish_serves_a_container_port,
        ),
        (
            "containers_on_a_network_find_each_other_by_name",
            containers_on_a_network_find_each_other_by_name,
        ),
    ];
    berth_testutil::run_harness(tests, |name| {
        berth_testutil::require_root(name)
            && berth_testutil::require_filesystem(name, "overlay")
            && berth_testutil::require_path(name, "/bin/busybox")
    });
}

/// A state root in a tempdir; drop removes its containers, then its networks.
struct Root {
    dir: tempfile::TempDir,
    engine: Engine,
}

impl Root {
    fn new() -> Root {
        let dir = tempfile::Builder::new()
            .prefix("berth-net-test")
            .tempdir()
            .unwrap();
        let engine = Engine::open(dir.path()).unwrap();
        let reference = Reference::parse("busybox:test").unwrap();
        BaseImage::busybox(Path::new("/bin/busybox"))
            .unwrap()
            .commit(engine.images(), Some(&reference))
            .unwrap();
        Root { dir, engine }
    }

    fn monitor(&self) -> MonitorCommand {
        MonitorCommand {
            program: std::env::current_exe().unwrap(),
            args: vec!["__monitor".into(), self.dir.path().into()],
        }
    }

    fn bridges(&self) -> Vec<String> {
        self.engine
            .networks()
            .list()
            .unwrap()
            .into_iter()
            .map(|n| n.bridge)
            .collect()
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        if let Ok(all) = self.engine.ps(true) {
            for c in all {
                let _ = self.engine.remove(&c.id, true);
            }
        }
        let networks = self.engine.networks();
        for n in networks.list().unwrap_or_default() {
            let _ = networks.remove(&n.name);
        }
    }
}

fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

fn http_get(addr: (Ipv4Addr, u16)) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr.into(), Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

fn server(name: &str, network: NetworkMode, publish: Vec<PortMapping>, text: &str) -> RunConfig {
    RunConfig {
        image: "busybox:test".into(),
        name: Some(name.into()),
        command: vec![
            "sh".into(),
            "-c".into(),
            format!(
                "mkdir -p /srv && echo {text} > /srv/index.html && exec httpd -f -p 80 -h /srv"
            ),
        ],
        network: Some(network),
        publish,
        ..Default::default()
    }
}

fn publish_serves_a_container_port() -> TestResult {
    let root = Root::new();
    // A free port: bind 0, note it, let it go.
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mapping = PortMapping::parse(&format!("{port}:80"))?;
    let name = berth_testutil::unique_name("pub").replace('_', "-");
    let c = root.engine.run_detached(
        &server(
            &name,
            NetworkMode::parse("bridge")?,
            vec![mapping],
            "published",
        ),
        &root.monitor(),
    )?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let body = loop {
        match http_get((Ipv4Addr::LOCALHOST, port)) {
            Ok(b) if b.contains("published") => break b,
            r if Instant::now() > deadline => {
                return Err(format!("no answer on {port}: {r:?}").into());
            }
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    assert!(body.contains("200 OK"), "{body}");
    let bridges = root.bridges();
    assert!(bridges.iter().all(|b| link_exists(b)));
    root.engine.remove(&c.id, true)?;
    // The container's veth went with it; removing the network takes the bridge.
    let networks = root.engine.networks();
    networks.remove("bridge")?;
    for b in &bridges {
        assert!(!link_exists(b), "bridge {b} left");
    }
    assert!(
        http_get((Ipv4Addr::LOCALHOST, port)).is_err(),
        "the port still answers"
    );
    Ok(())
}

fn containers_on_a_network_find_each_other_by_name() -> TestResult {
    let root = Root::new();
    let net = berth_testutil::unique_name("n").replace('_', "-");
    root.engine.networks().create(&net, None)?;
    let web = berth_testutil::unique_name("web").replace('_', "-");
    root.engine.run_detached(
        &server(&web, NetworkMode::parse(&net)?, vec![], "by-name"),
        &root.monitor(),
    )?;
    // A second container fetches from the first by its name (retrying while httpd starts).
    let client = RunConfig {
        image: "busybox:test".into(),
        command: vec![
            "sh".into(),
            "-c".into(),
            format!(
                "for i in 1 2 3 4 5 6 7 8 9 10; do wget -q -O - http://{web}/ && exit 0; sleep 0.3; done; cat /etc/hosts; exit 1"
            ),
        ],
        network: Some(NetworkMode::parse(&net)?),
        auto_remove: true,
        ..Default::default()
    };
    let log = root.dir.path().join("client.log");
    let out: std::os::fd::OwnedFd = std::fs::File::create(&log)?.into();
    let container = root.engine.create(&client)?;
    let stdio = berth_namespaces::Stdio::Fds {
        stdin: std::fs::File::open("/dev/null")?.into(),
        stderr: out.try_clone()?,
        stdout: out,
    };
    let code = root.engine.start_attached(&container.id, stdio, None)?;
    let text = std::fs::read_to_string(&log)?;
    assert_eq!(code, 0, "client failed: {text}");
    assert!(text.contains("by-name"), "{text}");
    // A network with a container attached is not removed.
    assert!(root.engine.networks().remove(&net).is_err());
    Ok(())
}
