//! IPAM under concurrency: threads and processes leasing from one directory at once never get
//! one address twice, and every lease is in the file afterwards.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::process::Command;

use berth_net::Ipam;

const CHILD_ENV: &str = "BERTH_NET_IPAM_CHILD";
const PER_WORKER: usize = 24;

/// Not a test on its own: the body each child process runs when `CHILD_ENV` names a directory.
#[test]
fn ipam_child_process() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (dir, tag) = spec.split_once('|').unwrap();
    let ipam = Ipam::open(dir, "10.77.0.0/22".parse().unwrap()).unwrap();
    for i in 0..PER_WORKER {
        let addr = ipam.allocate(&format!("{tag}-{i}")).unwrap();
        println!("LEASE {tag}-{i} {addr}");
    }
}

#[test]
fn concurrent_threads_and_processes_never_share_an_address() {
    let dir = tempfile::tempdir().unwrap();
    let subnet = "10.77.0.0/22".parse().unwrap();
    let ipam = Ipam::open(dir.path(), subnet).unwrap();
    let exe = std::env::current_exe().unwrap();

    // Four processes and four threads of this one, all at once.
    let children: Vec<_> = (0..4)
        .map(|p| {
            Command::new(&exe)
                .args([
                    "--exact",
                    "ipam_child_process",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(CHILD_ENV, format!("{}|proc{p}", dir.path().display()))
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let ipam = ipam.clone();
            std::thread::spawn(move || {
                let mut got = Vec::new();
                for i in 0..PER_WORKER {
                    let id = format!("thread{t}-{i}");
                    got.push((id.clone(), ipam.allocate(&id).unwrap()));
                    // Churn: release every third and take a new one.
                    if i % 3 == 0 {
                        ipam.release(&id).unwrap();
                        got.pop();
                        let id = format!("thread{t}-{i}b");
                        got.push((id.clone(), ipam.allocate(&id).unwrap()));
                    }
                }
                got
            })
        })
        .collect();

    let mut handed: BTreeMap<Ipv4Addr, String> = BTreeMap::new();
    for t in threads {
        for (id, addr) in t.join().unwrap() {
            assert!(
                handed.insert(addr, id.clone()).is_none(),
                "{addr} handed out twice ({id})"
            );
        }
    }
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "child failed");
        let text = String::from_utf8(out.stdout).unwrap();
        let mut n = 0;
        for line in text
            .lines()
            .filter_map(|l| l.split_once("LEASE ").map(|(_, r)| r))
        {
            let (id, addr) = line.split_once(' ').unwrap();
            let addr: Ipv4Addr = addr.parse().unwrap();
            assert!(
                handed.insert(addr, id.to_owned()).is_none(),
                "{addr} handed out twice ({id})"
            );
            n += 1;
        }
        assert_eq!(n, PER_WORKER);
    }
    assert_eq!(handed.len(), 8 * PER_WORKER);
    // The file holds exactly what was handed out (and survives reopening).
    let reopened = Ipam::open(dir.path(), subnet).unwrap();
    assert_eq!(reopened.leases().unwrap(), handed);
    let addrs: BTreeSet<_> = handed.keys().collect();
    assert!(
        !addrs.contains(&Ipv4Addr::new(10, 77, 0, 1)),
        "gateway leased"
    );
}
