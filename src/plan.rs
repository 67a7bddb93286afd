//! Planning: which nodes each phase takes, in which order, in which waves. Pure functions over
//! a list of [`NodeFacts`], so every rule is table-tested without a cluster.
//!
//! A phase's nodes are split into waves: with `order = "label:KEY"` one wave per label value
//! (zone by zone: a wave finishes before the next starts), otherwise the whole phase is one
//! wave. Inside a wave, up to `concurrency` nodes are out of service at once.

use crate::playbook::{NodeSelection, Ordering, Playbook};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// What planning needs to know about a node.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct NodeFacts {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub ready: bool,
    pub unschedulable: bool,
    pub kubelet_version: String,
    /// The run id in `rollgate.dev/cordoned-by`, if rollgate cordoned it.
    pub cordoned_by_rollgate: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Wave {
    /// `zone=a` for label-ordered phases.
    pub label: Option<String>,
    pub nodes: Vec<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PhasePlan {
    pub name: String,
    pub concurrency: usize,
    pub failure_budget: u32,
    pub waves: Vec<Wave>,
}

impl PhasePlan {
    pub fn node_count(&self) -> usize {
        self.waves.iter().map(|w| w.nodes.len()).sum()
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Plan {
    pub phases: Vec<PhasePlan>,
    /// Nodes of the cluster that no phase selects (they are not upgraded).
    pub unselected: Vec<String>,
    /// Selected nodes already at the target kubelet version, left out (`skip-upgraded`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<String>,
    pub warnings: Vec<String>,
}

impl Plan {
    pub fn nodes(&self) -> impl Iterator<Item = &str> {
        self.phases.iter().flat_map(|p| {
            p.waves
                .iter()
                .flat_map(|w| w.nodes.iter().map(String::as_str))
        })
    }

    pub fn node_count(&self) -> usize {
        self.phases.iter().map(PhasePlan::node_count).sum()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error(
        "node {node:?} is selected by phases {first:?} and {second:?}; a node is upgraded by one phase only (make the selectors disjoint, e.g. add `!node-role.kubernetes.io/control-plane`)"
    )]
    SelectedTwice {
        node: String,
        first: String,
        second: String,
    },
    #[error("phase {phase:?} lists node {node:?}, which is not in the cluster")]
    MissingNode { phase: String, node: String },
}

/// Resolves the playbook's phases against the cluster's nodes.
pub fn resolve(playbook: &Playbook, nodes: &[NodeFacts]) -> Result<Plan, PlanError> {
    let by_name: HashMap<&str, &NodeFacts> = nodes.iter().map(|n| (n.name.as_str(), n)).collect();
    let mut owner: HashMap<String, String> = HashMap::new();
    let mut phases = Vec::new();
    let mut warnings = Vec::new();
    let mut skipped = Vec::new();
    for phase in &playbook.phases {
        let mut selected: Vec<&NodeFacts> = match &phase.selection {
            NodeSelection::Names(names) => {
                let mut out = Vec::new();
                for name in names {
                    match by_name.get(name.as_str()) {
                        Some(n) => out.push(*n),
                        None => {
                            return Err(PlanError::MissingNode {
                                phase: phase.name.clone(),
                                node: name.clone(),
                            });
                        }
                    }
                }
                out
            }
            NodeSelection::Selector(sel) => {
                let mut out: Vec<&NodeFacts> =
                    nodes.iter().filter(|n| sel.matches(&n.labels)).collect();
                out.sort_by(|a, b| a.name.cmp(&b.name));
                out
            }
        };
        for n in &selected {
            if let Some(first) = owner.insert(n.name.clone(), phase.name.clone()) {
                return Err(PlanError::SelectedTwice {
                    node: n.name.clone(),
                    first,
                    second: phase.name.clone(),
                });
            }
        }
        if selected.is_empty() {
            warnings.push(format!("phase {:?} matches no node", phase.name));
        }
        if playbook.skip_upgraded
            && let Some(target) = &playbook.target_kubelet_version
        {
            // A node rollgate cordoned is mid-upgrade (or failed after its command): it is
            // finished, not skipped, whatever version it reports.
            let (at_target, rest): (Vec<&NodeFacts>, Vec<&NodeFacts>) = selected
                .into_iter()
                .partition(|n| n.kubelet_version == *target && n.cordoned_by_rollgate.is_none());
            skipped.extend(at_target.into_iter().map(|n| n.name.clone()));
            selected = rest;
        }
        let waves = match &phase.order {
            Ordering::AsListed => vec![Wave {
                label: None,
                nodes: selected.iter().map(|n| n.name.clone()).collect(),
            }],
            Ordering::ByName => {
                selected.sort_by(|a, b| a.name.cmp(&b.name));
                vec![Wave {
                    label: None,
                    nodes: selected.iter().map(|n| n.name.clone()).collect(),
                }]
            }
            Ordering::ByLabel(key) => {
                let mut groups: BTreeMap<Option<&str>, Vec<String>> = BTreeMap::new();
                for n in &selected {
                    groups
                        .entry(n.labels.get(key).map(String::as_str))
                        .or_default()
                        .push(n.name.clone());
                }
                if let Some(unlabelled) = groups.get(&None) {
                    warnings.push(format!(
                        "phase {:?}: {} node(s) lack label {key:?} and go last: {}",
                        phase.name,
                        unlabelled.len(),
                        unlabelled.join(", ")
                    ));
                }
                // Labelled groups in value order, nodes without the label last.
                let mut ordered: Vec<(Option<&str>, Vec<String>)> = groups.into_iter().collect();
                ordered.sort_by_key(|(value, _)| (value.is_none(), *value));
                ordered
                    .into_iter()
                    .map(|(value, mut names)| {
                        names.sort();
                        Wave {
                            label: Some(format!("{key}={}", value.unwrap_or("(none)"))),
                            nodes: names,
                        }
                    })
                    .collect()
            }
        };
        phases.push(PhasePlan {
            name: phase.name.clone(),
            concurrency: phase.concurrency,
            failure_budget: phase.failure_budget,
            waves: waves.into_iter().filter(|w| !w.nodes.is_empty()).collect(),
        });
    }
    let mut unselected: Vec<String> = nodes
        .iter()
        .filter(|n| !owner.contains_key(&n.name))
        .map(|n| n.name.clone())
        .collect();
    unselected.sort();
    if !unselected.is_empty() {
        warnings.push(format!(
            "{} node(s) are selected by no phase and will not be upgraded: {}",
            unselected.len(),
            unselected.join(", ")
        ));
    }
    for n in nodes.iter().filter(|n| owner.contains_key(&n.name)) {
        if !n.ready {
            warnings.push(format!("node {} is NotReady now", n.name));
        }
        if n.unschedulable && n.cordoned_by_rollgate.is_none() {
            warnings.push(format!("node {} is cordoned already (not by rollgate): it stays cordoned after its upgrade", n.name));
        }
    }
    if !skipped.is_empty() {
        skipped.sort();
        warnings.push(format!(
            "{} node(s) already at the target kubelet version are skipped (skip-upgraded = true): {}",
            skipped.len(),
            skipped.join(", ")
        ));
    }
    Ok(Plan {
        phases,
        unselected,
        skipped,
        warnings,
    })
}

/// Upper bound of a run's duration: every node using every timeout, waves in sequence,
/// `concurrency` nodes at once. Returns (worst case, lower bound from soak times).
pub fn estimate(playbook: &Playbook, plan: &Plan) -> (Duration, Duration) {
    let per_node_worst = playbook.drain.timeout
        + playbook.command.timeout
        + playbook.ready.timeout
        + playbook.settle.timeout
        + playbook.settle.soak;
    let mut worst = Duration::ZERO;
    let mut least = Duration::ZERO;
    for phase in &plan.phases {
        for wave in &phase.waves {
            let rounds = wave.nodes.len().div_ceil(phase.concurrency.max(1)) as u32;
            worst += per_node_worst * rounds;
            least += playbook.settle.soak * rounds;
        }
    }
    (worst, least)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::playbook;
    use std::path::Path;

    fn node(name: &str, labels: &[(&str, &str)]) -> NodeFacts {
        NodeFacts {
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ready: true,
            unschedulable: false,
            kubelet_version: "v1.35.4".into(),
            cordoned_by_rollgate: None,
        }
    }

    fn cluster() -> Vec<NodeFacts> {
        vec![
            node("cp-2", &[("node-role.kubernetes.io/control-plane", "")]),
            node("cp-1", &[("node-role.kubernetes.io/control-plane", "")]),
            node("w-b1", &[("zone", "b")]),
            node("w-a2", &[("zone", "a")]),
            node("w-a1", &[("zone", "a")]),
            node("w-x", &[]),
        ]
    }

    fn book(phases: &str) -> Playbook {
        let text = format!("name = \"t\"\n[command]\nrun = \"true\"\n{phases}");
        playbook::parse(Path::new("t.toml"), &text).unwrap()
    }

    #[test]
    fn control_plane_first_then_zone_by_zone() {
        let pb = book(
            "[[phase]]\nname = \"cp\"\nselector = \"node-role.kubernetes.io/control-plane\"\n\
             [[phase]]\nname = \"workers\"\nselector = \"!node-role.kubernetes.io/control-plane\"\nconcurrency = 2\norder = \"label:zone\"\n",
        );
        let plan = resolve(&pb, &cluster()).unwrap();
        assert_eq!(
            plan.phases[0].waves,
            vec![Wave {
                label: None,
                nodes: vec!["cp-1".into(), "cp-2".into()]
            }]
        );
        let waves: Vec<(Option<String>, Vec<String>)> = plan.phases[1]
            .waves
            .iter()
            .map(|w| (w.label.clone(), w.nodes.clone()))
            .collect();
        assert_eq!(
            waves,
            vec![
                (Some("zone=a".into()), vec!["w-a1".into(), "w-a2".into()]),
                (Some("zone=b".into()), vec!["w-b1".into()]),
                (Some("zone=(none)".into()), vec!["w-x".into()]),
            ]
        );
        assert!(plan.unselected.is_empty());
        assert!(
            plan.warnings
                .iter()
                .any(|w| w.contains("lack label \"zone\"")),
            "{:?}",
            plan.warnings
        );
    }

    #[test]
    fn skip_upgraded_leaves_out_nodes_already_at_the_target() {
        let text = "name = \"t\"\ntarget-kubelet-version = \"v1.36.0\"\nskip-upgraded = true\n[command]\nrun = \"true\"\n[[phase]]\nname = \"w\"\nselector = \"zone\"\n";
        let pb = playbook::parse(Path::new("t.toml"), text).unwrap();
        let mut nodes = cluster();
        nodes[3].kubelet_version = "v1.36.0".into(); // w-a2
        let plan = resolve(&pb, &nodes).unwrap();
        assert_eq!(plan.phases[0].waves[0].nodes, vec!["w-a1", "w-b1"]);
        assert_eq!(plan.skipped, vec!["w-a2"]);
        assert!(plan.warnings.iter().any(|w| w.contains("skip-upgraded")));
        nodes[3].cordoned_by_rollgate = Some("r1".into());
        let mid_upgrade = resolve(&pb, &nodes).unwrap();
        assert!(
            mid_upgrade.skipped.is_empty(),
            "a node rollgate cordoned is finished"
        );
        let without = playbook::parse(
            Path::new("t.toml"),
            &text.replace("skip-upgraded = true\n", ""),
        )
        .unwrap();
        assert!(resolve(&without, &nodes).unwrap().skipped.is_empty());
        let no_target = text.replace("target-kubelet-version = \"v1.36.0\"\n", "");
        let err = playbook::parse(Path::new("t.toml"), &no_target)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("skip-upgraded = true needs target-kubelet-version"),
            "{err}"
        );
    }

    #[test]
    fn names_keep_their_listed_order() {
        let pb = book("[[phase]]\nname = \"p\"\nnodes = [\"w-b1\", \"cp-1\"]\n");
        let plan = resolve(&pb, &cluster()).unwrap();
        assert_eq!(
            plan.phases[0].waves[0].nodes,
            vec!["w-b1".to_string(), "cp-1".to_string()]
        );
        assert_eq!(plan.unselected, vec!["cp-2", "w-a1", "w-a2", "w-x"]);
        assert!(plan.warnings[0].contains("selected by no phase"));
    }

    #[test]
    fn a_node_selected_twice_is_an_error() {
        let pb = book(
            "[[phase]]\nname = \"a\"\nselector = \"zone=a\"\n[[phase]]\nname = \"b\"\nselector = \"zone in (a,b)\"\n",
        );
        assert_eq!(
            resolve(&pb, &cluster()).unwrap_err(),
            PlanError::SelectedTwice {
                node: "w-a1".into(),
                first: "a".into(),
                second: "b".into()
            }
        );
    }

    #[test]
    fn a_missing_listed_node_is_an_error_and_an_empty_phase_a_warning() {
        let pb = book("[[phase]]\nname = \"a\"\nnodes = [\"ghost\"]\n");
        assert_eq!(
            resolve(&pb, &cluster()).unwrap_err(),
            PlanError::MissingNode {
                phase: "a".into(),
                node: "ghost".into()
            }
        );
        let pb = book("[[phase]]\nname = \"gpu\"\nselector = \"gpu\"\n");
        let plan = resolve(&pb, &cluster()).unwrap();
        assert!(
            plan.warnings
                .iter()
                .any(|w| w == "phase \"gpu\" matches no node")
        );
        assert!(plan.phases[0].waves.is_empty());
    }

    #[test]
    fn estimate_counts_rounds_per_wave() {
        let pb = book(
            "[[phase]]\nname = \"w\"\nselector = \"zone\"\nconcurrency = 2\n[settle]\nsoak = \"1m\"\n",
        );
        let plan = resolve(&pb, &cluster()).unwrap();
        let (worst, least) = estimate(&pb, &plan);
        assert_eq!(least, Duration::from_secs(120)); // 3 nodes, 2 at a time: 2 rounds
        assert!(worst > least);
    }
}
