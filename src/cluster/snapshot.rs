//! One listing of the cluster (nodes, pods, PodDisruptionBudgets) that plan resolution, the
//! plan preview and the pre-flight checks all read, so a `plan`, `preflight` or `run` lists
//! each kind once.

use crate::plan::NodeFacts;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, ListParams};
use std::collections::HashMap;

/// The cluster as listed once, at one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub nodes: Vec<Node>,
    pub pods: Vec<Pod>,
    pub pdbs: Vec<PodDisruptionBudget>,
}

impl Snapshot {
    /// Lists every node, pod and PodDisruptionBudget (one request per kind).
    pub async fn list(client: &kube::Client) -> Result<Self, kube::Error> {
        let nodes = super::list_nodes(client).await?;
        let pods = Api::<Pod>::all(client.clone())
            .list(&ListParams::default())
            .await?
            .items;
        let pdbs = Api::<PodDisruptionBudget>::all(client.clone())
            .list(&ListParams::default())
            .await?
            .items;
        Ok(Self { nodes, pods, pdbs })
    }

    /// What planning needs to know of each node.
    pub fn facts(&self) -> Vec<NodeFacts> {
        self.nodes.iter().map(super::facts).collect()
    }

    /// The pods scheduled on each node, by node name.
    pub fn pods_by_node(&self) -> HashMap<&str, Vec<&Pod>> {
        let mut by_node: HashMap<&str, Vec<&Pod>> = HashMap::new();
        for p in &self.pods {
            if let Some(n) = p.spec.as_ref().and_then(|s| s.node_name.as_deref()) {
                by_node.entry(n).or_default().push(p);
            }
        }
        by_node
    }
}
