//! Places a few pods on three nodes with the default scheduler plugins and prints the decisions
//! and, for the pod that fits nowhere, kube-scheduler's explanation:
//! `cargo run -p berth-examples --example pod_schedule`.

use berth_scheduler::k8s_openapi::api::core::v1::{
    Container, Node, NodeSpec, NodeStatus, Pod, PodCondition, PodSpec, ResourceRequirements,
};
use berth_scheduler::k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use berth_scheduler::{BindError, Binder, Binding, PodInfo, Scheduler};

struct Print;

impl Binder for Print {
    fn bind(&mut self, b: &Binding) -> Result<(), BindError> {
        println!("{}/{} -> {}", b.namespace, b.name, b.node);
        Ok(())
    }
    fn unschedulable(&mut self, pod: &PodInfo, condition: &PodCondition) {
        println!(
            "{}: {}",
            pod.key,
            condition.message.as_deref().unwrap_or("")
        );
    }
}

fn quantities(list: &[(&str, &str)]) -> std::collections::BTreeMap<String, Quantity> {
    list.iter()
        .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
        .collect()
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt::init();
    let mut scheduler = Scheduler::default();
    for (name, cpu, mem, cordoned) in [
        ("small", "1", "2Gi", false),
        ("large", "4", "8Gi", false),
        ("gpu", "4", "8Gi", true),
    ] {
        let mut node = Node::default();
        node.metadata.name = Some(name.into());
        node.spec = Some(NodeSpec {
            unschedulable: Some(cordoned),
            ..Default::default()
        });
        node.status = Some(NodeStatus {
            allocatable: Some(quantities(&[
                ("cpu", cpu),
                ("memory", mem),
                ("pods", "110"),
            ])),
            ..Default::default()
        });
        scheduler.add_node(node)?;
    }
    for i in 0..7 {
        let mut pod = Pod::default();
        pod.metadata.name = Some(format!("web-{i}"));
        pod.spec = Some(PodSpec {
            containers: vec![Container {
                name: "web".into(),
                resources: Some(ResourceRequirements {
                    requests: Some(quantities(&[("cpu", "700m"), ("memory", "512Mi")])),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        });
        scheduler.add_pod(pod)?;
    }
    scheduler.run(&mut Print);
    Ok(())
}
