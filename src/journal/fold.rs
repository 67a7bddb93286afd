//! The one fold over a journal's typed records: what happened to the run and to each node.
//! The status (`rollgate status`, [`super::RunStatus`]), the resume points
//! ([`super::resume_points`]) and the run report (`report::run_report`) are all read
//! from the [`RunHistory`] it yields, so they cannot disagree on what a record means.
//!
//! It tolerates what real journals hold: torn lines (skipped by [`Records`], and counted), a run
//! resumed after a crash (a second `RunStarted`, and steps started again: what was open is cut
//! at the last record before the restart), old headers without the later fields.

use super::{Header, Records};
use crate::vocab::{FinishByEnd, GateDecision, Outcome, PreflightSummary, RunEvent, Stamped, Step};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::SystemTime;

/// A node's state as the journal tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeState {
    /// Not started (yet).
    Pending,
    /// Started, not ended: running, or interrupted (the journal ends: a crash, or the run ended
    /// without a word on it).
    InProgress,
    Done,
    Failed,
    /// Given back without its command: budgets held its drain past the timeout
    /// (`on-pdb-timeout = "skip"`). A recorded outcome: resume leaves it, a new run includes it.
    Skipped,
    /// In flight when the run was stopped immediately: left as it was.
    Abandoned,
}

impl NodeState {
    /// The name in `rollgate status` (and the status copied into the cluster).
    pub fn name(self) -> &'static str {
        match self {
            NodeState::Pending => "pending",
            NodeState::InProgress => "in-progress",
            NodeState::Done => "done",
            NodeState::Failed => "failed",
            NodeState::Skipped => "skipped",
            NodeState::Abandoned => "abandoned",
        }
    }
}

impl std::fmt::Display for NodeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.name())
    }
}

/// How one step span ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanEnd {
    Finished,
    Failed,
    /// Cut by a crash, an immediate stop, or the end of the journal.
    Interrupted,
}

/// One step of one node, offsets in milliseconds from the run's start.
#[derive(Debug, Clone, PartialEq)]
pub struct StepSpan {
    pub step: Step,
    pub start_ms: u64,
    pub end_ms: u64,
    pub end: SpanEnd,
    /// The step's own detail ("3 evicted, 1 skipped") or its failure reason.
    pub detail: Option<String>,
}

/// Why a node was skipped (`on-pdb-timeout = "skip"`).
#[derive(Debug, Clone, PartialEq)]
pub struct Skip {
    pub reason: String,
    /// The budgets that held it (`namespace/name`).
    pub pdbs: Vec<String>,
    /// The pods they held (`namespace/name`).
    pub pods: Vec<String>,
}

/// One node's history: the one model of a node's state that status, resume and report read.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeHistory {
    pub name: String,
    pub phase: String,
    pub state: NodeState,
    /// Every step it started, in order (a step interrupted by a crash and started again by the
    /// resumed run appears twice).
    pub steps: Vec<StepSpan>,
    /// The step it is at (the last one started); None before the first and once it is done.
    pub step: Option<Step>,
    /// When it started that step, or was done.
    pub since: Option<SystemTime>,
    /// From its first step to its end (wall clock: includes a crash's gap, when the node stayed
    /// cordoned). None when it never started or never ended.
    pub duration_ms: Option<u64>,
    /// The failed step and why (the latest, when resumed runs failed it more than once);
    /// cleared when the node starts again.
    pub failure: Option<(Step, String)>,
    /// Why it was skipped; cleared when the node starts again.
    pub skip: Option<Skip>,
    /// Whether the last span is still open (during the fold only: it closes them all at the end).
    open: bool,
}

impl NodeHistory {
    fn new(name: &str, phase: &str) -> Self {
        Self {
            name: name.to_owned(),
            phase: phase.to_owned(),
            state: NodeState::Pending,
            steps: vec![],
            step: None,
            since: None,
            duration_ms: None,
            failure: None,
            skip: None,
            open: false,
        }
    }

    /// Closes the open step span, if there is one.
    fn close(&mut self, ms: u64, end: SpanEnd, detail: Option<&str>) {
        if !std::mem::take(&mut self.open) {
            return;
        }
        if let Some(span) = self.steps.last_mut() {
            span.end_ms = ms.max(span.start_ms);
            span.end = end;
            span.detail = detail.map(str::to_owned);
        }
    }

    fn ended(&mut self, ms: u64, state: NodeState) {
        self.state = state;
        self.duration_ms = self.steps.first().map(|f| ms.saturating_sub(f.start_ms));
    }
}

/// A node's failure, in the order they happened.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub node: String,
    pub step: Step,
    pub reason: String,
    pub at_ms: u64,
}

/// Why no node could start for a while.
#[derive(Debug, Clone, PartialEq)]
pub enum WaitCause {
    /// Outside the maintenance window; `reopens_at` (RFC 3339) None if not within a year.
    Window {
        window: String,
        reopens_at: Option<String>,
    },
    /// A gate paused the run.
    Paused(GateDecision),
    /// The window was open, but `finish-by-end` held the next node back: by its p95 it would
    /// not have ended before the window closed.
    FinishByEnd {
        held: FinishByEnd,
        reopens_at: Option<String>,
    },
}

/// A stretch when no node could start.
#[derive(Debug, Clone, PartialEq)]
pub struct Wait {
    pub from_ms: u64,
    /// None: still waiting when the journal ends.
    pub to_ms: Option<u64>,
    pub cause: WaitCause,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum RunEnd {
    Finished(Outcome),
    /// It did not start (nothing was changed): why.
    Refused(String),
}

/// What the run is doing as of the journal's last record.
#[derive(Debug, Clone, PartialEq)]
pub enum RunState {
    /// Running, or crashed: the journal has no end.
    Running,
    Paused,
    WaitingForWindow {
        reopens_at: Option<String>,
    },
    Ended(RunEnd),
}

/// What a journal says happened: the result of the one fold over its records.
#[derive(Debug, Clone, PartialEq)]
pub struct RunHistory {
    /// None when the first line is not a header.
    pub header: Option<Header>,
    /// Journal lines that do not parse (torn by a crash or a full disk), 1-based: skipped.
    pub skipped: Vec<usize>,
    /// The first and the last record's time.
    pub started_at: Option<SystemTime>,
    pub ended_at: Option<SystemTime>,
    /// From the first record to the last, in milliseconds.
    pub last_ms: u64,
    pub state: RunState,
    /// The last end recorded (a resumed run that has not ended again keeps the one before).
    pub last_end: Option<RunEnd>,
    /// Each start of the run, offset and by whom: the first, then one per resume.
    pub starts: Vec<(u64, Option<String>)>,
    /// Plan order first, then nodes the records name that the plan did not.
    pub nodes: Vec<NodeHistory>,
    /// The order nodes actually started in (first start of each).
    pub actual: Vec<String>,
    pub decisions: Vec<(u64, GateDecision)>,
    /// What operators asked of the live run (pause, resume, abort, from a command or a Slack
    /// button) and the requests refused, in order: (ms from the start, in words, naming who).
    pub operator: Vec<(u64, String)>,
    pub waits: Vec<Wait>,
    pub failures: Vec<Failure>,
    /// The run's deadline (RFC 3339): the header's, or the latest a resume set.
    pub deadline: Option<String>,
    /// Why the run was refused before it ever started (it cannot be resumed). A resume refused
    /// later leaves no mark here.
    pub refused: Option<String>,
    /// The node `finish-by-end` holds back now, and why (the run waits for the next window, or
    /// stopped); cleared when a node starts, the window reopens or the run is resumed.
    pub finish_by_end: Option<FinishByEnd>,
    /// What the pre-flight checks said before each start and resume: (ms from the start, summary).
    pub preflight: Vec<(u64, PreflightSummary)>,
}

/// The name a unit variant has in the journal (`gate-abort`, `succeeded-with-failures`).
pub fn wire_name<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        _ => "?".into(),
    }
}

impl RunHistory {
    /// Reads and folds a journal file.
    pub fn read(path: &Path) -> std::io::Result<Self> {
        Ok(Self::fold(Records::read(path)?))
    }

    pub fn fold(journal: Records) -> Self {
        let plan = journal
            .header
            .as_ref()
            .map(|h| h.nodes.clone())
            .unwrap_or_default();
        let mut history = RunHistory {
            deadline: journal.header.as_ref().and_then(|h| h.deadline.clone()),
            header: journal.header,
            skipped: journal.skipped,
            started_at: None,
            ended_at: None,
            last_ms: 0,
            state: RunState::Running,
            last_end: None,
            starts: vec![],
            nodes: plan.iter().map(|(n, p)| NodeHistory::new(n, p)).collect(),
            actual: vec![],
            decisions: vec![],
            operator: vec![],
            waits: vec![],
            failures: vec![],
            refused: None,
            finish_by_end: None,
            preflight: vec![],
        };
        for record in &journal.records {
            history.apply(record);
        }
        // What is still open ran until the journal's end.
        history.close_all(history.last_ms);
        history
    }

    fn node(&mut self, name: &str) -> &mut NodeHistory {
        let i = match self.nodes.iter().position(|n| n.name == name) {
            Some(i) => i,
            None => {
                self.nodes.push(NodeHistory::new(name, ""));
                self.nodes.len() - 1
            }
        };
        &mut self.nodes[i]
    }

    fn close_all(&mut self, ms: u64) {
        for n in &mut self.nodes {
            n.close(ms, SpanEnd::Interrupted, None);
        }
    }

    fn close_wait(&mut self, ms: u64) {
        if let Some(w) = self.waits.iter_mut().rev().find(|w| w.to_ms.is_none()) {
            w.to_ms = Some(ms);
        }
    }

    fn apply(&mut self, record: &Stamped) {
        let at = record.at;
        let start = *self.started_at.get_or_insert(at);
        let ms = at.duration_since(start).map_or(0, |d| d.as_millis() as u64);
        if let Some(node) = record.event.node() {
            self.node(node);
        }
        use RunEvent::*;
        match &record.event {
            RunStarted { by, .. } => {
                self.starts.push((ms, by.clone()));
                if self.starts.len() > 1 {
                    // Resumed: what was open was cut by the crash, at the last record before it.
                    self.close_all(self.last_ms);
                }
                self.state = RunState::Running;
                self.finish_by_end = None;
            }
            NodeStarted { node, phase } => {
                self.finish_by_end = None;
                if !self.actual.contains(node) {
                    self.actual.push(node.clone());
                }
                let n = self.node(node);
                n.state = NodeState::InProgress;
                n.failure = None;
                n.skip = None;
                if n.phase.is_empty() {
                    n.phase = phase.clone();
                }
            }
            StepStarted { node, step } => {
                let n = self.node(node);
                n.close(ms, SpanEnd::Interrupted, None);
                n.steps.push(StepSpan {
                    step: *step,
                    start_ms: ms,
                    end_ms: ms,
                    end: SpanEnd::Interrupted,
                    detail: None,
                });
                n.open = true;
                n.step = Some(*step);
                n.since = Some(at);
            }
            StepFinished {
                node, step, detail, ..
            } => {
                let n = self.node(node);
                if n.steps.last().is_some_and(|s| s.step == *step) {
                    n.close(ms, SpanEnd::Finished, detail.as_deref());
                }
            }
            NodeDone { node, .. } => {
                let n = self.node(node);
                n.close(ms, SpanEnd::Finished, None);
                n.ended(ms, NodeState::Done);
                n.step = None;
                n.since = Some(at);
            }
            NodeFailed { node, step, reason } => {
                let n = self.node(node);
                n.close(ms, SpanEnd::Failed, Some(reason));
                n.ended(ms, NodeState::Failed);
                n.failure = Some((*step, reason.clone()));
                self.failures.push(Failure {
                    node: node.clone(),
                    step: *step,
                    reason: reason.clone(),
                    at_ms: ms,
                });
            }
            NodeSkipped {
                node,
                reason,
                pdbs,
                pods,
            } => {
                let n = self.node(node);
                // Its drain timed out.
                n.close(ms, SpanEnd::Failed, Some(reason));
                n.ended(ms, NodeState::Skipped);
                n.step = None;
                n.since = Some(at);
                n.skip = Some(Skip {
                    reason: reason.clone(),
                    pdbs: pdbs.clone(),
                    pods: pods.clone(),
                });
            }
            NodeAbandoned { node, .. } => {
                let n = self.node(node);
                n.close(ms, SpanEnd::Interrupted, None);
                n.state = NodeState::Abandoned;
            }
            GateDecision { decision } => {
                if decision.signal == crate::health::OPERATOR {
                    self.operator.push((ms, decision.evidence.clone()));
                }
                self.decisions.push((ms, decision.clone()))
            }
            ControlRefused { action, by, reason } => self
                .operator
                .push((ms, format!("refused: {} by {by}: {reason}", action.name()))),
            Paused { decision, .. } => {
                self.state = RunState::Paused;
                self.waits.push(Wait {
                    from_ms: ms,
                    to_ms: None,
                    cause: WaitCause::Paused(decision.clone()),
                });
            }
            Resumed { .. } | WindowOpened => {
                if let Resumed { by: Some(by) } = &record.event {
                    self.operator.push((ms, format!("resumed by {by}")));
                }
                self.state = RunState::Running;
                self.close_wait(ms);
                self.finish_by_end = None;
            }
            WindowClosed { window, reopens_at } => {
                self.state = RunState::WaitingForWindow {
                    reopens_at: reopens_at.clone(),
                };
                let cause = match &self.finish_by_end {
                    Some(held) => WaitCause::FinishByEnd {
                        held: held.clone(),
                        reopens_at: reopens_at.clone(),
                    },
                    None => WaitCause::Window {
                        window: window.clone(),
                        reopens_at: reopens_at.clone(),
                    },
                };
                self.waits.push(Wait {
                    from_ms: ms,
                    to_ms: None,
                    cause,
                });
            }
            FinishByEnd(held) => self.finish_by_end = Some(held.clone()),
            DeadlineSet { deadline } => self.deadline = Some(deadline.clone()),
            // Before the first start: the run never started. After it: a resume that its
            // before-run gate (or monitor) refused changed nothing, so the run stays where it
            // stopped and can be resumed again.
            RunRefused { reason } if self.starts.is_empty() => {
                self.refused.get_or_insert_with(|| reason.clone());
                self.state = RunState::Ended(RunEnd::Refused(reason.clone()));
                self.last_end = Some(RunEnd::Refused(reason.clone()));
            }
            RunRefused { .. } => {}
            RunFinished { outcome, .. } => {
                self.state = RunState::Ended(RunEnd::Finished(*outcome));
                self.last_end = Some(RunEnd::Finished(*outcome));
            }
            // In the journal but no state of their own (a pre-flight refusal is the
            // `RunRefused` after it).
            Preflight { summary } => self.preflight.push((ms, summary.clone())),
            WaveStarted { .. } | Stopping { .. } => {}
            // Not journaled (see `writer::journaled`): nothing to fold if one is found.
            PodEvicted { .. }
            | PodSkipped { .. }
            | EvictionBlocked { .. }
            | EvictionRetried { .. }
            | PodDeleted { .. }
            | CommandOutput { .. }
            | DryRunAction { .. }
            | Warning { .. }
            | Baseline { .. }
            | ProbeResult { .. }
            | Problem { .. }
            | WatchLost { .. }
            | WatchRestored { .. }
            | ReportWritten { .. } => {}
        }
        self.last_ms = ms;
        self.ended_at = Some(at);
    }
}
