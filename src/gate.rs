//! Gates: how a signal's results turn into a decision (abort, pause, warn), Argo-Rollouts style.
//! Pure and table-tested; [`crate::health::Guard`] applies the decisions to a run.
//!
//! - A failure counts towards `failure-limit`; reaching it yields `on-fail`.
//! - An inconclusive result (the probe could not run) counts towards `consecutive-errors`;
//!   reaching it yields `on-inconclusive` (default pause). A conclusive result resets it.
//! - Signals without a gate in the playbook get a default one: pods, nodes and probes abort,
//!   pings pause.

use crate::playbook::{Gate, Signal};
use crate::vocab::{Decision, ProbeOutcome};

pub fn default_gate(signal: &Signal) -> Gate {
    Gate {
        signal: signal.clone(),
        on_fail: if *signal == Signal::Pings {
            Decision::Pause
        } else {
            Decision::Abort
        },
        failure_limit: 1,
        consecutive_errors: 3,
        on_inconclusive: Decision::Pause,
    }
}

pub fn signal_name(signal: &Signal) -> String {
    match signal {
        Signal::Pods => "pods".into(),
        Signal::Pings => "pings".into(),
        Signal::Nodes => "nodes".into(),
        Signal::Probe(name) => format!("probe:{name}"),
    }
}

#[derive(Debug, Clone)]
pub struct GateTracker {
    pub gate: Gate,
    failures: u32,
    inconclusive_in_a_row: u32,
}

impl GateTracker {
    pub fn new(gate: Gate) -> Self {
        Self {
            gate,
            failures: 0,
            inconclusive_in_a_row: 0,
        }
    }

    /// Records a result; returns the decision when a limit is reached (then counting starts over).
    pub fn record(&mut self, outcome: &ProbeOutcome) -> Option<Decision> {
        match outcome {
            ProbeOutcome::Pass => {
                self.inconclusive_in_a_row = 0;
                None
            }
            ProbeOutcome::Fail(_) => {
                self.inconclusive_in_a_row = 0;
                self.failures += 1;
                (self.failures >= self.gate.failure_limit).then(|| {
                    self.failures = 0;
                    self.gate.on_fail
                })
            }
            ProbeOutcome::Inconclusive(_) => {
                self.inconclusive_in_a_row += 1;
                (self.inconclusive_in_a_row >= self.gate.consecutive_errors).then(|| {
                    self.inconclusive_in_a_row = 0;
                    self.gate.on_inconclusive
                })
            }
        }
    }

    pub fn reset(&mut self) {
        self.failures = 0;
        self.inconclusive_in_a_row = 0;
    }
}

/// The trackers for every signal: the playbook's gates, plus defaults for signals without one.
pub fn trackers_for(gates: &[Gate], signals: &[Signal]) -> Vec<GateTracker> {
    let mut out: Vec<GateTracker> = gates.iter().cloned().map(GateTracker::new).collect();
    for s in signals {
        if !gates.iter().any(|g| &g.signal == s) {
            out.push(GateTracker::new(default_gate(s)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(limit: u32, errors: u32) -> Gate {
        Gate {
            signal: Signal::Pods,
            on_fail: Decision::Abort,
            failure_limit: limit,
            consecutive_errors: errors,
            on_inconclusive: Decision::Pause,
        }
    }

    #[test]
    fn decisions_follow_failure_limit_and_consecutive_errors() {
        let fail = ProbeOutcome::Fail("x".into());
        let inc = ProbeOutcome::Inconclusive("prometheus unreachable".into());
        type Case<'a> = (Gate, Vec<&'a ProbeOutcome>, Vec<Option<Decision>>);
        let cases: Vec<Case> = vec![
            (gate(1, 3), vec![&fail], vec![Some(Decision::Abort)]),
            (
                gate(2, 3),
                vec![&fail, &ProbeOutcome::Pass, &fail],
                vec![None, None, Some(Decision::Abort)],
            ),
            (
                gate(1, 2),
                vec![&inc, &inc],
                vec![None, Some(Decision::Pause)],
            ),
            (
                gate(1, 2),
                vec![&inc, &ProbeOutcome::Pass, &inc],
                vec![None, None, None],
            ),
        ];
        for (g, outcomes, want) in cases {
            let mut t = GateTracker::new(g);
            let got: Vec<Option<Decision>> = outcomes.into_iter().map(|o| t.record(o)).collect();
            assert_eq!(got, want);
        }
    }

    #[test]
    fn signals_without_a_gate_get_safe_defaults() {
        let explicit = Gate {
            signal: Signal::Pods,
            on_fail: Decision::Warn,
            failure_limit: 1,
            consecutive_errors: 1,
            on_inconclusive: Decision::Warn,
        };
        let t = trackers_for(
            &[explicit],
            &[
                Signal::Pods,
                Signal::Nodes,
                Signal::Pings,
                Signal::Probe("vm".into()),
            ],
        );
        let summary: Vec<(String, Decision)> = t
            .iter()
            .map(|t| (signal_name(&t.gate.signal), t.gate.on_fail))
            .collect();
        assert_eq!(
            summary,
            vec![
                ("pods".into(), Decision::Warn),
                ("nodes".into(), Decision::Abort),
                ("pings".into(), Decision::Pause),
                ("probe:vm".into(), Decision::Abort)
            ]
        );
    }
}
