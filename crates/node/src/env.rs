//! A container's environment and its configMap/secret/projected volume contents, resolved
//! against the API: values (with `$(VAR)` expansion of earlier entries), `envFrom`
//! ConfigMaps and Secrets (with `prefix`), `valueFrom` `configMapKeyRef`/`secretKeyRef`
//! (`optional`), the downward API `fieldRef` (`metadata.name`, `metadata.namespace`,
//! `metadata.uid`, `metadata.labels['k']`, `metadata.annotations['k']`, `spec.nodeName`,
//! `spec.serviceAccountName`, `status.hostIP`, `status.podIP`) and `resourceFieldRef`
//! (`limits.cpu|memory`, `requests.cpu|memory`, with `divisor`).

use std::collections::BTreeMap;

use berth_api::quantity::{Bytes, Cpu};
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret, Volume};
use kube::Api;

use crate::volumes::Files;

/// Resolves references for one pod (namespace-scoped reads through the API).
#[derive(Clone)]
pub struct Resolver {
    configmaps: Api<ConfigMap>,
    secrets: Api<Secret>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver").finish_non_exhaustive()
    }
}

fn configmap_data(cm: &ConfigMap) -> BTreeMap<String, Vec<u8>> {
    let mut out: BTreeMap<String, Vec<u8>> = cm
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
        .collect();
    for (k, v) in cm.binary_data.iter().flatten() {
        out.insert(k.clone(), v.0.clone());
    }
    out
}

fn secret_data(s: &Secret) -> BTreeMap<String, Vec<u8>> {
    let mut out: BTreeMap<String, Vec<u8>> = s
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect();
    for (k, v) in s.string_data.iter().flatten() {
        out.insert(k.clone(), v.clone().into_bytes());
    }
    out
}

/// The value of a downward-API field path.
pub fn field(pod: &Pod, path: &str, host_ip: &str) -> Result<String, String> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    let from_map = |map: &Option<BTreeMap<String, String>>, rest: &str| -> Option<String> {
        let key = rest.strip_prefix("['")?.strip_suffix("']")?;
        Some(map.as_ref()?.get(key).cloned().unwrap_or_default())
    };
    Ok(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.hostIP" => host_ip.to_owned(),
        "status.podIP" => status.and_then(|s| s.pod_ip.clone()).unwrap_or_default(),
        p if p.starts_with("metadata.labels") => {
            from_map(&meta.labels, &p["metadata.labels".len()..])
                .ok_or_else(|| format!("unsupported fieldRef {p:?}"))?
        }
        p if p.starts_with("metadata.annotations") => {
            from_map(&meta.annotations, &p["metadata.annotations".len()..])
                .ok_or_else(|| format!("unsupported fieldRef {p:?}"))?
        }
        p => return Err(format!("unsupported fieldRef {p:?}")),
    })
}

/// The value of a `resourceFieldRef` for container `c` (limits default to the node's
/// allocatable, as the kubelet does).
pub fn resource_field(
    c: &Container,
    resource: &str,
    divisor: Option<&str>,
    node_cpus_millis: u64,
    node_memory: u64,
) -> Result<String, String> {
    let (req, lim) = crate::resources::container_amounts(c)?;
    let (value, cpu) = match resource {
        "limits.cpu" => (lim.cpu.unwrap_or(node_cpus_millis), true),
        "requests.cpu" => (req.cpu.unwrap_or(0), true),
        "limits.memory" => (lim.memory.unwrap_or(node_memory), false),
        "requests.memory" => (req.memory.unwrap_or(0), false),
        r => return Err(format!("unsupported resourceFieldRef {r:?}")),
    };
    let divisor = divisor.filter(|d| !d.is_empty() && *d != "0");
    Ok(if cpu {
        let d = match divisor {
            Some(d) => d.parse::<Cpu>().map_err(|e| e.to_string())?.0.max(1),
            None => 1000,
        };
        value.div_ceil(d).to_string()
    } else {
        let d = match divisor {
            Some(d) => d.parse::<Bytes>().map_err(|e| e.to_string())?.0.max(1),
            None => 1,
        };
        value.div_ceil(d).to_string()
    })
}

impl Resolver {
    /// A resolver for pods in `namespace`.
    pub fn new(client: kube::Client, namespace: &str) -> Resolver {
        Resolver {
            configmaps: Api::namespaced(client.clone(), namespace),
            secrets: Api::namespaced(client, namespace),
        }
    }

    async fn configmap(&self, name: &str, optional: bool) -> Result<Option<ConfigMap>, String> {
        match self.configmaps.get_opt(name).await {
            Ok(Some(cm)) => Ok(Some(cm)),
            Ok(None) if optional => Ok(None),
            Ok(None) => Err(format!("configmap {name:?} not found")),
            Err(e) => Err(e.to_string()),
        }
    }

    async fn secret(&self, name: &str, optional: bool) -> Result<Option<Secret>, String> {
        match self.secrets.get_opt(name).await {
            Ok(Some(s)) => Ok(Some(s)),
            Ok(None) if optional => Ok(None),
            Ok(None) => Err(format!("secret {name:?} not found")),
            Err(e) => Err(e.to_string()),
        }
    }

    /// The environment of `c` in order (the kubelet's `makeEnvironmentVariables`).
    pub async fn env(
        &self,
        pod: &Pod,
        c: &Container,
        host_ip: &str,
        node_cpus_millis: u64,
        node_memory: u64,
    ) -> Result<Vec<(String, String)>, String> {
        let mut out: Vec<(String, String)> = Vec::new();
        let set = |out: &mut Vec<(String, String)>, k: String, v: String| {
            out.retain(|(ek, _)| *ek != k);
            out.push((k, v));
        };
        for from in c.env_from.iter().flatten() {
            let prefix = from.prefix.clone().unwrap_or_default();
            let data = if let Some(r) = &from.config_map_ref {
                self.configmap(&r.name, r.optional.unwrap_or(false))
                    .await?
                    .map(|cm| configmap_data(&cm))
            } else if let Some(r) = &from.secret_ref {
                self.secret(&r.name, r.optional.unwrap_or(false))
                    .await?
                    .map(|s| secret_data(&s))
            } else {
                None
            };
            for (k, v) in data.into_iter().flatten() {
                set(
                    &mut out,
                    format!("{prefix}{k}"),
                    String::from_utf8_lossy(&v).into_owned(),
                );
            }
        }
        for e in c.env.iter().flatten() {
            let value = if let Some(v) = &e.value {
                crate::spec::expand(v, &out)
            } else if let Some(from) = &e.value_from {
                if let Some(r) = &from.config_map_key_ref {
                    let optional = r.optional.unwrap_or(false);
                    match self.configmap(&r.name, optional).await? {
                        Some(cm) => match configmap_data(&cm).remove(&r.key) {
                            Some(v) => String::from_utf8_lossy(&v).into_owned(),
                            None if optional => continue,
                            None => {
                                return Err(format!(
                                    "couldn't find key {} in ConfigMap {}",
                                    r.key, r.name
                                ));
                            }
                        },
                        None => continue,
                    }
                } else if let Some(r) = &from.secret_key_ref {
                    let optional = r.optional.unwrap_or(false);
                    match self.secret(&r.name, optional).await? {
                        Some(s) => match secret_data(&s).remove(&r.key) {
                            Some(v) => String::from_utf8_lossy(&v).into_owned(),
                            None if optional => continue,
                            None => {
                                return Err(format!(
                                    "couldn't find key {} in Secret {}",
                                    r.key, r.name
                                ));
                            }
                        },
                        None => continue,
                    }
                } else if let Some(f) = &from.field_ref {
                    field(pod, &f.field_path, host_ip)?
                } else if let Some(r) = &from.resource_field_ref {
                    let target = match r.container_name.as_deref().filter(|n| !n.is_empty()) {
                        Some(name) => pod
                            .spec
                            .as_ref()
                            .and_then(|s| s.containers.iter().find(|c| c.name == name))
                            .ok_or_else(|| format!("resourceFieldRef: no container {name:?}"))?,
                        None => c,
                    };
                    resource_field(
                        target,
                        &r.resource,
                        r.divisor.as_ref().map(|d| d.0.as_str()),
                        node_cpus_millis,
                        node_memory,
                    )?
                } else {
                    String::new()
                }
            } else {
                String::new()
            };
            set(&mut out, e.name.clone(), value);
        }
        Ok(out)
    }

    /// The files of a configMap, secret or projected volume (`None` for other types).
    pub async fn volume_files(
        &self,
        pod: &Pod,
        v: &Volume,
        host_ip: &str,
    ) -> Result<Option<Files>, String> {
        let mut files = Files::new();
        let pick = |files: &mut Files,
                    data: BTreeMap<String, Vec<u8>>,
                    items: &Option<Vec<k8s_openapi::api::core::v1::KeyToPath>>,
                    mode: u32|
         -> Result<(), String> {
            match items {
                Some(items) => {
                    for i in items {
                        let bytes = data
                            .get(&i.key)
                            .ok_or_else(|| format!("key {:?} not found", i.key))?;
                        let m = i.mode.map_or(mode, |m| m as u32);
                        files.insert(i.path.clone(), (bytes.clone(), m));
                    }
                }
                None => {
                    for (k, b) in data {
                        files.insert(k, (b, mode));
                    }
                }
            }
            Ok(())
        };
        if let Some(cm) = &v.config_map {
            let mode = cm.default_mode.map_or(0o644, |m| m as u32);
            if let Some(obj) = self
                .configmap(&cm.name, cm.optional.unwrap_or(false))
                .await?
            {
                pick(&mut files, configmap_data(&obj), &cm.items, mode)?;
            }
            return Ok(Some(files));
        }
        if let Some(s) = &v.secret {
            let mode = s.default_mode.map_or(0o644, |m| m as u32);
            let name = s.secret_name.clone().unwrap_or_default();
            if let Some(obj) = self.secret(&name, s.optional.unwrap_or(false)).await? {
                pick(&mut files, secret_data(&obj), &s.items, mode)?;
            }
            return Ok(Some(files));
        }
        if let Some(p) = &v.projected {
            let mode = p.default_mode.map_or(0o644, |m| m as u32);
            for source in p.sources.iter().flatten() {
                if let Some(cm) = &source.config_map
                    && let Some(obj) = self
                        .configmap(&cm.name, cm.optional.unwrap_or(false))
                        .await?
                {
                    pick(&mut files, configmap_data(&obj), &cm.items, mode)?;
                }
                if let Some(s) = &source.secret
                    && let Some(obj) = self.secret(&s.name, s.optional.unwrap_or(false)).await?
                {
                    pick(&mut files, secret_data(&obj), &s.items, mode)?;
                }
                if let Some(d) = &source.downward_api {
                    for item in d.items.iter().flatten() {
                        if let Some(f) = &item.field_ref {
                            let value = field(pod, &f.field_path, host_ip)?;
                            let m = item.mode.map_or(mode, |m| m as u32);
                            files.insert(item.path.clone(), (value.into_bytes(), m));
                        }
                    }
                }
            }
            return Ok(Some(files));
        }
        if let Some(d) = &v.downward_api {
            let mode = d.default_mode.map_or(0o644, |m| m as u32);
            for item in d.items.iter().flatten() {
                if let Some(f) = &item.field_ref {
                    let value = field(pod, &f.field_path, host_ip)?;
                    files.insert(
                        item.path.clone(),
                        (value.into_bytes(), item.mode.map_or(mode, |m| m as u32)),
                    );
                }
            }
            return Ok(Some(files));
        }
        Ok(None)
    }
}
