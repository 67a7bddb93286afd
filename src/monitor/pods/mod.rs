//! Pod and node health as pure functions: which problems a pod shows now, and which of them are
//! new or worse than at the baseline taken when the run started (what was already broken is
//! reported, not held against the rollout).

use crate::vocab::{Problem, ProblemKind};
use k8s_openapi::api::core::v1::{Node, Pod};
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

/// How long a pod that was broken at the start must stay Ready, without a problem, before it
/// counts as recovered: from then on it is held to the same rules as any other pod.
pub const RECOVERED_AFTER: Duration = Duration::from_secs(60);

/// What the run holds each pod to, keyed by pod UID (a pod recreated under the same name, a
/// StatefulSet's say, is a new pod):
///
/// - Pods present at the start: the problems they already had are forgiven (reported in the
///   `baseline` event) until the pod recovers ([`RECOVERED_AFTER`] Ready without a problem).
///   Restarts from the count at the start are new problems, except for a pod that was already
///   crash-looping (its restarts are its old problem) until it recovers.
/// - Pods first seen later (replacements, new pods) are held to every rule from their first
///   observation: no problem is forgiven, restarts count from the count first seen.
/// - Pods on a node while it is down for its upgrade (cordon to wait-ready) restart with it:
///   the restart count then becomes the new baseline.
///
/// Nodes are keyed by name: a node NotReady at the start is forgiven while it stays so.
#[derive(Debug, Clone, Default)]
pub struct Baseline {
    /// Pod UID -> problem kinds it had at the start (still forgiven).
    forgiven: BTreeMap<String, BTreeSet<ProblemKind>>,
    /// Pod UID -> the restart count restarts are counted from.
    restarts: BTreeMap<String, i32>,
    /// Node name -> problem kinds it had at the start.
    nodes: BTreeMap<String, BTreeSet<ProblemKind>>,
    /// `object: kinds` for every problem at the start, for the `baseline` event.
    described: Vec<String>,
}

fn uid(pod: &Pod) -> String {
    pod.metadata.uid.clone().unwrap_or_else(|| key(pod))
}

fn node_of(pod: &Pod) -> Option<&str> {
    pod.spec.as_ref().and_then(|s| s.node_name.as_deref())
}

/// Ready without interruption for at least `for_`.
fn ready_for(pod: &Pod, now: jiff::Timestamp, for_: Duration) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| {
            c.status == "True" && age(c.last_transition_time.as_ref().map(|t| &t.0), now) >= for_
        })
}

impl Baseline {
    pub fn take(pods: &[Pod], nodes: &[Node], now: jiff::Timestamp, t: Thresholds) -> Self {
        let mut b = Baseline::default();
        let mut described: BTreeMap<String, BTreeSet<ProblemKind>> = BTreeMap::new();
        for p in pods {
            b.restarts.insert(uid(p), restarts(p));
            let kinds: BTreeSet<ProblemKind> = pod_problems(p, now, t)
                .into_iter()
                .map(|x| x.kind)
                .collect();
            if !kinds.is_empty() {
                described.insert(key(p), kinds.clone());
                b.forgiven.insert(uid(p), kinds);
            }
        }
        for n in nodes {
            for problem in node_problems(n) {
                described
                    .entry(problem.object.clone())
                    .or_default()
                    .insert(problem.kind);
                b.nodes
                    .entry(problem.object)
                    .or_default()
                    .insert(problem.kind);
            }
        }
        b.described = described
            .iter()
            .map(|(o, kinds)| format!("{o}: {kinds:?}"))
            .collect();
        b
    }

    /// Brings the baseline up to date with what the monitor sees now (call before
    /// [`new_problems`]): pods seen for the first time are tracked from now, pods on nodes that
    /// are down for their upgrade (`exempt`) take their restart count as the new baseline, pods
    /// broken at the start that recovered lose their forgiveness, and pods gone are forgotten.
    pub fn observe(
        &mut self,
        pods: &[Pod],
        exempt: &BTreeSet<String>,
        now: jiff::Timestamp,
        t: Thresholds,
    ) {
        let mut live = BTreeSet::new();
        for p in pods {
            let id = uid(p);
            let count = restarts(p);
            let on_exempt_node = node_of(p).is_some_and(|n| exempt.contains(n));
            let recovered = self.forgiven.contains_key(&id)
                && ready_for(p, now, RECOVERED_AFTER)
                && pod_problems(p, now, t).is_empty();
            if recovered {
                self.forgiven.remove(&id);
            }
            if on_exempt_node || recovered || !self.restarts.contains_key(&id) {
                self.restarts.insert(id.clone(), count);
            }
            live.insert(id);
        }
        self.restarts.retain(|id, _| live.contains(id));
        self.forgiven.retain(|id, _| live.contains(id));
    }

    /// All problems already present at the baseline (reported once, not held against the run).
    pub fn describe(&self) -> Vec<String> {
        self.described.clone()
    }
}

/// Problems that are new or worse than at the baseline, skipping pods and nodes on `exempt` nodes
/// (the ones down for their upgrade right now: their pods are expected to go away). Pods not yet
/// in the baseline (call [`Baseline::observe`] first) are judged on their problems alone.
pub fn new_problems(
    baseline: &Baseline,
    pods: &[Pod],
    nodes: &[Node],
    now: jiff::Timestamp,
    t: Thresholds,
    exempt: &BTreeSet<String>,
) -> Vec<Problem> {
    let mut out = Vec::new();
    for p in pods {
        let node = node_of(p).unwrap_or("");
        if exempt.contains(node) {
            continue;
        }
        let id = uid(p);
        let forgiven = baseline.forgiven.get(&id);
        let is_forgiven = |kind: ProblemKind| forgiven.is_some_and(|k| k.contains(&kind));
        let problems = pod_problems(p, now, t);
        for problem in &problems {
            if !is_forgiven(problem.kind) {
                out.push(problem.clone());
            }
        }
        // Restarts rising: a new problem even before CrashLoopBackOff; a pod crash-looping
        // now is reported as that, and one crash-looping since the start restarts as before.
        let before = baseline.restarts.get(&id).copied();
        let now_restarts = restarts(p);
        let crashing_now = problems.iter().any(|x| x.kind == ProblemKind::CrashLoop);
        if let Some(before) = before
            && now_restarts > before
            && !is_forgiven(ProblemKind::CrashLoop)
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
            if !baseline
                .nodes
                .get(name)
                .is_some_and(|k| k.contains(&problem.kind))
            {
                out.push(problem);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
