//! Pod network setup per pod, p50/p99: berth-net's bridge network next to the CNI reference
//! plugins (`bridge` with `host-local` IPAM, from the `containernetworking-plugins` apt package)
//! doing the same work in the same run: a veth into the pod's namespace as a port of the node's
//! bridge, an address leased and persisted, the default route. Both run in a network namespace
//! that plays the host, so the real host is not touched; the CNI plugin is started there with
//! `nsenter` (its process start is part of what CNI costs a runtime).
//!
//! ```text
//! cargo build --profile perf -p berth-benches --bin net_perf
//! target/perf/net_perf --pods 200 [--cni /usr/lib/cni]
//! ```
//! Prints one line per implementation: setup and teardown p50/p99/max in milliseconds.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use berth_net::netns::Netns;
use berth_net::{BridgeConfig, BridgeNetwork, PodNetwork};

struct Args {
    pods: usize,
    cni: Option<PathBuf>,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        pods: 200,
        cni: Some(PathBuf::from("/usr/lib/cni")),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--pods" => a.pods = it.next().context("--pods N")?.parse()?,
            "--cni" => a.cni = Some(it.next().context("--cni DIR")?.into()),
            "--no-cni" => a.cni = None,
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(a)
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
    v[i].as_secs_f64() * 1e3
}

fn report(name: &str, setup: &mut [Duration], teardown: &mut [Duration]) {
    println!(
        "{name}: {} pods; setup p50 {:.2} ms p99 {:.2} ms max {:.2} ms; teardown p50 {:.2} ms p99 {:.2} ms",
        setup.len(),
        pct(setup, 0.5),
        pct(setup, 0.99),
        pct(setup, 1.0),
        pct(teardown, 0.5),
        pct(teardown, 0.99),
    );
}

fn pods(dir: &Path, n: usize, tag: &str) -> anyhow::Result<Vec<Netns>> {
    (0..n)
        .map(|i| Ok(Netns::create(dir.join(format!("{tag}{i}")))?))
        .collect()
}

fn berth(dir: &Path, n: usize) -> anyhow::Result<()> {
    let host = Netns::create(dir.join("berth-host"))?;
    let net = BridgeNetwork::new(
        BridgeConfig::new("cbr0", "10.88.0.0/16".parse()?, dir.join("berth-state"))
            .host_netns(host.path()),
    )?;
    let pods = pods(dir, n, "berth-pod")?;
    let mut setup = Vec::new();
    for (i, p) in pods.iter().enumerate() {
        let t = Instant::now();
        net.setup(p.path(), &format!("pod{i}"))?;
        setup.push(t.elapsed());
    }
    let mut teardown = Vec::new();
    for i in 0..n {
        let t = Instant::now();
        net.teardown(&format!("pod{i}"))?;
        teardown.push(t.elapsed());
    }
    report("berth-net", &mut setup, &mut teardown);
    net.destroy()?;
    Ok(())
}

fn cni(dir: &Path, plugins: &Path, n: usize) -> anyhow::Result<()> {
    let host = Netns::create(dir.join("cni-host"))?;
    let config = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "bench",
        "type": "bridge",
        "bridge": "cbr0",
        "isGateway": true,
        "ipMasq": false,
        "hairpinMode": true,
        "ipam": {
            "type": "host-local",
            "subnet": "10.88.0.0/16",
            "dataDir": dir.join("cni-state"),
            "routes": [{"dst": "0.0.0.0/0"}]
        }
    })
    .to_string();
    let run = |command: &str, pod: &Path, id: &str| -> anyhow::Result<Duration> {
        let t = Instant::now();
        let mut child = Command::new("nsenter")
            .arg(format!("--net={}", host.path().display()))
            .arg(plugins.join("bridge"))
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", id)
            .env("CNI_NETNS", pod)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", plugins)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        child.stdin.take().unwrap().write_all(config.as_bytes())?;
        let out = child.wait_with_output()?;
        let took = t.elapsed();
        if !out.status.success() {
            bail!("CNI {command}: {}", String::from_utf8_lossy(&out.stdout));
        }
        Ok(took)
    };
    let pods = pods(dir, n, "cni-pod")?;
    let mut setup = Vec::new();
    for (i, p) in pods.iter().enumerate() {
        setup.push(run("ADD", p.path(), &format!("pod{i}"))?);
    }
    let mut teardown = Vec::new();
    for (i, p) in pods.iter().enumerate() {
        teardown.push(run("DEL", p.path(), &format!("pod{i}"))?);
    }
    report("cni bridge+host-local", &mut setup, &mut teardown);
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = args()?;
    if !nix::unistd::geteuid().is_root() {
        bail!("net_perf needs root (network namespaces, bridges, veths)");
    }
    let dir = tempfile::tempdir()?;
    berth(dir.path(), args.pods)?;
    if let Some(plugins) = &args.cni {
        cni(dir.path(), plugins, args.pods)?;
    }
    Ok(())
}
