//! A pod's `/etc/resolv.conf`, decided as the kubelet decides it (`pkg/kubelet/network/dns`).
//!
//! [`pod_resolv_conf`] takes the pod's `dnsPolicy` and `dnsConfig` and the node's
//! [`NodeDns`] settings (cluster DNS addresses, cluster domain, the host's resolv.conf):
//! - `ClusterFirst` (the default): the cluster DNS servers, search
//!   `<ns>.svc.<domain> svc.<domain> <domain>` followed by the host's search list, and
//!   `options ndots:5`. A `hostNetwork` pod with `ClusterFirst` gets `Default` instead, and
//!   so does every pod when no cluster DNS address is configured (as the kubelet falls back).
//! - `ClusterFirstWithHostNet`: `ClusterFirst` even on the host network.
//! - `Default`: the host's resolv.conf.
//! - `None`: only what `dnsConfig` says.
//!
//! `dnsConfig` is then merged in: nameservers and searches appended without duplicates,
//! options merged by name (the pod's value wins). The result is cut to the resolver's limits
//! (3 nameservers, 32 search domains, 2048 characters of search list).

use std::net::IpAddr;
use std::path::Path;

use k8s_openapi::api::core::v1::Pod;

use crate::{Error, Result};

/// Most nameservers a resolver uses (glibc's `MAXNS`).
pub const MAX_NAMESERVERS: usize = 3;
/// Most search domains the kubelet writes.
pub const MAX_SEARCHES: usize = 32;
/// Most characters in the search list the kubelet writes.
pub const MAX_SEARCH_CHARS: usize = 2048;

/// The content of a resolv.conf.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvConf {
    /// `nameserver` lines, in order.
    pub nameservers: Vec<String>,
    /// The `search` list (without trailing dots).
    pub searches: Vec<String>,
    /// `options` (`ndots:5`, `edns0`, ...).
    pub options: Vec<String>,
}

impl ResolvConf {
    /// Parse resolv.conf text as the kubelet does: comments after `#` or `;`, the last
    /// `search` line wins, `options` accumulate.
    pub fn parse(text: &str) -> Self {
        let mut conf = ResolvConf::default();
        for line in text.lines() {
            let line = match line.find(['#', ';']) {
                Some(i) => &line[..i],
                None => line,
            };
            let mut fields = line.split_whitespace();
            match fields.next() {
                Some("nameserver") => {
                    if let Some(ns) = fields.next() {
                        conf.nameservers.push(ns.to_owned());
                    }
                }
                Some("search") => {
                    conf.searches = fields
                        .filter(|s| *s != ".")
                        .map(|s| s.trim_end_matches('.').to_owned())
                        .collect();
                }
                Some("options") => {
                    conf.options = merge_options(&conf.options, fields.map(option_pair));
                }
                _ => {}
            }
        }
        conf
    }

    /// Read and parse a file (an absent file reads as empty, as the kubelet treats it).
    pub fn read(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        match std::fs::read_to_string(path) {
            Ok(text) => Ok(Self::parse(&text)),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(Error::ReadResolvConf {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// The file's text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if !self.searches.is_empty() {
            out.push_str("search ");
            out.push_str(&self.searches.join(" "));
            out.push('\n');
        }
        for ns in &self.nameservers {
            out.push_str("nameserver ");
            out.push_str(ns);
            out.push('\n');
        }
        if !self.options.is_empty() {
            out.push_str("options ");
            out.push_str(&self.options.join(" "));
            out.push('\n');
        }
        out
    }
}

/// A node's DNS settings (the kubelet's `--cluster-dns`, `--cluster-domain`, `--resolv-conf`).
#[derive(Debug, Clone, Default)]
pub struct NodeDns {
    /// The cluster DNS server addresses (the DNS Service's ClusterIP).
    pub cluster_dns: Vec<IpAddr>,
    /// The cluster domain (`cluster.local`).
    pub cluster_domain: String,
    /// The host's resolv.conf (for `Default`, and the search domains appended to `ClusterFirst`).
    pub host: ResolvConf,
}

/// The resolv.conf of `pod` on a node with `node` settings.
pub fn pod_resolv_conf(pod: &Pod, node: &NodeDns) -> Result<ResolvConf> {
    let spec = pod.spec.as_ref();
    let policy = spec
        .and_then(|s| s.dns_policy.as_deref())
        .unwrap_or("ClusterFirst");
    let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
    enum Kind {
        Cluster,
        Host,
        None,
    }
    let kind = match policy {
        "None" => Kind::None,
        "ClusterFirstWithHostNet" => Kind::Cluster,
        "ClusterFirst" if !host_network => Kind::Cluster,
        "ClusterFirst" | "Default" => Kind::Host,
        other => return Err(Error::PodDns(format!("unknown dnsPolicy {other:?}"))),
    };
    let mut conf = match kind {
        Kind::Cluster if !node.cluster_dns.is_empty() => {
            let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
            let mut searches = Vec::new();
            if !node.cluster_domain.is_empty() {
                let d = &node.cluster_domain;
                searches.extend([format!("{ns}.svc.{d}"), format!("svc.{d}"), d.clone()]);
            }
            searches.extend(node.host.searches.iter().cloned());
            ResolvConf {
                nameservers: node.cluster_dns.iter().map(IpAddr::to_string).collect(),
                searches: dedup(searches),
                options: vec!["ndots:5".into()],
            }
        }
        // No cluster DNS configured: the kubelet falls back to the host's settings.
        Kind::Cluster | Kind::Host => node.host.clone(),
        Kind::None => ResolvConf::default(),
    };
    if let Some(extra) = spec.and_then(|s| s.dns_config.as_ref()) {
        conf.nameservers = dedup(
            conf.nameservers
                .into_iter()
                .chain(extra.nameservers.iter().flatten().cloned())
                .collect(),
        );
        conf.searches = dedup(
            conf.searches
                .into_iter()
                .chain(extra.searches.iter().flatten().cloned())
                .collect(),
        );
        conf.options = merge_options(
            &conf.options,
            extra
                .options
                .iter()
                .flatten()
                .filter_map(|o| Some((o.name.clone()?, o.value.clone().unwrap_or_default()))),
        );
    }
    conf.nameservers.truncate(MAX_NAMESERVERS);
    fit_searches(&mut conf.searches);
    Ok(conf)
}

fn dedup(items: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(items.len());
    for item in items {
        if !out.contains(&item) {
            out.push(item);
        }
    }
    out
}

fn option_pair(option: &str) -> (String, String) {
    match option.split_once(':') {
        Some((k, v)) => (k.to_owned(), v.to_owned()),
        None => (option.to_owned(), String::new()),
    }
}

/// Options keyed by name, later ones replacing earlier ones in place.
fn merge_options(
    existing: &[String],
    new: impl IntoIterator<Item = (String, String)>,
) -> Vec<String> {
    let mut pairs: Vec<(String, String)> = existing.iter().map(|o| option_pair(o)).collect();
    for (k, v) in new {
        match pairs.iter_mut().find(|(name, _)| *name == k) {
            Some(pair) => pair.1 = v,
            None => pairs.push((k, v)),
        }
    }
    pairs
        .into_iter()
        .map(|(k, v)| if v.is_empty() { k } else { format!("{k}:{v}") })
        .collect()
}

/// Cut the search list to the kubelet's limits (count, then total length).
fn fit_searches(searches: &mut Vec<String>) {
    searches.truncate(MAX_SEARCHES);
    while !searches.is_empty() && searches.join(" ").len() > MAX_SEARCH_CHARS {
        searches.pop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "shop"},
            "spec": spec,
        }))
        .unwrap()
    }

    fn node() -> NodeDns {
        NodeDns {
            cluster_dns: vec!["10.96.0.10".parse().unwrap()],
            cluster_domain: "cluster.local".into(),
            host: ResolvConf::parse(
                "# host\nnameserver 192.168.1.1\nnameserver 8.8.8.8 ; google\nsearch lan. example.com\noptions edns0 ndots:2\n",
            ),
        }
    }

    #[test]
    fn parse_host_file() {
        let host = node().host;
        assert_eq!(host.nameservers, ["192.168.1.1", "8.8.8.8"]);
        assert_eq!(host.searches, ["lan", "example.com"]);
        assert_eq!(host.options, ["edns0", "ndots:2"]);
    }

    #[test]
    fn cluster_first_default_none_and_dns_config() {
        let conf = pod_resolv_conf(&pod(json!({"containers": []})), &node()).unwrap();
        assert_eq!(conf.nameservers, ["10.96.0.10"]);
        assert_eq!(
            conf.searches,
            [
                "shop.svc.cluster.local",
                "svc.cluster.local",
                "cluster.local",
                "lan",
                "example.com"
            ]
        );
        assert_eq!(conf.options, ["ndots:5"]);
        assert_eq!(
            conf.render(),
            "search shop.svc.cluster.local svc.cluster.local cluster.local lan example.com\nnameserver 10.96.0.10\noptions ndots:5\n"
        );

        let host_net = pod(json!({"containers": [], "hostNetwork": true}));
        assert_eq!(pod_resolv_conf(&host_net, &node()).unwrap(), node().host);
        let with_host_net = pod(
            json!({"containers": [], "hostNetwork": true, "dnsPolicy": "ClusterFirstWithHostNet"}),
        );
        assert_eq!(
            pod_resolv_conf(&with_host_net, &node())
                .unwrap()
                .nameservers,
            ["10.96.0.10"]
        );
        let default = pod(json!({"containers": [], "dnsPolicy": "Default"}));
        assert_eq!(pod_resolv_conf(&default, &node()).unwrap(), node().host);

        let none = pod(json!({"containers": [], "dnsPolicy": "None", "dnsConfig": {
            "nameservers": ["1.1.1.1"], "searches": ["a.example"],
            "options": [{"name": "ndots", "value": "1"}, {"name": "rotate"}]}}));
        let conf = pod_resolv_conf(&none, &node()).unwrap();
        assert_eq!(conf.nameservers, ["1.1.1.1"]);
        assert_eq!(conf.searches, ["a.example"]);
        assert_eq!(conf.options, ["ndots:1", "rotate"]);

        let merged = pod(json!({"containers": [], "dnsConfig": {
            "nameservers": ["10.96.0.10", "1.1.1.1", "2.2.2.2", "3.3.3.3"],
            "searches": ["cluster.local", "x.example"],
            "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]}}));
        let conf = pod_resolv_conf(&merged, &node()).unwrap();
        assert_eq!(
            conf.nameservers,
            ["10.96.0.10", "1.1.1.1", "2.2.2.2"],
            "deduplicated, at most 3"
        );
        assert_eq!(conf.searches.last().unwrap(), "x.example");
        assert_eq!(conf.options, ["ndots:2", "edns0"]);

        let bad = pod(json!({"containers": [], "dnsPolicy": "Sometimes"}));
        assert!(pod_resolv_conf(&bad, &node()).is_err());

        let no_cluster_dns = NodeDns {
            cluster_dns: vec![],
            ..node()
        };
        assert_eq!(
            pod_resolv_conf(&pod(json!({"containers": []})), &no_cluster_dns).unwrap(),
            node().host
        );
    }

    #[test]
    fn search_limits() {
        let mut long: Vec<String> = (0..40)
            .map(|i| format!("d{i}.{}", "x".repeat(60)))
            .collect();
        fit_searches(&mut long);
        assert!(long.len() <= MAX_SEARCHES);
        assert!(long.join(" ").len() <= MAX_SEARCH_CHARS);
    }
}
