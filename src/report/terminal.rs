//! Live progress for an operator at a terminal: one spinner per node in flight showing its
//! step and elapsed time, a line per finished node, warnings, PDB blocks and other eviction
//! retries as they happen. Without a terminal, the same information as plain lines.

use super::{Consumer, short_duration};
use crate::vocab::GateDecision;
use crate::vocab::RetryCause;
use crate::vocab::{Outcome, RunEvent, Stamped, StopReason};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::HashMap;
use std::time::Duration;

pub struct Terminal {
    multi: MultiProgress,
    bars: HashMap<String, ProgressBar>,
    /// Show remote command output lines (off by default; they are in the node logs).
    pub show_output: bool,
}

impl Terminal {
    pub fn new(interactive: bool) -> Self {
        let target = if interactive {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        Self {
            multi: MultiProgress::with_draw_target(target),
            bars: HashMap::new(),
            show_output: false,
        }
    }

    fn println(&self, msg: String) {
        if self.multi.is_hidden() {
            eprintln!("{msg}");
        } else {
            let _ = self.multi.println(msg);
        }
    }

    fn bar(&mut self, node: &str) -> &ProgressBar {
        if !self.bars.contains_key(node) {
            let bar = self.multi.add(ProgressBar::new_spinner());
            bar.set_style(
                ProgressStyle::with_template("{spinner} {prefix:<24} {msg:<40} {elapsed:>5}")
                    .expect("valid template"),
            );
            bar.set_prefix(node.to_owned());
            bar.enable_steady_tick(Duration::from_millis(120));
            self.bars.insert(node.to_owned(), bar);
        }
        &self.bars[node]
    }

    fn finish_bar(&mut self, node: &str) {
        if let Some(bar) = self.bars.remove(node) {
            bar.finish_and_clear();
            self.multi.remove(&bar);
        }
    }
}

fn stop_text(reason: StopReason) -> &'static str {
    match reason {
        StopReason::OperatorGraceful => {
            "stopping: finishing the nodes in flight, starting no new ones (Ctrl-C again to stop now)"
        }
        StopReason::NodeFailures => {
            "stopping: nodes failed beyond the failure budget; finishing the nodes in flight"
        }
        StopReason::GateAbort => {
            "stopping: a health gate aborted the run; nodes in flight stop at their next safe point and stay cordoned"
        }
        StopReason::OperatorAbort => {
            "stopping: an operator aborted the run; nodes in flight stop at their next safe point and stay cordoned"
        }
        StopReason::LockLost => {
            "stopping: this run lost the cluster lock; nodes in flight stop at their next safe point (a remote command finishes first) and stay cordoned"
        }
        StopReason::OperatorImmediate => "stopping now: nodes in flight are left as they are",
        StopReason::OutsideWindow => {
            "stopping: the maintenance window closed; finishing the nodes in flight (`rollgate resume` continues in the next window)"
        }
        StopReason::Deadline => {
            "stopping: the run's deadline passed; finishing the nodes in flight (`rollgate resume --deadline ...` continues)"
        }
        StopReason::JournalUnwritable => {
            "stopping: the run journal cannot be written; nodes in flight stop before their next step (`rollgate resume` continues once it can be written)"
        }
    }
}

fn in_flight_text(decision: &GateDecision) -> String {
    if decision.in_flight.is_empty() {
        return String::new();
    }
    let nodes: Vec<String> = decision
        .in_flight
        .iter()
        .map(|(n, s)| format!("{n} ({s})"))
        .collect();
    format!("; nodes in flight: {}", nodes.join(", "))
}

impl Consumer for Terminal {
    fn handle(&mut self, stamped: &Stamped) {
        match &stamped.event {
            RunEvent::RunStarted {
                run_id,
                playbook,
                nodes,
                dry_run,
                ..
            } => {
                let dry = if *dry_run {
                    " (dry run: nothing is changed)"
                } else {
                    ""
                };
                self.println(format!("run {run_id}: {playbook}, {nodes} node(s){dry}"));
            }
            RunEvent::WaveStarted { phase, wave, nodes } => {
                let wave = wave
                    .as_ref()
                    .map(|w| format!(" wave {w}"))
                    .unwrap_or_default();
                self.println(format!("== phase {phase}{wave}: {}", nodes.join(", ")));
            }
            RunEvent::NodeStarted { node, .. } => {
                self.bar(node).set_message("starting");
            }
            RunEvent::StepStarted { node, step } => {
                if self.multi.is_hidden() {
                    self.println(format!("   {node}: {step}"));
                }
                self.bar(node).set_message(step.name().to_owned());
            }
            RunEvent::StepFinished {
                node,
                step,
                elapsed_ms,
                detail,
            } => {
                if let Some(d) = detail {
                    self.println(format!(
                        "   {node}: {step} done in {} ({d})",
                        short_duration(*elapsed_ms)
                    ));
                }
            }
            RunEvent::EvictionBlocked { node, pod, pdb, .. } => {
                self.println(format!(
                    "   {node}: eviction of {pod} blocked by PodDisruptionBudget {pdb}; retrying"
                ));
            }
            RunEvent::EvictionRetried {
                node,
                pod,
                cause,
                pdb,
                ..
            } => {
                let what = match pdb {
                    Some(pdb) if *cause == RetryCause::BudgetConflict => format!(
                        "conflicted with another update of PodDisruptionBudget {pdb} (409)"
                    ),
                    _ => cause.describe().to_owned(),
                };
                self.println(format!("   {node}: eviction of {pod} {what}; retrying"));
            }
            RunEvent::CommandOutput { node, line, .. } => {
                if self.show_output {
                    self.println(format!("   {node} | {line}"));
                } else {
                    let short: String = line.chars().take(38).collect();
                    self.bar(node).set_message(format!("command: {short}"));
                }
            }
            RunEvent::DryRunAction { node, action } => {
                self.println(format!("   {node}: would {action}"))
            }
            RunEvent::Warning { node, message } => {
                self.println(format!(
                    "   warning{}: {message}",
                    node.as_ref().map(|n| format!(" ({n})")).unwrap_or_default()
                ));
            }
            RunEvent::NodeDone { node, elapsed_ms } => {
                self.finish_bar(node);
                self.println(format!(
                    "ok {node} upgraded in {}",
                    short_duration(*elapsed_ms)
                ));
            }
            RunEvent::NodeFailed { node, step, reason } => {
                self.finish_bar(node);
                self.println(format!("FAILED {node} at {step}: {reason}\n   the node stays cordoned; see `kubectl describe node {node}` (rollgate.dev/reason)"));
            }
            RunEvent::NodeSkipped { node, reason, .. } => {
                self.finish_bar(node);
                self.println(format!("SKIPPED {node}: {reason}\n   uncordoned without its command (on-pdb-timeout = \"skip\"): NOT upgraded; a new run includes it again"));
            }
            RunEvent::NodeAbandoned { node, step } => {
                self.finish_bar(node);
                let step = step.map(|s| s.name()).unwrap_or("?");
                self.println(format!("LEFT {node} during {step}: it stays cordoned"));
            }
            RunEvent::Stopping { reason } => self.println(stop_text(*reason).to_owned()),
            RunEvent::ReportWritten { paths } => self.println(format!(
                "report: {}",
                paths
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            RunEvent::RunFinished {
                outcome,
                done,
                failed,
                skipped,
                not_started,
                elapsed_ms,
            } => {
                let what = match outcome {
                    Outcome::Succeeded => "finished".to_owned(),
                    Outcome::SucceededWithFailures => {
                        "finished with failures within budget".to_owned()
                    }
                    Outcome::Stopped(r) => format!(
                        "stopped ({})",
                        serde_json::to_value(r)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_owned))
                            .unwrap_or_default()
                    ),
                };
                let skipped = if *skipped > 0 {
                    format!(", {skipped} skipped")
                } else {
                    String::new()
                };
                self.println(format!(
                    "run {what} in {}: {done} done, {failed} failed{skipped}, {not_started} not started",
                    short_duration(*elapsed_ms)
                ));
            }
            RunEvent::Baseline { problems } => {
                for p in problems {
                    self.println(format!(
                        "   already unhealthy at start (not held against the run): {p}"
                    ));
                }
            }
            RunEvent::ProbeResult {
                probe,
                when,
                node,
                outcome,
                elapsed_ms,
            } => {
                let on = node
                    .as_ref()
                    .map(|n| format!(" on {n}"))
                    .unwrap_or_default();
                let result = match outcome {
                    crate::vocab::ProbeOutcome::Pass => "passed".to_owned(),
                    crate::vocab::ProbeOutcome::Fail(e) => format!("FAILED: {e}"),
                    crate::vocab::ProbeOutcome::Inconclusive(e) => format!("inconclusive: {e}"),
                };
                self.println(format!(
                    "   probe {probe} ({when}{on}) {result} in {}",
                    short_duration(*elapsed_ms)
                ));
            }
            RunEvent::GateDecision { decision } => {
                let what = serde_json::to_value(decision.decision)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_uppercase))
                    .unwrap_or_default();
                let cause = if decision.signal == crate::health::OPERATOR {
                    "by the operator".to_owned()
                } else {
                    format!("{} failed", decision.signal)
                };
                self.println(format!(
                    "GATE {what}: {cause}: {}{}",
                    decision.evidence,
                    in_flight_text(decision)
                ));
            }
            RunEvent::Paused {
                decision,
                resume_hint,
            } => {
                self.println(format!(
                    "PAUSED by {}: {}. {resume_hint}",
                    decision.signal, decision.evidence
                ));
            }
            RunEvent::ControlRefused { action, by, reason } => self.println(format!(
                "refused a request to {} by {by}: {reason}",
                action.name()
            )),
            RunEvent::Resumed { by } => self.println(match by {
                Some(by) => format!("resumed by {by}"),
                None => "resumed".to_owned(),
            }),
            RunEvent::WindowClosed { window, reopens_at } => self.println(format!(
                "WAITING: outside the maintenance window ({window}); no new node starts until it reopens{}",
                reopens_at
                    .as_ref()
                    .map(|t| format!(" at {t}"))
                    .unwrap_or_else(|| " (not within a year!)".into())
            )),
            RunEvent::FinishByEnd(held) => self.println(format!(
                "NOT STARTED (finish-by-end): {}; no node may be in flight when it closes",
                held.describe()
            )),
            RunEvent::DeadlineSet { deadline } => {
                self.println(format!("deadline: no node starts after {deadline}"))
            }
            RunEvent::WindowOpened => self.println("the maintenance window is open: continuing".to_owned()),
            RunEvent::Problem { problem } => {
                self.println(format!(
                    "   health: {} {:?}: {}",
                    problem.object, problem.kind, problem.detail
                ));
            }
            // The refusal itself is the command's error message.
            RunEvent::WatchLost { watch, error } => self.println(format!(
                "   health: lost the watch on {watch} (retrying from a fresh list): {error}"
            )),
            RunEvent::WatchRestored { watch, lost_ms } => self.println(format!(
                "   health: watching {watch} again after {}",
                short_duration(*lost_ms)
            )),
            // The command printed the pre-flight table before the run (and its prompt).
            RunEvent::PodEvicted { .. }
            | RunEvent::PodSkipped { .. }
            | RunEvent::PodDeleted { .. }
            | RunEvent::Preflight { .. }
            | RunEvent::RunRefused { .. } => {}
        }
    }

    fn finish(&mut self) {
        let nodes: Vec<String> = self.bars.keys().cloned().collect();
        for n in nodes {
            self.finish_bar(&n);
        }
    }
}
