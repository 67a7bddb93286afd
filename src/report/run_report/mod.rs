//! The run report: what a run did, rebuilt from its journal (`STATE_DIR/runs/RUN_ID/journal.jsonl`)
//! after the fact, for `rollgate report` and the end of `run` / `resume`.
//!
//! [`RunReport::from_journal`] is pure: journal text in, model out. It tolerates what real
//! journals hold: torn lines (a crash or a full disk; skipped wherever they are, and counted), a run resumed after a
//! crash (a second `run-started`, and steps started again: the interrupted span is closed at the
//! last event before the restart), old headers without `started_by`. [`html`] and [`markdown`]
//! render the model; [`write()`] puts the files in a directory.

pub mod html;
pub mod markdown;

use crate::vocab::Step;
use jiff::Timestamp;
use std::path::{Path, PathBuf};

pub const HTML_FILE: &str = "report.html";
pub const MARKDOWN_FILE: &str = "report.md";

/// How a node's run ended, as far as the journal tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    Done,
    Failed,
    /// In flight when the run was stopped immediately.
    Abandoned,
    /// Started, never finished: the journal ends (a crash) or the run ended without a word on it.
    Interrupted,
    NotStarted,
}

impl NodeState {
    pub fn name(self) -> &'static str {
        match self {
            NodeState::Done => "done",
            NodeState::Failed => "failed",
            NodeState::Abandoned => "abandoned",
            NodeState::Interrupted => "interrupted",
            NodeState::NotStarted => "not started",
        }
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

#[derive(Debug, Clone, PartialEq)]
pub struct NodeReport {
    pub name: String,
    pub phase: String,
    pub state: NodeState,
    pub steps: Vec<StepSpan>,
    /// From its first step to its end (wall clock: includes a crash's gap, when the node stayed
    /// cordoned). None when it never started or never ended.
    pub duration_ms: Option<u64>,
    /// The failed step and why (the latest, when resumed runs failed it more than once).
    pub failure: Option<(Step, String)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub node: String,
    pub step: Step,
    pub reason: String,
    pub at_ms: u64,
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
    pub waits: Vec<Wait>,
    pub durations: Durations,
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
            n(NodeState::NotStarted),
        )
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
        let journal = crate::journal::Records::parse(text);
        let header = journal.header?;
        let s = |v: &serde_json::Value| v.as_str().unwrap_or("").to_owned();
        let plan = header.nodes.clone();
        let mut b = Builder {
            nodes: plan
                .iter()
                .map(|(n, p)| NodeReport {
                    name: n.clone(),
                    phase: p.clone(),
                    state: NodeState::NotStarted,
                    steps: vec![],
                    duration_ms: None,
                    failure: None,
                })
                .collect(),
            ..Default::default()
        };
        let mut report = RunReport {
            run_id: header.run_id,
            playbook: header.playbook,
            playbook_file: header.playbook_file.display().to_string(),
            started_by: header.started_by,
            dry_run: header.dry_run,
            started_at: None,
            ended_at: None,
            outcome: "no end recorded (crashed or still running)".into(),
            resumes: 0,
            resumed_by: vec![],
            skipped_lines: journal.skipped,
            plan,
            actual: vec![],
            nodes: vec![],
            failures: vec![],
            gates: vec![],
            waits: vec![],
            durations: Durations::default(),
        };
        let mut run_starts = 0usize;
        for v in &journal.records {
            let Some(at) = v["at"].as_str().and_then(|a| a.parse::<Timestamp>().ok()) else {
                continue;
            };
            let start = *report.started_at.get_or_insert(at);
            let ms = at.duration_since(start).as_millis().max(0) as u64;
            let node = v["node"].as_str().unwrap_or("");
            let step = serde_json::from_value::<Step>(v["step"].clone()).ok();
            match v["event"].as_str().unwrap_or("") {
                "run-started" => {
                    run_starts += 1;
                    if run_starts > 1 {
                        // Resumed: what was open was cut by the crash, at the last event before it.
                        b.close_all(b.last_ms, SpanEnd::Interrupted);
                        report
                            .resumed_by
                            .push((ms, v["by"].as_str().map(str::to_owned)));
                    }
                }
                "node-started" => {
                    if !report.actual.iter().any(|n| n == node) {
                        report.actual.push(node.to_owned());
                    }
                    let n = b.node(node);
                    n.state = NodeState::Interrupted;
                    n.failure = None;
                    if n.phase.is_empty() {
                        n.phase = s(&v["phase"]);
                    }
                }
                "step-started" => {
                    if let Some(step) = step {
                        b.close_open(node, ms, SpanEnd::Interrupted, None);
                        b.node(node).steps.push(StepSpan {
                            step,
                            start_ms: ms,
                            end_ms: ms,
                            end: SpanEnd::Interrupted,
                            detail: None,
                        });
                        b.open.push(node.to_owned());
                    }
                }
                "step-finished" => {
                    b.close_open(node, ms, SpanEnd::Finished, v["detail"].as_str());
                }
                "node-done" => {
                    b.close_open(node, ms, SpanEnd::Finished, None);
                    let n = b.node(node);
                    n.state = NodeState::Done;
                    n.duration_ms = n.steps.first().map(|f| ms.saturating_sub(f.start_ms));
                }
                "node-failed" => {
                    let reason = s(&v["reason"]);
                    b.close_open(node, ms, SpanEnd::Failed, Some(&reason));
                    let n = b.node(node);
                    n.state = NodeState::Failed;
                    n.duration_ms = n.steps.first().map(|f| ms.saturating_sub(f.start_ms));
                    if let Some(step) = step {
                        n.failure = Some((step, reason.clone()));
                        report.failures.push(Failure {
                            node: node.to_owned(),
                            step,
                            reason,
                            at_ms: ms,
                        });
                    }
                }
                "node-abandoned" => {
                    b.close_open(node, ms, SpanEnd::Interrupted, None);
                    b.node(node).state = NodeState::Abandoned;
                }
                "gate-decision" => {
                    let d = &v["decision"];
                    report.gates.push(Gate {
                        at_ms: ms,
                        decision: s(&d["decision"]),
                        signal: s(&d["signal"]),
                        evidence: s(&d["evidence"]),
                        in_flight: d["in_flight"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|p| (s(&p[0]), s(&p[1])))
                            .collect(),
                    });
                }
                "window-closed" => report.waits.push(Wait {
                    from_ms: ms,
                    to_ms: None,
                    why: format!(
                        "outside the maintenance window ({}); reopens {}",
                        s(&v["window"]),
                        v["reopens_at"].as_str().unwrap_or("not within a year")
                    ),
                }),
                "paused" => report.waits.push(Wait {
                    from_ms: ms,
                    to_ms: None,
                    why: format!(
                        "paused by gate {}: {}",
                        s(&v["decision"]["signal"]),
                        s(&v["decision"]["evidence"])
                    ),
                }),
                "window-opened" | "resumed" => {
                    if let Some(w) = report.waits.iter_mut().rev().find(|w| w.to_ms.is_none()) {
                        w.to_ms = Some(ms);
                    }
                }
                "run-refused" => report.outcome = format!("refused: {}", s(&v["reason"])),
                "run-finished" => {
                    report.outcome = match &v["outcome"] {
                        serde_json::Value::String(o) => o.replace('-', " "),
                        other => format!("stopped: {}", s(&other["stopped"])),
                    };
                }
                _ => {}
            }
            b.last_ms = ms;
            report.ended_at = Some(at);
        }
        // What is still open ran until the journal's end.
        b.close_all(b.last_ms, SpanEnd::Interrupted);
        report.resumes = run_starts.saturating_sub(1);
        report.durations = durations(&b.nodes, b.last_ms);
        report.nodes = b.nodes;
        Some(report)
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

#[derive(Default)]
struct Builder {
    nodes: Vec<NodeReport>,
    /// Nodes with an open (last) step span.
    open: Vec<String>,
    last_ms: u64,
}

impl Builder {
    fn node(&mut self, name: &str) -> &mut NodeReport {
        let i = match self.nodes.iter().position(|n| n.name == name) {
            Some(i) => i,
            None => {
                self.nodes.push(NodeReport {
                    name: name.to_owned(),
                    phase: String::new(),
                    state: NodeState::NotStarted,
                    steps: vec![],
                    duration_ms: None,
                    failure: None,
                });
                self.nodes.len() - 1
            }
        };
        &mut self.nodes[i]
    }

    /// Closes the node's open step span, if it has one.
    fn close_open(&mut self, node: &str, ms: u64, end: SpanEnd, detail: Option<&str>) {
        let Some(i) = self.open.iter().position(|n| n == node) else {
            return;
        };
        self.open.swap_remove(i);
        if let Some(span) = self.node(node).steps.last_mut() {
            span.end_ms = ms.max(span.start_ms);
            span.end = end;
            span.detail = detail.map(str::to_owned);
        }
    }

    fn close_all(&mut self, ms: u64, end: SpanEnd) {
        while let Some(node) = self.open.first().cloned() {
            self.close_open(&node, ms, end, None);
        }
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
