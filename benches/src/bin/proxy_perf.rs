//! berth-proxy benchmarks (root; everything runs in network namespaces this program makes and
//! deletes).
//!
//! `reprogram`: 1,000 Services (3 ready endpoints each, one in ten a NodePort) installed, then
//! one endpoint of one Service flips readiness per round; reports the time to rebuild the
//! ruleset (pure function) and to apply it (incremental batch), and a full replacement for
//! comparison. `clusterip`: wrk from a client namespace against nginx in a pod namespace,
//! directly by pod IP and through a ClusterIP (DNAT on the node namespace between them, with
//! the 1,000 other Services installed), alternating rounds, as a ratio.
//!
//! ```text
//! cargo run -p berth-benches --profile perf --bin proxy_perf -- reprogram [--services 1000] [--rounds 50]
//! cargo run -p berth-benches --profile perf --bin proxy_perf -- clusterip [--seconds 10] [--rounds 3] [--outside]
//! ```

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use berth_proxy::Nft;
use berth_proxy::nft::TCP;
use berth_proxy::nft::Table;
use berth_proxy::service::{Endpoint, ProxyConfig, ServicePort, ports_table};
use std::net::Ipv4Addr;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn run(args: &[&str]) -> Result<String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("running {args:?}"))?;
    if !out.status.success() {
        bail!("{args:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

struct NetNs(String);

impl NetNs {
    fn new(prefix: &str) -> Result<Self> {
        let name = berth_testutil::unique_name(prefix);
        run(&["ip", "netns", "add", &name])?;
        let ns = NetNs(name);
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }
    fn ip(&self, args: &[&str]) -> Result<String> {
        let mut all = vec!["ip", "-n", self.0.as_str()];
        all.extend_from_slice(args);
        run(&all)
    }
    fn exec(&self, args: &[&str]) -> Result<String> {
        let mut all = vec!["ip", "netns", "exec", self.0.as_str()];
        all.extend_from_slice(args);
        run(&all)
    }
    /// Runs `f` on a thread inside the namespace.
    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        let path = format!("/run/netns/{}", self.0);
        std::thread::spawn(move || -> Result<T> {
            let file = std::fs::File::open(&path)?;
            nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)?;
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("thread panicked"))?
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = run(&["ip", "netns", "del", &self.0]);
    }
}

fn veth(a: &NetNs, a_if: &str, a_addr: &str, b: &NetNs, b_if: &str, b_addr: &str) -> Result<()> {
    run(&[
        "ip", "link", "add", a_if, "netns", &a.0, "type", "veth", "peer", "name", b_if, "netns",
        &b.0,
    ])?;
    a.ip(&["addr", "add", a_addr, "dev", a_if])?;
    b.ip(&["addr", "add", b_addr, "dev", b_if])?;
    a.ip(&["link", "set", a_if, "up"])?;
    b.ip(&["link", "set", b_if, "up"])?;
    Ok(())
}

/// `n` Services in 10.96.0.0/16, 3 endpoints each in 10.244.0.0/16; every tenth a NodePort.
fn services(n: usize) -> Vec<ServicePort> {
    (0..n)
        .map(|i| {
            let vip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + i as u32 + 1);
            ServicePort {
                namespace: "bench".into(),
                name: format!("svc-{i}"),
                protocol: TCP,
                cluster_ip: vip,
                port: 80,
                node_port: (i % 10 == 0).then_some(30000 + i as u16),
                external_ips: vec![],
                external_local: false,
                affinity_seconds: None,
                endpoints: (0..3)
                    .map(|e| Endpoint {
                        ip: Ipv4Addr::from(
                            u32::from(Ipv4Addr::new(10, 244, 0, 0)) + (i * 3 + e) as u32 + 10,
                        ),
                        port: 8080,
                        local: true,
                    })
                    .collect(),
            }
        })
        .collect()
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().next().unwrap_or("?").to_string())
        .unwrap_or_default()
}

fn reprogram() -> Result<()> {
    let n = arg("--services", 1000);
    let rounds = arg("--rounds", 50);
    let ns = NetNs::new("bench-rp")?;
    let cfg = ProxyConfig {
        table: "berth-bench".into(),
        node_name: "n".into(),
        cluster_cidr: Some("10.244.0.0/16".parse()?),
    };
    let mut model = services(n);
    ns.run(move || -> Result<()> {
        let nft = Nft::open()?;
        let t0 = Instant::now();
        let mut table = ports_table(&cfg, &model);
        let built = t0.elapsed();
        nft.replace(&table)?;
        println!(
            "installed {n} services: {} chains, {} rules, {} sets; build {:?}, first install {:?} (load {})",
            table.chains.len(),
            table.rule_count(),
            table.sets.len(),
            built,
            t0.elapsed(),
            load()
        );
        let (mut build, mut apply, mut full) = (Vec::new(), Vec::new(), Vec::new());
        for r in 0..rounds {
            // One endpoint of one Service turns not-ready (or ready again).
            let svc = (r * 7919) % n;
            let eps = &mut model[svc].endpoints;
            if eps.len() == 3 {
                eps.pop();
            } else {
                eps.push(Endpoint {
                    ip: Ipv4Addr::from(
                        u32::from(Ipv4Addr::new(10, 244, 0, 0)) + (svc * 3 + 2) as u32 + 10,
                    ),
                    port: 8080,
                    local: true,
                });
            }
            let t = Instant::now();
            let next: Table = ports_table(&cfg, &model);
            let b = t.elapsed();
            nft.update(Some(&table), &next)?;
            apply.push(t.elapsed() - b);
            build.push(b);
            table = next;
            if r % 10 == 0 {
                let t = Instant::now();
                nft.replace(&table)?;
                full.push(t.elapsed());
            }
        }
        let total: Vec<Duration> = build.iter().zip(&apply).map(|(a, b)| *a + *b).collect();
        let (mut total, mut b2, mut a2) = (total, build.clone(), apply.clone());
        println!(
            "endpoint change, {rounds} rounds: build p50 {:?} p99 {:?}; incremental apply p50 {:?} p99 {:?}; total p50 {:?} p99 {:?}",
            pct(&mut b2, 0.5),
            pct(&mut b2, 0.99),
            pct(&mut a2, 0.5),
            pct(&mut a2, 0.99),
            pct(&mut total, 0.5),
            pct(&mut total, 0.99)
        );
        println!(
            "full replacement ({} runs): p50 {:?} max {:?} (load {})",
            full.len(),
            pct(&mut full, 0.5),
            pct(&mut full, 1.0),
            load()
        );
        nft.delete_table(&table.name)?;
        Ok(())
    })?
}

fn wrk(ns: &NetNs, url: &str, seconds: usize) -> Result<f64> {
    let out = ns.exec(&["wrk", "-t2", "-c32", &format!("-d{seconds}s"), url])?;
    out.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no Requests/sec in {out}"))
}

fn clusterip() -> Result<()> {
    let seconds = arg("--seconds", 10);
    let rounds = arg("--rounds", 3);
    let node = NetNs::new("bench-node")?;
    let client = NetNs::new("bench-cl")?;
    let pod = NetNs::new("bench-pod")?;
    veth(
        &node,
        "ext0",
        "10.78.0.1/24",
        &client,
        "eth0",
        "10.78.0.2/24",
    )?;
    veth(&node, "p1", "10.244.1.1/24", &pod, "eth0", "10.244.1.2/24")?;
    client.ip(&["route", "add", "default", "via", "10.78.0.1"])?;
    pod.ip(&["route", "add", "default", "via", "10.244.1.1"])?;
    node.exec(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])?;
    let dir = tempfile::tempdir()?;
    let conf = dir.path().join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off; worker_processes 1; pid {}/nginx.pid; error_log stderr;\n\
             events {{ worker_connections 1024; }}\n\
             http {{ access_log off; client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};\n\
             server {{ listen 80; location / {{ return 200 \"hello\\n\"; }} }} }}\n",
            dir.path().display(),
            d = dir.path().display()
        ),
    )?;
    let mut nginx = Command::new("ip")
        .args(["netns", "exec", &pod.0, "nginx", "-c"])
        .arg(&conf)
        .spawn()
        .context("starting nginx")?;
    std::thread::sleep(Duration::from_millis(500));
    let cfg = ProxyConfig {
        table: "berth-bench".into(),
        node_name: "n".into(),
        cluster_cidr: Some("10.244.0.0/16".parse()?),
    };
    let mut model = services(1000);
    model[500].endpoints = vec![Endpoint {
        ip: Ipv4Addr::new(10, 244, 1, 2),
        port: 80,
        local: true,
    }];
    let vip = model[500].cluster_ip;
    let table = ports_table(&cfg, &model);
    node.run(move || Nft::open().and_then(|n| n.replace(&table)))??;
    let direct_url = "http://10.244.1.2:80/";
    let vip_url = format!("http://{vip}:80/");
    // Warm up both paths.
    wrk(&client, direct_url, 1)?;
    wrk(&client, &vip_url, 1)?;
    let (mut direct, mut via) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        let d = wrk(&client, direct_url, seconds)?;
        let v = wrk(&client, &vip_url, seconds)?;
        println!(
            "round {r}: direct {d:.0} req/s, ClusterIP {v:.0} req/s (load {})",
            load()
        );
        direct.push(d);
        via.push(v);
    }
    let (d, v) = (
        direct.iter().sum::<f64>() / rounds as f64,
        via.iter().sum::<f64>() / rounds as f64,
    );
    println!(
        "mean: direct {d:.0} req/s, ClusterIP {v:.0} req/s, ClusterIP/direct {:.3} (overhead {:.1}%)",
        v / d,
        (1.0 - v / d) * 100.0
    );
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(nginx.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = nginx.wait();
    let _ = node.run(|| Nft::open().and_then(|n| n.delete_table("berth-bench")));
    Ok(())
}

fn main() -> Result<()> {
    match std::env::args().nth(1).as_deref() {
        Some("reprogram") => reprogram(),
        Some("clusterip") => clusterip(),
        _ => bail!("usage: proxy_perf reprogram|clusterip [options]"),
    }
}
