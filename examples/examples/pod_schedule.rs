//! Places a few pods on three nodes with the default scheduler plugins and prints the decisions:
//! `cargo run -p berth-examples --example pod_schedule`.

use berth_api::objects::{Container, Node, Pod};
use berth_api::{Bytes, Cpu};
use berth_scheduler::{Framework, NodeInfo};

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt::init();
    let mut nodes: Vec<NodeInfo> = [
        ("small", 1000, 2u64 << 30),
        ("large", 4000, 8 << 30),
        ("gpu", 4000, 8 << 30),
    ]
    .into_iter()
    .map(|(name, cpu, mem)| {
        let mut node = Node::default();
        node.metadata.name = name.into();
        node.status.allocatable.cpu = Cpu(cpu);
        node.status.allocatable.memory = Bytes(mem);
        if name == "gpu" {
            node.spec.unschedulable = true;
        }
        NodeInfo::new(node)
    })
    .collect();

    let framework = Framework::with_default_plugins();
    for i in 0..6 {
        let mut pod = Pod::default();
        pod.metadata.name = format!("web-{i}");
        let mut container = Container::default();
        container.resources.requests.cpu = Cpu(700);
        container.resources.requests.memory = Bytes(512 << 20);
        pod.spec.containers.push(container);
        match framework.schedule(&pod, &nodes) {
            Ok(decision) => {
                println!(
                    "{} -> {} (score {})",
                    pod.metadata.name, decision.node, decision.score
                );
                let node = nodes
                    .iter_mut()
                    .find(|n| n.name() == decision.node)
                    .expect("decided node exists");
                node.add_pod(&pod);
            }
            Err(err) => println!("{err}"),
        }
    }
    Ok(())
}
