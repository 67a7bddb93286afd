//! The rollout engine: walks the plan's phases and waves, with up to `concurrency` nodes out
//! of service at once (nodes in flight, and failed nodes left cordoned), each through
//! [`Step::ALL`] in order. A failed node is counted by the failure budget and, through the
//! guard, exempt from the health gates for the rest of the run. A node whose drain budgets
//! held past the timeout under `on-pdb-timeout = "skip"` is given back and skipped: not a
//! failure, and it takes no slot. It owns the run state (what is in flight, what
//! failed, why the run stops) in one loop that `select!`s over node completions and stop
//! requests; node tasks talk to it only through their results and the [`EventSink`].
//!
//! Side effects live behind [`NodeSteps`]: [`crate::cluster::KubeSteps`] for real runs,
//! [`crate::cluster::DryRunSteps`] for `--dry-run`, fakes in this module's tests. One node's
//! walk through its steps is in `engine::node`; the nodes in flight are kept by the [`Guard`].

mod node;

use crate::vocab::{EventSink, FinishByEnd, Outcome, RunEvent, Step, StopReason};

use crate::drain::{DrainReport, HeldByBudget};
use crate::health::{Guard, HealthState};
use crate::plan::Plan;
use crate::window::{OutsideWindow, Schedule, TooLate};
use node::{fail_node, panic_message, upgrade_node};
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// A step that went wrong, with a message fit for a node annotation and a Slack message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct StepError(pub String);

impl StepError {
    /// The message with every registered secret scrubbed ([`crate::redact`]): a step's error
    /// quotes the command's last output lines, and ends in the run's summary.
    pub fn new(msg: impl Into<String>) -> Self {
        Self(crate::redact::scrub(&msg.into()))
    }
}

/// What the engine needs to know about the node it starts.
#[derive(Debug, Clone)]
pub struct NodeJob {
    pub node: String,
    pub phase: String,
    /// The first step to run: [`Step::Cordon`], or a later one when a crashed run is resumed.
    pub from: Step,
}

/// How a drain step ended, when it did not fail.
#[derive(Debug, Clone, PartialEq)]
pub enum DrainOutcome {
    /// The pods the drain takes are gone.
    Drained(DrainReport),
    /// `on-pdb-timeout = "skip"`: PodDisruptionBudgets held pods past the drain timeout: the
    /// node is given back ([`NodeSteps::hand_back`]) without its command, and skipped.
    HeldByBudget(HeldByBudget),
}

/// The side effects of one node's upgrade. Each call is bounded by its own timeout.
pub trait NodeSteps: Send + Sync + 'static {
    fn cordon(&self, job: &NodeJob) -> impl Future<Output = Result<(), StepError>> + Send;
    fn drain(&self, job: &NodeJob) -> impl Future<Output = Result<DrainOutcome, StepError>> + Send;
    fn run_command(&self, job: &NodeJob) -> impl Future<Output = Result<(), StepError>> + Send;
    /// Returns a detail for the event (e.g. the kubelet version now reported).
    fn wait_ready(&self, job: &NodeJob) -> impl Future<Output = Result<String, StepError>> + Send;
    fn uncordon(&self, job: &NodeJob) -> impl Future<Output = Result<(), StepError>> + Send;
    fn settle(
        &self,
        job: &NodeJob,
        drained: &DrainReport,
    ) -> impl Future<Output = Result<(), StepError>> + Send;
    /// Gives a node back without its upgrade (it was not taken down): uncordoned unless it was
    /// cordoned before the run, rollgate's marks cleared, no `last-run` recorded.
    fn hand_back(&self, job: &NodeJob) -> impl Future<Output = Result<(), StepError>> + Send;
    /// Records the failure on the node (it stays cordoned). Best effort: errors are reported as warnings.
    fn mark_failed(
        &self,
        job: &NodeJob,
        step: Step,
        reason: &str,
    ) -> impl Future<Output = ()> + Send;
}

/// What the operator asked for, through Ctrl-C / SIGTERM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopRequest {
    None,
    Graceful,
    Immediate,
}

/// Asks the operator before each node (`--step`); `false` stops the run gracefully.
pub type Confirm = Arc<dyn Fn(&str) -> bool + Send + Sync>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSummary {
    pub outcome: Outcome,
    pub done: Vec<String>,
    pub failed: Vec<(String, Step, String)>,
    /// Nodes given back without their command (`on-pdb-timeout = "skip"`), with why.
    pub skipped: Vec<(String, String)>,
    pub not_started: Vec<String>,
    /// Nodes in flight when the run was stopped immediately, with the step they were in.
    pub abandoned: Vec<(String, Option<Step>)>,
    /// Nodes stopped before a step whose start the journal could not record: nothing of that
    /// step was done.
    pub unrecorded: Vec<(String, Step)>,
}

pub struct Engine<S: NodeSteps> {
    steps: Arc<S>,
    sink: EventSink,
    stop: watch::Receiver<StopRequest>,
    confirm: Option<Confirm>,
    /// The run's health (without [`Engine::with_guard`]: one that never stops the run); it
    /// keeps the nodes in flight.
    guard: Arc<Guard>,
    resume_hint: String,
    resume_from: HashMap<String, Step>,
    schedule: Option<(watch::Receiver<Schedule>, OutsideWindow, String)>,
    operator: Option<String>,
    lock_lost: Option<watch::Receiver<Option<String>>>,
}

/// Why a node task ended before its last step.
enum NodeStop {
    Failed(Step, StepError),
    /// Given back without its command (`on-pdb-timeout = "skip"`), with why.
    Skipped(String),
    /// The journal could not record the start of this step: it was not run.
    Unrecorded(Step),
}

type NodeResult = (String, Result<(), NodeStop>);

impl<S: NodeSteps> Engine<S> {
    pub fn new(steps: S, sink: EventSink, stop: watch::Receiver<StopRequest>) -> Self {
        Self {
            steps: Arc::new(steps),
            guard: Guard::unguarded(sink.clone()),
            sink,
            stop,
            confirm: None,
            resume_hint: String::new(),
            resume_from: HashMap::new(),
            schedule: None,
            operator: None,
            lock_lost: None,
        }
    }

    /// Resuming a crashed run: these nodes start at the given step instead of cordon.
    pub fn resuming(mut self, from: HashMap<String, Step>) -> Self {
        self.resume_from = from;
        self
    }

    /// Health gates: an abort stops the run (nodes in flight stop at their next safe point), a
    /// pause stops starting nodes until [`Guard::resume`]. `resume_hint` tells the operator how.
    pub fn with_guard(mut self, guard: Arc<Guard>, resume_hint: &str) -> Self {
        self.guard = guard;
        self.resume_hint = resume_hint.to_owned();
        self
    }

    /// Maintenance window and deadline: while `schedule` is not open no node starts; a closed
    /// window waits or stops the run (per `outside`), a passed deadline stops it.
    pub fn with_schedule(
        mut self,
        schedule: watch::Receiver<Schedule>,
        outside: OutsideWindow,
        window: &str,
    ) -> Self {
        self.schedule = Some((schedule, outside, window.to_owned()));
        self
    }

    /// The cluster lock: once `lost` says why it was lost, no node starts and nodes in flight
    /// stop at their next safe point (a remote command finishes first), recorded as failed
    /// with the reason; their failure is not written to the node (the run may no longer act).
    pub fn with_lock(mut self, lost: watch::Receiver<Option<String>>) -> Self {
        self.lock_lost = Some(lost);
        self
    }

    /// Who runs it (`user@host`), recorded when the run starts or resumes.
    pub fn by(mut self, operator: String) -> Self {
        self.operator = Some(operator);
        self
    }

    pub fn with_confirm(mut self, confirm: Confirm) -> Self {
        self.confirm = Some(confirm);
        self
    }

    /// Runs the plan. `max_failed_nodes` is the run-wide failure budget (None: phases' budgets only).
    pub async fn run(
        &mut self,
        run_id: &str,
        playbook_name: &str,
        plan: &Plan,
        max_failed_nodes: Option<u32>,
        dry_run: bool,
    ) -> RunSummary {
        let started = Instant::now();
        self.sink.emit(RunEvent::RunStarted {
            run_id: run_id.into(),
            playbook: playbook_name.into(),
            nodes: plan.node_count(),
            dry_run,
            by: self.operator.clone(),
        });
        let mut stop_reason: Option<StopReason> = None;
        let mut done = Vec::new();
        let mut failed: Vec<(String, Step, String)> = Vec::new();
        let mut skipped: Vec<(String, String)> = Vec::new();
        let mut abandoned = Vec::new();
        let mut unrecorded = Vec::new();
        let mut started_nodes = std::collections::HashSet::new();
        // Once the guard is gone, a channel that never changes (its sender is kept for the
        // whole run).
        let (_no_guard, unguarded) = watch::channel(HealthState::Running);
        let mut health = self.guard.subscribe();
        let mut paused_reported = false;
        let (_always_open, open) = watch::channel(Schedule::Open);
        let (_never_stop, never_stopped) = watch::channel(StopRequest::None);
        let (mut schedule, outside, window) = match &self.schedule {
            Some((rx, outside, window)) => (rx.clone(), *outside, window.clone()),
            None => (open.clone(), OutsideWindow::Wait, String::new()),
        };
        let mut closed_reported = false;
        let (_lock_never_lost, lock_held) = watch::channel(None::<String>);
        let mut lock_lost = self.lock_lost.clone().unwrap_or_else(|| lock_held.clone());

        'phases: for phase in &plan.phases {
            let mut phase_failures = 0u32;
            // Failed nodes of this phase left cordoned: they are out of service, so they take
            // a `concurrency` slot each for the rest of the run.
            let mut cordoned_failures = 0usize;
            for wave in &phase.waves {
                if stop_reason.is_some() {
                    break 'phases;
                }
                self.sink.emit(RunEvent::WaveStarted {
                    phase: phase.name.clone(),
                    wave: wave.label.clone(),
                    nodes: wave.nodes.clone(),
                });
                let mut queue = wave.nodes.iter().peekable();
                let mut in_flight: JoinSet<NodeResult> = JoinSet::new();
                // Which node each task upgrades, to fail the right node if its task panics.
                let mut task_nodes: HashMap<tokio::task::Id, NodeJob> = HashMap::new();
                'wave: loop {
                    if self.sink.journal_failure().is_some()
                        && stop_reason.is_none_or(|r| r < StopReason::JournalUnwritable)
                    {
                        stop_reason = Some(StopReason::JournalUnwritable);
                        self.sink.emit(RunEvent::Stopping {
                            reason: StopReason::JournalUnwritable,
                        });
                    }
                    let state = health.borrow_and_update().clone();
                    if let HealthState::Aborted(d) = &state {
                        let reason = if d.signal == crate::health::OPERATOR {
                            StopReason::OperatorAbort
                        } else {
                            StopReason::GateAbort
                        };
                        if stop_reason.is_none_or(|r| r < reason) {
                            stop_reason = Some(reason);
                            self.sink.emit(RunEvent::Stopping { reason });
                        }
                    }
                    if lock_lost.borrow_and_update().is_some()
                        && stop_reason.is_none_or(|r| r < StopReason::LockLost)
                    {
                        stop_reason = Some(StopReason::LockLost);
                        self.sink.emit(RunEvent::Stopping {
                            reason: StopReason::LockLost,
                        });
                    }
                    let paused = matches!(state, HealthState::Paused(_));
                    if !paused {
                        paused_reported = false;
                    }
                    let timing = schedule.borrow_and_update().clone();
                    let (stop_for_time, closed) = match &timing {
                        Schedule::Open => (None, false),
                        // finish-by-end is about the next node: none left in this wave, nothing to hold.
                        Schedule::TooLate(_) if queue.peek().is_none() => (None, false),
                        Schedule::DeadlinePassed { .. } => (Some(StopReason::Deadline), true),
                        Schedule::Closed { .. } | Schedule::TooLate(_)
                            if outside == OutsideWindow::Exit =>
                        {
                            (Some(StopReason::OutsideWindow), true)
                        }
                        Schedule::Closed { .. } | Schedule::TooLate(_) => (None, true),
                    };
                    if let Some(reason) = stop_for_time
                        && stop_reason.is_none()
                    {
                        stop_reason = Some(reason);
                        if let (Schedule::TooLate(late), Some(node)) = (&timing, queue.peek()) {
                            self.sink.emit(finish_by_end(late, node));
                        }
                        self.sink.emit(RunEvent::Stopping { reason });
                    }
                    if !closed && closed_reported {
                        closed_reported = false;
                        self.sink.emit(RunEvent::WindowOpened);
                    }
                    let paused = paused || closed;
                    // Start nodes while there is room and no reason to stop.
                    while stop_reason.is_none()
                        && !paused
                        && in_flight.len() + cordoned_failures < phase.concurrency
                    {
                        let Some(node) = queue.peek().map(|n| (*n).clone()) else {
                            break;
                        };
                        if let Some(confirm) = &self.confirm {
                            let confirm = Arc::clone(confirm);
                            let name = node.clone();
                            let yes = tokio::task::spawn_blocking(move || confirm(&name))
                                .await
                                .unwrap_or(false);
                            if !yes {
                                stop_reason = Some(StopReason::OperatorGraceful);
                                self.sink.emit(RunEvent::Stopping {
                                    reason: StopReason::OperatorGraceful,
                                });
                                break;
                            }
                            // The prompt blocked this loop: a stop, gate decision or closed window
                            // that came meanwhile is dealt with first (the node stays queued).
                            if *self.stop.borrow() != StopRequest::None {
                                stop_reason = Some(StopReason::OperatorGraceful);
                                self.sink.emit(RunEvent::Stopping {
                                    reason: StopReason::OperatorGraceful,
                                });
                                break;
                            }
                            if health.has_changed().unwrap_or(false)
                                || schedule.has_changed().unwrap_or(false)
                                || lock_lost.has_changed().unwrap_or(false)
                            {
                                continue 'wave;
                            }
                        }
                        queue.next();
                        started_nodes.insert(node.clone());
                        let job = NodeJob {
                            node: node.clone(),
                            phase: phase.name.clone(),
                            from: self.resume_from.get(&node).copied().unwrap_or(Step::Cordon),
                        };
                        let task = in_flight.spawn(upgrade_node(
                            Arc::clone(&self.steps),
                            job.clone(),
                            self.sink.clone(),
                            Arc::clone(&self.guard),
                            lock_lost.clone(),
                        ));
                        task_nodes.insert(task.id(), job);
                    }
                    // Failed nodes fill every slot: no node can start without taking more nodes
                    // out of service than `concurrency` allows.
                    if stop_reason.is_none()
                        && in_flight.is_empty()
                        && cordoned_failures >= phase.concurrency
                        && queue.peek().is_some()
                    {
                        self.sink.emit(RunEvent::Warning {
                            node: None,
                            message: format!(
                                "phase {}: {cordoned_failures} failed node(s) stay cordoned and fill its concurrency of {}: no other node can start (failed nodes count against concurrency; raise it above the failure budget to go on past failures)",
                                phase.name, phase.concurrency
                            ),
                        });
                        stop_reason = Some(StopReason::NodeFailures);
                        self.sink.emit(RunEvent::Stopping {
                            reason: StopReason::NodeFailures,
                        });
                    }
                    let reopens = match &timing {
                        Schedule::Closed { reopens_at } => Some(*reopens_at),
                        Schedule::TooLate(late) => Some(late.reopens_at),
                        _ => None,
                    };
                    if let Some(reopens_at) = &reopens
                        && in_flight.is_empty()
                        && !closed_reported
                        && stop_reason.is_none()
                        && let Some(node) = queue.peek()
                    {
                        if let Schedule::TooLate(late) = &timing {
                            self.sink.emit(finish_by_end(late, node));
                        }
                        self.sink.emit(RunEvent::WindowClosed {
                            window: window.clone(),
                            reopens_at: reopens_at.map(|t| t.to_string()),
                        });
                        closed_reported = true;
                    }
                    if let HealthState::Paused(decision) = &state
                        && in_flight.is_empty()
                        && !paused_reported
                        && stop_reason.is_none()
                        && queue.peek().is_some()
                    {
                        self.sink.emit(RunEvent::Paused {
                            decision: decision.clone(),
                            resume_hint: self.resume_hint.clone(),
                        });
                        paused_reported = true;
                    }
                    let waiting_for_resume =
                        paused && stop_reason.is_none() && queue.peek().is_some();
                    if in_flight.is_empty() && !waiting_for_resume {
                        break;
                    }
                    let journal_ok = stop_reason != Some(StopReason::JournalUnwritable);
                    tokio::select! {
                        () = self.sink.journal_failed(), if journal_ok => {}
                        changed = schedule.changed() => {
                            if changed.is_err() {
                                schedule = open.clone();
                            }
                        }
                        changed = health.changed() => {
                            if changed.is_err() {
                                // The guard is gone: no more decisions can come; keep going without it.
                                health = unguarded.clone();
                            }
                        }
                        changed = lock_lost.changed() => {
                            if changed.is_err() {
                                // Nobody watches the lock any more: it can no longer be reported lost.
                                lock_lost = lock_held.clone();
                            }
                        }
                        Some(joined) = in_flight.join_next_with_id() => {
                            let (node, result) = match joined {
                                Ok((id, r)) => {
                                    task_nodes.remove(&id);
                                    r
                                }
                                Err(e) => {
                                    // A panicking node task is a bug: that node failed, at the
                                    // step it was in, and counts against the budget.
                                    let Some(job) = task_nodes.remove(&e.id()) else { continue };
                                    let step = self.guard.step_of(&job.node).unwrap_or(job.from);
                                    let err = StepError::new(format!(
                                        "internal error in rollgate during {step} (a bug: please report it): {}",
                                        panic_message(e)
                                    ));
                                    let lost = lock_lost.borrow().is_some();
                                    fail_node(self.steps.as_ref(), &job, step, &err, &self.sink, &self.guard, lost).await;
                                    (job.node, Err(NodeStop::Failed(step, err)))
                                }
                            };
                            self.guard.collected(&node);
                            match result {
                                Ok(()) => done.push(node),
                                // Not a failure: no budget counts it, and it is back in service.
                                Err(NodeStop::Skipped(why)) => skipped.push((node, why)),
                                Err(NodeStop::Unrecorded(step)) => {
                                    self.sink.emit(RunEvent::Warning {
                                        node: Some(node.clone()),
                                        message: format!("stopped before {step}: the journal could not record it, so nothing of it was done"),
                                    });
                                    unrecorded.push((node, step));
                                }
                                Err(NodeStop::Failed(step, err)) => {
                                    phase_failures += 1;
                                    if step.traits().leaves_node_cordoned {
                                        cordoned_failures += 1;
                                    }
                                    failed.push((node, step, err.0));
                                    let over_phase = phase_failures > phase.failure_budget;
                                    let over_run = max_failed_nodes.is_some_and(|m| failed.len() as u32 > m);
                                    if (over_phase || over_run) && stop_reason.is_none() {
                                        stop_reason = Some(StopReason::NodeFailures);
                                        self.sink.emit(RunEvent::Stopping { reason: StopReason::NodeFailures });
                                    }
                                }
                            }
                        }
                        changed = self.stop.changed() => {
                            let request = if changed.is_ok() { *self.stop.borrow_and_update() } else { StopRequest::None };
                            match request {
                                StopRequest::Graceful if stop_reason.is_none() => {
                                    stop_reason = Some(StopReason::OperatorGraceful);
                                    self.sink.emit(RunEvent::Stopping { reason: StopReason::OperatorGraceful });
                                }
                                StopRequest::Immediate => {
                                    stop_reason = Some(stop_reason.map_or(StopReason::OperatorImmediate, |r| r.max(StopReason::OperatorImmediate)));
                                    self.sink.emit(RunEvent::Stopping { reason: StopReason::OperatorImmediate });
                                    in_flight.abort_all();
                                    // By name: every node whose task was not collected.
                                    for (node, step) in self.guard.tracked() {
                                        self.sink.emit(RunEvent::NodeAbandoned { node: node.clone(), step: Some(step) });
                                        abandoned.push((node, Some(step)));
                                    }
                                    while in_flight.join_next().await.is_some() {}
                                    break 'phases;
                                }
                                _ => {}
                            }
                            if changed.is_err() {
                                // The stop channel closed: nobody can ask to stop any more; keep going.
                                self.stop = never_stopped.clone();
                            }
                        }
                    }
                }
                if stop_reason.is_none() {
                    self.guard.after_wave(&phase.name).await;
                }
            }
        }
        let not_started: Vec<String> = plan
            .nodes()
            .filter(|n| !started_nodes.contains(*n))
            .map(str::to_owned)
            .collect();
        let outcome = match stop_reason {
            Some(reason) => Outcome::Stopped(reason),
            None if failed.is_empty() => Outcome::Succeeded,
            None => Outcome::SucceededWithFailures,
        };
        self.sink.emit(RunEvent::RunFinished {
            outcome,
            done: done.len(),
            failed: failed.len(),
            skipped: skipped.len(),
            not_started: not_started.len(),
            elapsed_ms: started.elapsed().as_millis() as u64,
        });
        RunSummary {
            outcome,
            done,
            failed,
            skipped,
            not_started,
            abandoned,
            unrecorded,
        }
    }
}

/// Why `finish-by-end` holds `node` back, as the event that says so.
fn finish_by_end(late: &TooLate, node: &str) -> RunEvent {
    RunEvent::FinishByEnd(FinishByEnd {
        node: node.to_owned(),
        needs_secs: late.needs.p95.as_secs(),
        from_runs: late.needs.from_runs,
        closes_at: late.closes_at.to_string(),
        closes_in_secs: late.closes_in.as_secs(),
    })
}

#[cfg(test)]
mod tests;
