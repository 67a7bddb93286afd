//! What to say at each run event, as plain data: no IO and nothing channel-specific. A
//! [`Narrator`] follows one run's events and turns the few worth telling people (run started,
//! node done, failed or skipped, gate decisions, pause and resume, the maintenance window, the end)
//! into [`Message`]s; channels decide how to deliver them. The pre-flight summary goes with the
//! run's own message (verdict per check, blockers and warnings, short); a run that pre-flight
//! refuses gets one message saying so and naming the blockers.

use crate::report::short_duration;
use crate::vocab::{
    ControlAction, Decision, GateDecision, Outcome, PreflightSummary, RunEvent, StopReason,
};

/// The run's state, as its own message says it, between an abort decision and the run's end.
const ABORTING: &str = "aborting";

/// Where a message goes in the run's conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// The run's own message: a channel with threads makes it the thread for the replies.
    Root,
    /// A new text for the run's own message (channels that cannot edit skip it).
    UpdateRoot,
    /// A reply in the run's thread (a plain message where there are no threads).
    Reply,
}

/// One thing to tell, with the facts behind it for receivers that read data.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub place: Place,
    /// The name of the event that caused it, as in the journal (`run-started`, `node-done`...).
    pub event: String,
    /// For people (Slack mrkdwn: `code`, *bold*).
    pub text: String,
    /// Field name and value, e.g. `("node", "n1")`, in a fixed order per event.
    pub fields: Vec<(&'static str, String)>,
    /// What the message offers as buttons (the run's own message, while the run is live, with
    /// Slack Socket Mode configured: see [`Narrator::with_buttons`]); channels without buttons
    /// ignore them.
    pub buttons: Vec<ControlAction>,
}

/// Follows one run's events and says what to post for each.
#[derive(Debug, Clone)]
pub struct Narrator {
    run_id: String,
    playbook: String,
    /// Who to call at an abort or a pause, e.g. `<!here>` or `@oncall`.
    mention: Option<String>,
    /// The run report's path or URL, named in the final message.
    report: Option<String>,
    total: usize,
    done: usize,
    failed: usize,
    /// Nodes given back without their command (`on-pdb-timeout = "skip"`).
    skipped: usize,
    /// The node that took longest, and how long.
    slowest: Option<(String, u64)>,
    /// The pre-flight summary, said with the run's own message: (text, verdicts field).
    preflight: Option<(String, String)>,
    /// Whether the run's own message offers Pause / Resume / Abort buttons.
    with_buttons: bool,
    /// The run's state as its own message says it (`running`, `paused by pods`, ...), why (a
    /// pause or an abort, with the next action), and what it offers.
    state: String,
    why: Option<String>,
    offers: Vec<ControlAction>,
}

fn decision_word(d: Decision) -> &'static str {
    match d {
        Decision::Abort => "ABORTED",
        Decision::Pause => "PAUSED",
        Decision::Warn => "warning",
    }
}

/// The event's name as the journal spells it (the vocabulary's serde tag).
fn event_name(event: &RunEvent) -> String {
    serde_json::to_value(event)
        .ok()
        .and_then(|v| v["event"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn kebab<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

impl Narrator {
    pub fn new(
        run_id: &str,
        playbook: &str,
        mention: Option<String>,
        report: Option<String>,
    ) -> Self {
        Self {
            run_id: run_id.into(),
            playbook: playbook.into(),
            mention,
            report,
            total: 0,
            done: 0,
            failed: 0,
            skipped: 0,
            slowest: None,
            preflight: None,
            with_buttons: false,
            state: "running".into(),
            why: None,
            offers: vec![],
        }
    }

    /// The run's own message offers the buttons that fit its state: Pause and Abort while it
    /// runs, Resume and Abort while paused, none once it is aborting or over.
    pub fn with_buttons(mut self) -> Self {
        self.with_buttons = true;
        self
    }

    fn set_state(&mut self, state: &str, why: Option<String>, offers: &[ControlAction]) {
        self.state = state.into();
        self.why = why;
        self.offers = if self.with_buttons {
            offers.to_vec()
        } else {
            vec![]
        };
    }

    fn running(&mut self) {
        use ControlAction::*;
        self.set_state("running", None, &[Pause, Abort]);
    }

    fn header(&self, state: &str) -> String {
        format!(
            "rollgate run `{}`: *{}* ({state}) — {}/{} nodes done, {} failed{}",
            self.run_id,
            self.playbook,
            self.done,
            self.total,
            self.failed,
            self.skipped_text()
        )
    }

    /// `, 2 skipped` (nothing when none was).
    fn skipped_text(&self) -> String {
        if self.skipped > 0 {
            format!(", {} skipped", self.skipped)
        } else {
            String::new()
        }
    }

    /// The run's own message (new or updated) in its current state, with the progress as
    /// fields, why it is paused or aborting, and the pre-flight summary (an update keeps it,
    /// since it replaces the text).
    fn root(&self, place: Place, event: &str) -> Message {
        let mut message = Message {
            place,
            event: event.into(),
            text: self.header(&self.state),
            fields: vec![
                ("playbook", self.playbook.clone()),
                ("state", self.state.clone()),
                ("done", self.done.to_string()),
                ("total", self.total.to_string()),
                ("failed", self.failed.to_string()),
                ("skipped", self.skipped.to_string()),
            ],
            buttons: self.offers.clone(),
        };
        if let Some(why) = &self.why {
            message.text.push('\n');
            message.text.push_str(why);
        }
        if let Some((text, verdicts)) = &self.preflight {
            message.text.push('\n');
            message.text.push_str(text);
            message.fields.push(("preflight", verdicts.clone()));
        }
        message
    }

    /// A run that pre-flight refused: one message naming the blockers (the run never starts).
    fn refused(&self, event: &str, summary: &PreflightSummary) -> Message {
        let blocked = summary.blocked();
        let blockers = summary.blockers();
        let mention = self
            .mention
            .as_ref()
            .map(|m| format!("{m} "))
            .unwrap_or_default();
        Message {
            place: Place::Root,
            event: event.into(),
            text: format!(
                "{mention}rollgate run `{}`: *{}* REFUSED by pre-flight — nothing was changed\n{}\nFix them (`rollgate preflight` gives each fix), or run despite them with {}",
                self.run_id,
                self.playbook,
                preflight_text(summary),
                blocked
                    .iter()
                    .map(|c| format!("`--ignore-preflight {c}`"))
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
            fields: vec![
                ("playbook", self.playbook.clone()),
                ("state", "refused by pre-flight".into()),
                ("preflight", verdicts(summary)),
                ("blocked", blocked.join(", ")),
                (
                    "blockers",
                    blockers
                        .iter()
                        .map(|f| f.line())
                        .collect::<Vec<_>>()
                        .join("; "),
                ),
            ],
            buttons: vec![],
        }
    }

    fn reply(event: &str, text: String, fields: Vec<(&'static str, String)>) -> Message {
        Message {
            place: Place::Reply,
            event: event.into(),
            text,
            fields,
            buttons: vec![],
        }
    }

    fn gate(&self, d: &GateDecision) -> String {
        let mention = match (&self.mention, d.decision) {
            (Some(m), Decision::Abort | Decision::Pause) => format!("{m} "),
            _ => String::new(),
        };
        let nodes = if d.in_flight.is_empty() {
            "no node was in flight".to_owned()
        } else {
            format!("nodes in flight: {}", in_flight(d))
        };
        let next = match d.decision {
            Decision::Abort => format!(
                "Nodes in flight stopped at their next safe point and stay cordoned with the reason in `rollgate.dev/reason`. Next: fix the cause, then `rollgate resume {}` retries them and uncordons them when done; to give a node back by hand instead: `{}`.",
                self.run_id,
                crate::vocab::node_marks::hand_back_command("NODE")
            ),
            Decision::Pause => format!(
                "No new node starts. Next: check the cause, then `rollgate resume {0}`{1} to continue, or `rollgate abort {0}` to stop (both work from any machine with cluster access).",
                self.run_id,
                if self.with_buttons {
                    " (or the Resume button)"
                } else {
                    ""
                }
            ),
            Decision::Warn => "The run goes on.".to_owned(),
        };
        let by = by_whom(d);
        format!(
            "{mention}*{}* by {by}: {}\n{nodes}\n{next}",
            decision_word(d.decision),
            d.evidence
        )
    }

    /// What to post for an event (nothing for most events).
    pub fn messages(&mut self, event: &RunEvent) -> Vec<Message> {
        let name = event_name(event);
        let name = name.as_str();
        match event {
            RunEvent::Preflight { summary } if summary.refusal().is_some() => {
                vec![self.refused(name, summary)]
            }
            RunEvent::Preflight { summary } => {
                self.preflight = Some((preflight_text(summary), verdicts(summary)));
                vec![]
            }
            RunEvent::RunStarted { nodes, dry_run, .. } => {
                self.total = *nodes;
                if *dry_run {
                    self.set_state("dry run", None, &[]);
                } else {
                    self.running();
                }
                vec![self.root(Place::Root, name)]
            }
            RunEvent::NodeDone { node, elapsed_ms } => {
                self.done += 1;
                if self.slowest.as_ref().is_none_or(|(_, ms)| elapsed_ms > ms) {
                    self.slowest = Some((node.clone(), *elapsed_ms));
                }
                vec![
                    Self::reply(
                        name,
                        format!("node `{node}` upgraded in {}", short_duration(*elapsed_ms)),
                        vec![
                            ("node", node.clone()),
                            ("elapsed_ms", elapsed_ms.to_string()),
                        ],
                    ),
                    self.root(Place::UpdateRoot, name),
                ]
            }
            RunEvent::NodeFailed { node, step, reason } => {
                self.failed += 1;
                vec![
                    Self::reply(
                        name,
                        format!(
                            "node `{node}` FAILED at {step}: {reason}\nIt stays cordoned (`rollgate.dev/reason` on the node). After fixing the cause, `rollgate resume {}` retries it; to give it back by hand instead: `{}`.",
                            self.run_id,
                            crate::vocab::node_marks::hand_back_command(node)
                        ),
                        vec![
                            ("node", node.clone()),
                            ("step", step.name().into()),
                            ("reason", reason.clone()),
                        ],
                    ),
                    self.root(Place::UpdateRoot, name),
                ]
            }
            RunEvent::NodeSkipped {
                node,
                reason,
                pdbs,
                pods,
            } => {
                self.skipped += 1;
                vec![
                    Self::reply(
                        name,
                        format!(
                            "node `{node}` SKIPPED: PodDisruptionBudget {} held {} past the drain timeout.\nIt was uncordoned without its command (on-pdb-timeout = \"skip\"): it is NOT upgraded; the run goes on. Relax the budget (or scale the workload up), then a new run includes it again.\n{reason}",
                            pdbs.join(", "),
                            pods.join(", ")
                        ),
                        vec![
                            ("node", node.clone()),
                            ("reason", reason.clone()),
                            ("pdbs", pdbs.join(",")),
                            ("pods", pods.join(",")),
                        ],
                    ),
                    self.root(Place::UpdateRoot, name),
                ]
            }
            RunEvent::GateDecision { decision } => {
                let mut messages = vec![Self::reply(
                    name,
                    self.gate(decision),
                    vec![
                        ("decision", kebab(&decision.decision)),
                        ("signal", decision.signal.clone()),
                        ("evidence", decision.evidence.clone()),
                        ("in_flight", in_flight(decision)),
                    ],
                )];
                if decision.decision == Decision::Abort {
                    let why = format!(
                        "Aborting ({}): {}. Nodes in flight stop at their next safe point and stay cordoned; next: fix the cause, then `rollgate resume {}`.",
                        by_whom(decision),
                        decision.evidence,
                        self.run_id
                    );
                    self.set_state(ABORTING, Some(why), &[]);
                    messages.push(self.root(Place::UpdateRoot, name));
                }
                messages
            }
            RunEvent::Paused { decision, .. } => {
                let next = if self.with_buttons {
                    "Resume (the button, or `rollgate resume RUN`) once the cause is checked, or Abort (`rollgate abort RUN`)"
                } else {
                    "`rollgate resume RUN` once the cause is checked, or `rollgate abort RUN`"
                }
                .replace("RUN", &self.run_id);
                let why = format!(
                    "Paused ({}): {}. No new node starts; next: {next}.",
                    by_whom(decision),
                    decision.evidence
                );
                use ControlAction::*;
                self.set_state(
                    &format!("paused by {}", decision.signal),
                    Some(why),
                    &[Resume, Abort],
                );
                vec![self.root(Place::UpdateRoot, name)]
            }
            RunEvent::ControlRefused { action, by, reason } => vec![Self::reply(
                name,
                format!("refused a request to {} by {by}: {reason}", action.name()),
                vec![
                    ("action", action.name().into()),
                    ("by", by.clone()),
                    ("reason", reason.clone()),
                ],
            )],
            RunEvent::Resumed { by } => vec![
                Self::reply(
                    name,
                    match by {
                        Some(by) => format!("resumed by {by}"),
                        None => "resumed by the operator".into(),
                    },
                    vec![],
                ),
                {
                    self.running();
                    self.root(Place::UpdateRoot, name)
                },
            ],
            RunEvent::WindowClosed { window, reopens_at } => vec![
                Self::reply(
                    name,
                    format!(
                        "outside the maintenance window ({window}): waiting, no new node starts until {}",
                        reopens_at
                            .as_deref()
                            .unwrap_or("it reopens (not within a year!)")
                    ),
                    vec![
                        ("window", window.clone()),
                        ("reopens_at", reopens_at.clone().unwrap_or_default()),
                    ],
                ),
                {
                    use ControlAction::*;
                    self.set_state("waiting for the window", None, &[Pause, Abort]);
                    self.root(Place::UpdateRoot, name)
                },
            ],
            RunEvent::FinishByEnd(held) => vec![Self::reply(
                name,
                format!(
                    "not started (finish-by-end): {}; no node may be in flight when it closes",
                    held.describe()
                ),
                vec![
                    ("node", held.node.clone()),
                    ("p95_secs", held.needs_secs.to_string()),
                    ("closes_in_secs", held.closes_in_secs.to_string()),
                ],
            )],
            RunEvent::WindowOpened => vec![
                Self::reply(
                    name,
                    "the maintenance window is open: continuing".into(),
                    vec![],
                ),
                {
                    self.running();
                    self.root(Place::UpdateRoot, name)
                },
            ],
            RunEvent::RunFinished {
                outcome,
                not_started,
                elapsed_ms,
                ..
            } => {
                let state = finished_state(*outcome);
                // An abort keeps saying why; any other end has nothing left to explain.
                let why = self.why.take().filter(|_| self.state == ABORTING);
                self.set_state(state, why, &[]);
                let slowest = self
                    .slowest
                    .as_ref()
                    .map(|(n, ms)| format!("; slowest node `{n}` ({})", short_duration(*ms)))
                    .unwrap_or_default();
                let report = self
                    .report
                    .as_ref()
                    .map(|r| format!("\nReport: {r}"))
                    .unwrap_or_default();
                let mut fields = vec![
                    ("outcome", kebab(outcome)),
                    ("done", self.done.to_string()),
                    ("failed", self.failed.to_string()),
                    ("skipped", self.skipped.to_string()),
                    ("not_started", not_started.to_string()),
                    ("elapsed_ms", elapsed_ms.to_string()),
                ];
                if let Some((node, ms)) = &self.slowest {
                    fields.push(("slowest_node", node.clone()));
                    fields.push(("slowest_ms", ms.to_string()));
                }
                if let Some(r) = &self.report {
                    fields.push(("report", r.clone()));
                }
                vec![
                    self.root(Place::UpdateRoot, name),
                    Self::reply(
                        name,
                        format!(
                            "run {state} after {}: {} done, {} failed{}, {not_started} not started{slowest}{report}",
                            short_duration(*elapsed_ms),
                            self.done,
                            self.failed,
                            self.skipped_text()
                        ),
                        fields,
                    ),
                ]
            }
            _ => vec![],
        }
    }
}

/// `gate `pods`` or `the operator` (whose evidence names who).
fn by_whom(d: &GateDecision) -> String {
    if d.signal == crate::health::OPERATOR {
        "the operator".to_owned()
    } else {
        format!("gate `{}`", d.signal)
    }
}

fn in_flight(d: &GateDecision) -> String {
    d.in_flight
        .iter()
        .map(|(n, s)| format!("{n} (at {s})"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// How a run ended, in words.
fn finished_state(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Succeeded => "finished",
        Outcome::SucceededWithFailures => "finished with failures",
        Outcome::Stopped(StopReason::GateAbort) => "ABORTED by a health gate",
        Outcome::Stopped(StopReason::OperatorAbort) => "ABORTED by an operator",
        Outcome::Stopped(StopReason::NodeFailures) => "STOPPED: nodes failed",
        Outcome::Stopped(StopReason::OutsideWindow) => {
            "stopped at the end of the maintenance window (resumable)"
        }
        Outcome::Stopped(StopReason::Deadline) => "stopped at the run's deadline (resumable)",
        Outcome::Stopped(StopReason::JournalUnwritable) => {
            "STOPPED: the run journal cannot be written (resumable once it can)"
        }
        Outcome::Stopped(StopReason::LockLost) => {
            "STOPPED: lost the cluster lock (`rollgate resume` continues)"
        }
        Outcome::Stopped(_) => "stopped by the operator",
    }
}

mod preflight;
use preflight::{preflight_text, verdicts};

#[cfg(test)]
mod tests;
