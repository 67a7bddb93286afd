//! Slack notifications, a consumer of run events. With a bot token: one message per run,
//! updated with progress, and a threaded reply per node done/failed and per gate decision.
//! With an incoming webhook: the same messages, without threading or updates.
//!
//! Delivery never blocks or crashes the rollout: events are queued and a background task sends
//! them in order, each request bounded (5 s), retried at most 3 times honouring Retry-After on
//! 429; a message that still fails stays queued and is retried on the next event or tick. At the
//! end of the run the queue gets one last bounded flush. The token is only ever put in the
//! Authorization header; it is never logged.
//!
//! The Slack Web API is three calls here, so this speaks it with reqwest (already used for
//! probes) rather than slack-morphism, whose default connector cannot reach a plain-http test
//! server and which would bring a second HTTP stack.

use super::{Consumer, short_duration};
use crate::playbook::Decision;
use crate::vocab::GateDecision;
use crate::vocab::{Outcome, RunEvent, Stamped, StopReason};
use std::collections::VecDeque;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const ATTEMPTS: u32 = 3;
const RETRY_TICK: Duration = Duration::from_secs(5);
const FINAL_FLUSH: Duration = Duration::from_secs(30);
/// How long the delivery task may take once the run is over: the final flush's deadline plus
/// the requests in flight when it passes. The run's teardown waits this long at most.
pub const FLUSH_WITHIN: Duration =
    Duration::from_secs(FINAL_FLUSH.as_secs() + 2 * REQUEST_TIMEOUT.as_secs());

#[derive(Clone)]
pub enum SlackTarget {
    Bot {
        api_url: String,
        token: String,
        channel: String,
    },
    Webhook {
        url: String,
    },
}

impl std::fmt::Debug for SlackTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SlackTarget::Bot {
                api_url, channel, ..
            } => write!(f, "Slack bot ({api_url}, {channel}, token redacted)"),
            SlackTarget::Webhook { .. } => write!(f, "Slack incoming webhook (URL redacted)"),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Message {
    /// The run's message (its ts becomes the thread for replies).
    Root(String),
    UpdateRoot(String),
    Reply(String),
}

/// Forwards events to the delivery task.
pub struct Slack {
    tx: Option<mpsc::UnboundedSender<Stamped>>,
}

impl Slack {
    /// The consumer, and the delivery task to await (bounded) once the events are done.
    pub fn start(
        target: SlackTarget,
        run_id: &str,
        playbook: &str,
        mention: Option<String>,
        failures: prometheus::IntCounterVec,
        report: Option<String>,
    ) -> (Self, JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(deliver(
            target,
            rx,
            failures,
            Texts {
                run_id: run_id.into(),
                playbook: playbook.into(),
                mention,
                report,
                total: 0,
                done: 0,
                failed: 0,
                slowest: None,
            },
        ));
        (Self { tx: Some(tx) }, task)
    }
}

impl Consumer for Slack {
    fn handle(&mut self, event: &Stamped) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(event.clone());
        }
    }

    fn finish(&mut self) {
        self.tx.take();
    }
}

struct Texts {
    run_id: String,
    playbook: String,
    mention: Option<String>,
    /// The run report's path or URL, named in the final message.
    report: Option<String>,
    total: usize,
    done: usize,
    failed: usize,
    /// The node that took longest, and how long.
    slowest: Option<(String, u64)>,
}

fn decision_word(d: Decision) -> &'static str {
    match d {
        Decision::Abort => "ABORTED",
        Decision::Pause => "PAUSED",
        Decision::Warn => "warning",
    }
}

impl Texts {
    fn header(&self, state: &str) -> String {
        format!(
            "rollgate run `{}`: *{}* ({state}) — {}/{} nodes done, {} failed",
            self.run_id, self.playbook, self.done, self.total, self.failed
        )
    }

    fn gate(&self, d: &GateDecision) -> String {
        let mention = match (&self.mention, d.decision) {
            (Some(m), Decision::Abort | Decision::Pause) => format!("{m} "),
            _ => String::new(),
        };
        let nodes = if d.in_flight.is_empty() {
            "no node was in flight".to_owned()
        } else {
            format!(
                "nodes in flight: {}",
                d.in_flight
                    .iter()
                    .map(|(n, s)| format!("{n} (at {s})"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let next = match d.decision {
            Decision::Abort => format!(
                "Nodes in flight stopped at their next safe point and stay cordoned with the reason in `rollgate.dev/reason`. Next: fix the cause, then `rollgate resume {}` retries them and uncordons them when done; to give a node back by hand instead: `{}`.",
                self.run_id,
                crate::vocab::node_marks::hand_back_command("NODE")
            ),
            Decision::Pause => format!(
                "No new node starts. Next: check the cause, then `rollgate resume {}` to continue, or stop the run with Ctrl-C.",
                self.run_id
            ),
            Decision::Warn => "The run goes on.".to_owned(),
        };
        let by = if d.signal == crate::health::OPERATOR {
            "the operator".to_owned()
        } else {
            format!("gate `{}`", d.signal)
        };
        format!(
            "{mention}*{}* by {by}: {}\n{nodes}\n{next}",
            decision_word(d.decision),
            d.evidence
        )
    }

    /// What to post for an event.
    fn messages(&mut self, event: &RunEvent) -> Vec<Message> {
        match event {
            RunEvent::RunStarted { nodes, dry_run, .. } => {
                self.total = *nodes;
                let state = if *dry_run { "dry run" } else { "running" };
                vec![Message::Root(self.header(state))]
            }
            RunEvent::NodeDone { node, elapsed_ms } => {
                self.done += 1;
                if self.slowest.as_ref().is_none_or(|(_, ms)| elapsed_ms > ms) {
                    self.slowest = Some((node.clone(), *elapsed_ms));
                }
                vec![
                    Message::Reply(format!(
                        "node `{node}` upgraded in {}",
                        short_duration(*elapsed_ms)
                    )),
                    Message::UpdateRoot(self.header("running")),
                ]
            }
            RunEvent::NodeFailed { node, step, reason } => {
                self.failed += 1;
                vec![
                    Message::Reply(format!(
                        "node `{node}` FAILED at {step}: {reason}\nIt stays cordoned (`rollgate.dev/reason` on the node). After fixing the cause, `rollgate resume {}` retries it; to give it back by hand instead: `{}`.",
                        self.run_id,
                        crate::vocab::node_marks::hand_back_command(node)
                    )),
                    Message::UpdateRoot(self.header("running")),
                ]
            }
            RunEvent::GateDecision { decision } => vec![Message::Reply(self.gate(decision))],
            RunEvent::Paused { decision, .. } => vec![Message::UpdateRoot(
                self.header(&format!("paused by {}", decision.signal)),
            )],
            RunEvent::Resumed => vec![
                Message::Reply("resumed by the operator".into()),
                Message::UpdateRoot(self.header("running")),
            ],
            RunEvent::WindowClosed { window, reopens_at } => vec![
                Message::Reply(format!(
                    "outside the maintenance window ({window}): waiting, no new node starts until {}",
                    reopens_at
                        .as_deref()
                        .unwrap_or("it reopens (not within a year!)")
                )),
                Message::UpdateRoot(self.header("waiting for the window")),
            ],
            RunEvent::WindowOpened => vec![
                Message::Reply("the maintenance window is open: continuing".into()),
                Message::UpdateRoot(self.header("running")),
            ],
            RunEvent::RunFinished {
                outcome,
                not_started,
                elapsed_ms,
                ..
            } => {
                let state = match outcome {
                    Outcome::Succeeded => "finished".to_owned(),
                    Outcome::SucceededWithFailures => "finished with failures".to_owned(),
                    Outcome::Stopped(StopReason::GateAbort) => {
                        "ABORTED by a health gate".to_owned()
                    }
                    Outcome::Stopped(StopReason::NodeFailures) => {
                        "STOPPED: nodes failed".to_owned()
                    }
                    Outcome::Stopped(StopReason::OutsideWindow) => {
                        "stopped at the end of the maintenance window (resumable)".to_owned()
                    }
                    Outcome::Stopped(StopReason::Deadline) => {
                        "stopped at the run's deadline (resumable)".to_owned()
                    }
                    Outcome::Stopped(StopReason::JournalUnwritable) => {
                        "STOPPED: the run journal cannot be written (resumable once it can)"
                            .to_owned()
                    }
                    Outcome::Stopped(StopReason::LockLost) => {
                        "STOPPED: lost the cluster lock (`rollgate resume` continues)".to_owned()
                    }
                    Outcome::Stopped(_) => "stopped by the operator".to_owned(),
                };
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
                vec![
                    Message::UpdateRoot(self.header(&state)),
                    Message::Reply(format!(
                        "run {state} after {}: {} done, {} failed, {not_started} not started{slowest}{report}",
                        short_duration(*elapsed_ms),
                        self.done,
                        self.failed
                    )),
                ]
            }
            _ => vec![],
        }
    }
}

enum Failure {
    /// Worth trying again later (5xx, 429, timeouts).
    Transient(String),
    /// Slack said no for good (bad token, unknown channel): dropped with a warning.
    Permanent(String),
}

struct Sender {
    http: reqwest::Client,
    target: SlackTarget,
    root_ts: Option<String>,
    channel_id: Option<String>,
    /// `rollgate_slack_delivery_failures_total{outcome}`.
    failures: prometheus::IntCounterVec,
}

impl Sender {
    async fn post(
        &self,
        url: &str,
        body: serde_json::Value,
        bearer: Option<&str>,
    ) -> Result<serde_json::Value, Failure> {
        let mut last = String::new();
        for attempt in 0..ATTEMPTS {
            let mut req = self.http.post(url).timeout(REQUEST_TIMEOUT).json(&body);
            if let Some(t) = bearer {
                req = req.bearer_auth(t);
            }
            match req.send().await {
                Err(e) => last = format!("request failed: {}", e.without_url()),
                Ok(resp) if resp.status().as_u16() == 429 => {
                    let wait = resp
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(1u64);
                    last = format!("rate limited (Retry-After {wait}s)");
                    if attempt + 1 < ATTEMPTS {
                        tokio::time::sleep(Duration::from_secs(wait.min(10))).await;
                    }
                    continue;
                }
                Ok(resp) if resp.status().is_server_error() => {
                    last = format!("HTTP {}", resp.status())
                }
                Ok(resp) if !resp.status().is_success() => {
                    return Err(Failure::Permanent(format!("HTTP {}", resp.status())));
                }
                Ok(resp) => {
                    let text = resp.text().await.unwrap_or_default();
                    let v: serde_json::Value =
                        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
                    // Webhooks answer "ok" as text; the Web API answers {"ok": ...}.
                    if v.is_null() || v["ok"] == true {
                        return Ok(v);
                    }
                    return Err(Failure::Permanent(format!("Slack error {}", v["error"])));
                }
            }
            if attempt + 1 < ATTEMPTS {
                tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
            }
        }
        Err(Failure::Transient(last))
    }

    async fn send(&mut self, m: &Message) -> Result<(), Failure> {
        match (&self.target, m) {
            (SlackTarget::Webhook { url }, Message::Root(text) | Message::Reply(text)) => self
                .post(url, serde_json::json!({"text": text}), None)
                .await
                .map(|_| ()),
            // A webhook cannot edit messages.
            (SlackTarget::Webhook { .. }, Message::UpdateRoot(_)) => Ok(()),
            (
                SlackTarget::Bot {
                    api_url,
                    token,
                    channel,
                },
                Message::Root(text),
            ) => {
                let v = self
                    .post(
                        &format!("{}chat.postMessage", api_url),
                        serde_json::json!({"channel": channel, "text": text}),
                        Some(token),
                    )
                    .await?;
                self.root_ts = v["ts"].as_str().map(str::to_owned);
                self.channel_id = v["channel"].as_str().map(str::to_owned);
                Ok(())
            }
            (
                SlackTarget::Bot {
                    api_url,
                    token,
                    channel,
                },
                Message::Reply(text),
            ) => {
                let body = serde_json::json!({"channel": channel, "text": text, "thread_ts": self.root_ts});
                self.post(&format!("{}chat.postMessage", api_url), body, Some(token))
                    .await
                    .map(|_| ())
            }
            (
                SlackTarget::Bot {
                    api_url,
                    token,
                    channel,
                },
                Message::UpdateRoot(text),
            ) => {
                let Some(ts) = &self.root_ts else {
                    return Ok(());
                };
                let body = serde_json::json!({"channel": self.channel_id.as_deref().unwrap_or(channel), "ts": ts, "text": text});
                self.post(&format!("{}chat.update", api_url), body, Some(token))
                    .await
                    .map(|_| ())
            }
        }
    }

    /// Sends queued messages in order; stops at the first transient failure (kept for later).
    async fn flush(&mut self, queue: &mut VecDeque<Message>) {
        while let Some(m) = queue.front().cloned() {
            match self.send(&m).await {
                Ok(()) => {
                    queue.pop_front();
                }
                Err(Failure::Permanent(e)) => {
                    tracing::warn!(error = %e, "Slack refused a message; dropping it");
                    self.failures.with_label_values(&["refused"]).inc();
                    queue.pop_front();
                }
                Err(Failure::Transient(e)) => {
                    tracing::warn!(error = %e, queued = queue.len(), "Slack is unreachable; will retry later in the run");
                    self.failures.with_label_values(&["deferred"]).inc();
                    return;
                }
            }
        }
    }
}

async fn deliver(
    target: SlackTarget,
    mut rx: mpsc::UnboundedReceiver<Stamped>,
    failures: prometheus::IntCounterVec,
    mut texts: Texts,
) {
    let http = reqwest::Client::builder()
        .connect_timeout(REQUEST_TIMEOUT)
        .build()
        .expect("an HTTP client with default settings");
    let mut sender = Sender {
        http,
        target,
        root_ts: None,
        channel_id: None,
        failures,
    };
    let mut queue: VecDeque<Message> = VecDeque::new();
    let mut tick = tokio::time::interval(RETRY_TICK);
    loop {
        tokio::select! {
            event = rx.recv() => match event {
                Some(e) => {
                    let new = texts.messages(&e.event);
                    if new.is_empty() { continue; }
                    queue.extend(new);
                    sender.flush(&mut queue).await;
                }
                None => break,
            },
            _ = tick.tick() => {
                if !queue.is_empty() {
                    sender.flush(&mut queue).await;
                }
            }
        }
    }
    // The run is over: one last bounded attempt for what is still queued.
    let deadline = Instant::now() + FINAL_FLUSH;
    while !queue.is_empty() && Instant::now() < deadline {
        sender.flush(&mut queue).await;
        if !queue.is_empty() {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    if !queue.is_empty() {
        sender
            .failures
            .with_label_values(&["lost"])
            .inc_by(queue.len() as u64);
        tracing::warn!(
            lost = queue.len(),
            "Slack messages could not be delivered before the end of the run"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vocab::Step;

    #[test]
    fn the_final_message_sums_up_the_run_names_the_slowest_node_and_links_the_report() {
        let mut t = Texts {
            run_id: "r1".into(),
            playbook: "p".into(),
            mention: None,
            report: Some("https://reports.example/r1/report.html".into()),
            total: 3,
            done: 0,
            failed: 0,
            slowest: None,
        };
        for (node, ms) in [("a", 5_000), ("b", 65_000), ("c", 7_000)] {
            t.messages(&RunEvent::NodeDone {
                node: node.into(),
                elapsed_ms: ms,
            });
        }
        let last = t.messages(&RunEvent::RunFinished {
            outcome: Outcome::Succeeded,
            done: 3,
            failed: 0,
            not_started: 0,
            elapsed_ms: 80_000,
        });
        assert_eq!(
            last[1],
            Message::Reply(
                "run finished after 1m 20s: 3 done, 0 failed, 0 not started; slowest node `b` (1m 5s)\nReport: https://reports.example/r1/report.html".into()
            )
        );
    }

    #[test]
    fn failure_and_abort_advice_points_to_resume_or_the_full_hand_back_command() {
        let mut t = Texts {
            run_id: "r1".into(),
            playbook: "p".into(),
            mention: None,
            report: None,
            total: 2,
            done: 0,
            failed: 0,
            slowest: None,
        };
        let failed = t.messages(&RunEvent::NodeFailed {
            node: "n1".into(),
            step: Step::Command,
            reason: "exit 3".into(),
        });
        let abort = t.messages(&RunEvent::GateDecision {
            decision: GateDecision {
                decision: Decision::Abort,
                signal: "pods".into(),
                evidence: "web crash-looping".into(),
                in_flight: vec![("n2".into(), Step::Drain)],
            },
        });
        let texts: Vec<&str> = failed
            .iter()
            .chain(&abort)
            .filter_map(|m| match m {
                Message::Reply(text) => Some(text.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(texts.len(), 2);
        for (text, node) in texts.iter().zip(["n1", "NODE"]) {
            assert!(text.contains("`rollgate resume r1`"), "{text}");
            assert!(
                text.contains(&format!(
                    "kubectl uncordon {node} && kubectl annotate node {node} rollgate.dev/cordoned-by-"
                )),
                "{text}"
            );
            assert!(!text.contains("rerun"), "{text}");
        }
    }
}
