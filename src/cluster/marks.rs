//! rollgate's marks on a Node (the annotations of [`crate::vocab::node_marks`] and the field
//! manager of its patches) read back: whose cordon the node carries, what the node records of
//! rollgate's work.

use crate::vocab::node_marks::*;
use k8s_openapi::api::core::v1::Node;

/// The field manager that last set the node's `spec.unschedulable` (None when nobody owns it).
pub fn unschedulable_set_by(node: &Node) -> Option<&str> {
    node.metadata
        .managed_fields
        .iter()
        .flatten()
        .find(|m| {
            m.fields_v1
                .as_ref()
                .is_some_and(|f| f.0["f:spec"].get("f:unschedulable").is_some())
        })
        .and_then(|m| m.manager.as_deref())
}

/// Whose cordon a node carries, as the cordon and uncordon steps of [`super::KubeSteps`] decide it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CordonOwner {
    /// Not cordoned.
    Nobody,
    /// rollgate's cordon, still as the run named set it (this run, the run it resumes, or an
    /// earlier run that left the node cordoned): rollgate uncordons it when the node is done.
    Rollgate(String),
    /// Someone else's cordon (the field manager that set it, e.g. `kubectl-cordon`): the node
    /// stays cordoned after its upgrade.
    Other(String),
}

/// Decides whose cordon the node carries: rollgate's only when `cordoned-by` names a run *and*
/// rollgate's field manager set `spec.unschedulable`. A cordon set by hand after rollgate's was
/// removed keeps the stale annotation but not the field manager, so it is someone else's.
pub fn cordon_owner(node: &Node) -> CordonOwner {
    let unschedulable = node
        .spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false);
    if !unschedulable {
        return CordonOwner::Nobody;
    }
    match (annotation(node, CORDONED_BY), unschedulable_set_by(node)) {
        (Some(run), Some(FIELD_MANAGER)) => CordonOwner::Rollgate(run.to_owned()),
        (_, Some(manager)) => CordonOwner::Other(manager.to_owned()),
        (_, None) => CordonOwner::Other("an unknown field manager".into()),
    }
}

pub(super) fn annotation<'a>(node: &'a Node, key: &str) -> Option<&'a str> {
    node.metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

/// What a node's annotations record of rollgate's work (see [`crate::journal::reconcile_with_nodes`]).
pub fn node_record(node: &Node) -> crate::journal::NodeRecord {
    let get = |key: &str| annotation(node, key).map(str::to_owned);
    crate::journal::NodeRecord {
        node: node.metadata.name.clone().unwrap_or_default(),
        cordoned_by: get(CORDONED_BY),
        step: get(STEP),
        failed_step: get(FAILED_STEP),
        last_run: get(LAST_RUN),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::NodeSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry};
    use serde_json::json;

    fn node(unschedulable: bool, cordoned_by: Option<&str>, managers: &[(&str, bool)]) -> Node {
        let mut n = Node {
            spec: Some(NodeSpec {
                unschedulable: Some(unschedulable),
                ..Default::default()
            }),
            ..Default::default()
        };
        n.metadata.annotations =
            cordoned_by.map(|r| [(CORDONED_BY.to_owned(), r.to_owned())].into());
        n.metadata.managed_fields = Some(
            managers
                .iter()
                .map(|(m, owns_unschedulable)| ManagedFieldsEntry {
                    manager: Some(m.to_string()),
                    operation: Some("Update".into()),
                    fields_v1: Some(FieldsV1(if *owns_unschedulable {
                        json!({"f:spec": {"f:unschedulable": {}}})
                    } else {
                        json!({"f:metadata": {"f:annotations": {}}})
                    })),
                    ..Default::default()
                })
                .collect(),
        );
        n
    }

    #[test]
    fn a_cordon_is_rollgates_only_while_its_field_manager_set_it() {
        let cases = [
            (
                node(false, Some("r1"), &[("rollgate", false)]),
                CordonOwner::Nobody,
            ),
            (
                node(true, Some("r1"), &[("kubectl", false), ("rollgate", true)]),
                CordonOwner::Rollgate("r1".into()),
            ),
            // Uncordoned by hand after a failed run (the annotation stays), cordoned again later.
            (
                node(
                    true,
                    Some("r1"),
                    &[("rollgate", false), ("kubectl-cordon", true)],
                ),
                CordonOwner::Other("kubectl-cordon".into()),
            ),
            (
                node(true, None, &[("kubectl-cordon", true)]),
                CordonOwner::Other("kubectl-cordon".into()),
            ),
            (
                node(true, Some("r1"), &[]),
                CordonOwner::Other("an unknown field manager".into()),
            ),
        ];
        for (n, want) in cases {
            assert_eq!(cordon_owner(&n), want, "{:?}", n.metadata);
        }
    }

    #[test]
    fn the_hand_back_command_clears_every_annotation_a_failure_leaves() {
        let cmd = hand_back_command("n1");
        assert!(cmd.starts_with("kubectl uncordon n1 && kubectl annotate node n1 "));
        for key in [CORDONED_BY, PRECORDONED, STEP, REASON, FAILED_STEP] {
            assert!(cmd.contains(&format!(" {key}-")), "{cmd}");
        }
    }
}
