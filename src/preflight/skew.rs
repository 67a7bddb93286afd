//! Version skew, when the playbook sets `target-kubelet-version`: a kubelet is never newer than
//! the kube-apiserver and at most three minor versions older (the Kubernetes version skew
//! policy since 1.28); control-plane nodes go before the workers; nodes already at the target
//! are said (upgraded again, or skipped with `skip-upgraded = true`).

use super::{Check, Finding, Severity};
use crate::plan::{NodeFacts, Plan};

/// How many minor versions a kubelet may be older than the kube-apiserver.
pub const SUPPORTED_KUBELET_SKEW: u32 = 3;

/// The labels that mark a control-plane node.
const CONTROL_PLANE_LABELS: [&str; 2] = [
    "node-role.kubernetes.io/control-plane",
    "node-role.kubernetes.io/master",
];

/// `v1.35.4`, `1.36` → (1, 35).
pub fn major_minor(version: &str) -> Option<(u32, u32)> {
    let mut parts = version
        .trim()
        .trim_start_matches('v')
        .split(['.', '-', '+']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// The findings for upgrading the plan's nodes to `target` on a cluster whose apiserver runs
/// `apiserver`.
pub fn check(
    target: &str,
    apiserver: &str,
    nodes: &[NodeFacts],
    plan: &Plan,
    skip_upgraded: bool,
) -> Vec<Finding> {
    let mut out = Vec::new();
    let (Some(t), Some(a)) = (major_minor(target), major_minor(apiserver)) else {
        out.push(
            Finding::new(
                Check::VersionSkew,
                Severity::Warning,
                format!("cannot compare versions: target {target:?}, apiserver {apiserver:?}"),
            )
            .fix("write target-kubelet-version like \"v1.35.4\""),
        );
        return out;
    };
    if t > a {
        out.push(
            Finding::new(
                Check::VersionSkew,
                Severity::Blocker,
                format!(
                    "target kubelet {target} is newer than the kube-apiserver ({apiserver}): a kubelet must never be newer than the apiserver"
                ),
            )
            .object("the kube-apiserver")
            .fix("upgrade the control plane's apiserver first, or lower target-kubelet-version"),
        );
    } else if t.0 == a.0 && t.1.saturating_add(SUPPORTED_KUBELET_SKEW) < a.1 {
        out.push(
            Finding::new(
                Check::VersionSkew,
                Severity::Blocker,
                format!(
                    "target kubelet {target} is more than {SUPPORTED_KUBELET_SKEW} minor versions older than the kube-apiserver ({apiserver}): outside the supported skew"
                ),
            )
            .object("the kube-apiserver")
            .fix(format!(
                "target at least v{}.{}",
                a.0,
                a.1 - SUPPORTED_KUBELET_SKEW
            )),
        );
    }
    let is_control_plane = |name: &str| {
        nodes.iter().any(|n| {
            n.name == name
                && CONTROL_PLANE_LABELS
                    .iter()
                    .any(|l| n.labels.contains_key(*l))
        })
    };
    // The first phase that upgrades a worker; a control-plane node in a later phase is late.
    let mut workers_from: Option<&str> = None;
    for phase in &plan.phases {
        for node in phase.waves.iter().flat_map(|w| &w.nodes) {
            if !is_control_plane(node) {
                workers_from.get_or_insert(&phase.name);
            } else if let Some(first) = workers_from.filter(|f| *f != phase.name) {
                out.push(
                    Finding::new(
                        Check::VersionSkew,
                        Severity::Warning,
                        format!(
                            "control-plane node upgraded in phase {:?}, after workers in phase {first:?}",
                            phase.name
                        ),
                    )
                    .node(node)
                    .fix("put the control-plane phase first: the control plane is upgraded before the kubelets of the workers"),
                );
            }
        }
    }
    // Nodes the plan left out for being at the target already (`skip-upgraded`).
    for node in &plan.skipped {
        out.push(
            Finding::new(
                Check::VersionSkew,
                Severity::Info,
                "already at the target: skipped (skip-upgraded = true)",
            )
            .node(node),
        );
    }
    for node in plan.nodes() {
        let Some(facts) = nodes.iter().find(|n| n.name == node) else {
            continue;
        };
        if facts.kubelet_version == target {
            // In the plan although at the target: skip-upgraded is off, or rollgate cordoned it
            // (mid-upgrade: it is finished, not skipped).
            let (message, fix) = if skip_upgraded {
                (
                    "already at the target but mid-upgrade (cordoned by rollgate): it is finished",
                    "",
                )
            } else {
                (
                    "already at the target: it is upgraded again (cordon, drain, command)",
                    "set skip-upgraded = true in the playbook to skip nodes already at the target",
                )
            };
            out.push(
                Finding::new(Check::VersionSkew, Severity::Info, message)
                    .node(node)
                    .fix(fix),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{PhasePlan, Wave};

    fn node(name: &str, version: &str, control_plane: bool) -> NodeFacts {
        let mut labels = std::collections::BTreeMap::new();
        if control_plane {
            labels.insert(
                "node-role.kubernetes.io/control-plane".into(),
                String::new(),
            );
        }
        NodeFacts {
            name: name.into(),
            labels,
            ready: true,
            unschedulable: false,
            kubelet_version: version.into(),
            cordoned_by_rollgate: None,
        }
    }

    fn plan(phases: &[(&str, &[&str])]) -> Plan {
        Plan {
            phases: phases
                .iter()
                .map(|(name, nodes)| PhasePlan {
                    name: (*name).into(),
                    concurrency: 1,
                    failure_budget: 0,
                    waves: vec![Wave {
                        label: None,
                        nodes: nodes.iter().map(|n| (*n).into()).collect(),
                    }],
                })
                .collect(),
            unselected: vec![],
            skipped: vec![],
            warnings: vec![],
        }
    }

    #[test]
    fn versions_parse_with_or_without_v_and_patch() {
        assert_eq!(major_minor("v1.35.4"), Some((1, 35)));
        assert_eq!(major_minor("1.36"), Some((1, 36)));
        assert_eq!(major_minor("v1.36.0-rc.1+k3s"), Some((1, 36)));
        assert_eq!(major_minor("latest"), None);
    }

    #[test]
    fn a_target_newer_than_the_apiserver_or_too_old_blocks() {
        let nodes = [node("w1", "v1.34.0", false)];
        let p = plan(&[("w", &["w1"])]);
        let newer = check("v1.36.0", "v1.35.4", &nodes, &p, false);
        assert_eq!(newer[0].severity, Severity::Blocker, "{newer:?}");
        assert!(newer[0].message.contains("newer than the kube-apiserver"));
        let old = check("v1.31.0", "v1.35.4", &nodes, &p, false);
        assert_eq!(old[0].severity, Severity::Blocker, "{old:?}");
        assert!(old[0].fix.contains("v1.32"), "{old:?}");
        // Same minor, a newer patch than the apiserver's, and three minors older: fine.
        assert!(check("v1.35.9", "v1.35.4", &nodes, &p, false).is_empty());
        assert!(check("v1.32.0", "v1.35.4", &nodes, &p, false).is_empty());
    }

    #[test]
    fn control_plane_after_workers_warns_and_nodes_at_the_target_are_said() {
        let nodes = [node("cp1", "v1.34.0", true), node("w1", "v1.35.4", false)];
        let late = plan(&[("workers", &["w1"]), ("cp", &["cp1"])]);
        let found = check("v1.35.4", "v1.35.4", &nodes, &late, false);
        let cp = found
            .iter()
            .find(|f| f.node.as_deref() == Some("cp1"))
            .unwrap();
        assert_eq!(cp.severity, Severity::Warning);
        let at = found
            .iter()
            .find(|f| f.node.as_deref() == Some("w1"))
            .unwrap();
        assert!(at.message.contains("upgraded again"), "{at:?}");
        assert!(at.fix.contains("skip-upgraded"));
        let mut left_out = plan(&[("cp", &["cp1"])]);
        left_out.skipped = vec!["w1".into()];
        let skipped = check("v1.35.4", "v1.35.4", &nodes, &left_out, true);
        let w1 = skipped
            .iter()
            .find(|f| f.node.as_deref() == Some("w1"))
            .unwrap();
        assert!(w1.message.contains("skipped"), "{w1:?}");
        let first = plan(&[("cp", &["cp1"]), ("workers", &["w1"])]);
        assert!(
            check("v1.35.4", "v1.35.4", &nodes, &first, false)
                .iter()
                .all(|f| f.severity == Severity::Info)
        );
    }
}
