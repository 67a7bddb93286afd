//! Pod and node health as pure functions: which problems a pod shows now, and which of them are
//! new or worse than at the baseline taken when the run started (what was already broken is
//! reported, not held against the rollout). The rules read [`PodSummary`] and [`NodeSummary`]
//! (what the monitor keeps of each object), one pod at a time: [`Baseline::observe_pod`] and
//! [`pod_new_problems`] are what the monitor calls for each pod that changed or whose time came
//! ([`next_due`]); [`Baseline::observe`] and [`new_problems`] apply them to a whole set.

use super::summary::{CRASH_LOOP, NodeSummary, PodSummary, WAITING_ERRORS};
use crate::vocab::{Problem, ProblemKind};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    pub not_ready_after: Duration,
    pub pending_after: Duration,
}

fn age(since: Option<&jiff::Timestamp>, now: jiff::Timestamp) -> Duration {
    since
        .and_then(|t| now.duration_since(*t).try_into().ok())
        .unwrap_or_default()
}

/// The problems a pod shows at `now`. Finished and terminating pods show none.
pub fn pod_problems(pod: &PodSummary, now: jiff::Timestamp, t: Thresholds) -> Vec<Problem> {
    let mut out = Vec::new();
    if pod.terminating || !pod.has_status {
        return out;
    }
    let phase = pod.phase();
    if matches!(phase, "Succeeded" | "Failed") {
        return out;
    }
    let mut push = |kind, detail: String| {
        out.push(Problem {
            object: pod.key.clone(),
            node: pod.node.clone(),
            kind,
            detail,
        })
    };
    for c in &pod.containers {
        let Some((reason, message)) = c.waiting.as_ref() else {
            continue;
        };
        if reason == CRASH_LOOP {
            push(
                ProblemKind::CrashLoop,
                format!(
                    "container {} CrashLoopBackOff, {} restarts: {message}",
                    c.name, c.restart_count
                ),
            );
        } else if WAITING_ERRORS.contains(&reason.as_str()) {
            push(
                ProblemKind::WaitingError,
                format!("container {} {reason}: {message}", c.name),
            );
        }
    }
    if phase == "Pending" {
        let pending_for = age(pod.created.as_ref(), now);
        if pending_for > t.pending_after {
            push(
                ProblemKind::Pending,
                format!(
                    "Pending for {}",
                    humantime::format_duration(Duration::from_secs(pending_for.as_secs()))
                ),
            );
        }
    } else if let Some(ready) = pod.ready.as_ref()
        && !ready.ready
    {
        let since = ready.since.or(pod.created);
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

pub fn node_problems(node: &NodeSummary) -> Vec<Problem> {
    match &node.ready {
        Some((status, _, _)) if status == "True" => vec![],
        Some((status, reason, message)) => vec![Problem {
            object: node.name.clone(),
            node: Some(node.name.clone()),
            kind: ProblemKind::NodeNotReady,
            detail: format!("node Ready={status} {reason}: {message}"),
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
    forgiven: HashMap<Arc<str>, BTreeSet<ProblemKind>>,
    /// Pod UID -> the restart count restarts are counted from.
    restarts: HashMap<Arc<str>, i32>,
    /// Node name -> problem kinds it had at the start.
    nodes: BTreeMap<String, BTreeSet<ProblemKind>>,
    /// `object: kinds` for every problem at the start, for the `baseline` event.
    described: Vec<String>,
}

/// Ready without interruption for at least `for_`.
fn ready_for(pod: &PodSummary, now: jiff::Timestamp, for_: Duration) -> bool {
    pod.ready
        .as_ref()
        .is_some_and(|r| r.ready && age(r.since.as_ref(), now) >= for_)
}

fn on_exempt_node(pod: &PodSummary, exempt: &BTreeSet<String>) -> bool {
    pod.node.as_ref().is_some_and(|n| exempt.contains(n))
}

impl Baseline {
    pub fn take<'a>(
        pods: impl IntoIterator<Item = &'a PodSummary>,
        nodes: impl IntoIterator<Item = &'a NodeSummary>,
        now: jiff::Timestamp,
        t: Thresholds,
    ) -> Self {
        let mut b = Baseline::default();
        let mut described: BTreeMap<String, BTreeSet<ProblemKind>> = BTreeMap::new();
        for p in pods {
            b.restarts.insert(Arc::clone(&p.uid), p.restarts());
            let kinds: BTreeSet<ProblemKind> = pod_problems(p, now, t)
                .into_iter()
                .map(|x| x.kind)
                .collect();
            if !kinds.is_empty() {
                described.insert(p.key.clone(), kinds.clone());
                b.forgiven.insert(Arc::clone(&p.uid), kinds);
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

    /// Brings the baseline up to date with one pod as the monitor sees it now (call before
    /// [`pod_new_problems`]): a pod seen for the first time is tracked from now, a pod on a node
    /// down for its upgrade (`exempt`) takes its restart count as the new baseline, and a pod
    /// broken at the start that recovered loses its forgiveness.
    pub fn observe_pod(
        &mut self,
        p: &PodSummary,
        exempt: &BTreeSet<String>,
        now: jiff::Timestamp,
        t: Thresholds,
    ) {
        let recovered = self.forgiven.contains_key(&p.uid)
            && ready_for(p, now, RECOVERED_AFTER)
            && pod_problems(p, now, t).is_empty();
        if recovered {
            self.forgiven.remove(&p.uid);
        }
        if on_exempt_node(p, exempt) || recovered || !self.restarts.contains_key(&p.uid) {
            self.restarts.insert(Arc::clone(&p.uid), p.restarts());
        }
    }

    /// A pod is gone: forgets it.
    pub fn forget_pod(&mut self, uid: &str) {
        self.restarts.remove(uid);
        self.forgiven.remove(uid);
    }

    /// [`Baseline::observe_pod`] for each of `pods`, and pods not among them are forgotten.
    pub fn observe(
        &mut self,
        pods: &[PodSummary],
        exempt: &BTreeSet<String>,
        now: jiff::Timestamp,
        t: Thresholds,
    ) {
        for p in pods {
            self.observe_pod(p, exempt, now, t);
        }
        let live: BTreeSet<&str> = pods.iter().map(|p| &*p.uid).collect();
        self.restarts.retain(|id, _| live.contains(&**id));
        self.forgiven.retain(|id, _| live.contains(&**id));
    }

    /// Whether the pod is still forgiven some problem it had at the start.
    pub fn is_forgiven(&self, uid: &str) -> bool {
        self.forgiven.contains_key(uid)
    }

    /// All problems already present at the baseline (reported once, not held against the run).
    pub fn describe(&self) -> Vec<String> {
        self.described.clone()
    }
}

/// The one pod's problems that are new or worse than at the baseline; none on an `exempt` node
/// (one down for its upgrade right now: its pods are expected to go away). A pod not yet in the
/// baseline (call [`Baseline::observe_pod`] first) is judged on its problems alone.
pub fn pod_new_problems(
    baseline: &Baseline,
    p: &PodSummary,
    now: jiff::Timestamp,
    t: Thresholds,
    exempt: &BTreeSet<String>,
) -> Vec<Problem> {
    let mut out = Vec::new();
    if on_exempt_node(p, exempt) {
        return out;
    }
    let forgiven = baseline.forgiven.get(&p.uid);
    let is_forgiven = |kind: ProblemKind| forgiven.is_some_and(|k| k.contains(&kind));
    let problems = pod_problems(p, now, t);
    // Restarts rising: a new problem even before CrashLoopBackOff; a pod crash-looping
    // now is reported as that, and one crash-looping since the start restarts as before.
    let crashing_now = problems.iter().any(|x| x.kind == ProblemKind::CrashLoop);
    for problem in problems {
        if !is_forgiven(problem.kind) {
            out.push(problem);
        }
    }
    let before = baseline.restarts.get(&p.uid).copied();
    let now_restarts = p.restarts();
    if let Some(before) = before
        && now_restarts > before
        && !is_forgiven(ProblemKind::CrashLoop)
        && !crashing_now
    {
        out.push(Problem {
            object: p.key.clone(),
            node: p.node.clone().filter(|n| !n.is_empty()),
            kind: ProblemKind::RestartsRising,
            detail: format!("restarts rose from {before} to {now_restarts}"),
        });
    }
    out
}

/// The node's problems that are new since the baseline; none for an `exempt` node.
pub fn node_new_problems(
    baseline: &Baseline,
    n: &NodeSummary,
    exempt: &BTreeSet<String>,
) -> Vec<Problem> {
    if exempt.contains(&n.name) {
        return vec![];
    }
    node_problems(n)
        .into_iter()
        .filter(|problem| {
            !baseline
                .nodes
                .get(&n.name)
                .is_some_and(|k| k.contains(&problem.kind))
        })
        .collect()
}

/// Problems that are new or worse than at the baseline ([`pod_new_problems`] for each pod,
/// [`node_new_problems`] for each node).
pub fn new_problems(
    baseline: &Baseline,
    pods: &[PodSummary],
    nodes: &[NodeSummary],
    now: jiff::Timestamp,
    t: Thresholds,
    exempt: &BTreeSet<String>,
) -> Vec<Problem> {
    let mut out = Vec::new();
    for p in pods {
        out.extend(pod_new_problems(baseline, p, now, t, exempt));
    }
    for n in nodes {
        out.extend(node_new_problems(baseline, n, exempt));
    }
    out
}

/// The next time at which the rules could judge this pod differently without it changing (a
/// threshold of `pending-after`, `not-ready-after` or [`RECOVERED_AFTER`] passing), if later
/// than `now`: the monitor evaluates the pod again then.
pub fn next_due(
    baseline: &Baseline,
    p: &PodSummary,
    now: jiff::Timestamp,
    t: Thresholds,
) -> Option<jiff::Timestamp> {
    // The thresholds are exceeded strictly: a moment after.
    let after = |since: Option<jiff::Timestamp>, d: Duration, strict: bool| {
        let since = since?;
        let d = d + if strict {
            Duration::from_millis(1)
        } else {
            Duration::ZERO
        };
        let due = since
            .checked_add(jiff::SignedDuration::try_from(d).ok()?)
            .ok()?;
        (due > now).then_some(due)
    };
    let mut due = Vec::new();
    if !p.terminating && p.has_status && !matches!(p.phase(), "Succeeded" | "Failed") {
        if p.phase() == "Pending" {
            due.push(after(p.created, t.pending_after, true));
        } else if let Some(r) = p.ready.as_ref().filter(|r| !r.ready) {
            due.push(after(r.since.or(p.created), t.not_ready_after, true));
        }
    }
    if baseline.is_forgiven(&p.uid)
        && let Some(r) = p.ready.as_ref().filter(|r| r.ready)
    {
        due.push(after(r.since, RECOVERED_AFTER, false));
    }
    due.into_iter().flatten().min()
}

#[cfg(test)]
mod tests;
