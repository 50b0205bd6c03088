//! The Service environment variables the kubelet gives every container
//! (`pkg/kubelet/envvars`): `<SVC>_SERVICE_HOST`, `<SVC>_SERVICE_PORT`,
//! `<SVC>_SERVICE_PORT_<NAME>` and Docker's link variables `<SVC>_PORT`,
//! `<SVC>_PORT_<port>_<PROTO>{,_PROTO,_PORT,_ADDR}`.
//!
//! Which Services: those of the pod's namespace when `enableServiceLinks` is true (the
//! default), and always the `kubernetes` Service of the `default` namespace (a Service of the
//! same name in the pod's namespace takes its place). Services without a ClusterIP (headless,
//! ExternalName, not yet allocated) give none. The container's own `env` overrides these.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{EnvVar, Pod, Service};

/// The API server's Service, whose variables every pod gets.
const MASTER_SERVICE: &str = "kubernetes";

/// The Service variables for `pod`, from all `services` in the cluster, ordered by Service
/// name.
pub fn service_env<'a>(pod: &Pod, services: impl IntoIterator<Item = &'a Service>) -> Vec<EnvVar> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let links = pod
        .spec
        .as_ref()
        .and_then(|s| s.enable_service_links)
        .unwrap_or(true);
    let mut chosen: BTreeMap<&str, &Service> = BTreeMap::new();
    for svc in services {
        if cluster_ip(svc).is_none() {
            continue;
        }
        let (Some(name), Some(svc_ns)) = (
            svc.metadata.name.as_deref(),
            svc.metadata.namespace.as_deref(),
        ) else {
            continue;
        };
        if svc_ns == "default" && name == MASTER_SERVICE {
            chosen.entry(name).or_insert(svc);
        } else if svc_ns == ns && links {
            chosen.insert(name, svc);
        }
    }
    chosen.values().flat_map(|svc| service_vars(svc)).collect()
}

fn cluster_ip(svc: &Service) -> Option<&str> {
    svc.spec
        .as_ref()?
        .cluster_ip
        .as_deref()
        .filter(|ip| !ip.is_empty() && *ip != "None")
}

fn var_name(name: &str) -> String {
    name.replace('-', "_").to_ascii_uppercase()
}

fn var(name: String, value: String) -> EnvVar {
    EnvVar {
        name,
        value: Some(value),
        value_from: None,
    }
}

/// The variables of one Service (kubelet's `FromServices` for one entry).
fn service_vars(svc: &Service) -> Vec<EnvVar> {
    let (Some(ip), Some(name), Some(spec)) = (
        cluster_ip(svc),
        svc.metadata.name.as_deref(),
        svc.spec.as_ref(),
    ) else {
        return Vec::new();
    };
    let ports = spec.ports.as_deref().unwrap_or_default();
    let Some(first) = ports.first() else {
        return Vec::new();
    };
    let prefix = var_name(name);
    let mut out = vec![
        var(format!("{prefix}_SERVICE_HOST"), ip.to_owned()),
        var(format!("{prefix}_SERVICE_PORT"), first.port.to_string()),
    ];
    for p in ports {
        if let Some(pn) = p.name.as_deref().filter(|n| !n.is_empty()) {
            out.push(var(
                format!("{prefix}_SERVICE_PORT_{}", var_name(pn)),
                p.port.to_string(),
            ));
        }
    }
    // Docker's link variables.
    let host = if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.to_owned()
    };
    for (i, p) in ports.iter().enumerate() {
        let proto = p.protocol.as_deref().unwrap_or("TCP");
        let lower = proto.to_ascii_lowercase();
        let url = format!("{lower}://{host}:{}", p.port);
        if i == 0 {
            out.push(var(format!("{prefix}_PORT"), url.clone()));
        }
        let pp = format!("{prefix}_PORT_{}_{}", p.port, proto.to_ascii_uppercase());
        out.push(var(pp.clone(), url));
        out.push(var(format!("{pp}_PROTO"), lower));
        out.push(var(format!("{pp}_PORT"), p.port.to_string()));
        out.push(var(format!("{pp}_ADDR"), ip.to_owned()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(ns: &str, name: &str, ip: &str, ports: serde_json::Value) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns},
            "spec": {"clusterIP": ip, "ports": ports},
        }))
        .unwrap()
    }

    fn env_map(vars: &[EnvVar]) -> BTreeMap<String, String> {
        vars.iter()
            .map(|v| (v.name.clone(), v.value.clone().unwrap()))
            .collect()
    }

    #[test]
    fn variables_as_the_kubelet_writes_them() {
        let services = [
            svc(
                "default",
                "kubernetes",
                "10.96.0.1",
                json!([{"name": "https", "port": 443}]),
            ),
            svc(
                "shop",
                "redis-primary",
                "10.96.0.11",
                json!([{"port": 6379, "protocol": "TCP"}]),
            ),
            svc(
                "shop",
                "web",
                "10.96.0.12",
                json!([{"name": "http", "port": 80}, {"name": "dns", "port": 53, "protocol": "UDP"}]),
            ),
            svc("shop", "headless", "None", json!([{"port": 1}])),
            svc("other", "elsewhere", "10.96.0.13", json!([{"port": 2}])),
        ];
        let pod: Pod = serde_json::from_value(
            json!({"metadata": {"name": "p", "namespace": "shop"}, "spec": {"containers": []}}),
        )
        .unwrap();
        let env = env_map(&service_env(&pod, &services));
        assert_eq!(env["REDIS_PRIMARY_SERVICE_HOST"], "10.96.0.11");
        assert_eq!(env["REDIS_PRIMARY_SERVICE_PORT"], "6379");
        assert_eq!(env["REDIS_PRIMARY_PORT"], "tcp://10.96.0.11:6379");
        assert_eq!(env["REDIS_PRIMARY_PORT_6379_TCP"], "tcp://10.96.0.11:6379");
        assert_eq!(env["REDIS_PRIMARY_PORT_6379_TCP_PROTO"], "tcp");
        assert_eq!(env["REDIS_PRIMARY_PORT_6379_TCP_PORT"], "6379");
        assert_eq!(env["REDIS_PRIMARY_PORT_6379_TCP_ADDR"], "10.96.0.11");
        assert_eq!(env["WEB_SERVICE_PORT_HTTP"], "80");
        assert_eq!(env["WEB_SERVICE_PORT_DNS"], "53");
        assert_eq!(env["WEB_PORT_53_UDP"], "udp://10.96.0.12:53");
        assert_eq!(env["KUBERNETES_SERVICE_HOST"], "10.96.0.1");
        assert_eq!(env["KUBERNETES_SERVICE_PORT_HTTPS"], "443");
        assert!(
            !env.keys()
                .any(|k| k.starts_with("HEADLESS") || k.starts_with("ELSEWHERE"))
        );

        let no_links: Pod = serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "shop"}, "spec": {"containers": [], "enableServiceLinks": false}})).unwrap();
        let env = env_map(&service_env(&no_links, &services));
        assert!(env.keys().all(|k| k.starts_with("KUBERNETES_")), "{env:?}");
    }
}
