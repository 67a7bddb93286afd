//! The run report: what a run did, rebuilt from its journal (`STATE_DIR/runs/RUN_ID/journal.jsonl`)
//! after the fact, for `rollgate report` and the end of `run` / `resume`.
//!
//! [`RunReport::from_journal`] is pure: journal text in, model out. The model is a view of the
//! journal's one fold ([`crate::journal::RunHistory`]: node states, step spans, failures, gate
//! decisions, waits, resumes), which tolerates torn lines, resumed runs and old headers.
//! [`html`] and [`markdown`] render the model; [`write()`] puts the files in a directory.

pub mod html;
pub mod markdown;

use jiff::Timestamp;
use std::path::{Path, PathBuf};

pub const HTML_FILE: &str = "report.html";
pub const MARKDOWN_FILE: &str = "report.md";

pub use crate::journal::{Failure, NodeState, SpanEnd, StepSpan};

/// One node in the report: its history as the journal's fold tells it.
pub type NodeReport = crate::journal::NodeHistory;

/// A node's state as the report says it (after the fact: a node still in progress when the
/// journal ends was interrupted).
pub fn state_name(state: NodeState) -> &'static str {
    match state {
        NodeState::Done => "done",
        NodeState::Failed => "failed",
        NodeState::Skipped => "skipped",
        NodeState::Abandoned => "abandoned",
        NodeState::InProgress => "interrupted",
        NodeState::Pending => "not started",
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Gate {
    pub at_ms: u64,
    /// `abort`, `pause`, `warn`.
    pub decision: String,
    pub signal: String,
    pub evidence: String,
    /// Nodes in flight with their step.
    pub in_flight: Vec<(String, String)>,
}

/// A stretch when no node could start: outside the maintenance window, or paused by a gate.
#[derive(Debug, Clone, PartialEq)]
pub struct Wait {
    pub from_ms: u64,
    /// None: still waiting when the journal ends.
    pub to_ms: Option<u64>,
    pub why: String,
}

/// Durations over the nodes that finished.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Durations {
    pub total_ms: u64,
    pub average_ms: Option<u64>,
    pub min: Option<(String, u64)>,
    pub max: Option<(String, u64)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RunReport {
    pub run_id: String,
    pub playbook: String,
    pub playbook_file: String,
    /// `user@host`; None in journals written before it was recorded.
    pub started_by: Option<String>,
    pub dry_run: bool,
    pub started_at: Option<Timestamp>,
    pub ended_at: Option<Timestamp>,
    /// `succeeded`, `succeeded with failures`, `stopped: gate-abort`, ... or `no end recorded`.
    pub outcome: String,
    /// How many times the run was resumed from its journal.
    pub resumes: usize,
    /// Each resume: when (ms from the start) and by whom, if recorded.
    pub resumed_by: Vec<(u64, Option<String>)>,
    /// Journal lines that do not parse (torn by a crash or a full disk), 1-based: skipped.
    pub skipped_lines: Vec<usize>,
    /// The plan's order: (node, phase).
    pub plan: Vec<(String, String)>,
    /// The order nodes actually started in (first start of each).
    pub actual: Vec<String>,
    /// Plan order first, then nodes the journal names that the plan did not.
    pub nodes: Vec<NodeReport>,
    pub failures: Vec<Failure>,
    pub gates: Vec<Gate>,
    /// What operators asked of the live run and what was refused: (ms from the start, words).
    pub operator: Vec<(u64, String)>,
    pub waits: Vec<Wait>,
    /// What the pre-flight checks said before the start and each resume.
    pub preflight: Vec<Preflight>,
    pub durations: Durations,
}

/// The pre-flight checks before one start or resume.
#[derive(Debug, Clone, PartialEq)]
pub struct Preflight {
    pub at_ms: u64,
    /// `check: verdict` for each check (with why a check was skipped).
    pub verdicts: Vec<String>,
    /// Blockers then warnings, one line each (`[check] node object: message`), marked.
    pub findings: Vec<String>,
}

impl Preflight {
    fn from_summary(at_ms: u64, s: &crate::vocab::PreflightSummary) -> Self {
        Self {
            at_ms,
            verdicts: s
                .checks
                .iter()
                .map(|c| {
                    let verdict = crate::journal::wire_name(&c.verdict);
                    match &c.note {
                        Some(note) => format!("{}: {verdict} ({note})", c.check),
                        None => format!("{}: {verdict}", c.check),
                    }
                })
                .collect(),
            findings: s
                .findings
                .iter()
                .map(|f| {
                    let kind = if f.blocker { "blocker" } else { "warning" };
                    format!("{kind} {}", f.line())
                })
                .collect(),
        }
    }
}

/// ` (by ops@b at +12.0s, at +1m)`: who resumed the run and when; empty if nothing recorded.
fn resumed_text(r: &RunReport) -> String {
    let parts: Vec<String> = r
        .resumed_by
        .iter()
        .map(|(ms, by)| match by {
            Some(by) => format!("by {by} at +{}", crate::report::short_duration(*ms)),
            None => format!("at +{}", crate::report::short_duration(*ms)),
        })
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!(" ({})", parts.join(", "))
    }
}

impl RunReport {
    pub fn counts(&self) -> (usize, usize, usize) {
        let n = |s| self.nodes.iter().filter(|n| n.state == s).count();
        (
            n(NodeState::Done),
            n(NodeState::Failed),
            n(NodeState::Pending),
        )
    }

    /// The nodes skipped (`on-pdb-timeout = "skip"`), with why: listed apart from failures.
    pub fn skipped(&self) -> Vec<(&str, &crate::journal::Skip)> {
        self.nodes
            .iter()
            .filter(|n| n.state == NodeState::Skipped)
            .filter_map(|n| Some((n.name.as_str(), n.skip.as_ref()?)))
            .collect()
    }

    /// What a node's "failure" column says: its failure, or why it was skipped.
    pub fn note(n: &NodeReport) -> Option<String> {
        match (&n.failure, &n.skip) {
            (Some((step, why)), _) => Some(format!("at {step}: {why}")),
            (None, Some(skip)) => Some(format!("skipped: {}", skip.reason)),
            (None, None) => None,
        }
    }

    /// Reads and parses a journal file.
    pub fn load(journal: &Path) -> Result<Self, String> {
        let text = std::fs::read(journal)
            .map_err(|e| format!("cannot read {}: {e}", journal.display()))?;
        Self::from_journal(&String::from_utf8_lossy(&text))
            .ok_or_else(|| format!("{} has no header", journal.display()))
    }

    /// Builds the report from a journal's text; None when it has no header line.
    pub fn from_journal(text: &str) -> Option<Self> {
        Self::from_history(crate::journal::RunHistory::fold(
            crate::journal::Records::parse(text),
        ))
    }

    /// The report of what the journal's fold says happened; None without a header.
    pub fn from_history(h: crate::journal::RunHistory) -> Option<Self> {
        use crate::journal::{RunEnd, WaitCause, wire_name};
        let header = h.header?;
        let timestamp =
            |t: Option<std::time::SystemTime>| t.and_then(|t| Timestamp::try_from(t).ok());
        let outcome = match &h.last_end {
            None => "no end recorded (crashed or still running)".to_owned(),
            Some(RunEnd::Finished(crate::vocab::Outcome::Stopped(reason))) => {
                match &h.finish_by_end {
                    // `outside = "exit"`: why the window "closed" for the next node.
                    Some(held) if *reason == crate::vocab::StopReason::OutsideWindow => format!(
                        "stopped: {} (finish-by-end: {})",
                        wire_name(reason),
                        held.describe()
                    ),
                    _ => format!("stopped: {}", wire_name(reason)),
                }
            }
            Some(RunEnd::Finished(outcome)) => wire_name(outcome).replace('-', " "),
            Some(RunEnd::Refused(reason)) => format!("refused: {reason}"),
        };
        let gates = h
            .decisions
            .iter()
            .map(|(ms, d)| Gate {
                at_ms: *ms,
                decision: wire_name(&d.decision),
                signal: d.signal.clone(),
                evidence: d.evidence.clone(),
                in_flight: d
                    .in_flight
                    .iter()
                    .map(|(n, s)| (n.clone(), s.name().to_owned()))
                    .collect(),
            })
            .collect();
        let waits = h
            .waits
            .iter()
            .map(|w| Wait {
                from_ms: w.from_ms,
                to_ms: w.to_ms,
                why: match &w.cause {
                    WaitCause::Window { window, reopens_at } => format!(
                        "outside the maintenance window ({window}); reopens {}",
                        reopens_at.as_deref().unwrap_or("not within a year")
                    ),
                    WaitCause::FinishByEnd { held, reopens_at } => format!(
                        "finish-by-end: {}; the next window opens {}",
                        held.describe(),
                        reopens_at.as_deref().unwrap_or("not within a year")
                    ),
                    WaitCause::Paused(d) => {
                        format!("paused by gate {}: {}", d.signal, d.evidence)
                    }
                },
            })
            .collect();
        Some(RunReport {
            run_id: header.run_id,
            playbook: header.playbook,
            playbook_file: header.playbook_file.display().to_string(),
            started_by: header.started_by,
            dry_run: header.dry_run,
            started_at: timestamp(h.started_at),
            ended_at: timestamp(h.ended_at),
            outcome,
            resumes: h.starts.len().saturating_sub(1),
            resumed_by: h.starts.iter().skip(1).cloned().collect(),
            skipped_lines: h.skipped,
            plan: header.nodes,
            actual: h.actual,
            durations: durations(&h.nodes, h.last_ms),
            nodes: h.nodes,
            failures: h.failures,
            gates,
            operator: h.operator.clone(),
            waits,
            preflight: h
                .preflight
                .iter()
                .map(|(ms, s)| Preflight::from_summary(*ms, s))
                .collect(),
        })
    }
}

fn durations(nodes: &[NodeReport], total_ms: u64) -> Durations {
    let done: Vec<(&str, u64)> = nodes
        .iter()
        .filter(|n| n.state == NodeState::Done)
        .filter_map(|n| Some((n.name.as_str(), n.duration_ms?)))
        .collect();
    let pick = |best: fn(u64, u64) -> bool| {
        done.iter()
            .fold(None::<(&str, u64)>, |acc, &(n, d)| match acc {
                Some((_, a)) if !best(d, a) => acc,
                _ => Some((n, d)),
            })
            .map(|(n, d)| (n.to_owned(), d))
    };
    Durations {
        total_ms,
        average_ms: (!done.is_empty())
            .then(|| done.iter().map(|(_, d)| d).sum::<u64>() / done.len() as u64),
        min: pick(|d, a| d < a),
        max: pick(|d, a| d > a),
    }
}

/// Which files [`write()`] produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Formats {
    Html,
    Markdown,
    Both,
}

/// Renders the report into `out` (created if needed); returns the paths written.
pub fn write(report: &RunReport, out: &Path, formats: Formats) -> Result<Vec<PathBuf>, String> {
    std::fs::create_dir_all(out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    let mut written = vec![];
    let mut put = |name: &str, text: String| {
        let path = out.join(name);
        std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        written.push(path);
        Ok::<_, String>(())
    };
    if formats != Formats::Markdown {
        put(HTML_FILE, html::render(report))?;
    }
    if formats != Formats::Html {
        put(MARKDOWN_FILE, markdown::render(report))?;
    }
    Ok(written)
}

/// The report of the run in `run_dir`, both files written beside its journal.
pub fn write_for_run(run_dir: &Path) -> Result<Vec<PathBuf>, String> {
    let report = RunReport::load(&run_dir.join(crate::journal::FILE))?;
    write(&report, run_dir, Formats::Both)
}

#[cfg(test)]
pub(crate) mod tests;
