//! NetworkPolicy for real: three pods routed through a node namespace; policies from API
//! objects become one filter table there (pure function, one netlink batch).

mod common;

use anyhow::Result;
use berth_proxy::Nft;
use berth_proxy::policy::{PolicyConfig, policy_table};
use common::{PodNetwork, fetch, nft_list, nft_ruleset, pod_network};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::json;

fn pod(i: usize, ns: &str, app: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": format!("pod{i}"), "namespace": ns, "labels": {"app": app}},
        "spec": {"nodeName": "node-a", "containers": [{"name": "c", "image": "x",
                 "ports": [{"name": "http", "containerPort": 8080}]}]},
        "status": {"podIP": format!("10.244.{i}.2")},
    }))
    .unwrap()
}

fn namespace(name: &str, team: &str) -> Namespace {
    serde_json::from_value(json!({"metadata": {"name": name, "labels": {"team": team}}})).unwrap()
}

fn policy(name: &str, ns: &str, spec: serde_json::Value) -> NetworkPolicy {
    serde_json::from_value(json!({"metadata": {"name": name, "namespace": ns}, "spec": spec}))
        .unwrap()
}

struct Guarded {
    net: PodNetwork,
    cfg: PolicyConfig,
}

impl Drop for Guarded {
    fn drop(&mut self) {
        let table = self.cfg.table.clone();
        let _ = self
            .net
            .node
            .run(move || Nft::open().and_then(|n| n.delete_table(&table)));
    }
}

impl Guarded {
    fn apply(&self, policies: &[NetworkPolicy]) -> Result<()> {
        let pods = [
            pod(1, "default", "a"),
            pod(2, "default", "b"),
            pod(3, "other", "c"),
        ];
        let nss = [namespace("default", "x"), namespace("other", "y")];
        let table = policy_table(&self.cfg, &pods, &nss, policies);
        self.net
            .node
            .run(move || -> berth_proxy::Result<()> { Nft::open()?.replace(&table) })??;
        Ok(())
    }

    fn can(&self, from: usize, to: usize) -> bool {
        fetch(&self.net.pods[from - 1], &format!("10.244.{to}.2:8080")).is_ok()
    }
}

#[test]
fn a_policy_blocks_then_allows_a_flow_and_leaves_nothing() -> Result<()> {
    if !common::privileged("NetworkPolicy in netns") {
        return Ok(());
    }
    let g = Guarded {
        net: pod_network(3)?,
        cfg: PolicyConfig {
            table: berth_testutil::unique_name("pol"),
            node_name: Some("node-a".into()),
        },
    };
    // Default allow.
    g.apply(&[])?;
    assert!(g.can(1, 2) && g.can(3, 2));

    // pod2 (app=b) accepts only from pods in namespaces labelled team=y: pod1 is blocked.
    let from_team_y = policy(
        "b-ingress",
        "default",
        json!({"podSelector": {"matchLabels": {"app": "b"}},
               "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "y"}}}]}]}),
    );
    g.apply(std::slice::from_ref(&from_team_y))?;
    assert!(!g.can(1, 2), "pod1 -> pod2 must be blocked");
    assert!(g.can(3, 2), "pod3 -> pod2 is allowed");
    assert!(g.can(2, 1), "pod1 is not selected: default allow");
    let listing = nft_list(&g.net.node, &g.cfg.table).expect("table exists");
    assert!(listing.contains("ingress-default/pod2"), "{listing}");

    // A second policy allows app=a on the named port: pod1 gets through (union of policies).
    let from_a = policy(
        "b-from-a",
        "default",
        json!({"podSelector": {"matchLabels": {"app": "b"}},
               "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "a"}}}],
                            "ports": [{"port": "http"}]}]}),
    );
    g.apply(&[from_team_y.clone(), from_a])?;
    assert!(g.can(1, 2) && g.can(3, 2));

    // ipBlock with except: 10.244.0.0/16 but not 10.244.3.0/24.
    let block = policy(
        "b-block",
        "default",
        json!({"podSelector": {"matchLabels": {"app": "b"}},
               "ingress": [{"from": [{"ipBlock": {"cidr": "10.244.0.0/16",
                                                   "except": ["10.244.3.0/24"]}}],
                            "ports": [{"protocol": "TCP", "port": 8000, "endPort": 8100}]}]}),
    );
    g.apply(&[block])?;
    assert!(g.can(1, 2));
    assert!(!g.can(3, 2));

    // Egress: pod1 may only talk to pod3.
    let egress = policy(
        "a-egress",
        "default",
        json!({"podSelector": {"matchLabels": {"app": "a"}}, "policyTypes": ["Egress"],
               "egress": [{"to": [{"namespaceSelector": {},
                                    "podSelector": {"matchLabels": {"app": "c"}}}]}]}),
    );
    g.apply(&[egress])?;
    assert!(!g.can(1, 2));
    assert!(g.can(1, 3));
    assert!(g.can(2, 1), "replies and ingress to pod1 are unaffected");

    // Removing the table restores default allow and leaves no rule.
    let table = g.cfg.table.clone();
    g.net
        .node
        .run(move || Nft::open().and_then(|n| n.delete_table(&table)))??;
    assert!(nft_ruleset(&g.net.node).trim().is_empty());
    assert!(g.can(1, 2));
    Ok(())
}
