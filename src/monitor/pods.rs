//! Pod and node health as pure functions: which problems a pod shows now, and which of them are
//! new or worse than at the baseline taken when the run started (what was already broken is
//! reported, not held against the rollout).

use k8s_openapi::api::core::v1::{Node, Pod};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// Container waiting reasons that mean the pod cannot run, besides CrashLoopBackOff.
const WAITING_ERRORS: &[&str] = &[
    "ImagePullBackOff",
    "ErrImagePull",
    "CreateContainerConfigError",
    "CreateContainerError",
    "InvalidImageName",
    "RunContainerError",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProblemKind {
    CrashLoop,
    WaitingError,
    RestartsRising,
    NotReady,
    Pending,
    NodeNotReady,
    Unreachable,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// `namespace/name` for pods, the node name for nodes.
    pub object: String,
    pub node: Option<String>,
    pub kind: ProblemKind,
    /// The evidence: status reason and message, restart counts, for how long.
    pub detail: String,
}

#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    pub not_ready_after: Duration,
    pub pending_after: Duration,
}

use crate::drain::pod_key as key;

fn restarts(pod: &Pod) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map(|cs| cs.iter().map(|c| c.restart_count).sum())
        .unwrap_or(0)
}

fn age(since: Option<&jiff::Timestamp>, now: jiff::Timestamp) -> Duration {
    since
        .and_then(|t| now.duration_since(*t).try_into().ok())
        .unwrap_or_default()
}

/// The problems a pod shows at `now`. Finished and terminating pods show none.
pub fn pod_problems(pod: &Pod, now: jiff::Timestamp, t: Thresholds) -> Vec<Problem> {
    let mut out = Vec::new();
    if pod.metadata.deletion_timestamp.is_some() {
        return out;
    }
    let Some(status) = pod.status.as_ref() else {
        return out;
    };
    let phase = status.phase.as_deref().unwrap_or("Pending");
    if matches!(phase, "Succeeded" | "Failed") {
        return out;
    }
    let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
    let mut push = |kind, detail: String| {
        out.push(Problem {
            object: key(pod),
            node: node.clone(),
            kind,
            detail,
        })
    };
    for c in status.container_statuses.iter().flatten() {
        let Some(waiting) = c.state.as_ref().and_then(|s| s.waiting.as_ref()) else {
            continue;
        };
        let reason = waiting.reason.as_deref().unwrap_or("");
        let message = waiting.message.as_deref().unwrap_or("");
        if reason == "CrashLoopBackOff" {
            push(
                ProblemKind::CrashLoop,
                format!(
                    "container {} CrashLoopBackOff, {} restarts: {message}",
                    c.name, c.restart_count
                ),
            );
        } else if WAITING_ERRORS.contains(&reason) {
            push(
                ProblemKind::WaitingError,
                format!("container {} {reason}: {message}", c.name),
            );
        }
    }
    let created = pod.metadata.creation_timestamp.as_ref().map(|t| t.0);
    if phase == "Pending" {
        let pending_for = age(created.as_ref(), now);
        if pending_for > t.pending_after {
            push(
                ProblemKind::Pending,
                format!(
                    "Pending for {}",
                    humantime::format_duration(Duration::from_secs(pending_for.as_secs()))
                ),
            );
        }
    } else if let Some(ready) = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Ready")
        && ready.status != "True"
    {
        let since = ready.last_transition_time.as_ref().map(|t| t.0).or(created);
        let for_ = age(since.as_ref(), now);
        if for_ > t.not_ready_after {
            push(
                ProblemKind::NotReady,
                format!(
                    "not Ready for {} ({})",
                    humantime::format_duration(Duration::from_secs(for_.as_secs())),
                    ready.reason.as_deref().unwrap_or("")
                ),
            );
        }
    }
    out
}

pub fn node_problems(node: &Node) -> Vec<Problem> {
    let name = node.metadata.name.clone().unwrap_or_default();
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"));
    match ready {
        Some(c) if c.status == "True" => vec![],
        Some(c) => vec![Problem {
            object: name.clone(),
            node: Some(name),
            kind: ProblemKind::NodeNotReady,
            detail: format!(
                "node Ready={} {}: {}",
                c.status,
                c.reason.as_deref().unwrap_or(""),
                c.message.as_deref().unwrap_or("")
            ),
        }],
        None => vec![],
    }
}

/// What was wrong when the run started: problem kinds per object, and pods' restart counts.
#[derive(Debug, Clone, Default)]
pub struct Baseline {
    pub problems: BTreeMap<String, BTreeSet<ProblemKind>>,
    pub restarts: BTreeMap<String, i32>,
}

impl Baseline {
    pub fn take(pods: &[Pod], nodes: &[Node], now: jiff::Timestamp, t: Thresholds) -> Self {
        let mut b = Baseline::default();
        for p in pods {
            b.restarts.insert(key(p), restarts(p));
            for problem in pod_problems(p, now, t) {
                b.problems
                    .entry(problem.object)
                    .or_default()
                    .insert(problem.kind);
            }
        }
        for n in nodes {
            for problem in node_problems(n) {
                b.problems
                    .entry(problem.object)
                    .or_default()
                    .insert(problem.kind);
            }
        }
        b
    }

    /// Pods on nodes being upgraded restart with their node (DaemonSet pods, say): take their
    /// restart counts as the new baseline, so once the node is released only restarts *after*
    /// its upgrade count as rising.
    pub fn accept_restarts_on(&mut self, pods: &[Pod], exempt: &BTreeSet<String>) {
        for p in pods {
            let node = p.spec.as_ref().and_then(|s| s.node_name.as_deref());
            if node.is_some_and(|n| exempt.contains(n)) {
                self.restarts.insert(key(p), restarts(p));
            }
        }
    }

    /// All problems already present at the baseline (reported once, not held against the run).
    pub fn describe(&self) -> Vec<String> {
        self.problems
            .iter()
            .map(|(o, kinds)| format!("{o}: {kinds:?}"))
            .collect()
    }
}

/// Problems that are new or worse than at the baseline, skipping pods and nodes on `exempt` nodes
/// (the ones being upgraded right now: their pods are expected to go away).
pub fn new_problems(
    baseline: &Baseline,
    pods: &[Pod],
    nodes: &[Node],
    now: jiff::Timestamp,
    t: Thresholds,
    exempt: &BTreeSet<String>,
) -> Vec<Problem> {
    let mut out = Vec::new();
    let known = |object: &str, kind: ProblemKind| {
        baseline
            .problems
            .get(object)
            .is_some_and(|k| k.contains(&kind))
    };
    for p in pods {
        let node = p
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .unwrap_or("");
        if exempt.contains(node) {
            continue;
        }
        let problems = pod_problems(p, now, t);
        let already_crashing = known(&key(p), ProblemKind::CrashLoop);
        for problem in &problems {
            if !known(&problem.object, problem.kind) {
                out.push(problem.clone());
            }
        }
        // Restarts rising on a pod that was healthy: a new problem even before CrashLoopBackOff.
        let before = baseline.restarts.get(&key(p)).copied();
        let now_restarts = restarts(p);
        let crashing_now = problems.iter().any(|x| x.kind == ProblemKind::CrashLoop);
        if let Some(before) = before
            && now_restarts > before
            && !already_crashing
            && !crashing_now
        {
            out.push(Problem {
                object: key(p),
                node: Some(node.to_owned()).filter(|n| !n.is_empty()),
                kind: ProblemKind::RestartsRising,
                detail: format!("restarts rose from {before} to {now_restarts}"),
            });
        }
    }
    for n in nodes {
        let name = n.metadata.name.as_deref().unwrap_or("");
        if exempt.contains(name) {
            continue;
        }
        for problem in node_problems(n) {
            if !known(&problem.object, problem.kind) {
                out.push(problem);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateWaiting, ContainerStatus, NodeCondition, NodeStatus,
        PodCondition, PodSpec, PodStatus,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    const T: Thresholds = Thresholds {
        not_ready_after: Duration::from_secs(60),
        pending_after: Duration::from_secs(120),
    };

    fn ts(secs: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    fn pod(
        name: &str,
        node: &str,
        phase: &str,
        ready: bool,
        waiting: Option<&str>,
        restarts: i32,
    ) -> Pod {
        let mut p = Pod::default();
        p.metadata.name = Some(name.into());
        p.metadata.namespace = Some("ns".into());
        p.metadata.creation_timestamp = Some(Time(ts(0)));
        p.spec = Some(PodSpec {
            node_name: Some(node.into()),
            ..Default::default()
        });
        p.status = Some(PodStatus {
            phase: Some(phase.into()),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                last_transition_time: Some(Time(ts(0))),
                ..Default::default()
            }]),
            container_statuses: Some(vec![ContainerStatus {
                name: "c".into(),
                restart_count: restarts,
                state: waiting.map(|r| ContainerState {
                    waiting: Some(ContainerStateWaiting {
                        reason: Some(r.into()),
                        message: Some("boom".into()),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ..Default::default()
        });
        p
    }

    fn node(name: &str, ready: bool) -> Node {
        let mut n = Node::default();
        n.metadata.name = Some(name.into());
        n.status = Some(NodeStatus {
            conditions: Some(vec![NodeCondition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                ..Default::default()
            }]),
            ..Default::default()
        });
        n
    }

    #[test]
    fn problems_of_a_pod() {
        let cases: Vec<(Pod, i64, Vec<ProblemKind>)> = vec![
            (pod("ok", "n", "Running", true, None, 0), 1000, vec![]),
            (
                pod("crash", "n", "Running", false, Some("CrashLoopBackOff"), 4),
                10,
                vec![ProblemKind::CrashLoop],
            ),
            (
                pod("pull", "n", "Pending", false, Some("ImagePullBackOff"), 0),
                10,
                vec![ProblemKind::WaitingError],
            ),
            (pod("slow", "n", "Pending", false, None, 0), 100, vec![]),
            (
                pod("stuck", "n", "Pending", false, None, 0),
                121,
                vec![ProblemKind::Pending],
            ),
            (pod("unready", "n", "Running", false, None, 0), 30, vec![]),
            (
                pod("unready-long", "n", "Running", false, None, 0),
                61,
                vec![ProblemKind::NotReady],
            ),
            (pod("done", "n", "Succeeded", false, None, 0), 1000, vec![]),
        ];
        for (p, at, want) in cases {
            let got: Vec<ProblemKind> = pod_problems(&p, ts(at), T)
                .into_iter()
                .map(|x| x.kind)
                .collect();
            assert_eq!(got, want, "{}", p.metadata.name.unwrap());
        }
    }

    #[test]
    fn only_new_or_worse_problems_count_and_upgrading_nodes_are_exempt() {
        let before = vec![
            pod(
                "old-crash",
                "n1",
                "Running",
                false,
                Some("CrashLoopBackOff"),
                3,
            ),
            pod("fine", "n1", "Running", true, None, 0),
            pod("flaky", "n2", "Running", true, None, 1),
        ];
        let baseline = Baseline::take(
            &before,
            &[node("n1", true), node("n2", true), node("n4", false)],
            ts(0),
            T,
        );
        let now = vec![
            pod(
                "old-crash",
                "n1",
                "Running",
                false,
                Some("CrashLoopBackOff"),
                9,
            ), // already broken: not held against the run
            pod("fine", "n1", "Running", false, Some("CrashLoopBackOff"), 2), // new crash loop
            pod("flaky", "n2", "Running", true, None, 2),                     // restarts rising
            pod(
                "draining",
                "n3",
                "Running",
                false,
                Some("CrashLoopBackOff"),
                1,
            ), // on a node being upgraded
        ];
        let nodes = [
            node("n1", true),
            node("n2", false),
            node("n3", false),
            node("n4", false),
        ];
        let exempt: BTreeSet<String> = ["n3".to_string()].into();
        let got: Vec<(String, ProblemKind)> =
            new_problems(&baseline, &now, &nodes, ts(5), T, &exempt)
                .into_iter()
                .map(|p| (p.object, p.kind))
                .collect();
        assert_eq!(
            got,
            vec![
                ("ns/fine".into(), ProblemKind::CrashLoop),
                ("ns/flaky".into(), ProblemKind::RestartsRising),
                ("n2".into(), ProblemKind::NodeNotReady)
            ]
        );
    }

    #[test]
    fn restarts_during_a_nodes_own_upgrade_are_not_held_against_it_afterwards() {
        let agent = |restarts| pod("agent", "n1", "Running", true, None, restarts);
        let mut baseline = Baseline::take(&[agent(0)], &[node("n1", true)], ts(0), T);
        let upgrading: BTreeSet<String> = ["n1".to_string()].into();
        // The node reboots during its upgrade: its DaemonSet pod restarts once.
        baseline.accept_restarts_on(&[agent(1)], &upgrading);
        let released = BTreeSet::new();
        let now = [node("n1", true)];
        assert!(new_problems(&baseline, &[agent(1)], &now, ts(5), T, &released).is_empty());
        // A restart after the node was released is a new problem again.
        let got = new_problems(&baseline, &[agent(2)], &now, ts(9), T, &released);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].kind, ProblemKind::RestartsRising);
    }
}
