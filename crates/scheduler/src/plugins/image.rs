//! ImageLocality: prefers nodes that already hold the pod's images, weighted by how widely the
//! image is spread (so one node holding an image does not attract every pod).

use crate::cache::NodeId;
use crate::framework::{
    CycleContext, CycleState, MAX_NODE_SCORE, NodeScorer, Plugin, Scope, ScorePlugin,
};

const MB: i64 = 1024 * 1024;
const MIN_THRESHOLD: i64 = 23 * MB;
const MAX_CONTAINER_THRESHOLD: i64 = 1000 * MB;

/// See the module documentation.
#[derive(Debug, Default)]
pub struct ImageLocality;

impl Plugin for ImageLocality {
    fn name(&self) -> &'static str {
        "ImageLocality"
    }
}

struct ImageScorer<'a> {
    cx: CycleContext<'a>,
    spread: Vec<(&'a str, f64)>,
}

impl NodeScorer for ImageScorer<'_> {
    fn score(&self, node: NodeId) -> i64 {
        let images = &self.cx.cache.node(node).images;
        let sum: i64 = self
            .spread
            .iter()
            .filter_map(|(img, s)| images.get(*img).map(|size| (*size as f64 * s) as i64))
            .sum();
        let max = MAX_CONTAINER_THRESHOLD * self.cx.pod.containers.max(1) as i64;
        let sum = sum.clamp(MIN_THRESHOLD, max);
        MAX_NODE_SCORE * (sum - MIN_THRESHOLD) / (max - MIN_THRESHOLD)
    }
}

impl ScorePlugin for ImageLocality {
    fn scope(&self, cx: CycleContext<'_>, _: &CycleState) -> Option<Scope> {
        cx.pod
            .images
            .iter()
            .any(|i| cx.cache.nodes_with_image(i) > 0)
            .then_some(Scope::Class)
    }
    fn prepare<'a>(&'a self, cx: CycleContext<'a>, _: &'a CycleState) -> Box<dyn NodeScorer + 'a> {
        let total = cx.cache.node_count().max(1) as f64;
        let spread = cx
            .pod
            .images
            .iter()
            .map(|i| (i.as_str(), f64::from(cx.cache.nodes_with_image(i)) / total))
            .collect();
        Box::new(ImageScorer { cx, spread })
    }
}
