//! What the monitor keeps of a pod or a node: only the fields its rules and pings read, taken
//! from each watch event (a whole Pod with its spec is several kilobytes; this is a few hundred
//! bytes). Two summaries compare equal when nothing the rules read changed, so an update that
//! touches only other fields (annotations, spec, managed fields) marks nothing to evaluate.

use k8s_openapi::api::core::v1::{Node, Pod};
use std::sync::Arc;

/// Container waiting reasons that mean the pod cannot run, besides CrashLoopBackOff.
pub const WAITING_ERRORS: &[&str] = &[
    "ImagePullBackOff",
    "ErrImagePull",
    "CreateContainerConfigError",
    "CreateContainerError",
    "InvalidImageName",
    "RunContainerError",
];

pub const CRASH_LOOP: &str = "CrashLoopBackOff";

/// One container: its restarts, and why it waits when that reason is one the rules judge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSummary {
    pub name: String,
    pub restart_count: i32,
    /// (reason, message) of a waiting state whose reason is CrashLoopBackOff or a
    /// [`WAITING_ERRORS`] one; other waiting reasons are not kept (no rule reads them).
    pub waiting: Option<(String, String)>,
}

/// The pod's Ready condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    pub ready: bool,
    pub since: Option<jiff::Timestamp>,
    pub reason: Option<String>,
}

/// A pod as the monitor's rules see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSummary {
    /// Its UID (the baseline's key): shared with the monitor's indexes.
    pub uid: Arc<str>,
    /// `namespace/name`, as problems name it.
    pub key: String,
    pub node: Option<String>,
    pub terminating: bool,
    /// No status at all (just created): no rule applies yet.
    pub has_status: bool,
    /// `status.phase`; absent means Pending.
    pub phase: Option<String>,
    pub created: Option<jiff::Timestamp>,
    pub ready: Option<Readiness>,
    pub containers: Vec<ContainerSummary>,
    pub ip: Option<String>,
    /// Matches the ping selector (the labels themselves are not kept).
    pub pingable: bool,
}

impl PodSummary {
    /// `pingable`: whether the pod's labels match the ping selector.
    pub fn of(pod: &Pod, pingable: bool) -> Self {
        let status = pod.status.as_ref();
        let uid = pod
            .metadata
            .uid
            .clone()
            .unwrap_or_else(|| crate::drain::pod_key(pod));
        PodSummary {
            uid: uid.into(),
            key: crate::drain::pod_key(pod),
            node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            terminating: pod.metadata.deletion_timestamp.is_some(),
            has_status: status.is_some(),
            phase: status.and_then(|s| s.phase.clone()),
            created: pod.metadata.creation_timestamp.as_ref().map(|t| t.0),
            ready: status
                .and_then(|s| s.conditions.as_ref())
                .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
                .map(|c| Readiness {
                    ready: c.status == "True",
                    since: c.last_transition_time.as_ref().map(|t| t.0),
                    reason: c.reason.clone(),
                }),
            containers: status
                .and_then(|s| s.container_statuses.as_ref())
                .map(|cs| {
                    cs.iter()
                        .map(|c| ContainerSummary {
                            name: c.name.clone(),
                            restart_count: c.restart_count,
                            waiting: c.state.as_ref().and_then(|s| s.waiting.as_ref()).and_then(
                                |w| {
                                    let reason = w.reason.as_deref().unwrap_or("");
                                    (reason == CRASH_LOOP || WAITING_ERRORS.contains(&reason)).then(
                                        || {
                                            (
                                                reason.to_owned(),
                                                w.message.clone().unwrap_or_default(),
                                            )
                                        },
                                    )
                                },
                            ),
                        })
                        .collect()
                })
                .unwrap_or_default(),
            ip: status.and_then(|s| s.pod_ip.clone()),
            pingable,
        }
    }

    /// The sum of its containers' restart counts.
    pub fn restarts(&self) -> i32 {
        self.containers.iter().map(|c| c.restart_count).sum()
    }

    /// `status.phase`, Pending when absent.
    pub fn phase(&self) -> &str {
        self.phase.as_deref().unwrap_or("Pending")
    }
}

impl From<&Pod> for PodSummary {
    fn from(pod: &Pod) -> Self {
        PodSummary::of(pod, false)
    }
}

/// A node as the monitor's rules see it: its name and Ready condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSummary {
    pub name: String,
    /// (status, reason, message) of its Ready condition.
    pub ready: Option<(String, String, String)>,
}

impl From<&Node> for NodeSummary {
    fn from(node: &Node) -> Self {
        NodeSummary {
            name: node.metadata.name.clone().unwrap_or_default(),
            ready: node
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
                .map(|c| {
                    (
                        c.status.clone(),
                        c.reason.clone().unwrap_or_default(),
                        c.message.clone().unwrap_or_default(),
                    )
                }),
        }
    }
}
