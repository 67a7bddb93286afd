//! The run's health as a pure state machine: [`Health::apply`] takes one [`Input`] (a signal's
//! result, a node's step transition or failure, the operator's pause or resume) and returns
//! the [`Output`]s the shell must carry out, in order. No IO, no clock, no tokio.
//!
//! - A result goes through its signal's gates ([`crate::gate`]); the most severe decision
//!   reached is recorded, with the nodes in flight. A pause stops a running run; an abort
//!   stops a running or paused one; abort always wins over pause.
//! - The operator pauses a running run (recorded like a gate's pause, signal `operator`) and
//!   resumes a paused one: gate counters start over.
//! - Nodes down for their upgrade, and nodes that failed and stay cordoned (for the rest of the
//!   run: the failure budget counts them), are exempt from the monitor's pods and nodes gates.

use super::InFlight;
use crate::gate::{GateTracker, signal_name, trackers_for};
use crate::playbook::{Gate, Signal};
use crate::vocab::{Decision, GateDecision, ProbeOutcome, Step};
use std::collections::BTreeSet;

/// The `signal` of a pause the operator asked for (`rollgate pause`).
pub const OPERATOR: &str = "operator";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthState {
    Running,
    Paused(GateDecision),
    Aborted(GateDecision),
}

/// What happens to the run's health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A signal's result: a probe's, or the monitor's (pods, nodes, pings).
    Result(Signal, ProbeOutcome),
    /// A node enters a step.
    Step(String, Step),
    /// A node's steps are over (done, or failed where it takes pods): it is watched again.
    Left(String),
    /// A node in flight went down again after its wait-ready (`true`), or is up again.
    DownAgain(String, bool),
    /// A node failed where it stays cordoned: exempt for the rest of the run.
    Failed(String),
    /// The engine collected the node's task: it is forgotten.
    Collected(String),
    /// The operator pauses the run, with a reason.
    Pause(String),
    /// The operator continues a paused run (who, if known).
    Resume(Option<String>),
    /// The operator aborts the run, with a reason (who and why).
    Abort(String),
}

/// What the shell must do, in this order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Record a gate decision (a `gate-decision` event).
    Decided(GateDecision),
    /// Publish the run's new state.
    State(HealthState),
    /// Record that the run was resumed (a `resumed` event), by whom if said.
    Resumed(Option<String>),
}

pub struct Health {
    trackers: Vec<GateTracker>,
    state: HealthState,
    in_flight: InFlight,
    /// Nodes that failed in this run and stay cordoned.
    failed: BTreeSet<String>,
    resumes: u64,
}

impl Health {
    /// `signals`: every signal the run produces; those without a gate in `gates` get a default one.
    pub fn new(gates: &[Gate], signals: &[Signal]) -> Self {
        Self {
            trackers: trackers_for(gates, signals),
            state: HealthState::Running,
            in_flight: InFlight::default(),
            failed: BTreeSet::new(),
            resumes: 0,
        }
    }

    pub fn apply(&mut self, input: Input) -> Vec<Output> {
        match input {
            Input::Result(signal, outcome) => self.result(&signal, &outcome),
            Input::Step(node, step) => {
                self.in_flight.enter(&node, step);
                vec![]
            }
            Input::Left(node) => {
                self.in_flight.leave(&node);
                vec![]
            }
            Input::DownAgain(node, down) => {
                self.in_flight.down_again(&node, down);
                vec![]
            }
            Input::Failed(node) => {
                // Marked failed before it leaves: it is never seen unexempt in between.
                self.failed.insert(node.clone());
                self.in_flight.leave(&node);
                vec![]
            }
            Input::Collected(node) => {
                self.in_flight.remove(&node);
                vec![]
            }
            Input::Pause(reason) => self.pause(reason),
            Input::Resume(by) => self.resume(by),
            Input::Abort(reason) => self.abort(reason),
        }
    }

    fn result(&mut self, signal: &Signal, outcome: &ProbeOutcome) -> Vec<Output> {
        let decision = self
            .trackers
            .iter_mut()
            .filter(|t| &t.gate.signal == signal)
            .filter_map(|t| t.record(outcome))
            .max_by_key(|d| severity(*d));
        let Some(decision) = decision else {
            return vec![];
        };
        let evidence = match outcome {
            ProbeOutcome::Fail(e) => e.clone(),
            ProbeOutcome::Inconclusive(e) => format!("inconclusive: {e}"),
            ProbeOutcome::Pass => String::new(),
        };
        let d = GateDecision {
            decision,
            signal: signal_name(signal),
            evidence,
            in_flight: self.in_flight.listed(),
        };
        let mut out = vec![Output::Decided(d.clone())];
        let next = match (&self.state, decision) {
            (HealthState::Running, Decision::Pause) => Some(HealthState::Paused(d)),
            (HealthState::Aborted(_), _) | (_, Decision::Warn | Decision::Pause) => None,
            (_, Decision::Abort) => Some(HealthState::Aborted(d)),
        };
        if let Some(next) = next {
            out.push(self.set(next));
        }
        out
    }

    fn pause(&mut self, reason: String) -> Vec<Output> {
        if self.state != HealthState::Running {
            return vec![];
        }
        let d = GateDecision {
            decision: Decision::Pause,
            signal: OPERATOR.into(),
            evidence: reason,
            in_flight: self.in_flight.listed(),
        };
        vec![self.set(HealthState::Paused(d.clone())), Output::Decided(d)]
    }

    fn resume(&mut self, by: Option<String>) -> Vec<Output> {
        if !matches!(self.state, HealthState::Paused(_)) {
            return vec![];
        }
        self.resumes += 1;
        self.trackers.iter_mut().for_each(GateTracker::reset);
        vec![self.set(HealthState::Running), Output::Resumed(by)]
    }

    /// The operator's abort: from running or paused (an abort already decided stays).
    fn abort(&mut self, reason: String) -> Vec<Output> {
        if matches!(self.state, HealthState::Aborted(_)) {
            return vec![];
        }
        let d = GateDecision {
            decision: Decision::Abort,
            signal: OPERATOR.into(),
            evidence: reason,
            in_flight: self.in_flight.listed(),
        };
        vec![
            self.set(HealthState::Aborted(d.clone())),
            Output::Decided(d),
        ]
    }

    fn set(&mut self, state: HealthState) -> Output {
        self.state = state.clone();
        Output::State(state)
    }

    pub fn state(&self) -> &HealthState {
        &self.state
    }

    /// How many times the run was resumed so far.
    pub fn resumes(&self) -> u64 {
        self.resumes
    }

    pub fn in_flight(&self) -> &InFlight {
        &self.in_flight
    }

    /// Nodes whose pods are expected to be disrupted: the ones down for their upgrade now, and
    /// the ones that failed in this run and stay cordoned.
    pub fn exempt_nodes(&self) -> BTreeSet<String> {
        let mut exempt = self.in_flight.down();
        exempt.extend(self.failed.iter().cloned());
        exempt
    }
}

fn severity(d: Decision) -> u8 {
    match d {
        Decision::Warn => 0,
        Decision::Pause => 1,
        Decision::Abort => 2,
    }
}

#[cfg(test)]
mod tests;
