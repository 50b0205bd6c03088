//! Configuration in the shape of kube-scheduler's `KubeSchedulerConfiguration`
//! (`kubescheduler.config.k8s.io/v1`), read from YAML or JSON: profiles by `schedulerName`,
//! plugins enabled and disabled per extension point or at `multiPoint`, score weights and
//! `pluginConfig` arguments.
//!
//! ```
//! let cfg = berth_scheduler::Config::from_yaml(r#"
//! apiVersion: kubescheduler.config.k8s.io/v1
//! kind: KubeSchedulerConfiguration
//! profiles:
//! - schedulerName: bin-packing
//!   pluginConfig:
//!   - name: NodeResourcesFit
//!     args:
//!       scoringStrategy:
//!         type: MostAllocated
//! "#)?;
//! let profiles = cfg.build(&berth_scheduler::Registry::default())?;
//! assert_eq!(profiles[0].name, "bin-packing");
//! # Ok::<_, berth_scheduler::Error>(())
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::framework::{PluginSet, Profile};
use crate::plugins::{DEFAULT_PLUGINS, Registry};
use crate::queue::QueueConfig;

/// A plugin named in a list, with an optional score weight.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PluginRef {
    /// The plugin's name (`*` in `disabled` means every plugin).
    pub name: String,
    /// Score weight.
    #[serde(default)]
    pub weight: Option<i64>,
}

/// Plugins enabled and disabled at one extension point.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PluginList {
    /// Added (after the defaults that are not disabled).
    #[serde(default)]
    pub enabled: Vec<PluginRef>,
    /// Removed from the defaults.
    #[serde(default)]
    pub disabled: Vec<PluginRef>,
}

/// Plugins per extension point.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(missing_docs)]
pub struct Plugins {
    #[serde(default)]
    pub multi_point: PluginList,
    #[serde(default)]
    pub queue_sort: PluginList,
    #[serde(default)]
    pub pre_enqueue: PluginList,
    #[serde(default)]
    pub pre_filter: PluginList,
    #[serde(default)]
    pub filter: PluginList,
    #[serde(default)]
    pub post_filter: PluginList,
    #[serde(default)]
    pub pre_score: PluginList,
    #[serde(default)]
    pub score: PluginList,
    #[serde(default)]
    pub reserve: PluginList,
    #[serde(default)]
    pub permit: PluginList,
    #[serde(default)]
    pub pre_bind: PluginList,
    #[serde(default)]
    pub bind: PluginList,
    #[serde(default)]
    pub post_bind: PluginList,
}

/// Arguments for one plugin.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PluginConfig {
    /// The plugin's name.
    pub name: String,
    /// Its arguments (the plugin's `...Args` object).
    #[serde(default)]
    pub args: Option<serde_json::Value>,
}

/// One profile.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProfileConfig {
    /// Pods with this `spec.schedulerName` use the profile (default `default-scheduler`).
    #[serde(default)]
    pub scheduler_name: Option<String>,
    /// Plugin changes from the defaults.
    #[serde(default)]
    pub plugins: Option<Plugins>,
    /// Plugin arguments.
    #[serde(default)]
    pub plugin_config: Vec<PluginConfig>,
    /// kube's share of nodes to find feasible before scoring (0-100; 0 or unset: the adaptive
    /// default; overrides the global value). Berth samples only where that cannot change the
    /// choice: see [`Profile::nodes_to_find`].
    #[serde(default)]
    pub percentage_of_nodes_to_score: Option<i32>,
}

/// The scheduler's configuration (`KubeSchedulerConfiguration`). Fields kube-scheduler has
/// that do not apply here (client connection, leader election) are ignored.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Config {
    /// `kubescheduler.config.k8s.io/v1`.
    #[serde(default)]
    pub api_version: Option<String>,
    /// `KubeSchedulerConfiguration`.
    #[serde(default)]
    pub kind: Option<String>,
    /// The profiles (one default profile when empty).
    #[serde(default)]
    pub profiles: Vec<ProfileConfig>,
    /// The default of the profiles' `percentageOfNodesToScore` (0-100; 0 or unset: kube's
    /// adaptive default).
    #[serde(default)]
    pub percentage_of_nodes_to_score: Option<i32>,
    /// Backoff after a pod's first failed attempt (default 1).
    #[serde(default)]
    pub pod_initial_backoff_seconds: Option<u64>,
    /// Longest backoff (default 10).
    #[serde(default)]
    pub pod_max_backoff_seconds: Option<u64>,
}

impl Config {
    /// Reads a configuration from YAML (or JSON, which is YAML too).
    pub fn from_yaml(text: &str) -> Result<Self> {
        let cfg: Config = serde_yaml_ng::from_str(text).map_err(Error::ConfigParse)?;
        if let Some(v) = &cfg.api_version
            && v != "kubescheduler.config.k8s.io/v1"
        {
            return Err(Error::Config(format!("unsupported apiVersion {v:?}")));
        }
        if let Some(k) = &cfg.kind
            && k != "KubeSchedulerConfiguration"
        {
            return Err(Error::Config(format!("unexpected kind {k:?}")));
        }
        Ok(cfg)
    }

    /// Backoff settings.
    pub fn queue(&self) -> Result<QueueConfig> {
        let mut q = QueueConfig::default();
        if let Some(s) = self.pod_initial_backoff_seconds {
            q.initial_backoff = Duration::from_secs(s);
        }
        if let Some(s) = self.pod_max_backoff_seconds {
            q.max_backoff = Duration::from_secs(s);
        }
        if q.initial_backoff.is_zero() || q.max_backoff < q.initial_backoff {
            return Err(Error::Config(
                "podInitialBackoffSeconds must be positive and at most podMaxBackoffSeconds".into(),
            ));
        }
        Ok(q)
    }

    /// Builds the profiles with plugins from `registry`.
    pub fn build(&self, registry: &Registry) -> Result<Vec<Profile>> {
        let defaults = [ProfileConfig::default()];
        let list: &[ProfileConfig] = if self.profiles.is_empty() {
            &defaults
        } else {
            &self.profiles
        };
        let mut out: Vec<Profile> = Vec::new();
        let global = percentage(self.percentage_of_nodes_to_score)?;
        for pc in list {
            let mut p = build_profile(pc, registry)?;
            p.percentage_of_nodes_to_score =
                percentage(pc.percentage_of_nodes_to_score)?.or(global);
            if out.iter().any(|o| o.name == p.name) {
                return Err(Error::Config(format!(
                    "duplicate schedulerName {:?}",
                    p.name
                )));
            }
            if let Some(first) = out.first()
                && first.queue_sort.name() != p.queue_sort.name()
            {
                return Err(Error::Config(
                    "all profiles must use the same queueSort plugin".into(),
                ));
            }
            out.push(p);
        }
        Ok(out)
    }
}

fn percentage(v: Option<i32>) -> Result<Option<u32>> {
    match v {
        None => Ok(None),
        Some(p) if (0..=100).contains(&p) => Ok(Some(p as u32)),
        Some(p) => Err(Error::Config(format!(
            "percentageOfNodesToScore must be between 0 and 100, not {p}"
        ))),
    }
}

fn disabled(list: &PluginList, name: &str) -> bool {
    list.disabled
        .iter()
        .any(|d| d.name == "*" || d.name == name)
}

fn build_profile(pc: &ProfileConfig, registry: &Registry) -> Result<Profile> {
    let name = pc
        .scheduler_name
        .clone()
        .unwrap_or_else(|| "default-scheduler".into());
    let plugins = pc.plugins.clone().unwrap_or_default();
    let args: BTreeMap<&str, &serde_json::Value> = pc
        .plugin_config
        .iter()
        .filter_map(|c| c.args.as_ref().map(|a| (c.name.as_str(), a)))
        .collect();
    let mut instances: BTreeMap<String, PluginSet> = BTreeMap::new();
    let mut instance = |n: &str| -> Result<PluginSet> {
        if let Some(s) = instances.get(n) {
            return Ok(s.clone());
        }
        let f = registry
            .get(n)
            .ok_or_else(|| Error::Config(format!("profile {name:?}: unknown plugin {n:?}")))?;
        let s = f(args.get(n).copied())?;
        instances.insert(n.to_owned(), s.clone());
        Ok(s)
    };
    // Multi-point: defaults minus disabled, plus enabled.
    let mut multi: Vec<(String, Option<i64>)> = DEFAULT_PLUGINS
        .iter()
        .filter(|(n, _)| !disabled(&plugins.multi_point, n))
        .map(|(n, w)| (n.to_string(), (*w > 0).then_some(*w)))
        .collect();
    for e in &plugins.multi_point.enabled {
        match multi.iter_mut().find(|(n, _)| *n == e.name) {
            Some(m) => m.1 = e.weight.or(m.1),
            None => multi.push((e.name.clone(), e.weight)),
        }
    }
    let mut sets = Vec::new();
    for (n, w) in &multi {
        sets.push((n.clone(), *w, instance(n)?));
    }
    macro_rules! point {
        ($field:ident) => {{
            let mut v = Vec::new();
            for (n, w, s) in &sets {
                if let Some(p) = &s.$field
                    && !disabled(&plugins.$field, n)
                {
                    v.push((n.clone(), p.clone(), *w));
                }
            }
            for e in &plugins.$field.enabled {
                let s = instance(&e.name)?;
                let p = s.$field.clone().ok_or_else(|| {
                    Error::Config(format!(
                        "profile {name:?}: plugin {:?} has no {} extension point",
                        e.name,
                        stringify!($field)
                    ))
                })?;
                v.retain(|(n, _, _)| *n != e.name);
                v.push((e.name.clone(), p, e.weight));
            }
            v
        }};
    }
    macro_rules! strip {
        ($v:expr) => {
            $v.into_iter().map(|(_, p, _)| p).collect()
        };
    }
    let queue_sort = point!(queue_sort);
    if queue_sort.len() != 1 {
        return Err(Error::Config(format!(
            "profile {name:?}: exactly one queueSort plugin is needed, {} enabled",
            queue_sort.len()
        )));
    }
    let bind = point!(bind);
    if bind.is_empty() {
        return Err(Error::Config(format!("profile {name:?}: no bind plugin")));
    }
    let score = point!(score)
        .into_iter()
        .map(|(n, p, w)| {
            let w = w.unwrap_or(1);
            if w < 1 {
                return Err(Error::Config(format!(
                    "profile {name:?}: score weight of {n} must be positive"
                )));
            }
            Ok((p, w))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Profile {
        queue_sort: queue_sort
            .into_iter()
            .next()
            .map(|(_, p, _)| p)
            .expect("one"),
        pre_filter: strip!(point!(pre_filter)),
        filter: strip!(point!(filter)),
        post_filter: strip!(point!(post_filter)),
        pre_score: strip!(point!(pre_score)),
        score,
        reserve: strip!(point!(reserve)),
        permit: strip!(point!(permit)),
        pre_bind: strip!(point!(pre_bind)),
        bind: strip!(bind),
        name,
        full_evaluation: false,
        parallel_threshold: 2048,
        percentage_of_nodes_to_score: None,
    })
}

/// Profiles with the default plugins, one per scheduler name.
pub fn default_profiles() -> Vec<Profile> {
    Config::default()
        .build(&Registry::default())
        .expect("the default configuration is valid")
}
