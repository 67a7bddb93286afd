//! What a Node says: Ready, boot ID, kubelet version, SSH address, and the facts a plan reads.

use super::marks::annotation;
use crate::config::AddressSource;
use crate::plan::NodeFacts;
use crate::vocab::node_marks::CORDONED_BY;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams};

pub fn is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// `status.nodeInfo.bootID`: changes when the node reboots.
pub fn boot_id(node: &Node) -> String {
    node.status
        .as_ref()
        .and_then(|s| s.node_info.as_ref())
        .map(|i| i.boot_id.clone())
        .unwrap_or_default()
}

pub fn kubelet_version(node: &Node) -> String {
    node.status
        .as_ref()
        .and_then(|s| s.node_info.as_ref())
        .map(|i| i.kubelet_version.clone())
        .unwrap_or_default()
}

pub fn facts(node: &Node) -> NodeFacts {
    NodeFacts {
        name: node.metadata.name.clone().unwrap_or_default(),
        labels: node.metadata.labels.clone().unwrap_or_default(),
        ready: is_ready(node),
        unschedulable: node
            .spec
            .as_ref()
            .and_then(|s| s.unschedulable)
            .unwrap_or(false),
        kubelet_version: kubelet_version(node),
        cordoned_by_rollgate: annotation(node, CORDONED_BY).map(str::to_owned),
    }
}

pub async fn list_nodes(client: &kube::Client) -> Result<Vec<Node>, kube::Error> {
    Ok(Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items)
}

/// The address SSH connects to for this node: Err when it has none, or when what the Node
/// (or the template) gives is not an IP address or a DNS name ([`crate::remote::check_address`]:
/// a hostile `-oProxyCommand=...` never reaches `ssh`).
pub fn ssh_address(node: &Node, source: &AddressSource) -> Result<String, String> {
    let name = node.metadata.name.clone().unwrap_or_default();
    let address_of = |kind: &str| {
        node.status
            .as_ref()?
            .addresses
            .as_ref()?
            .iter()
            .find(|a| a.type_ == kind)
            .map(|a| a.address.clone())
    };
    let address = match source {
        AddressSource::InternalIp => address_of("InternalIP"),
        AddressSource::Hostname => address_of("Hostname").or(Some(name.clone())),
        AddressSource::Template(t) => Some(t.replace("{name}", &name)),
    }
    .ok_or_else(|| {
        format!("node {name} has no {source:?} address to SSH to (see `ssh.address` in the config)")
    })?;
    crate::remote::check_address(&address).map_err(|why| {
        format!(
            "node {name}: its {source:?} address is refused: {why} (see `ssh.address` in the config; fix the Node's status.addresses or the template)"
        )
    })?;
    Ok(address)
}
