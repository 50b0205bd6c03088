//! The built-in plugins, named and behaving as their kube-scheduler counterparts, and the
//! [`Registry`] that builds plugins by name from configuration.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::error::Result;
use crate::framework::PluginSet;

pub mod basic;
pub mod coscheduling;
pub mod image;
pub mod interpod;
pub mod node_affinity;
pub mod preemption;
pub mod resources;
pub mod spread;

pub use basic::{
    DefaultBinder, NodeName, NodePorts, NodeUnschedulable, PrioritySort, TaintToleration,
};
pub use coscheduling::Coscheduling;
pub use image::ImageLocality;
pub use interpod::InterPodAffinity;
pub use node_affinity::NodeAffinity;
pub use preemption::DefaultPreemption;
pub use resources::{BalancedAllocation, NodeResourcesFit, Strategy};
pub use spread::PodTopologySpread;

/// Builds a plugin from its (optional) `pluginConfig` arguments.
pub type Factory = Arc<dyn Fn(Option<&serde_json::Value>) -> Result<PluginSet> + Send + Sync>;

/// The plugins of the default profile with their score weights (kube-scheduler 1.33's
/// multi-point defaults, without the volume plugins, plus Coscheduling, which does nothing for
/// pods outside a pod group).
pub const DEFAULT_PLUGINS: &[(&str, i64)] = &[
    ("PrioritySort", 0),
    ("NodeUnschedulable", 0),
    ("NodeName", 0),
    ("TaintToleration", 3),
    ("NodeAffinity", 2),
    ("NodePorts", 0),
    ("NodeResourcesFit", 1),
    ("PodTopologySpread", 2),
    ("InterPodAffinity", 2),
    ("DefaultPreemption", 0),
    ("Coscheduling", 0),
    ("NodeResourcesBalancedAllocation", 1),
    ("ImageLocality", 1),
    ("DefaultBinder", 0),
];

/// Plugin factories by name. [`Registry::default`] has every built-in plugin; add your own with
/// [`Registry::register`] and name them in the configuration.
#[derive(Clone)]
pub struct Registry {
    factories: BTreeMap<String, Factory>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.factories.keys()).finish()
    }
}

macro_rules! set {
    ($p:expr, $($field:ident),+) => {{
        let p = Arc::new($p);
        PluginSet { $($field: Some(p.clone()),)+ ..Default::default() }
    }};
}

impl Default for Registry {
    fn default() -> Self {
        let mut r = Registry {
            factories: BTreeMap::new(),
        };
        r.register("PrioritySort", |_| Ok(set!(PrioritySort, queue_sort)));
        r.register("NodeUnschedulable", |_| Ok(set!(NodeUnschedulable, filter)));
        r.register("NodeName", |_| Ok(set!(NodeName, filter)));
        r.register("TaintToleration", |_| {
            Ok(set!(TaintToleration, filter, score))
        });
        r.register("NodeAffinity", |_| {
            Ok(set!(NodeAffinity, pre_filter, filter, score))
        });
        r.register("NodePorts", |_| Ok(set!(NodePorts, filter)));
        r.register("NodeResourcesFit", |a| {
            Ok(set!(NodeResourcesFit::from_args(a)?, filter, score))
        });
        r.register("NodeResourcesBalancedAllocation", |a| {
            Ok(set!(BalancedAllocation::from_args(a)?, score))
        });
        r.register("PodTopologySpread", |a| {
            Ok(set!(
                PodTopologySpread::from_args(a)?,
                pre_filter,
                filter,
                pre_score,
                score
            ))
        });
        r.register("InterPodAffinity", |a| {
            Ok(set!(
                InterPodAffinity::from_args(a)?,
                pre_filter,
                filter,
                score
            ))
        });
        r.register("ImageLocality", |_| Ok(set!(ImageLocality, score)));
        r.register("DefaultPreemption", |a| {
            Ok(set!(DefaultPreemption::from_args(a)?, post_filter))
        });
        r.register("Coscheduling", |a| {
            Ok(set!(
                Coscheduling::from_args(a)?,
                pre_filter,
                permit,
                post_filter
            ))
        });
        r.register("DefaultBinder", |_| Ok(set!(DefaultBinder, bind)));
        r
    }
}

impl Registry {
    /// Adds (or replaces) a plugin factory.
    pub fn register(
        &mut self,
        name: &str,
        factory: impl Fn(Option<&serde_json::Value>) -> Result<PluginSet> + Send + Sync + 'static,
    ) {
        self.factories.insert(name.to_owned(), Arc::new(factory));
    }

    /// The factory for `name`.
    pub fn get(&self, name: &str) -> Option<&Factory> {
        self.factories.get(name)
    }
}
