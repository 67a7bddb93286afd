//! What a run reports: typed events, timestamped. Written to the journal and read back from it
//! (Serialize and Deserialize), so a renamed event or field is a compile error, not a silently
//! broken status, resume or report.

use super::{ControlAction, GateDecision, PreflightSummary, ProbeOutcome, Problem, Step};
use serde::{Deserialize, Serialize};
use std::time::SystemTime;

/// Why an eviction is tried again, other than a PodDisruptionBudget block
/// ([`RunEvent::EvictionBlocked`]). See `drain::eviction`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RetryCause {
    /// 409 on a PodDisruptionBudget: other evictions (or the disruption controller) updated its
    /// status at the same moment.
    BudgetConflict,
    /// 409 on the pod: it changed during the eviction.
    PodConflict,
    /// 429 without a `DisruptionBudget` cause: API priority and fairness throttled the request.
    Throttled,
    /// 5xx: the apiserver could not answer.
    ServerError,
}

impl RetryCause {
    /// What happened, as the end of "eviction of POD ...".
    pub fn describe(self) -> &'static str {
        match self {
            RetryCause::BudgetConflict => {
                "conflicted with another update of its PodDisruptionBudget (409)"
            }
            RetryCause::PodConflict => "conflicted with a change to the pod (409)",
            RetryCause::Throttled => "was throttled by the API server (429)",
            RetryCause::ServerError => "failed with a server error (5xx)",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Why a run stops early. Ordered: when several apply, the most severe (greatest) wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StopReason {
    /// The maintenance window closed and the window says `outside = "exit"`: resumable.
    OutsideWindow,
    /// The run's deadline passed: resumable.
    Deadline,
    /// The operator asked to stop after the nodes in flight (Ctrl-C once, SIGTERM).
    OperatorGraceful,
    /// Nodes failed beyond the failure budget.
    NodeFailures,
    /// A health gate decided to abort.
    GateAbort,
    /// An operator aborted the run (`rollgate abort`, a Slack button): as a gate abort, nodes in
    /// flight stop at their next safe point and stay cordoned.
    OperatorAbort,
    /// This run lost the cluster lock (not renewed in time, or taken by another run): nodes
    /// in flight stop at their next safe point and nothing more is written to them.
    LockLost,
    /// The operator asked to stop now (Ctrl-C twice): nodes in flight are left as they are.
    OperatorImmediate,
    /// A journal record could not be written and synced: no node starts, nodes in flight stop
    /// before their next step (nothing is done that the journal does not record).
    JournalUnwritable,
}

/// `[window] finish-by-end`: a node that does not start although the window is open, because
/// by its p95 duration it would still be in flight when the window closes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinishByEnd {
    pub node: String,
    /// The node's expected duration, slow case (p95 of each step, summed), in seconds.
    pub needs_secs: u64,
    /// Earlier runs of the playbook the p95 comes from; 0: the documented default step times.
    pub from_runs: usize,
    /// When the window closes (RFC 3339), and how long that was from the decision.
    pub closes_at: String,
    pub closes_in_secs: u64,
}

impl FinishByEnd {
    /// `node n2 would need 12m (p95 from 3 earlier runs), the window closes in 8m (at ...)`.
    pub fn describe(&self) -> String {
        let d = |s: u64| humantime::format_duration(std::time::Duration::from_secs(s)).to_string();
        let source = match self.from_runs {
            0 => "p95 of the default step times: no earlier run".to_owned(),
            n => format!("p95 from {n} earlier run(s)"),
        };
        format!(
            "node {} would need {} ({source}), the window closes in {} (at {})",
            self.node,
            d(self.needs_secs),
            d(self.closes_in_secs),
            self.closes_at
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Succeeded,
    /// Finished, but some nodes failed within the failure budget.
    SucceededWithFailures,
    Stopped(StopReason),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum RunEvent {
    RunStarted {
        run_id: String,
        playbook: String,
        nodes: usize,
        dry_run: bool,
        /// `user@host` of whoever started (or resumed) it.
        #[serde(skip_serializing_if = "Option::is_none")]
        by: Option<String>,
    },
    WaveStarted {
        phase: String,
        wave: Option<String>,
        nodes: Vec<String>,
    },
    NodeStarted {
        node: String,
        phase: String,
    },
    StepStarted {
        node: String,
        step: Step,
    },
    StepFinished {
        node: String,
        step: Step,
        elapsed_ms: u64,
        detail: Option<String>,
    },
    PodEvicted {
        node: String,
        pod: String,
    },
    PodSkipped {
        node: String,
        pod: String,
        reason: String,
    },
    EvictionBlocked {
        node: String,
        pod: String,
        pdb: String,
        message: String,
    },
    /// An eviction is retried for another reason than a PDB block; reported once per pod and
    /// cause, as [`RunEvent::EvictionBlocked`] is.
    EvictionRetried {
        node: String,
        pod: String,
        cause: RetryCause,
        /// `namespace/name` of the budget, for a budget conflict.
        #[serde(skip_serializing_if = "Option::is_none")]
        pdb: Option<String>,
        message: String,
    },
    PodDeleted {
        node: String,
        pod: String,
    },
    CommandOutput {
        node: String,
        stream: Stream,
        line: String,
    },
    /// `--dry-run`: an API write or remote command that a real run would make.
    DryRunAction {
        node: String,
        action: String,
    },
    Warning {
        node: Option<String>,
        message: String,
    },
    NodeDone {
        node: String,
        elapsed_ms: u64,
    },
    NodeFailed {
        node: String,
        step: Step,
        reason: String,
    },
    /// `on-pdb-timeout = "skip"`: the drain timed out because PodDisruptionBudgets held pods,
    /// so the node was given back (uncordoned, rollgate's marks cleared) without its command.
    /// Not a failure: the run goes on; a new run includes the node again.
    NodeSkipped {
        node: String,
        /// Why, with each pod still on the node.
        reason: String,
        /// The budgets that held it (`namespace/name`).
        pdbs: Vec<String>,
        /// The pods they held (`namespace/name`).
        pods: Vec<String>,
    },
    /// Nodes in flight when the run was stopped immediately: left as they were.
    NodeAbandoned {
        node: String,
        step: Option<Step>,
    },
    Stopping {
        reason: StopReason,
    },
    /// Problems that existed when the run started: reported, not held against the run.
    Baseline {
        problems: Vec<String>,
    },
    ProbeResult {
        probe: String,
        when: String,
        node: Option<String>,
        outcome: ProbeOutcome,
        elapsed_ms: u64,
    },
    GateDecision {
        decision: GateDecision,
    },
    /// A gate paused the run: no new node starts until the operator resumes it.
    Paused {
        decision: GateDecision,
        resume_hint: String,
    },
    /// The operator continued a paused run; `by` says who and from where (absent in journals
    /// written before it was recorded, and for a resume at the run's own prompt).
    Resumed {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<String>,
    },
    /// Someone asked the run to pause, resume or abort and was not allowed to (a Slack user who
    /// is not among `[slack] operators`): the run went on unchanged.
    ControlRefused {
        action: ControlAction,
        by: String,
        reason: String,
    },
    /// Outside the maintenance window: no new node starts until it reopens.
    WindowClosed {
        window: String,
        /// RFC 3339; None if it does not reopen within a year.
        reopens_at: Option<String>,
    },
    WindowOpened,
    /// `finish-by-end` holds this node back (the run then waits for the next window, or stops
    /// with `outside = "exit"`): said before the `window-closed` or `stopping` it causes.
    FinishByEnd(FinishByEnd),
    /// A resume gave the run a new deadline (RFC 3339); later resumes keep it.
    DeadlineSet {
        deadline: String,
    },
    /// The monitor saw a new problem (a pod crash-looping, a node NotReady, a pod unreachable).
    Problem {
        problem: Problem,
    },
    /// The pre-flight checks before the run (or the resume) started, over its nodes: when a
    /// check not ignored found a blocker, a [`RunEvent::RunRefused`] follows.
    Preflight {
        summary: PreflightSummary,
    },
    /// The run did not start (a gate failed before it, the monitor could not start, ...):
    /// nothing was changed. Its journal ends here; it cannot be resumed.
    RunRefused {
        reason: String,
    },
    /// The monitor lost a watch (an error from the API: unreachable, forbidden, ...); it starts
    /// over from a fresh list. Once per outage.
    WatchLost {
        watch: String,
        error: String,
    },
    /// A lost watch is back, with a fresh list.
    WatchRestored {
        watch: String,
        lost_ms: u64,
    },
    /// The run report's files were written (after the run finished; not in the journal).
    ReportWritten {
        paths: Vec<std::path::PathBuf>,
    },
    RunFinished {
        outcome: Outcome,
        done: usize,
        failed: usize,
        /// Skipped nodes (`on-pdb-timeout = "skip"`): not failures. Left out when none (as in
        /// journals written before it existed).
        #[serde(default, skip_serializing_if = "is_zero")]
        skipped: usize,
        not_started: usize,
        elapsed_ms: u64,
    },
}

impl RunEvent {
    /// The node an event is about, if any.
    pub fn node(&self) -> Option<&str> {
        use RunEvent::*;
        match self {
            NodeStarted { node, .. }
            | StepStarted { node, .. }
            | StepFinished { node, .. }
            | PodEvicted { node, .. }
            | PodSkipped { node, .. }
            | EvictionBlocked { node, .. }
            | EvictionRetried { node, .. }
            | PodDeleted { node, .. }
            | CommandOutput { node, .. }
            | DryRunAction { node, .. }
            | NodeDone { node, .. }
            | NodeFailed { node, .. }
            | NodeSkipped { node, .. }
            | NodeAbandoned { node, .. }
            | FinishByEnd(self::FinishByEnd { node, .. }) => Some(node),
            Warning { node, .. } => node.as_deref(),
            _ => None,
        }
    }
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// An event with the time it happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stamped {
    #[serde(with = "humantime_serde_compat")]
    pub at: SystemTime,
    #[serde(flatten)]
    pub event: RunEvent,
}

mod humantime_serde_compat {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::SystemTime;
    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_millis(*t))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_rfc3339_weak(&text).map_err(serde::de::Error::custom)
    }
}
